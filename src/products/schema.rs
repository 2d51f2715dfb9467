//! The one column list of each product: name, type, pt-BR meaning and privacy note.
//!
//! The writers build record batches from it, the privacy gate checks cells by it and the data
//! dictionary is generated from it, so the three never drift apart.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sha2::{Digest, Sha256};

use crate::events::ProductKind;

/// A product's rows do not fit its schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A cell's value does not match its column's type.
    #[error("column {column} row {row}: value does not match type {ty}")]
    Type {
        /// The column.
        column: &'static str,
        /// Row index, from 1.
        row: usize,
        /// The expected type.
        ty: &'static str,
    },
    /// A decimal does not fit its precision.
    #[error("column {column} row {row}: {cents} cents overflow decimal({precision},2)")]
    Overflow {
        /// The column.
        column: &'static str,
        /// Row index, from 1.
        row: usize,
        /// The value in cents.
        cents: i128,
        /// The column's precision.
        precision: u8,
    },
    /// A row has the wrong number of cells.
    #[error("row {row}: {cells} cells for {columns} columns")]
    Width {
        /// Row index, from 1.
        row: usize,
        /// Cells in the row.
        cells: usize,
        /// Columns in the schema.
        columns: usize,
    },
    /// Arrow refused the batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// The type of a product column, and how the privacy gate checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    /// A local date (DATE).
    Date,
    /// An instant, UTC, microseconds (TIMESTAMP).
    Timestamp,
    /// Free text: scanned by the privacy gate.
    Text,
    /// A pseudonymous key: exactly 16 lower-case hex characters.
    Key,
    /// A product code `AAA-999999`.
    ProductCode,
    /// A Brazilian state code.
    Uf,
    /// A month `YYYY-MM`.
    Month,
    /// A 64-bit integer.
    Int64,
    /// A 32-bit integer.
    Int32,
    /// A BRL amount, scale 2, with this precision.
    Decimal(u8),
    /// A double.
    Double,
}

impl ColType {
    /// The Arrow type the writers use.
    pub fn arrow(self) -> DataType {
        match self {
            ColType::Date => DataType::Date32,
            ColType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColType::Text | ColType::Key | ColType::ProductCode | ColType::Uf | ColType::Month => {
                DataType::Utf8
            }
            ColType::Int64 => DataType::Int64,
            ColType::Int32 => DataType::Int32,
            ColType::Decimal(p) => DataType::Decimal128(p, 2),
            ColType::Double => DataType::Float64,
        }
    }

    /// The type as the data dictionary names it (pt-BR).
    pub fn describe_pt(self) -> String {
        match self {
            ColType::Date => "data (DATE)".into(),
            ColType::Timestamp => "data e hora UTC (TIMESTAMP, microssegundos)".into(),
            ColType::Text => "texto".into(),
            ColType::Key => "texto, 16 caracteres hexadecimais".into(),
            ColType::ProductCode => "texto, código `AAA-999999`".into(),
            ColType::Uf => "texto, sigla da UF".into(),
            ColType::Month => "texto `AAAA-MM`".into(),
            ColType::Int64 => "inteiro (64 bits)".into(),
            ColType::Int32 => "inteiro (32 bits)".into(),
            ColType::Decimal(p) => format!("decimal({p},2), em R$"),
            ColType::Double => "número real (double)".into(),
        }
    }

    /// A short stable name, for errors and the schema fingerprint.
    pub fn name(self) -> &'static str {
        match self {
            ColType::Date => "date",
            ColType::Timestamp => "timestamp",
            ColType::Text => "text",
            ColType::Key => "key",
            ColType::ProductCode => "product_code",
            ColType::Uf => "uf",
            ColType::Month => "month",
            ColType::Int64 => "int64",
            ColType::Int32 => "int32",
            ColType::Decimal(12) => "decimal(12,2)",
            ColType::Decimal(14) => "decimal(14,2)",
            ColType::Decimal(16) => "decimal(16,2)",
            ColType::Decimal(_) => "decimal",
            ColType::Double => "double",
        }
    }
}

/// One column of a product.
#[derive(Debug, Clone, Copy)]
pub struct ColumnDef {
    /// Column name.
    pub name: &'static str,
    /// Type.
    pub ty: ColType,
    /// Whether nulls may appear.
    pub nullable: bool,
    /// Meaning, in pt-BR.
    pub description: &'static str,
    /// Privacy rule applied, in pt-BR (empty when none).
    pub privacy: &'static str,
}

/// A product's columns and schema version.
#[derive(Debug)]
pub struct ProductSchema {
    /// Which product.
    pub kind: ProductKind,
    /// Bumped on every change of the columns.
    pub version: u32,
    /// The columns, in file order.
    pub columns: &'static [ColumnDef],
}

