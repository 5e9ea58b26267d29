//! Cardinality limits and series resolution: the only place ingest creates series.
//!
//! A key's shape (name and label sizes, label count) is checked where it is decoded, by
//! `wire`. Here, a key storage already knows resolves at once; a NEW key must first pass
//! `max_series_per_metric` (via `SampleSink::series_count_for_name`) and `max_series_total`
//! (via `SampleSink::series_count`). The counts are read before creating, without a lock
//! across resolvers, so concurrent resolvers may overshoot a limit by at most one series
//! each: the limits are meant to stop runaway cardinality, not to be exact quotas.

use std::sync::Arc;

use model::{SeriesId, SeriesKey};

use crate::sink::{SampleSink, SinkError};
use crate::telemetry::{Metrics, reason};

/// Why a series could not be resolved: a reason code and a sentence for the rejections list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

pub(crate) struct Limiter {
    pub(crate) max_series_per_metric: usize,
    pub(crate) max_series_total: usize,
    pub(crate) sink: Arc<dyn SampleSink>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Limiter {
    /// Resolves `key`, creating it when new and within the limits. Blocks on storage: call it
    /// only from a thread that may block.
    pub(crate) fn resolve(&self, key: &SeriesKey) -> Result<SeriesId, Refused> {
        if let Some(id) = self.sink.lookup(key) {
            return Ok(id);
        }
        let for_name = self.sink.series_count_for_name(key.name());
        if for_name >= self.max_series_per_metric {
            return Err(Refused {
                reason: reason::SERIES_LIMIT_PER_METRIC,
                detail: format!(
                    "metric {:?} already has {for_name} series, the limit (max_series_per_metric) is {}",
                    key.name(),
                    self.max_series_per_metric
                ),
            });
        }
        let total = self.sink.series_count();
        if total >= self.max_series_total {
            return Err(Refused {
                reason: reason::SERIES_LIMIT_TOTAL,
                detail: format!(
                    "storage already has {total} series, the limit (max_series_total) is {}",
                    self.max_series_total
                ),
            });
        }
        match self.sink.resolve(key) {
            Ok(id) => {
                self.metrics.series_created.inc();
                Ok(id)
            }
            Err(e @ (SinkError::Rejected(_) | SinkError::Unavailable(_))) => Err(Refused {
                reason: reason::STORAGE,
                detail: e.to_string(),
            }),
        }
    }
}
