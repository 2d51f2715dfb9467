//! What to do next: one short runbook line per kind of alert or dead letter (pt-BR, as the
//! e-mails), and the exact `datashare` commands to run for an alert.

use crate::events::Alert;

/// The kind given to a message Pub/Sub dead-lettered itself after its delivery attempts ran out.
pub const MAX_DELIVERY_ATTEMPTS: &str = "max_delivery_attempts";

/// The runbook line of a kind (`error_kind` of a dead letter, or an alert's kind).
pub fn runbook(kind: &str) -> &'static str {
    match kind {
        "invalid_extract" => {
            "O arquivo nunca poderá ser lido: peça ao marketplace um novo envio corrigido da \
             mesma tabela e dia; o lote fica retido até lá, ou `datashare release` o entrega \
             sem o arquivo."
        }
        "unknown_layout" => {
            "Um objeto chegou fora de extracts/<tabela>/dt=AAAA-MM-DD/: mova-o para o lugar \
             certo (ou apague-o se não for um extrato); nada a reprocessar."
        }
        "malformed_message" => {
            "Uma mensagem sem o formato do seu tópico: encontre quem a publicou pelos \
             atributos arquivados, corrija, e então reenvie as dead letters."
        }
        "partner_rejected" => {
            "O parceiro recusou a entrega (4xx): confira o pedido arquivado e a resposta do \
             parceiro, corrija a causa com ele e então reenvie as dead letters."
        }
        "host_key" => {
            "A chave do servidor SFTP não é a fixada no contrato: confirme a nova chave com o \
             parceiro por outro canal antes de atualizar o contrato; nunca confie às cegas."
        }
        "sink_auth" => {
            "O parceiro recusou nossas credenciais: renove ou corrija o segredo no Secret \
             Manager e então reenvie as dead letters da assinatura do destino."
        }
        "sink_config" => {
            "Um destino está mal configurado (endereço, certificado, pasta): corrija o contrato \
             ou as configurações, publique de novo e então reenvie as dead letters."
        }
        MAX_DELIVERY_ATTEMPTS => {
            "O Pub/Sub desistiu após as tentativas de entrega: o consumidor falhou \
             repetidamente; leia os logs pelo id da mensagem, corrija a causa e então reenvie \
             as dead letters da assinatura de origem."
        }
        "batch.held" => {
            "Os produtos do dia estão retidos: corrija ou reenvie os arquivos que falharam, ou \
             rode `datashare release` para entregar sem eles."
        }
        "batch.stalled" => {
            "O passo do lote perdeu seu worker várias vezes (falta de memória, timeout): veja \
             os logs e a memória do worker, corrija e rode `datashare replay` para o dia."
        }
        "quality.guardrails" => {
            "Guardrails de qualidade do lote disparados: veja o relatório de qualidade e a \
             quarentena; se algum é bloqueante os produtos estão retidos: peça um novo envio \
             ou libere o lote com `datashare release`."
        }
        "quality.threshold" => {
            "Uma proporção de qualidade passou do limite: veja o relatório de qualidade e a \
             quarentena do lote; se bloqueante, peça um novo envio ou libere o lote."
        }
        "quality.volume" => {
            "O número de linhas está longe da mediana dos últimos 7 lotes: confirme com o \
             marketplace se o extrato está completo antes que o parceiro dependa dele."
        }
        "extract.missing" => {
            "Nenhum lote completo do dia no prazo: confira o bucket raw e a rotina de envio do \
             marketplace; o lote roda assim que o marcador chegar."
        }
        "extract.unlisted" => {
            "Um arquivo do dia não está listado no marcador e ficou fora do lote: se deveria \
             entrar, peça ao marketplace um novo marcador que o liste; senão, apague-o."
        }
        "product.missing_batches" => {
            "O produto mensal não foi gerado porque faltam lotes de dias do mês: traga os dias \
             que faltam (envio ou `datashare replay`) e o mensal é gerado em seguida."
        }
        "sink.check_failed" => {
            "Um destino falhou no teste de conexão antes de um prazo: verifique agora o \
             servidor do parceiro, as credenciais e a rede, antes que os arquivos vençam."
        }
        "privacy.gate" => {
            "Um produto falhou no filtro de privacidade e não foi entregue: revise as colunas \
             e os tamanhos mínimos de grupo do contrato; não o libere como está."
        }
        "reconciliation" => {
            "Os totais do produto não batem com os dados curados: compare o manifesto com o \
             relatório de qualidade antes de qualquer entrega."
        }
        "budget.threshold" => {
            "Os gastos passaram de um limite do orçamento: veja no relatório de faturamento \
             qual serviço cresceu e reduza-o se não for esperado."
        }
        "powerbi.refresh_failed" => {
            "A Power BI refresh failed: read serviceExceptionJson in the details, fix the data \
             source in the workspace; the next batch triggers a new refresh."
        }
        "powerbi.refresh_stuck" => {
            "A Power BI refresh runs past its limit: cancel it in the workspace's refresh \
             history; the monitor requests again after the next update."
        }
        "powerbi.stale" => {
            "A Power BI item's last completed refresh is older than its SLA: look for a failed \
             refresh or missing batches first."
        }
        "powerbi.quota" => {
            "A Power BI item used its daily refreshes: nothing is lost, the next refresh reads \
             every partition; refresh by hand after 00:00 UTC if the day matters."
        }
        "powerbi.config" => {
            "Entra or Power BI refused the monitor (secret, workspace access, item id): rotate \
             datashare-powerbi-client-secret or fix config/powerbi.toml, then redeploy."
        }
        _ => {
            "Leia os detalhes e os logs pela impressão digital; corrija a causa e então \
             reenvie as dead letters se mensagens ficaram paradas."
        }
    }
}