const fn col(
    name: &'static str,
    ty: ColType,
    nullable: bool,
    description: &'static str,
    privacy: &'static str,
) -> ColumnDef {
    ColumnDef {
        name,
        ty,
        nullable,
        description,
        privacy,
    }
}

const CITY_DAILY: &str = "Cidades onde menos de k clientes distintos compraram produtos do parceiro nos \
     30 dias até D aparecem como `OUTRAS`.";
const KEY_CUSTOMER: &str = "HMAC-SHA-256 com a chave secreta do parceiro sobre `c:<período>:<cliente>`; \
     muda a cada mês (ou é fixa no contrato, se assim acordado) e nunca coincide entre parceiros.";
const SEGMENT_NULL: &str =
    "Nulo quando menos de 3 outras marcas venderam no segmento, na cidade e no mês.";

static DAILY: [ColumnDef; 15] = [
    col(
        "date",
        ColType::Date,
        false,
        "Dia da venda (data local de America/Sao_Paulo).",
        "",
    ),
    col(
        "sold_at",
        ColType::Timestamp,
        false,
        "Momento da venda em UTC, truncado à hora.",
        "Truncado à hora.",
    ),
    col(
        "line_key",
        ColType::Key,
        false,
        "Chave pseudônima da linha de pedido.",
        "HMAC-SHA-256 com a chave secreta do parceiro sobre `l:<linha>`; o identificador real nunca é entregue.",
    ),
    col(
        "customer_key",
        ColType::Key,
        false,
        "Chave pseudônima do cliente.",
        KEY_CUSTOMER,
    ),
    col(
        "product_code",
        ColType::ProductCode,
        false,
        "Código do produto.",
        "",
    ),
    col("product_name", ColType::Text, false, "Nome do produto.", ""),
    col("brand", ColType::Text, false, "Marca.", ""),
    col("segment", ColType::Text, false, "Segmento do produto.", ""),
    col(
        "unit_size",
        ColType::Text,
        true,
        "Tamanho da unidade (ex.: 350ml, 45g).",
        "",
    ),
    col(
        "quantity",
        ColType::Int64,
        false,
        "Unidades vendidas na linha.",
        "",
    ),
    col(
        "unit_price",
        ColType::Decimal(12),
        false,
        "Preço unitário de tabela, em R$.",
        "",
    ),
    col(
        "discount",
        ColType::Decimal(12),
        false,
        "Desconto da linha, em R$.",
        "",
    ),
    col(
        "net_amount",
        ColType::Decimal(14),
        false,
        "Valor líquido: quantidade × preço unitário − desconto, em R$.",
        "",
    ),
    col(
        "city",
        ColType::Text,
        false,
        "Cidade de entrega.",
        CITY_DAILY,
    ),
    col("uf", ColType::Uf, false, "UF de entrega.", ""),
];

static MONTHLY: [ColumnDef; 20] = [
    col(
        "month",
        ColType::Month,
        false,
        "Mês da venda (`AAAA-MM`, horário de America/Sao_Paulo).",
        "",
    ),
    col("uf", ColType::Uf, false, "UF de entrega.", ""),
    col(
        "city",
        ColType::Text,
        false,
        "Cidade de entrega; `OUTRAS` agrupa cidades pequenas da UF.",
        "Linhas com menos de k clientes são agrupadas por UF e produto em `OUTRAS`; o grupo é omitido se ainda tiver menos de k clientes.",
    ),
    col(
        "cities_merged",
        ColType::Int32,
        false,
        "Quantas cidades a linha `OUTRAS` agrupa (0 nas demais).",
        "",
    ),
    col(
        "product_code",
        ColType::ProductCode,
        false,
        "Código do produto.",
        "",
    ),
    col("product_name", ColType::Text, false, "Nome do produto.", ""),
    col("brand", ColType::Text, false, "Marca.", ""),
    col("segment", ColType::Text, false, "Segmento do produto.", ""),
    col(
        "units_sold",
        ColType::Int64,
        false,
        "Unidades vendidas (Σ quantidade).",
        "",
    ),
    col(
        "net_revenue",
        ColType::Decimal(16),
        false,
        "Receita líquida (Σ valor líquido), em R$.",
        "",
    ),
    col(
        "avg_unit_price",
        ColType::Decimal(12),
        false,
        "Preço médio de tabela: Σ(quantidade × preço unitário) / unidades, antes do desconto.",
        "",
    ),
    col(
        "min_unit_price",
        ColType::Decimal(12),
        false,
        "Menor preço unitário.",
        "",
    ),
    col(
        "max_unit_price",
        ColType::Decimal(12),
        false,
        "Maior preço unitário.",
        "",
    ),
    col("orders", ColType::Int64, false, "Pedidos distintos.", ""),
    col(
        "customers_reached",
        ColType::Int64,
        false,
        "Clientes distintos.",
        "Sempre ≥ k (linhas menores são agrupadas ou omitidas).",
    ),
    col(
        "segment_units",
        ColType::Int64,
        true,
        "Unidades de todas as marcas do mesmo segmento na cidade e no mês.",
        SEGMENT_NULL,
    ),
    col(
        "segment_share_units",
        ColType::Double,
        true,
        "Participação em unidades: unidades / unidades do segmento.",
        SEGMENT_NULL,
    ),
    col(
        "segment_share_revenue",
        ColType::Double,
        true,
        "Participação em receita: receita líquida / receita líquida do segmento.",
        SEGMENT_NULL,
    ),
    col(
        "price_index",
        ColType::Double,
        true,
        "Preço médio / preço médio do segmento calculado da mesma forma (1,0 = média do segmento).",
        SEGMENT_NULL,
    ),
    col(
        "units_mom_change",
        ColType::Double,
        true,
        "Variação de unidades sobre o mês anterior na mesma UF, cidade e produto (0,1 = +10%).",
        "Nulo sem linha ou com 0 unidades no mês anterior, e nas linhas `OUTRAS`.",
    ),
];

