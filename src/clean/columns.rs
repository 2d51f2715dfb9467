//! Arrow types and builders of staged, curated and quarantined rows.

use std::sync::Arc;

use arrow_array::builder::{
    Date32Builder, Decimal128Builder, Int64Builder, ListBuilder, PrimitiveBuilder, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::types::ArrowPrimitiveType;
use arrow_array::{Array, ArrayRef, PrimitiveArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::schema::TableSchema;
use super::validators::{Kind, Value};

/// Precision of curated decimals (scale 2).
pub const DECIMAL_PRECISION: u8 = 18;
/// Staged column holding the source line number.
pub const LINE: &str = "_line";
/// Separator-free hashes of a staged row's key, split in two halves (see [`key_hash`]).
pub const KEY: &str = "key";
/// Second half of the key's hash.
pub const CHECK: &str = "check";
/// The row's version (`updated_at`, seconds; `i64::MIN` when null).
pub const VERSION: &str = "version";
/// Staged column holding a row's raw values, separated by U+001F; null when every raw value
/// is the canonical text of its staged value (see [`raw_values`]).
pub const RAW: &str = "_raw";
/// Separator of raw values in [`RAW`].
pub const RAW_SEP: char = '\u{1f}';

/// Arrow type of a validator's values.
pub fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Int => DataType::Int64,
        Kind::Brl => DataType::Decimal128(DECIMAL_PRECISION, 2),
        Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Kind::Date => DataType::Date32,
        _ => DataType::Utf8,
    }
}

/// Schema of curated rows: the table's columns, typed.
pub fn curated_schema(t: &TableSchema) -> SchemaRef {
    Arc::new(Schema::new(
        t.columns
            .iter()
            .map(|c| Field::new(&c.name, data_type(c.kind), !c.required))
            .collect::<Vec<_>>(),
    ))
}

/// Schema of staged rows: curated columns, the source line and the raw values when they differ.
pub fn staged_schema(t: &TableSchema) -> SchemaRef {
    let mut fields: Vec<Field> = curated_schema(t)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(LINE, DataType::Int64, false));
    fields.push(Field::new(RAW, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// The raw values of staged row `i` of `batch` (staged schema of `ncols` columns): its `_raw`
/// text, or else the canonical text of each staged value (empty for a null).
pub fn raw_values(batch: &RecordBatch, ncols: usize, i: usize) -> Vec<Option<String>> {
    let raw = batch
        .columns()
        .get(ncols + 1)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .filter(|c| c.is_valid(i));
    if let Some(raw) = raw {
        let mut values: Vec<Option<String>> = raw
            .value(i)
            .split(RAW_SEP)
            .map(|s| Some(s.to_string()))
            .collect();
        values.resize(ncols, None);
        return values;
    }
    (0..ncols)
        .map(|c| {
            let mut s = String::new();
            if let Some(v) = value_at(batch.column(c).as_ref(), i) {
                v.write_canonical(&mut s);
            }
            Some(s)
        })
        .collect()
}

/// Schema of staged keys: all that deduplication reads (fixed width, 20 bytes a row). Parts
/// staged by an earlier release carry a fourth column, a hash of the row, that is not read.
pub fn keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(KEY, DataType::UInt64, false),
        Field::new(CHECK, DataType::UInt32, false),
        Field::new(VERSION, DataType::Int64, false),
    ]))
}

/// Hashes a key's canonical text into two halves: 96 bits tell keys apart.
pub fn key_hash(s: &str) -> (u64, u32) {
    let h = xxhash_rust::xxh3::xxh3_128(s.as_bytes());
    (h as u64, (h >> 64) as u32)
}

/// One staged row's identity, as [`StagedBuilder::append`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowIdentity {
    /// The key's hash (see [`key_hash`]).
    pub key: (u64, u32),
    /// The version (`updated_at` in seconds, `i64::MIN` when null).
    pub version: i64,
}

