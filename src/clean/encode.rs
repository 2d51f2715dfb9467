//! Parquet writing with a row group's columns encoded on several threads.
//!
//! Encoding is most of the batch step's work and each column encodes on its own, so the columns
//! are dealt to `threads` lanes (the worker's two vCPUs); each lane encodes its columns of every
//! batch as it comes, and the row group's chunks are appended in column order when it closes.
//! The file is the one `ArrowWriter` writes with the same properties and row group bounds.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

/// Batches a lane may hold before the reader waits for it (bounds the memory of a slow lane).
const LANE_QUEUE: usize = 2;

/// A Parquet file writer whose row groups close at `max_rows` rows or about `max_bytes` bytes of
/// Arrow data, with their columns encoded on `threads` threads (inline when fewer than two).
pub struct ParallelWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    lanes_of: Vec<usize>,
    threads: usize,
    max_rows: usize,
    max_bytes: usize,
    row_groups: usize,
    group: Option<Group>,
}

/// The open row group: its rows and bytes so far and where its columns are encoded.
struct Group {
    rows: usize,
    bytes: usize,
    lanes: Lanes,
}

/// Column writers of the open row group, on this thread or on lane threads.
enum Lanes {
    Inline(Vec<ArrowColumnWriter>),
    Threads(Vec<Lane>),
}

/// One lane thread: the columns it encodes (by index) and the queue of their leaves.
struct Lane {
    columns: Vec<usize>,
    send: SyncSender<Vec<ArrowLeafColumn>>,
    handle: JoinHandle<Result<Vec<ArrowColumnChunk>>>,
}

impl<W: Write + Send> ParallelWriter<W> {
    /// Creates a writer of `schema` to `out` (the properties' row group size is not used:
    /// `max_rows` and `max_bytes` bound the row groups).
    pub fn try_new(
        out: W,
        schema: SchemaRef,
        props: WriterProperties,
        threads: usize,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Self> {
        let (writer, factory) =
            ArrowWriter::try_new(out, schema.clone(), Some(props))?.into_serialized_writer()?;
        // Text costs more to encode than fixed-width values: deal the columns by weight.
        let threads = threads.max(1);
        let mut load = vec![0usize; threads];
        let lanes_of = schema
            .fields()
            .iter()
            .map(|f| {
                let weight = match f.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary => 3,
                    _ => 1,
                };
                let lane = (0..threads).min_by_key(|&l| load[l]).unwrap_or(0);
                load[lane] += weight;
                lane
            })
            .collect();
        Ok(Self {
            writer,
            factory,
            schema,
            lanes_of,
            threads,
            max_rows: max_rows.max(1),
            max_bytes: max_bytes.max(1),
            row_groups: 0,
            group: None,
        })
    }

