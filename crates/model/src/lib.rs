//! Roaster's vocabulary: the types every other crate speaks.
//!
//! - [`Timestamp`]: UTC milliseconds since the Unix epoch; there is no other kind of time.
//! - [`SeriesKey`]: a metric name plus a sorted, duplicate-free label set. Names and label
//!   values are arbitrary UTF-8 (Graphite paths such as `christmaspi.temperature.ham` are names).
//! - [`SeriesId`]: a storage-assigned, restart-stable number for a series.
//! - [`Point`]: one sample of one resolved series, the unit the ingest path hands to storage.
//! - [`Matcher`]: a label matcher (`=`, `!=`, `=~`, `!~`, regexes fully anchored).
//! - [`Clock`]: the only way code outside `model::time` learns the time, so tests own it.
//! - [`telemetry`]: counters and gauges that render as Prometheus text.
//!
//! **Invariant:** this crate does no I/O and spawns nothing.

pub mod event;
pub mod matcher;
pub mod series;
pub mod telemetry;
pub mod time;

pub use matcher::{MatchOp, Matcher, MatcherError};
pub use series::{KeyError, Label, METRIC_NAME_LABEL, Point, SeriesId, SeriesKey};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
