//! Deterministic file encoders: Parquet and CSV, from a product's record batch.
//!
//! Same batch, same bytes: fixed writer settings (the codec is the contract's: Snappy by default,
//! or Zstd at a level), no build time inside a file. CSV is UTF-8
//! without BOM, `,`, a header, `.` as decimal point, `\n` line ends, empty cells for nulls; in
//! string columns a value starting with `=`, `+`, `-`, `@`, a tab or a carriage return is quoted
//! and prefixed with `'` so spreadsheets never run it as a formula.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

use sha2::{Digest, Sha256};

use super::contract::{Codec, DEFAULT_ZSTD_LEVEL, Format, ParquetOptions};
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
    /// A file could not be created.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A file could not be written out.
    #[error("writing a product file: {0}")]
    Flush(std::io::Error),
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

/// Writes a date as `%Y-%m-%d` (digits written directly in years 0 to 9999, chrono elsewhere).
fn csv_date(d: chrono::NaiveDate, out: &mut String) {
    use chrono::Datelike;
    if !(0..=9999).contains(&d.year()) {
        let _ = write!(out, "{}", d.format("%Y-%m-%d"));
        return;
    }
    digits(d.year() as u32, 4, out);
    out.push('-');
    digits(d.month(), 2, out);
    out.push('-');
    digits(d.day(), 2, out);
}

/// Writes an instant as chrono's `%Y-%m-%dT%H:%M:%S%.fZ`: the fraction with 3, 6 or 9 digits as
/// needed, none when zero.
fn csv_instant(t: chrono::DateTime<chrono::Utc>, out: &mut String) {
    use chrono::Timelike;
    csv_date(t.date_naive(), out);
    out.push('T');
    digits(t.hour(), 2, out);
    out.push(':');
    digits(t.minute(), 2, out);
    out.push(':');
    digits(t.second(), 2, out);
    let nano = t.nanosecond() % 1_000_000_000;
    if nano == 0 {
    } else if nano.is_multiple_of(1_000_000) {
        out.push('.');
        digits(nano / 1_000_000, 3, out);
    } else if nano.is_multiple_of(1_000) {
        out.push('.');
        digits(nano / 1_000, 6, out);
    } else {
        out.push('.');
        digits(nano, 9, out);
    }
    out.push('Z');
}

/// Writes `v` with exactly `width` digits (zero-padded; `v` below 10^width).
fn digits(v: u32, width: u32, out: &mut String) {
    let mut p = 10u32.pow(width - 1);
    while p > 0 {
        out.push(char::from(b'0' + (v / p % 10) as u8));
        p /= 10;
    }
}

fn cents(v: i128, out: &mut String) {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    let _ = write!(out, "{sign}{}.{:02}", a / 100, a % 100);
}

/// Encodes a batch as CSV, typed by the product schema.
pub fn csv_bytes(schema: &ProductSchema, batch: &RecordBatch) -> Result<Vec<u8>, WriteError> {
    let mut out = String::with_capacity(batch.num_rows() * 160 + 256);
    csv_header(schema, &mut out);
    csv_rows(schema, batch, &mut out)?;
    Ok(out.into_bytes())
}

/// Appends the CSV header line: the schema's column names.
fn csv_header(schema: &ProductSchema, out: &mut String) {
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name).collect();
    out.push_str(&names.join(","));
    out.push('\n');
}

/// Appends a batch's rows as CSV lines, typed by the product schema.
fn csv_rows(
    schema: &ProductSchema,
    batch: &RecordBatch,
    out: &mut String,
) -> Result<(), WriteError> {
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
                | ColType::Month => csv_text(a.as_string::<i32>().value(r), out),
                ColType::Date => {
                    let d = a.as_primitive::<Date32Type>().value(r);
                    match chrono::NaiveDate::from_epoch_days(d) {
                        Some(d) => csv_date(d, out),
                        None => return Err(WriteError::Column(c.name)),
                    }
                }
                ColType::Timestamp => {
                    let t = a.as_primitive::<TimestampMicrosecondType>().value(r);
                    match chrono::DateTime::from_timestamp_micros(t) {
                        Some(t) => csv_instant(t, out),
                        None => return Err(WriteError::Column(c.name)),
                    }
                }
                ColType::Int64 => {
                    let _ = write!(out, "{}", a.as_primitive::<Int64Type>().value(r));
                }
                ColType::Int32 => {
                    let _ = write!(out, "{}", a.as_primitive::<Int32Type>().value(r));
                }
                ColType::Decimal(_) => cents(a.as_primitive::<Decimal128Type>().value(r), out),
                ColType::Double => {
                    let _ = write!(out, "{}", a.as_primitive::<Float64Type>().value(r));
                }
            }
        }
        out.push('\n');
    }
    Ok(())
}

