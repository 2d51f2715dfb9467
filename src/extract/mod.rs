//! Reading raw objects: the bucket layout of names, gzip, encodings and CSV dialects.

pub mod csv;
pub mod layout;
pub mod scan;

pub use csv::{CsvReader, Dialect, FileFault, ReadLimits, Record};
pub use layout::{Layout, Marker, classify};
