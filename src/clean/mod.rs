//! The cleaning engine: table schemas from config, validators, staging of parts, the batch step,
//! data-quality guardrails on its report.

pub mod batch;
pub mod columns;
pub mod encode;
pub mod guardrails;
pub mod limits;
pub mod local;
pub mod memory;
pub mod pattern;
pub mod report;
pub mod schema;
pub mod stage;
pub mod validators;

pub use limits::Limits;
pub use report::{FieldCounts, FileReport, QualityReport, TableReport};
pub use schema::{Schemas, TableSchema};
pub use stage::{PartSummary, StageError, StagedPaths, stage_part};

/// A raw value that no rule can read (the validators' and pattern rules' error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;