const SEGMENT_NULL_BRAND: &str = "Nulo quando menos de 3 outras marcas venderam no segmento, na célula (cidade, UF ou país) e no mês.";

static MONTHLY_BRANDS: [ColumnDef; 18] = [
    col(
        "month",
        ColType::Month,
        false,
        "Mês da venda (`AAAA-MM`, horário de America/Sao_Paulo).",
        "",
    ),
    col(
        "level",
        ColType::Text,
        false,
        "Nível da linha: `city` (cidade), `uf` (estado inteiro) ou `country` (país inteiro).",
        "",
    ),
    col(
        "uf",
        ColType::Uf,
        true,
        "UF de entrega; nula na linha do país.",
        "Linhas de UF com menos de k clientes são omitidas.",
    ),
    col(
        "city",
        ColType::Text,
        true,
        "Cidade de entrega; nula nas linhas de UF e de país; `OUTRAS` agrupa cidades pequenas da UF.",
        "Cidades com menos de k clientes da marca são agrupadas por UF e marca em `OUTRAS`; o grupo é omitido se ainda tiver menos de k clientes.",
    ),
    col(
        "cities_merged",
        ColType::Int32,
        false,
        "Quantas cidades a linha `OUTRAS` agrupa (0 nas demais).",
        "",
    ),
    col("brand", ColType::Text, false, "Marca.", ""),
    col("segment", ColType::Text, false, "Segmento da marca.", ""),
    col(
        "skus_sold",
        ColType::Int32,
        false,
        "Códigos de produto distintos da marca vendidos na célula.",
        "",
    ),
    col(
        "units_sold",
        ColType::Int64,
        false,
        "Unidades vendidas (Σ quantidade).",
        "",
    ),
    col(
        "orders",
        ColType::Int64,
        false,
        "Pedidos distintos, contados no nível da linha.",
        "",
    ),
    col(
        "customers_reached",
        ColType::Int64,
        false,
        "Clientes distintos, contados no nível da linha (quem comprou em duas cidades conta uma vez na UF e no país; nunca é soma das linhas de baixo).",
        "Nas linhas de cidade e de UF, sempre ≥ k (linhas menores são agrupadas ou omitidas).",
    ),
    col(
        "net_revenue",
        ColType::Decimal(16),
        false,
        "Receita líquida (Σ valor líquido), em R$.",
        "",
    ),
    col(
        "avg_unit_price",
        ColType::Decimal(12),
        false,
        "Preço médio de tabela: Σ(quantidade × preço unitário) / unidades, antes do desconto.",
        "",
    ),
    col(
        "segment_share_units",
        ColType::Double,
        true,
        "Participação em unidades entre todas as marcas do segmento na célula.",
        SEGMENT_NULL_BRAND,
    ),
    col(
        "segment_share_revenue",
        ColType::Double,
        true,
        "Participação em receita líquida entre todas as marcas do segmento na célula.",
        SEGMENT_NULL_BRAND,
    ),
    col(
        "price_index",
        ColType::Double,
        true,
        "Preço médio / preço médio do segmento na célula calculado da mesma forma (1,0 = média do segmento).",
        SEGMENT_NULL_BRAND,
    ),
    col(
        "customers_share",
        ColType::Double,
        true,
        "Clientes alcançados / clientes distintos que compraram qualquer marca do segmento na célula.",
        SEGMENT_NULL_BRAND,
    ),
    col(
        "units_mom_change",
        ColType::Double,
        true,
        "Variação de unidades sobre o mês anterior no mesmo nível, UF, cidade e marca (0,1 = +10%).",
        "Nulo sem linha ou com 0 unidades no mês anterior, e nas linhas `OUTRAS`.",
    ),
];