/// Bytes written through it are counted and hashed (SHA-256) on the way to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a [`FileWriter`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 hex of the bytes.
    pub sha256: String,
}

enum Encoder {
    Parquet(Box<ArrowWriter<Hashing<BufWriter<File>>>>),
    Csv {
        out: Hashing<BufWriter<File>>,
        line: String,
    },
}

/// A product file written batch by batch (same bytes as encoding every row at once), so a
/// large product never sits in memory whole.
pub struct FileWriter {
    schema: &'static ProductSchema,
    encoder: Encoder,
}

impl FileWriter {
    /// Creates `path` for the product `schema` in `format` (Parquet with the contract's codec).
    pub fn create(
        path: &Path,
        format: Format,
        schema: &'static ProductSchema,
        opts: &ParquetOptions,
    ) -> Result<FileWriter, WriteError> {
        let file = File::create(path).map_err(|e| WriteError::Io(path.to_path_buf(), e))?;
        let out = Hashing {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let encoder = match format {
            Format::Parquet => Encoder::Parquet(Box::new(ArrowWriter::try_new(
                out,
                schema.arrow_schema(),
                Some(writer_properties(opts)?),
            )?)),
            Format::Csv => {
                let mut line = String::new();
                csv_header(schema, &mut line);
                Encoder::Csv { out, line }
            }
        };
        let mut w = FileWriter { schema, encoder };
        w.drain()?;
        Ok(w)
    }

    /// Appends a batch of rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        match &mut self.encoder {
            Encoder::Parquet(w) => w.write(batch)?,
            Encoder::Csv { line, .. } => csv_rows(self.schema, batch, line)?,
        }
        self.drain()
    }

    /// Moves CSV text built so far to the file.
    fn drain(&mut self) -> Result<(), WriteError> {
        if let Encoder::Csv { out, line } = &mut self.encoder {
            out.write_all(line.as_bytes()).map_err(WriteError::Flush)?;
            line.clear();
        }
        Ok(())
    }

    /// Ends the file (the Parquet footer), flushes it to disk and returns its size and hash.
    pub fn finish(self) -> Result<Written, WriteError> {
        let mut out = match self.encoder {
            Encoder::Parquet(w) => w.into_inner()?,
            Encoder::Csv { out, .. } => out,
        };
        out.flush().map_err(WriteError::Flush)?;
        out.inner
            .into_inner()
            .map_err(|e| WriteError::Flush(e.into_error()))?
            .sync_all()
            .map_err(WriteError::Flush)?;
        Ok(Written {
            bytes: out.bytes,
            sha256: hex::encode(out.hasher.finalize()),
        })
    }
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

    /// Dates and instants are written as chrono's format strings write them.
    #[test]
    fn dates_and_instants_match_chrono() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut samples: Vec<i64> = vec![
            0,
            -1,
            1_000,
            1_000_000,
            3_600_000_000,
            253_402_300_799_999_999,
        ];
        for _ in 0..20_000 {
            let v = (next() % 400_000_000_000_000_000) as i64 - 62_000_000_000_000_000;
            let v = match next() % 4 {
                0 => v - v.rem_euclid(1_000_000),
                1 => v - v.rem_euclid(1_000),
                _ => v,
            };
            samples.push(v);
        }
        for v in samples {
            let Some(t) = chrono::DateTime::from_timestamp_micros(v) else {
                continue;
            };
            let mut ours = String::new();
            csv_instant(t, &mut ours);
            assert_eq!(ours, t.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string(), "{v}");
            let mut ours = String::new();
            csv_date(t.date_naive(), &mut ours);
            assert_eq!(ours, t.date_naive().format("%Y-%m-%d").to_string(), "{v}");
        }
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
