//! Deterministic file encoders: Parquet and CSV, from a product's record batch.
//!
//! Same batch, same bytes: fixed writer settings (the codec is the contract's: Snappy by default,
//! or Zstd at a level), no build time inside a file. CSV is UTF-8
//! without BOM, `,`, a header, `.` as decimal point, `\n` line ends, empty cells for nulls; in
//! string columns a value starting with `=`, `+`, `-`, `@`, a tab or a carriage return is quoted
//! and prefixed with `'` so spreadsheets never run it as a formula.

use std::fmt::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

use super::contract::{Codec, DEFAULT_ZSTD_LEVEL, ParquetOptions};
use super::schema::{ColType, ProductSchema};

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// A file could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The Parquet writer failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The batch does not have the schema's columns.
    #[error("batch column {0} does not match the product schema")]
    Column(&'static str),
}

/// The Parquet codec of a contract's options.
pub fn compression(opts: &ParquetOptions) -> Result<Compression, WriteError> {
    Ok(match opts.compression {
        Codec::Snappy => Compression::SNAPPY,
        Codec::Zstd => Compression::ZSTD(ZstdLevel::try_new(
            opts.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL),
        )?),
    })
}

/// The writer settings of every product file: fixed but for the contract's codec.
pub fn writer_properties(opts: &ParquetOptions) -> Result<WriterProperties, WriteError> {
    Ok(WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(compression(opts)?)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by(format!("datashare {}", env!("CARGO_PKG_VERSION")))
        .build())
}

/// Encodes a batch as Parquet with the contract's codec.
pub fn parquet_bytes(batch: &RecordBatch, opts: &ParquetOptions) -> Result<Vec<u8>, WriteError> {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(writer_properties(opts)?))?;
    w.write(batch)?;
    w.close()?;
    Ok(out)
}

/// Escapes a CSV string cell: formula guard, then quoting when needed.
pub fn csv_text(s: &str, out: &mut String) {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote =
        formula || s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ');
    if !quote {
        out.push_str(s);
        return;
    }
    out.push('"');
    if formula {
        out.push('\'');
    }
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

fn cents(v: i128, out: &mut String) {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    let _ = write!(out, "{sign}{}.{:02}", a / 100, a % 100);
}

/// Encodes a batch as CSV, typed by the product schema.
pub fn csv_bytes(schema: &ProductSchema, batch: &RecordBatch) -> Result<Vec<u8>, WriteError> {
    let mut out = String::with_capacity(batch.num_rows() * 160 + 256);
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name).collect();
    out.push_str(&names.join(","));
    out.push('\n');
    let cols: Vec<_> = schema
        .columns
        .iter()
        .map(|c| {
            batch
                .column_by_name(c.name)
                .filter(|a| a.data_type() == &c.ty.arrow())
                .ok_or(WriteError::Column(c.name))
        })
        .collect::<Result<_, _>>()?;
    for r in 0..batch.num_rows() {
        for (j, (c, a)) in schema.columns.iter().zip(&cols).enumerate() {
            if j > 0 {
                out.push(',');
            }
            if a.is_null(r) {
                continue;
            }
            match c.ty {
                ColType::Text
                | ColType::Key
                | ColType::ProductCode
                | ColType::Uf
                | ColType::Month => csv_text(a.as_string::<i32>().value(r), &mut out),
                ColType::Date => {
                    let d = a.as_primitive::<Date32Type>().value(r);
                    match chrono::NaiveDate::from_epoch_days(d) {
                        Some(d) => {
                            let _ = write!(out, "{}", d.format("%Y-%m-%d"));
                        }
                        None => return Err(WriteError::Column(c.name)),
                    }
                }
                ColType::Timestamp => {
                    let t = a.as_primitive::<TimestampMicrosecondType>().value(r);
                    match chrono::DateTime::from_timestamp_micros(t) {
                        Some(t) => {
                            let _ = write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.fZ"));
                        }
                        None => return Err(WriteError::Column(c.name)),
                    }
                }
                ColType::Int64 => {
                    let _ = write!(out, "{}", a.as_primitive::<Int64Type>().value(r));
                }
                ColType::Int32 => {
                    let _ = write!(out, "{}", a.as_primitive::<Int32Type>().value(r));
                }
                ColType::Decimal(_) => cents(a.as_primitive::<Decimal128Type>().value(r), &mut out),
                ColType::Double => {
                    let _ = write!(out, "{}", a.as_primitive::<Float64Type>().value(r));
                }
            }
        }
        out.push('\n');
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralized_and_quotes_doubled() {
        let cases = [
            ("São Paulo", "São Paulo"),
            ("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\""),
            ("+55", "\"'+55\""),
            ("-1", "\"'-1\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("a,b", "\"a,b\""),
            ("2L", "2L"),
        ];
        for (input, expected) in cases {
            let mut s = String::new();
            csv_text(input, &mut s);
            assert_eq!(s, expected, "{input}");
        }
    }

    #[test]
    fn the_contract_chooses_the_codec() {
        use parquet::file::reader::{FileReader, SerializedFileReader};

        use super::super::schema::{self, Cell};
        use crate::events::ProductKind;

        let s = schema::of(ProductKind::Daily);
        let row = vec![
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
        let batch = s.to_batch(&vec![row; 100]).unwrap();
        let codec_of = |opts: ParquetOptions| {
            let bytes = parquet_bytes(&batch, &opts).unwrap();
            assert_eq!(
                bytes,
                parquet_bytes(&batch, &opts).unwrap(),
                "deterministic"
            );
            let r = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
            r.metadata().row_group(0).column(0).compression()
        };
        assert_eq!(codec_of(ParquetOptions::default()), Compression::SNAPPY);
        let zstd = |level| ParquetOptions {
            compression: Codec::Zstd,
            zstd_level: level,
        };
        // The level is not stored in the file: any level reads back as ZSTD.
        assert!(matches!(codec_of(zstd(None)), Compression::ZSTD(_)));
        assert!(matches!(codec_of(zstd(Some(19))), Compression::ZSTD(_)));
        assert!(parquet_bytes(&batch, &zstd(Some(99))).is_err());
    }

    #[test]
    fn cents_format() {
        let mut s = String::new();
        cents(123_456, &mut s);
        s.push(' ');
        cents(-5, &mut s);
        assert_eq!(s, "1234.56 -0.05");
    }
}