/// Schema of quarantined rows: raw values as strings, reasons, source object and line.
pub fn quarantine_schema(t: &TableSchema) -> SchemaRef {
    let mut fields: Vec<Field> = t
        .columns
        .iter()
        .map(|c| Field::new(&c.name, DataType::Utf8, true))
        .collect();
    fields.push(Field::new(
        "reasons",
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        false,
    ));
    fields.push(Field::new("source_object", DataType::Utf8, false));
    fields.push(Field::new("source_generation", DataType::Utf8, false));
    fields.push(Field::new("line_number", DataType::Int64, false));
    fields.push(Field::new("raw_record", DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// A builder of one typed column.
pub enum ColumnBuilder {
    /// Text.
    Str(StringBuilder),
    /// Integers.
    Int(Int64Builder),
    /// Decimals.
    Dec(Decimal128Builder),
    /// Timestamps.
    Ts(TimestampMicrosecondBuilder),
    /// Dates.
    Date(Date32Builder),
}

impl ColumnBuilder {
    /// Creates a builder for a validator's values.
    pub fn new(kind: Kind, capacity: usize) -> Self {
        match kind {
            Kind::Int => ColumnBuilder::Int(Int64Builder::with_capacity(capacity)),
            Kind::Brl => ColumnBuilder::Dec(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(DECIMAL_PRECISION, 2)
                    .expect("valid decimal type"),
            ),
            Kind::Timestamp => ColumnBuilder::Ts(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
            Kind::Date => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            _ => ColumnBuilder::Str(StringBuilder::with_capacity(capacity, capacity * 12)),
        }
    }

    /// Appends a value or a null.
    pub fn append(&mut self, v: Option<&Value>) {
        match (self, v) {
            (ColumnBuilder::Str(b), Some(Value::Str(s))) => b.append_value(s.as_str()),
            (ColumnBuilder::Int(b), Some(Value::Int(i))) => b.append_value(*i),
            (ColumnBuilder::Dec(b), Some(Value::Cents(c))) => b.append_value(i128::from(*c)),
            (ColumnBuilder::Ts(b), Some(Value::Ts(s))) => {
                b.append_value(s.saturating_mul(1_000_000))
            }
            (ColumnBuilder::Date(b), Some(Value::Date(d))) => b.append_value(*d),
            (ColumnBuilder::Str(b), _) => b.append_null(),
            (ColumnBuilder::Int(b), _) => b.append_null(),
            (ColumnBuilder::Dec(b), _) => b.append_null(),
            (ColumnBuilder::Ts(b), _) => b.append_null(),
            (ColumnBuilder::Date(b), _) => b.append_null(),
        }
    }

    /// Finishes the column; the builder keeps room for as many rows and bytes.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Str(b) => Arc::new(finish_strings(b)),
            ColumnBuilder::Int(b) => Arc::new(finish_primitive(b)),
            ColumnBuilder::Dec(b) => Arc::new(finish_primitive(b)),
            ColumnBuilder::Ts(b) => Arc::new(finish_primitive(b)),
            ColumnBuilder::Date(b) => Arc::new(finish_primitive(b)),
        }
    }
}

// arrow's `finish` hands its buffers over and leaves the builder empty: without the room given
// back here, every flush would grow each buffer again from nothing (reallocations, fresh pages).

/// Finishes a text column and leaves the builder room for as many values and bytes.
fn finish_strings(b: &mut StringBuilder) -> StringArray {
    let array = b.finish();
    *b = StringBuilder::with_capacity(array.len(), array.values().len());
    array
}

/// Finishes a fixed-width column and leaves the builder room for as many values, same type.
fn finish_primitive<T: ArrowPrimitiveType>(b: &mut PrimitiveBuilder<T>) -> PrimitiveArray<T> {
    let array = b.finish();
    *b =
        PrimitiveBuilder::<T>::with_capacity(array.len()).with_data_type(array.data_type().clone());
    array
}

/// Builds staged rows batch by batch: typed data, keys, raw values.
pub struct StagedBuilder {
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    line: Int64Builder,
    key: UInt64Builder,
    check: UInt32Builder,
    version: Int64Builder,
    raw: StringBuilder,
    rows: usize,
    bytes: usize,
}

/// One batch of staged rows, split by who reads it.
pub struct StagedBatches {
    /// Typed values and lines (read by the batch step's second pass).
    pub data: RecordBatch,
    /// Keys, versions and hashes (read by deduplication).
    pub keys: RecordBatch,
}

impl StagedBuilder {
    /// Creates a builder for a table's staged rows.
    pub fn new(t: &TableSchema, capacity: usize) -> Self {
        Self {
            schema: staged_schema(t),
            columns: t
                .columns
                .iter()
                .map(|c| ColumnBuilder::new(c.kind, capacity))
                .collect(),
            line: Int64Builder::with_capacity(capacity),
            key: UInt64Builder::with_capacity(capacity),
            check: UInt32Builder::with_capacity(capacity),
            version: Int64Builder::with_capacity(capacity),
            raw: StringBuilder::with_capacity(capacity, capacity * 4),
            rows: 0,
            bytes: 0,
        }
    }

    /// Appends one row of values (in schema order) with its line, identity, the length of its
    /// raw text and its raw values when they are not all the canonical text of its values.
    pub fn append(
        &mut self,
        values: &[Option<Value>],
        line: u64,
        id: RowIdentity,
        raw_len: usize,
        raw: Option<&str>,
    ) {
        for (b, v) in self.columns.iter_mut().zip(values) {
            b.append(v.as_ref());
        }
        self.line.append_value(line as i64);
        self.key.append_value(id.key.0);
        self.check.append_value(id.key.1);
        self.version.append_value(id.version);
        self.raw.append_option(raw);
        self.rows += 1;
        // Fixed-width values are bounded by the row count; text grows with the raw text, which
        // the typed values normalize (about as long), and with the raw values kept.
        self.bytes += raw_len + raw.map_or(0, str::len);
    }

    /// Bytes of values appended since the last batch (text and raw values; numbers as 8).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Rows appended since the last batch.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Returns true when no row is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Takes the pending rows as record batches.
    pub fn finish(&mut self) -> StagedBatches {
        let mut arrays: Vec<ArrayRef> =
            self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        arrays.push(Arc::new(finish_primitive(&mut self.line)));
        arrays.push(Arc::new(finish_strings(&mut self.raw)));
        self.rows = 0;
        self.bytes = 0;
        let keys: Vec<ArrayRef> = vec![
            Arc::new(finish_primitive(&mut self.key)),
            Arc::new(finish_primitive(&mut self.check)),
            Arc::new(finish_primitive(&mut self.version)),
        ];
        StagedBatches {
            data: RecordBatch::try_new(self.schema.clone(), arrays)
                .expect("staged arrays match their schema"),
            keys: RecordBatch::try_new(keys_schema(), keys).expect("keys match their schema"),
        }
    }
}

/// Builds quarantined rows.
pub struct QuarantineBuilder {
    schema: SchemaRef,
    raw: Vec<StringBuilder>,
    reasons: ListBuilder<StringBuilder>,
    object: StringBuilder,
    generation: StringBuilder,
    line: Int64Builder,
    record: StringBuilder,
    rows: usize,
    bytes: usize,
}

/// One quarantined row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRow {
    /// Raw values in schema order (None: the column was absent).
    pub raw: Vec<Option<String>>,
    /// Every reason, in the order found.
    pub reasons: Vec<String>,
    /// The object the row came from.
    pub object: String,
    /// That object's generation.
    pub generation: String,
    /// Line where the record starts.
    pub line: u64,
    /// The whole raw record, for malformed rows.
    pub record: Option<String>,
}

impl QuarantineBuilder {
    /// Creates a builder for a table's quarantined rows.
    pub fn new(t: &TableSchema) -> Self {
        Self {
            schema: quarantine_schema(t),
            raw: t.columns.iter().map(|_| StringBuilder::new()).collect(),
            reasons: ListBuilder::new(StringBuilder::new()),
            object: StringBuilder::new(),
            generation: StringBuilder::new(),
            line: Int64Builder::new(),
            record: StringBuilder::new(),
            rows: 0,
            bytes: 0,
        }
    }

    /// Appends one quarantined row.
    pub fn append(&mut self, row: &QuarantinedRow) {
        for (b, v) in self.raw.iter_mut().zip(&row.raw) {
            b.append_option(v.as_deref());
        }
        for r in &row.reasons {
            self.reasons.values().append_value(r);
        }
        self.reasons.append(true);
        self.object.append_value(&row.object);
        self.generation.append_value(&row.generation);
        self.line.append_value(row.line as i64);
        self.record.append_option(row.record.as_deref());
        self.rows += 1;
        self.bytes += row.raw.iter().flatten().map(String::len).sum::<usize>()
            + row.reasons.iter().map(String::len).sum::<usize>()
            + row.object.len()
            + row.generation.len()
            + row.record.as_ref().map_or(0, String::len)
            + 8;
    }

    /// Bytes of values pending.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Rows pending.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Returns true when no row is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Takes the pending rows as a record batch.
    pub fn finish(&mut self) -> RecordBatch {
        let mut arrays: Vec<ArrayRef> = self
            .raw
            .iter_mut()
            .map(|b| Arc::new(finish_strings(b)) as ArrayRef)
            .collect();
        arrays.push(Arc::new(self.reasons.finish()));
        arrays.push(Arc::new(finish_strings(&mut self.object)));
        arrays.push(Arc::new(finish_strings(&mut self.generation)));
        arrays.push(Arc::new(finish_primitive(&mut self.line)));
        arrays.push(Arc::new(finish_strings(&mut self.record)));
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .expect("quarantine arrays match their schema")
    }
}

/// Reads quarantined rows back out of a record batch of [`quarantine_schema`].
pub fn quarantined_rows(batch: &RecordBatch, columns: usize) -> Vec<QuarantinedRow> {
    use arrow_array::cast::AsArray;
    let raw: Vec<_> = (0..columns)
        .map(|i| batch.column(i).as_string::<i32>())
        .collect();
    let reasons = batch.column(columns).as_list::<i32>();
    let object = batch.column(columns + 1).as_string::<i32>();
    let generation = batch.column(columns + 2).as_string::<i32>();
    let line = batch
        .column(columns + 3)
        .as_primitive::<arrow_array::types::Int64Type>();
    let record = batch.column(columns + 4).as_string::<i32>();
    (0..batch.num_rows())
        .map(|r| QuarantinedRow {
            raw: raw
                .iter()
                .map(|a| (!a.is_null(r)).then(|| a.value(r).to_string()))
                .collect(),
            reasons: reasons
                .value(r)
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or_default().to_string())
                .collect(),
            object: object.value(r).to_string(),
            generation: generation.value(r).to_string(),
            line: line.value(r) as u64,
            record: (!record.is_null(r)).then(|| record.value(r).to_string()),
        })
        .collect()
}

