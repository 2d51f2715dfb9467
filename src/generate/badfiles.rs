//! Parts that a reader must reject whole (`--bad-files`): a missing required column, bytes
//! that are not CSV, a gzip stream that cannot be decoded.

use std::io::Write;

use chrono::NaiveDate;
use rand::RngExt;

use super::GenerateError;
use super::schema::Table;
use super::table::{DayCtx, part_object};
use super::transactions::TxDay;
use super::truth::FileSummary;
use super::values::sub_rng;
use super::writer::{Dialect, PartWriter};

/// Rows written in the transactions part that lacks `quantity`.
const MISSING_COLUMN_ROWS: u64 = 20;

fn summary(
    object: String,
    table: Table,
    gzip: bool,
    columns: Vec<String>,
    rows: u64,
    why: &str,
) -> FileSummary {
    FileSummary {
        object,
        table: table.name().to_string(),
        encoding: "utf-8".to_string(),
        delimiter: ",".to_string(),
        crlf: false,
        bom: false,
        gzip,
        extra_columns: Vec::new(),
        header: columns.clone(),
        columns,
        rows,
        rejected: Some(why.to_string()),
    }
}

/// Writes a transactions part without the required `quantity` column (rows with fresh ids).
pub(crate) fn missing_column(
    ctx: &DayCtx<'_>,
    day: &mut TxDay<'_>,
    date: NaiveDate,
    rows_per_day: u64,
    part: usize,
) -> Result<FileSummary, GenerateError> {
    let t = Table::Transactions;
    let object = part_object(t, date, part, ctx.gzip);
    let drop = t.col("quantity").unwrap_or(4);
    let names: Vec<&str> = t
        .columns()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != drop)
        .map(|(_, c)| c.name)
        .collect();
    let w = ctx
        .sink
        .create(&object)
        .map_err(|e| GenerateError::io(&object, e))?;
    let dialect = Dialect {
        gzip: ctx.gzip,
        ..Dialect::default()
    };
    let rng = sub_rng(ctx.seed, "bad-transactions", Some(date), 0);
    let (mut pw, _, header) =
        PartWriter::new(w, dialect, &names, rng).map_err(|e| GenerateError::io(&object, e))?;
    for j in 0..MISSING_COLUMN_ROWS {
        let row = day.line(date, rows_per_day + j);
        let raw: Vec<&str> = row
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != drop)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
            .collect();
        pw.write_row(&raw, None)
            .map_err(|e| GenerateError::io(&object, e))?;
    }
    let rows = pw.rows;
    pw.finish().map_err(|e| GenerateError::io(&object, e))?;
    Ok(summary(object, t, ctx.gzip, header, rows, "missing_column"))
}

/// Writes a products part holding a PNG header and binary junk (with NUL bytes).
pub(crate) fn not_csv(
    ctx: &DayCtx<'_>,
    date: NaiveDate,
    part: usize,
) -> Result<FileSummary, GenerateError> {
    let object = part_object(Table::Products, date, part, false);
    let mut rng = sub_rng(ctx.seed, "bad-products", Some(date), 0);
    let mut bytes: Vec<u8> =
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x06\x00\x00\x00"
            .to_vec();
    bytes.extend((0..2048).map(|_| rng.random::<u8>()));
    bytes.extend_from_slice(b"\x00\x00\x00\x00IEND\xaeB`\x82");
    let mut w = ctx
        .sink
        .create(&object)
        .map_err(|e| GenerateError::io(&object, e))?;
    w.write_all(&bytes)
        .map_err(|e| GenerateError::io(&object, e))?;
    w.finish().map_err(|e| GenerateError::io(&object, e))?;
    Ok(summary(
        object,
        Table::Products,
        false,
        Vec::new(),
        0,
        "not_csv",
    ))
}

/// Writes a customers part that starts like gzip but whose deflate stream is corrupt and truncated.
pub(crate) fn undecodable(
    ctx: &DayCtx<'_>,
    date: NaiveDate,
    part: usize,
) -> Result<FileSummary, GenerateError> {
    let object = part_object(Table::Customers, date, part, true);
    let mut rng = sub_rng(ctx.seed, "bad-customers", Some(date), 0);
    // Gzip header, then a final deflate block of the reserved type 3: no byte of it decodes.
    let mut bytes: Vec<u8> = vec![0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0x03, 0x07];
    bytes.extend((0..512).map(|_| rng.random::<u8>()));
    let mut w = ctx
        .sink
        .create(&object)
        .map_err(|e| GenerateError::io(&object, e))?;
    w.write_all(&bytes)
        .map_err(|e| GenerateError::io(&object, e))?;
    w.finish().map_err(|e| GenerateError::io(&object, e))?;
    Ok(summary(
        object,
        Table::Customers,
        true,
        Vec::new(),
        0,
        "undecodable",
    ))
}