    /// Writes a batch, closing row groups as they fill (a batch may span two).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.group.is_none() {
                self.group = Some(self.open()?);
            }
            let Some(group) = &mut self.group else {
                return Err(ParquetError::General("no open row group".into()));
            };
            let n = (batch.num_rows() - offset).min(self.max_rows - group.rows);
            let part = batch.slice(offset, n);
            group.rows += n;
            group.bytes += part.get_array_memory_size();
            let mut columns = Vec::with_capacity(part.num_columns());
            for (field, column) in self.schema.fields().iter().zip(part.columns()) {
                columns.push(compute_leaves(field, column)?);
            }
            match &mut group.lanes {
                Lanes::Inline(writers) => {
                    let mut writers = writers.iter_mut();
                    for leaf in columns.into_iter().flatten() {
                        let Some(w) = writers.next() else {
                            return Err(ParquetError::General("more leaves than columns".into()));
                        };
                        w.write(&leaf)?;
                    }
                }
                Lanes::Threads(lanes) => {
                    let mut by_lane: Vec<Vec<ArrowLeafColumn>> =
                        (0..lanes.len()).map(|_| Vec::new()).collect();
                    for (leaves, &lane) in columns.into_iter().zip(&self.lanes_of) {
                        by_lane[lane].extend(leaves);
                    }
                    for (lane, leaves) in lanes.iter().zip(by_lane) {
                        // A lane that stopped has an error: `close` returns it.
                        let _ = lane.send.send(leaves);
                    }
                }
            }
            offset += n;
            if group.rows >= self.max_rows || group.bytes >= self.max_bytes {
                self.close_group()?;
            }
        }
        Ok(())
    }

    /// Closes the open row group and the file.
    pub fn close(mut self) -> Result<()> {
        self.close_group()?;
        self.writer.close()?;
        Ok(())
    }

    fn open(&mut self) -> Result<Group> {
        let writers = self.factory.create_column_writers(self.row_groups)?;
        self.row_groups += 1;
        // Nested columns have several leaves: their lanes would not line up, so they stay inline.
        if self.threads < 2 || writers.len() != self.lanes_of.len() {
            return Ok(Group {
                rows: 0,
                bytes: 0,
                lanes: Lanes::Inline(writers),
            });
        }
        let mut by_lane: Vec<Vec<(usize, ArrowColumnWriter)>> =
            (0..self.threads).map(|_| Vec::new()).collect();
        for (i, w) in writers.into_iter().enumerate() {
            by_lane[self.lanes_of[i]].push((i, w));
        }
        let lanes = by_lane
            .into_iter()
            .map(|cols| {
                let columns = cols.iter().map(|(i, _)| *i).collect();
                let writers = cols.into_iter().map(|(_, w)| w).collect();
                let (send, recv) = sync_channel(LANE_QUEUE);
                let handle = std::thread::Builder::new()
                    .name("parquet-lane".into())
                    .spawn(move || encode_lane(writers, recv))
                    .map_err(|e| ParquetError::External(Box::new(e)))?;
                Ok(Lane {
                    columns,
                    send,
                    handle,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Group {
            rows: 0,
            bytes: 0,
            lanes: Lanes::Threads(lanes),
        })
    }

    fn close_group(&mut self) -> Result<()> {
        let Some(group) = self.group.take() else {
            return Ok(());
        };
        let mut chunks: Vec<Option<ArrowColumnChunk>> = Vec::new();
        match group.lanes {
            Lanes::Inline(writers) => {
                for w in writers {
                    chunks.push(Some(w.close()?));
                }
            }
            Lanes::Threads(lanes) => {
                chunks.resize_with(self.lanes_of.len(), || None);
                for lane in lanes {
                    drop(lane.send);
                    let done = lane.handle.join().map_err(|_| {
                        ParquetError::General("a Parquet encoding thread panicked".into())
                    })??;
                    for (i, chunk) in lane.columns.into_iter().zip(done) {
                        chunks[i] = Some(chunk);
                    }
                }
            }
        }
        let mut row_group = self.writer.next_row_group()?;
        for chunk in chunks {
            let chunk =
                chunk.ok_or_else(|| ParquetError::General("a column chunk is missing".into()))?;
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        Ok(())
    }
}

/// Encodes a lane's columns of every batch it receives; their chunks once the queue closes.
fn encode_lane(
    mut writers: Vec<ArrowColumnWriter>,
    recv: Receiver<Vec<ArrowLeafColumn>>,
) -> Result<Vec<ArrowColumnChunk>> {
    for leaves in recv {
        for (w, leaf) in writers.iter_mut().zip(&leaves) {
            w.write(leaf)?;
        }
    }
    writers.into_iter().map(ArrowColumnWriter::close).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Int64Array, StringArray};
    use arrow_schema::{Field, Schema};
    use parquet::file::properties::EnabledStatistics;
    use std::sync::Arc;

    fn batches() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new("city", DataType::Utf8, true),
            Field::new("at", DataType::Int64, false),
        ]));
        let batches = (0..7)
            .map(|b| {
                let rows = 1000 + b * 337;
                let id: Vec<String> = (0..rows).map(|i| format!("T-{b}-{i:06}")).collect();
                let n: Vec<Option<i64>> = (0..rows)
                    .map(|i| (i % 7 != 0).then_some(i as i64 * 3))
                    .collect();
                let city: Vec<Option<&str>> = (0..rows)
                    .map(|i| ["Sorocaba", "Santos", "Campinas"].get(i % 4).copied())
                    .collect();
                let at: Vec<i64> = (0..rows).map(|i| 1_700_000_000 + i as i64 / 3).collect();
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from(id)),
                    Arc::new(Int64Array::from(n)),
                    Arc::new(StringArray::from(city)),
                    Arc::new(Int64Array::from(at)),
                ];
                RecordBatch::try_new(schema.clone(), columns).unwrap()
            })
            .collect();
        (schema, batches)
    }

    fn props() -> WriterProperties {
        WriterProperties::builder()
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_max_row_group_row_count(Some(2500))
            .build()
    }

    #[test]
    fn the_file_is_the_one_arrow_writer_writes_on_any_number_of_threads() {
        let (schema, batches) = batches();
        let mut want = Vec::new();
        let mut w = ArrowWriter::try_new(&mut want, schema.clone(), Some(props())).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        for threads in [1, 2, 3] {
            let mut got = Vec::new();
            let mut w =
                ParallelWriter::try_new(&mut got, schema.clone(), props(), threads, 2500, 1 << 30)
                    .unwrap();
            for b in &batches {
                w.write(b).unwrap();
            }
            w.close().unwrap();
            assert!(got == want, "{threads} thread(s): the files differ");
        }
    }

    #[test]
    fn row_groups_close_at_the_byte_bound_too() {
        let (schema, batches) = batches();
        let mut out = Vec::new();
        let mut w = ParallelWriter::try_new(&mut out, schema, props(), 2, 1 << 20, 1).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        let reader =
            parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(out)).unwrap();
        use parquet::file::reader::FileReader as _;
        assert_eq!(reader.metadata().num_row_groups(), batches.len());
        let rows: i64 = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .sum();
        assert_eq!(
            rows,
            batches.iter().map(|b| b.num_rows() as i64).sum::<i64>()
        );
    }
}