/// Reads one cell of a typed curated column back as a [`Value`] (None: null or unsupported type).
pub fn value_at(array: &dyn Array, row: usize) -> Option<Value> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Decimal128Type, Int64Type, TimestampMicrosecondType};
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Utf8 => Value::Str(array.as_string::<i32>().value(row).into()),
        DataType::Int64 => Value::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::Decimal128(_, 2) => {
            Value::Cents(i64::try_from(array.as_primitive::<Decimal128Type>().value(row)).ok()?)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => Value::Ts(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .value(row)
                .div_euclid(1_000_000),
        ),
        DataType::Date32 => Value::Date(array.as_primitive::<Date32Type>().value(row)),
        _ => return None,
    })
}

/// Hashes a row of typed values (the identity of exact duplicates within one batch step).
pub fn row_hash(values: &[Option<Value>], buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    for v in values {
        // A tag per kind, then the value: texts end with a byte UTF-8 never holds.
        let (tag, number) = match v {
            None => (0, None),
            Some(Value::Str(s)) => {
                buf.push(1);
                buf.extend_from_slice(s.as_bytes());
                buf.push(0xff);
                continue;
            }
            Some(Value::Int(i)) => (2, Some(*i)),
            Some(Value::Cents(i)) => (3, Some(*i)),
            Some(Value::Ts(i)) => (4, Some(*i)),
            Some(Value::Date(d)) => (5, Some(i64::from(*d))),
        };
        buf.push(tag);
        if let Some(n) = number {
            buf.extend_from_slice(&n.to_le_bytes());
        }
    }
    xxhash_rust::xxh3::xxh3_64(buf)
}
