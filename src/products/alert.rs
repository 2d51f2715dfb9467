//! The alert model, shared with the events (see [`crate::events::alert`]).

pub use crate::events::alert::{Alert, Severity};
