//! The pt-BR data dictionary of a product, generated from the schema the writers use.

use std::fmt::Write as _;

use super::contract::{Codec, Contract, Format, KeyPeriod};
use super::monthly::MIN_OTHER_BRANDS;
use super::schema::ProductSchema;
use crate::events::ProductKind;

/// File name of a partner's dictionary of a product.
pub fn file_name(partner: &str, kind: ProductKind) -> String {
    format!("{partner}_{kind}_dictionary.pt-BR.md")
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Renders the dictionary as Markdown (deterministic: no dates inside).
pub fn render(contract: &Contract, schema: &ProductSchema) -> String {
    let mut s = String::new();
    let (title, grain, name) = match schema.kind {
        ProductKind::Daily => (
            "Analítico diário",
            "uma linha por item de pedido concluído dos produtos do parceiro vendido no dia D \
             (data local de America/Sao_Paulo), como conhecido no lote de D",
            format!("{}_daily_<AAAA-MM-DD>", contract.name),
        ),
        ProductKind::Monthly => (
            "Agregado mensal",
            "uma linha por (UF, cidade, produto) com vendas concluídas dos produtos do parceiro \
             no mês M, na versão mais recente de cada item (lotes do mês e dos dias de correção \
             seguintes)",
            format!("{}_monthly_<AAAA-MM>", contract.name),
        ),
        ProductKind::MonthlyBrands => (
            "Visão mensal por marca",
            "uma linha por (nível, UF, cidade, marca) com vendas concluídas das marcas do parceiro \
             no mês M: `city` por cidade, `uf` para o estado inteiro e `country` para o país \
             inteiro; pedidos e clientes distintos contados no nível da linha (um cliente que \
             comprou em duas cidades conta uma vez na UF e no país; as linhas não se somam)",
            format!("{}_monthly_brands_<AAAA-MM>", contract.name),
        ),
    };
    let _ = writeln!(
        s,
        "# Dicionário de dados: {title} ({})\n",
        contract.display_name
    );
    let _ = writeln!(s, "- Arquivo: `{name}`");
    let formats: Vec<&str> = contract
        .formats
        .iter()
        .map(|f| match f {
            Format::Parquet => match contract.parquet.compression {
                Codec::Snappy => "Parquet (Snappy)",
                Codec::Zstd => "Parquet (Zstandard)",
            },
            Format::Csv => "CSV (UTF-8, vírgula, cabeçalho, ponto decimal)",
        })
        .collect();
    let _ = writeln!(s, "- Formatos: {}", formats.join("; "));
    let _ = writeln!(s, "- Grão: {grain}");
    let _ = writeln!(
        s,
        "- Versão do esquema: {} (impressão digital `{}`)\n",
        schema.version,
        schema.fingerprint()
    );
    let _ = writeln!(s, "## Colunas\n");
    let _ = writeln!(s, "| coluna | tipo | nulo | significado | privacidade |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for c in schema.columns {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} |",
            c.name,
            cell(&c.ty.describe_pt()),
            if c.nullable { "sim" } else { "não" },
            cell(c.description),
            cell(c.privacy)
        );
    }
    let _ = writeln!(s, "\n## Regras de privacidade (LGPD)\n");
    let _ = writeln!(
        s,
        "- Nenhum dado pessoal é entregue: nome, e-mail, CPF, telefone, data de nascimento, CEP \
         e identificadores de cliente, pedido ou item nunca saem da empresa."
    );
    let period = match contract.key_period {
        KeyPeriod::Month => "por mês: a mesma pessoa tem chaves diferentes em meses diferentes",
        KeyPeriod::Contract => "por contrato: a mesma pessoa tem a mesma chave durante o contrato",
    };
    let _ = writeln!(
        s,
        "- Chaves pseudônimas (HMAC-SHA-256 com segredo exclusivo do parceiro, versão `{}`), {period}.",
        contract.pseudonymization.key_version
    );
    let _ = writeln!(
        s,
        "- k = {}: {}",
        contract.k,
        match schema.kind {
            ProductKind::Daily =>
                "cidades com menos de k clientes nos últimos 30 dias aparecem como `OUTRAS`.",
            ProductKind::Monthly =>
                "linhas com menos de k clientes são agrupadas em `OUTRAS` por UF e produto; grupos ainda abaixo de k são omitidos.",
            ProductKind::MonthlyBrands =>
                "cidades com menos de k clientes da marca são agrupadas em `OUTRAS` por UF e marca; grupos ainda abaixo de k são omitidos; linhas de UF abaixo de k são omitidas; as linhas de UF e do país contam todas as vendas (agrupadas ou não).",
        }
    );
    if schema.kind.is_monthly() {
        let _ = writeln!(
            s,
            "- Números do segmento ficam nulos quando menos de {MIN_OTHER_BRANDS} outras marcas venderam na célula."
        );
    }
    let _ = writeln!(
        s,
        "- Todo arquivo passa por uma verificação automática de dados pessoais antes da entrega.\n"
    );
    let _ = writeln!(s, "## CSV\n");
    let _ = writeln!(
        s,
        "Textos que começam com `=`, `+`, `-` ou `@` vêm entre aspas e com o prefixo `'`, para \
         que planilhas nunca os executem como fórmula. Valores nulos são células vazias; datas \
         `AAAA-MM-DD`; instantes em UTC `AAAA-MM-DDTHH:MM:SSZ`."
    );
    s
}