static DAILY_SCHEMA: ProductSchema = ProductSchema {
    kind: ProductKind::Daily,
    version: 1,
    columns: &DAILY,
};

static MONTHLY_SCHEMA: ProductSchema = ProductSchema {
    kind: ProductKind::Monthly,
    version: 1,
    columns: &MONTHLY,
};

static MONTHLY_BRANDS_SCHEMA: ProductSchema = ProductSchema {
    kind: ProductKind::MonthlyBrands,
    version: 1,
    columns: &MONTHLY_BRANDS,
};

/// Returns the schema of a product.
pub fn of(kind: ProductKind) -> &'static ProductSchema {
    match kind {
        ProductKind::Daily => &DAILY_SCHEMA,
        ProductKind::Monthly => &MONTHLY_SCHEMA,
        ProductKind::MonthlyBrands => &MONTHLY_BRANDS_SCHEMA,
    }
}

/// One cell of a product row, before it becomes Arrow.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Null.
    Null,
    /// Text (any string column).
    Str(String),
    /// A 64-bit integer.
    I64(i64),
    /// A 32-bit integer.
    I32(i32),
    /// An amount in cents.
    Cents(i64),
    /// A double.
    F64(f64),
    /// Days since the epoch.
    Date(i32),
    /// Microseconds since the epoch, UTC.
    Micros(i64),
}

/// A cell borrowed from where its row lives: text is not copied, a key is written as text
/// straight into the column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CellRef<'a> {
    /// Null.
    Null,
    /// Text (any string column).
    Str(&'a str),
    /// A pseudonymous key's 64 bits, written as 16 lower-case hex digits.
    Key(u64),
    /// A 64-bit integer.
    I64(i64),
    /// A 32-bit integer.
    I32(i32),
    /// An amount in cents.
    Cents(i64),
    /// A double.
    F64(f64),
    /// Days since the epoch.
    Date(i32),
    /// Microseconds since the epoch, UTC.
    Micros(i64),
}

impl Cell {
    /// The cell, borrowed.
    pub fn as_ref(&self) -> CellRef<'_> {
        match self {
            Cell::Null => CellRef::Null,
            Cell::Str(s) => CellRef::Str(s),
            Cell::I64(v) => CellRef::I64(*v),
            Cell::I32(v) => CellRef::I32(*v),
            Cell::Cents(v) => CellRef::Cents(*v),
            Cell::F64(v) => CellRef::F64(*v),
            Cell::Date(v) => CellRef::Date(*v),
            Cell::Micros(v) => CellRef::Micros(*v),
        }
    }
}

impl ProductSchema {
    /// The Arrow schema the files carry.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(c.name, c.ty.arrow(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// SHA-256 hex of the column names, types and nullability: changes when the schema does.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for c in self.columns {
            h.update(format!("{}:{}:{}\n", c.name, c.ty.name(), c.nullable).as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Builds a record batch from rows of cells in column order.
    pub fn to_batch(&self, rows: &[Vec<Cell>]) -> Result<RecordBatch, SchemaError> {
        let n = self.columns.len();
        for (i, r) in rows.iter().enumerate() {
            if r.len() != n {
                return Err(SchemaError::Width {
                    row: i + 1,
                    cells: r.len(),
                    columns: n,
                });
            }
        }
        self.batch_from(rows.len(), |i, j| rows[i][j].as_ref())
    }

    /// Builds a record batch of `rows` rows from `cell(row, column)`, in column order.
    pub fn batch_from<'a>(
        &self,
        rows: usize,
        cell: impl Fn(usize, usize) -> CellRef<'a>,
    ) -> Result<RecordBatch, SchemaError> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (j, c) in self.columns.iter().enumerate() {
            arrays.push(build_column(c, rows, (0..rows).map(|i| cell(i, j)))?);
        }
        Ok(RecordBatch::try_new(self.arrow_schema(), arrays)?)
    }
}