/// The `datashare` commands to run for an alert, in order: `status` for its day(s), then
/// `release` / `replay` where the runbook line calls for one.
pub fn commands(a: &Alert) -> Vec<String> {
    let partner = match a.partner.as_str() {
        "" | "*" => String::new(),
        p => format!(" --partner {p}"),
    };
    let day = chrono::NaiveDate::parse_from_str(&a.period, "%Y-%m-%d").ok();
    let month = chrono::NaiveDate::parse_from_str(&format!("{}-01", a.period), "%Y-%m-%d").ok();
    let status = match (day, month) {
        (Some(d), _) => Some(format!("datashare status --date {d}{partner}")),
        (None, Some(first)) => {
            let last = first
                .checked_add_months(chrono::Months::new(1))
                .and_then(|n| n.pred_opt())
                .unwrap_or(first);
            Some(format!(
                "datashare status --from {first} --to {last}{partner}"
            ))
        }
        _ => None,
    };
    let mut out = Vec::new();
    if a.kind == "budget.threshold" {
        return out;
    }
    out.push(status.clone().unwrap_or_else(|| "datashare status".into()));
    let blocking = a
        .details
        .get("blocking")
        .is_some_and(|b| b.as_bool() == Some(true) || b.as_array().is_some_and(|v| !v.is_empty()));
    if let Some(d) = day {
        match a.kind.as_str() {
            "batch.held" | "invalid_extract" => out.push(format!("datashare release --date {d}")),
            "quality.guardrails" | "quality.threshold" | "quality.volume" if blocking => {
                out.push(format!("datashare release --date {d}"))
            }
            "batch.stalled" => out.push(format!("datashare replay --date {d}")),
            _ => {}
        }
    }
    if let (Some(first), "product.missing_batches") = (month, a.kind.as_str()) {
        let last = first
            .checked_add_months(chrono::Months::new(1))
            .and_then(|n| n.pred_opt())
            .unwrap_or(first);
        out.push(format!("datashare replay --from {first} --to {last}"));
    }
    if let Some(sub) = a.details.get("subscription").and_then(|s| s.as_str()) {
        out.push(format!("datashare replay --dead-letters {sub}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Severity;

    #[test]
    fn every_known_kind_has_its_own_line() {
        let kinds = [
            "invalid_extract",
            "unknown_layout",
            "malformed_message",
            "partner_rejected",
            "host_key",
            "sink_auth",
            "sink_config",
            MAX_DELIVERY_ATTEMPTS,
            "batch.held",
            "batch.stalled",
            "quality.guardrails",
            "quality.threshold",
            "quality.volume",
            "extract.missing",
            "extract.unlisted",
            "product.missing_batches",
            "sink.check_failed",
            "privacy.gate",
            "reconciliation",
            "budget.threshold",
            "powerbi.refresh_failed",
            "powerbi.refresh_stuck",
            "powerbi.stale",
            "powerbi.quota",
            "powerbi.config",
        ];
        let default = runbook("something.else");
        let mut lines: Vec<&str> = kinds.iter().map(|k| runbook(k)).collect();
        assert!(lines.iter().all(|l| *l != default && !l.is_empty()));
        lines.sort();
        lines.dedup();
        assert_eq!(lines.len(), kinds.len(), "one distinct line per kind");
    }

    #[test]
    fn alerts_name_the_exact_commands() {
        let held = Alert::new(
            Severity::Critical,
            "batch.held",
            ("*", "*", "2026-11-27"),
            "x",
            "held".into(),
        );
        assert_eq!(
            commands(&held),
            [
                "datashare status --date 2026-11-27",
                "datashare release --date 2026-11-27"
            ]
        );
        let dl = Alert::new(
            Severity::Error,
            "partner_rejected",
            ("ouchhungry", "daily", "2026-11-27"),
            "x",
            "refused".into(),
        )
        .with("subscription", "deliveries-api");
        assert_eq!(
            commands(&dl),
            [
                "datashare status --date 2026-11-27 --partner ouchhungry",
                "datashare replay --dead-letters deliveries-api"
            ]
        );
        let monthly = Alert::new(
            Severity::Error,
            "product.missing_batches",
            ("ouchhungry", "monthly", "2026-02"),
            "x",
            "missing".into(),
        );
        assert_eq!(
            commands(&monthly),
            [
                "datashare status --from 2026-02-01 --to 2026-02-28 --partner ouchhungry",
                "datashare replay --from 2026-02-01 --to 2026-02-28"
            ]
        );
    }
}
