//! Runs whole batches from a local folder laid out like the raw bucket (`datashare clean`).

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::Limits;
use super::batch::{BatchError, BatchOutputs, run_batch_with};
use super::memory::StagedMemory;
use super::report::{FileError, FileReport, QualityReport};
use super::schema::Schemas;
use super::stage::{PartSummary, StageError, Staging, stage_part_with};
use super::validators::today_sao_paulo;
use crate::extract::{Layout, Marker, classify};

/// A batch that could not be run from a local folder.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No marker for the requested day.
    #[error("no batch marker {0}: the batch is not complete")]
    NoMarker(String),
    /// The marker is unusable.
    #[error("marker {path}: {source}")]
    Marker {
        /// The marker's path.
        path: String,
        /// The cause.
        source: crate::extract::layout::MarkerError,
    },
    /// Staging failed outside the data.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// The batch step failed outside the data.
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// What one local batch run produced.
#[derive(Debug)]
pub struct LocalBatch {
    /// The quality report.
    pub report: QualityReport,
    /// Objects under `extracts/` of that day that the marker does not list (ignored).
    pub unlisted: Vec<String>,
    /// Where the outputs are.
    pub outputs: BatchOutputs,
}

impl LocalBatch {
    /// Files that failed (rejected whole or missing).
    pub fn failed_files(&self) -> Vec<&FileReport> {
        self.report.failed_files().collect()
    }
}

/// Finds the days that have a batch marker under `input`.
pub fn marker_days(input: &Path) -> Result<Vec<NaiveDate>, LocalError> {
    let dir = input.join("extracts");
    let read = |p: &Path| {
        fs::read_dir(p).map_err(|source| LocalError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let mut days = Vec::new();
    for entry in read(&dir)? {
        let entry = entry.map_err(|source| LocalError::Read {
            path: dir.display().to_string(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(d) = name
            .strip_prefix("dt=")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            && entry.path().join("_SUCCESS").exists()
        {
            days.push(d);
        }
    }
    days.sort();
    Ok(days)
}

/// Runs the batch of day `dt` from `input` with the default [`Limits`].
pub fn run_local_batch(
    schemas: &Schemas,
    input: &Path,
    output: &Path,
    dt: NaiveDate,
) -> Result<LocalBatch, LocalError> {
    run_local_batch_with(schemas, input, output, dt, &Limits::default())
}

/// Runs the batch of day `dt` from `input` (raw bucket layout) into `output`.
pub fn run_local_batch_with(
    schemas: &Schemas,
    input: &Path,
    output: &Path,
    dt: NaiveDate,
    limits: &Limits,
) -> Result<LocalBatch, LocalError> {
    let tables: Vec<&str> = schemas.names().collect();
    let marker = read_marker(input, dt, &tables)?;
    let unlisted = unlisted_objects(input, dt, &tables, &marker);
    for name in &marker.listed_again {
        tracing::warn!(
            object = name.as_str(),
            "object listed again in the batch marker, read once"
        );
    }
    for name in &unlisted {
        tracing::warn!(
            object = name.as_str(),
            "object not listed in the batch marker, ignored"
        );
    }

    let staging = output.join(format!("_staging/dt={dt}"));
    // Staged files are written once and read back once: in memory while the budget lasts.
    let memory = StagedMemory::new(limits.stage_memory_bytes);
    let staged_in = Staging {
        dir: &staging,
        memory: Some(&memory),
    };
    let today = today_sao_paulo();
    let mut parts: Vec<PartSummary> = Vec::new();
    for object in &marker.files {
        let Layout::Part { table, .. } = classify(object, &tables) else {
            continue;
        };
        let schema = schemas.table(&table).expect("classified tables exist");
        let path: PathBuf = input.join(object);
        match File::open(&path) {
            Ok(file) => {
                let started = std::time::Instant::now();
                let part =
                    stage_part_with(schema, object, "local", file, staged_in, today, limits)?;
                tracing::info!(
                    object = object.as_str(),
                    rows = part.file.rows,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "part staged"
                );
                parts.push(part);
            }
            Err(e) => {
                tracing::error!(object = object.as_str(), error = %e, "listed part cannot be read");
                parts.push(missing_part(&table, object, &e));
            }
        }
    }
    let mut again: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for name in &marker.listed_again {
        *again.entry(name.as_str()).or_default() += 1;
    }
    for part in &mut parts {
        part.file.listed_again = again.get(part.file.object.as_str()).copied().unwrap_or(0);
    }
    let outputs = BatchOutputs {
        root: output.to_path_buf(),
        dt,
    };
    let started = std::time::Instant::now();
    let report = run_batch_with(schemas, dt, staged_in, &parts, &outputs, limits)?;
    tracing::info!(%dt, elapsed_ms = started.elapsed().as_millis() as u64, "batch step done");
    let _ = fs::remove_dir_all(&staging);
    Ok(LocalBatch {
        report,
        unlisted,
        outputs,
    })
}

/// Reads and parses the marker of day `dt` under `input`.
fn read_marker(input: &Path, dt: NaiveDate, tables: &[&str]) -> Result<Marker, LocalError> {
    let marker_name = format!("extracts/dt={dt}/_SUCCESS");
    let marker_path = input.join(&marker_name);
    if !marker_path.exists() {
        return Err(LocalError::NoMarker(marker_path.display().to_string()));
    }
    let body = fs::read(&marker_path).map_err(|source| LocalError::Read {
        path: marker_path.display().to_string(),
        source,
    })?;
    Marker::parse(&body, dt, tables).map_err(|source| LocalError::Marker {
        path: marker_path.display().to_string(),
        source,
    })
}

/// The objects of day `dt` under `input` that `marker` does not list, by table then name.
fn unlisted_objects(input: &Path, dt: NaiveDate, tables: &[&str], marker: &Marker) -> Vec<String> {
    let mut unlisted = Vec::new();
    for table in tables {
        let dir = input.join(format!("extracts/{table}/dt={dt}"));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| {
                format!(
                    "extracts/{table}/dt={dt}/{}",
                    e.file_name().to_string_lossy()
                )
            })
            .collect();
        names.sort();
        unlisted.extend(names.into_iter().filter(|n| !marker.files.contains(n)));
    }
    unlisted
}

fn missing_part(table: &str, object: &str, e: &std::io::Error) -> PartSummary {
    PartSummary {
        table: table.to_string(),
        file: FileReport {
            object: object.to_string(),
            generation: "local".into(),
            encoding: String::new(),
            delimiter: String::new(),
            gzip: false,
            rows: 0,
            rows_too_long: 0,
            listed_again: 0,
            extra_columns: Vec::new(),
            error: Some(FileError {
                kind: "missing_object".into(),
                message: e.to_string(),
            }),
        },
        rows_staged: 0,
        rows_quarantined: 0,
        quarantined_by_reason: Default::default(),
        fields: Default::default(),
    }
}