fn build_column<'a>(
    c: &ColumnDef,
    len: usize,
    cells: impl Iterator<Item = CellRef<'a>>,
) -> Result<ArrayRef, SchemaError> {
    let mismatch = |row: usize| SchemaError::Type {
        column: c.name,
        row,
        ty: c.ty.name(),
    };
    macro_rules! fill {
        ($b:expr, $pat:pat => $v:expr) => {{
            let mut b = $b;
            for (i, cell) in cells.enumerate() {
                match cell {
                    CellRef::Null if c.nullable => b.append_null(),
                    $pat => b.append_value($v),
                    _ => return Err(mismatch(i + 1)),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match c.ty {
        ColType::Date => fill!(Date32Builder::with_capacity(len), CellRef::Date(d) => d),
        ColType::Timestamp => fill!(
            TimestampMicrosecondBuilder::with_capacity(len).with_timezone("UTC"),
            CellRef::Micros(t) => t
        ),
        ColType::Text | ColType::Key | ColType::ProductCode | ColType::Uf | ColType::Month => {
            let mut b = StringBuilder::with_capacity(len, len * 16);
            for (i, cell) in cells.enumerate() {
                match cell {
                    CellRef::Null if c.nullable => b.append_null(),
                    CellRef::Str(s) => b.append_value(s),
                    CellRef::Key(k) => {
                        // The builder takes text written into it, then ends the value.
                        let _ = write!(b, "{k:016x}");
                        b.append_value("");
                    }
                    _ => return Err(mismatch(i + 1)),
                }
            }
            Arc::new(b.finish())
        }
        ColType::Int64 => fill!(Int64Builder::with_capacity(len), CellRef::I64(v) => v),
        ColType::Int32 => fill!(Int32Builder::with_capacity(len), CellRef::I32(v) => v),
        ColType::Double => fill!(Float64Builder::with_capacity(len), CellRef::F64(v) => v),
        ColType::Decimal(p) => {
            let limit = 10i128.pow(u32::from(p));
            let mut b = Decimal128Builder::with_capacity(len).with_precision_and_scale(p, 2)?;
            for (i, cell) in cells.enumerate() {
                match cell {
                    CellRef::Null if c.nullable => b.append_null(),
                    CellRef::Cents(v) => {
                        let v = i128::from(v);
                        if v.abs() >= limit {
                            return Err(SchemaError::Overflow {
                                column: c.name,
                                row: i + 1,
                                cents: v,
                                precision: p,
                            });
                        }
                        b.append_value(v)
                    }
                    _ => return Err(mismatch(i + 1)),
                }
            }
            Arc::new(b.finish())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_follow_the_spec() {
        let d: Vec<_> = of(ProductKind::Daily)
            .columns
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            d,
            [
                "date",
                "sold_at",
                "line_key",
                "customer_key",
                "product_code",
                "product_name",
                "brand",
                "segment",
                "unit_size",
                "quantity",
                "unit_price",
                "discount",
                "net_amount",
                "city",
                "uf"
            ]
        );
        let m = of(ProductKind::Monthly);
        assert_eq!(m.columns.len(), 20);
        assert_eq!(
            m.arrow_schema().field(9).data_type(),
            &DataType::Decimal128(16, 2)
        );
        assert_ne!(m.fingerprint(), of(ProductKind::Daily).fingerprint());
        let b: Vec<_> = of(ProductKind::MonthlyBrands)
            .columns
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            b,
            [
                "month",
                "level",
                "uf",
                "city",
                "cities_merged",
                "brand",
                "segment",
                "skus_sold",
                "units_sold",
                "orders",
                "customers_reached",
                "net_revenue",
                "avg_unit_price",
                "segment_share_units",
                "segment_share_revenue",
                "price_index",
                "customers_share",
                "units_mom_change"
            ]
        );
    }

    #[test]
    fn decimals_overflowing_their_precision_are_refused() {
        let s = of(ProductKind::Daily);
        let mut row = vec![
            Cell::Date(0),
            Cell::Micros(0),
            Cell::Str("0123456789abcdef".into()),
            Cell::Str("0123456789abcdef".into()),
            Cell::Str("OHB-000101".into()),
            Cell::Str("x".into()),
            Cell::Str("x".into()),
            Cell::Str("x".into()),
            Cell::Null,
            Cell::I64(1),
            Cell::Cents(100),
            Cell::Cents(0),
            Cell::Cents(100),
            Cell::Str("x".into()),
            Cell::Str("SP".into()),
        ];
        assert_eq!(
            s.to_batch(std::slice::from_ref(&row)).unwrap().num_rows(),
            1
        );
        row[10] = Cell::Cents(1_000_000_000_000);
        assert!(matches!(
            s.to_batch(&[row]),
            Err(SchemaError::Overflow {
                column: "unit_price",
                ..
            })
        ));
    }
}
