//! A PromQL subset evaluated over a [`SeriesReader`], and the Prometheus HTTP API's
//! semantics (parameters in, status and JSON body out) in [`api`]. No HTTP types live here.
//!
//! Pipeline: `promql-parser` parses the text; [`eval`] walks the AST and evaluates every
//! node over the query's steps (an instant query is a range query with one step). A range
//! vector feeding a function (`rate(x[5m])`, `avg_over_time(x[1h])`) is never
//! materialised: the reader hands over one series at a time, the window function runs over
//! a sliding window for every step, and only the per-step results are kept. An aggregation
//! (`sum`, `avg`, `count`, `min`, `max`, `group`, `stddev`, `stdvar`) folds each series into
//! its group as it arrives, so `sum(avg_over_time({__name__=~"host.+"}[1h]))` holds one
//! value per step however many series match. Memory is therefore bounded by output
//! series × steps, not by raw samples, and `max_samples` counts exactly those slots.
//!
//! # Supported subset
//! - Regexes (selectors, `label_replace`) keep Prometheus 2.x's Go RE2 meaning: `\d \w \s \b`
//!   and their negations are ASCII-only (Rust's are Unicode), and `.` does not match a newline
//!   (see `functions::go_regex`).
//! - Selectors: instant and range vector selectors with `=`, `!=`, `=~`, `!~`, quoted UTF-8
//!   metric names (`{"christmaspi.temperature.ham"}`), `offset`, `@` (including `start()`
//!   and `end()`); number and string literals; subqueries `expr[range:step]`.
//! - Lookback delta (default 5 m, inclusive as in Prometheus 2.x) and staleness: a sample
//!   with the stale-marker bit pattern `0x7ff0000000000002` ends a series and is never
//!   returned; range vectors skip it.
//! - Range functions: `avg/min/max/sum/count/last/quantile/stddev/stdvar_over_time`,
//!   `rate`, `irate`, `increase`, `delta`, `idelta`, `deriv`, `changes`, `resets`,
//!   `absent_over_time`, `predict_linear`.
//! - Instant functions: `abs ceil floor round clamp clamp_min clamp_max exp ln log2 log10
//!   sqrt sgn time timestamp vector scalar sort sort_desc label_replace label_join absent
//!   histogram_quantile` (classic buckets).
//! - Aggregations `sum avg min max count group stddev stdvar topk bottomk quantile
//!   count_values` with `by`/`without`.
//! - Binary operators `+ - * / % ^ == != > < >= <=` (with `bool`), `and or unless`,
//!   scalar/scalar, scalar/vector and vector/vector with `on`/`ignoring`,
//!   `group_left`/`group_right`.
//!
//! Anything else (native histograms, `or` inside braces, other functions) is answered with a
//! `not supported: <construct>` error, never with a wrong answer.
//!
//! # Metric-name dropping
//! By default exactly as Prometheus 2.42: a function (all but `last_over_time`), an
//! arithmetic operator, a comparison with `bool` and unary minus drop `__name__` at once, and
//! a node whose result holds two series with the same labels is the error "vector cannot
//! contain metrics with the same labelset" — for a range function or unary minus anywhere in
//! its result, for an instant function, aggregation or operator at any one step (2.42's
//! `rangeEval`). So `sum(avg_over_time({__name__=~"host.+"}[1h]))` is that error, as in
//! 2.42. With [`QueryLimits::delayed_name_removal`] (config `[query]
//! delayed_name_removal = true`) the name is dropped *lazily*, as Prometheus 3's
//! `promql-delayed-name-removal` does: a node marks its output "drop name" and the name is
//! removed when labels are next looked at (aggregation, binary matching, output), so that
//! query sums; only a *final* result with two series of the same labels at one step is then
//! the error.
//!
//! # Map
//! - [`eval`]: the evaluator (steps, selectors, windows, subqueries, result shapes)
//! - `functions`: the arithmetic — window functions, aggregations, operators,
//!   `histogram_quantile` — each a port of Prometheus 2.42 `promql/functions.go` and
//!   `engine.go` semantics
//! - [`api`]: Prometheus HTTP API semantics (parameters, JSON, error types and statuses)
//! - [`time`]: parameter formats (RFC 3339, unix seconds, durations) and number formatting
//! - [`mem`]: [`MemReader`], the in-memory reader the tests and the bench use
//! - [`labels`]: [`Labels`], label sets with `__name__` as an ordinary label
//!
//! # Rollup reads and parallel aggregation
//! `sum/count/min/max/last/avg_over_time` over a plain range selector ask the reader for
//! [`SeriesReader::select_summaries`]: the storage may hand over [`Bucket`]s (rollup points)
//! that lie wholly inside or wholly outside every window of the query ([`Windows::is_clean`];
//! a bucket is inside `[t - r, t]` when its start is `>= t - r` and its last sample `<= t`),
//! plus the raw samples outside them. A window with no bucket is computed from raw samples
//! exactly as before (bit for bit); one with buckets combines them: min, max, count and last
//! are exact, sum is a compensated sum of raw values and bucket sums and avg that over the
//! count, so both differ from Prometheus' sequential sum / incremental mean by rounding
//! only (the proptests allow 1e-12 relative; the differential test against Prometheus
//! allows 1e-9). Stale markers are skipped on both paths. `[query] use_rollups = false`
//! reads raw only.
//!
//! `sum avg count min max group` over one selector or one range function of a range
//! selector run in [`QueryLimits::threads`] parts: each thread reads a contiguous run of the
//! matching series ([`SeriesReader::select_shard`]) into its own partial aggregation, merged
//! in key order. Series limits are summed over parts; each part may use the whole
//! `max_samples` budget, so transient memory is at most threads × that.
//!
//! # Semantics pinned to Prometheus 2.42
//! Range windows `[t - range, t]` and the lookback window `[t - 5m, t]` are closed at both
//! ends; rate/increase/delta extrapolate as `extrapolatedRate`; subquery steps are aligned
//! to multiples of the step; the default subquery step is 1 m. `sum_over_time` and
//! `avg_over_time` are Prometheus 2.42's compensated (Neumaier) sum and incremental mean, to
//! the bit (a last-bit difference shows through `round` or `rate` over a subquery);
//! a vector binary operation skips a step where either side is empty (no matching error
//! there), as Prometheus short-circuits.
//!
//! # Tests
//! `tests/data/*.txt` are scripts in Prometheus' `promql/testdata/*.test` format run by
//! `tests/promql.rs` against [`MemReader`]; add a case by editing a file. Prometheus'
//! own suite can be run through the same harness (not committed, its code is not ours):
//! `PROMQL_TEST_DIR=<dir with v2.42.0 promql/testdata/*.test> cargo test -p query --test
//! promql foreign -- --nocapture` — 564 of its 566 evals agree; the two left use
//! `holt_winters`, which promql-parser no longer parses. `tests/api.rs` pins JSON bodies;
//! `tests/robust.rs` feeds random expressions to prove evaluation never panics;
//! `benches/aggregate.rs` measures the benchmark harness' queries. End to end, the
//! differential test `crates/cli/tests/promql_differential.rs` asks the real `roaster` binary
//! and the real Prometheus 2.42 the corpus `crates/cli/tests/data/promql/corpus.txt` over the
//! same data set and fails on any difference not pinned as a known one.
//!
//! # When you change…
//! - a function or operator: add cases to `tests/data/`, update the subset list above
//! - a response shape or error message: `tests/api.rs` pins it byte for byte
//! - [`QueryLimits`]: it is nested in the server config as `[query]`; tell the server
//!   owner and keep `limits_config_round_trips_and_rejects_unknown_keys` in step
//! - rollup reads or parallel aggregation: `tests/summaries.rs` (raw vs buckets, sequential
//!   vs parallel, proptests) and `crates/server/tests/rollup_reads.rs` (over the engine)
//!
//! **Invariant:** evaluation never panics on input; every bound is in [`QueryLimits`].

#![warn(missing_docs)]

pub mod api;
pub mod eval;
mod functions;
pub mod labels;
pub mod mem;
pub mod time;

use std::time::Duration;

use model::{MatchOp, Matcher, SeriesKey};

pub use eval::{QueryValue, evaluate_instant, evaluate_range};
pub use labels::Labels;
pub use mem::MemReader;

/// Why a query failed. Each variant maps to one Prometheus `errorType` (see [`api`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The query text or a parameter is malformed (`bad_data`).
    #[error("{0}")]
    BadData(String),
    /// The query uses a construct outside the supported subset (`bad_data`).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The query is well-formed but cannot be evaluated (`execution`).
    #[error("{0}")]
    Execution(String),
    /// More samples than [`QueryLimits::max_samples`] would be held at once (`execution`).
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// A selector matched more series than [`QueryLimits::max_series`] (`execution`).
    #[error("query would select more than {0} series")]
    TooManySeries(usize),
    /// The query ran longer than its timeout (`timeout`).
    #[error("query timed out in query execution")]
    Timeout,
    /// The storage behind the reader failed (`internal`).
    #[error("storage: {0}")]
    Storage(String),
    /// [`QueryLimits::max_concurrent_queries`] queries are already running (`unavailable`).
    #[error("too many concurrent queries (at most {0})")]
    TooManyQueries(usize),
}

/// Bounds on one query (and the one semantic switch, [`QueryLimits::delayed_name_removal`]). Nested in the server config as `[query]`; every field is optional
/// and defaults as [`QueryLimits::default`] says (Prometheus' defaults where it has one).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryLimits {
    /// Most samples one query may hold: every selector's and range function's result slots
    /// (series × steps) added up, and the raw samples of any one series read. Like
    /// Prometheus' `--query.max-samples`, but counting slots rather than present points, so
    /// memory is bounded even for sparse series over many steps.
    pub max_samples: usize,
    /// Most series one selector may match.
    pub max_series: usize,
    /// Longest a query may run (config key `timeout_ms`, milliseconds); a `timeout`
    /// parameter may only shorten it.
    #[serde(with = "duration_ms", rename = "timeout_ms")]
    pub timeout: Duration,
    /// How far back an instant selector looks for the latest sample, in milliseconds.
    pub lookback_delta_ms: i64,
    /// Most steps a range query may have (Prometheus refuses more than 11,000).
    pub max_points_per_series_in_range: usize,
    /// Default step of a subquery without an explicit step, in milliseconds (Prometheus
    /// uses the global evaluation interval, 1 m by default).
    pub subquery_step_ms: i64,
    /// Most queries evaluated at once (see [`QueryGate`]); more are refused, not queued.
    pub max_concurrent_queries: usize,
    /// Drop the metric name lazily, as Prometheus 3's `promql-delayed-name-removal` does, so
    /// `sum(avg_over_time({__name__=~"host.+"}[1h]))` works. Off (the default), the name is
    /// dropped at once as in Prometheus 2.42, where that query is the error "vector cannot
    /// contain metrics with the same labelset".
    pub delayed_name_removal: bool,
    /// Serve `sum/count/min/max/last/avg_over_time` over a plain range selector from the
    /// storage's rollup buckets where a bucket lies wholly inside or wholly outside every
    /// window of the query (see [`SeriesReader::select_summaries`]); `false` reads raw
    /// samples only. min/max/count/last are exact either way; sum and avg differ from the
    /// raw path by float rounding only (relative 1e-12 on realistic data).
    pub use_rollups: bool,
    /// Threads one query may use to evaluate a range function per series under a `sum`,
    /// `count`, `min`, `max`, `avg` or `group` aggregation (0 = the machine's cores; at
    /// most [`MAX_PARALLELISM`]).
    pub parallelism: usize,
}

/// Upper bound of [`QueryLimits::parallelism`].
pub const MAX_PARALLELISM: usize = 64;

impl Default for QueryLimits {
    fn default() -> QueryLimits {
        QueryLimits {
            max_samples: 50_000_000,
            max_series: 1_000_000,
            timeout: Duration::from_secs(120),
            lookback_delta_ms: 300_000,
            max_points_per_series_in_range: 11_000,
            subquery_step_ms: 60_000,
            max_concurrent_queries: 20,
            delayed_name_removal: false,
            use_rollups: true,
            parallelism: 0,
        }
    }
}

/// A [`QueryLimits`] value that cannot work, named by its config key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A limit that must be positive is zero or negative.
    #[error("query.{0} must be greater than zero")]
    NotPositive(&'static str),
    /// A limit is above its upper bound.
    #[error("query.{0} must be at most {1}")]
    TooLarge(&'static str, usize),
}

impl QueryLimits {
    /// Checks that every limit can admit at least one query; the server calls this at
    /// startup so a bad value fails there, with its key.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let checks: [(&'static str, bool); 7] = [
            ("max_samples", self.max_samples > 0),
            ("max_series", self.max_series > 0),
            ("timeout_ms", !self.timeout.is_zero()),
            ("lookback_delta_ms", self.lookback_delta_ms > 0),
            (
                "max_points_per_series_in_range",
                self.max_points_per_series_in_range > 0,
            ),
            ("subquery_step_ms", self.subquery_step_ms > 0),
            ("max_concurrent_queries", self.max_concurrent_queries > 0),
        ];
        match checks.iter().find(|(_, ok)| !ok) {
            Some((key, _)) => Err(LimitsError::NotPositive(key)),
            None if self.parallelism > MAX_PARALLELISM => {
                Err(LimitsError::TooLarge("parallelism", MAX_PARALLELISM))
            }
            None => Ok(()),
        }
    }

    /// Threads a query may use: [`QueryLimits::parallelism`], or the machine's cores when 0,
    /// bounded by [`MAX_PARALLELISM`].
    pub fn threads(&self) -> usize {
        let n = match self.parallelism {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        n.clamp(1, MAX_PARALLELISM)
    }
}

mod duration_ms {
    //! Durations in config as whole milliseconds.
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = <u64 as serde::Deserialize>::deserialize(d)?;
        Ok(Duration::from_millis(ms))
    }
}

/// The callback of [`SeriesReader::select`]: one series' key, sample times and values.
pub type Visit<'a> = dyn FnMut(&SeriesKey, &[i64], &[f64]) -> Result<(), QueryError> + 'a;

/// The summary of the samples of one series inside one storage bucket (a rollup point):
/// every sample of the series with `start <= t <= last_ts`, stale markers excepted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Bucket start (UTC ms); no summarised sample is earlier.
    pub start: i64,
    /// Time of the newest summarised sample.
    pub last_ts: i64,
    /// Smallest value, NaN ignored unless every value is NaN.
    pub min: f64,
    /// Largest value, NaN ignored unless every value is NaN.
    pub max: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Number of samples summarised (at least 1).
    pub count: u64,
    /// The value at `last_ts`.
    pub last: f64,
}

/// The windows `[to - range, to]` (closed, as in Prometheus 2.x) of one range selector over
/// all steps of a query. A [`Bucket`] may stand in for its samples only when it is *clean*:
/// wholly inside or wholly outside every window, and inside at least one
/// ([`Windows::is_clean`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// Window ends, ascending.
    tos: Vec<i64>,
    range: i64,
}

impl Windows {
    /// The windows ending at `tos` (any order) reaching `range` ms back.
    pub fn new(mut tos: Vec<i64>, range: i64) -> Windows {
        tos.sort_unstable();
        tos.dedup();
        Windows {
            tos,
            range: range.max(0),
        }
    }

    /// The window range in milliseconds.
    pub fn range(&self) -> i64 {
        self.range
    }

    /// The earliest and latest time any window holds (inclusive), `None` without windows.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((self.tos.first()?.saturating_sub(self.range), *self.tos.last()?))
    }

    /// Window ends in `[a, b]`.
    fn count_in(&self, a: i64, b: i64) -> usize {
        if b < a {
            return 0;
        }
        let lo = self.tos.partition_point(|t| *t < a);
        let hi = self.tos.partition_point(|t| *t <= b);
        hi.saturating_sub(lo)
    }

    /// Whether a bucket whose samples lie in `[start, last_ts]` is, for every window,
    /// either wholly inside (`start >= to - range` and `last_ts <= to`) or wholly outside,
    /// and wholly inside at least one. A window intersects it iff `to` is in
    /// `[start, last_ts + range]` and holds it iff `to` is in `[last_ts, start + range]`.
    pub fn is_clean(&self, start: i64, last_ts: i64) -> bool {
        if last_ts < start {
            return false;
        }
        let inside_hi = start.saturating_add(self.range);
        if inside_hi < last_ts {
            return false;
        }
        self.count_in(last_ts, inside_hi) > 0
            && self.count_in(start, last_ts.saturating_sub(1)) == 0
            && self.count_in(inside_hi.saturating_add(1), last_ts.saturating_add(self.range)) == 0
    }
}

/// The callback of [`SeriesReader::select_summaries`]: one series' key, its clean buckets
/// (ascending by start, disjoint) and its remaining raw samples (ascending, none inside a
/// bucket's `[start, last_ts]`).
pub type SummaryVisit<'a> = dyn FnMut(&SeriesKey, &[Bucket], &[i64], &[f64]) -> Result<(), QueryError> + 'a;

/// Admission for concurrent queries: at most `max` evaluations hold a permit at once. The
/// server keeps one gate for the human plane and takes a permit around each query call.
#[derive(Debug)]
pub struct QueryGate {
    active: std::sync::atomic::AtomicUsize,
    max: usize,
}

/// A held slot of a [`QueryGate`]; dropping it frees the slot.
#[derive(Debug)]
pub struct GatePermit<'a>(&'a QueryGate);

impl QueryGate {
    /// A gate admitting `max` concurrent queries.
    pub fn new(max: usize) -> QueryGate {
        QueryGate {
            active: std::sync::atomic::AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a slot, or fails with [`QueryError::TooManyQueries`] when all are taken.
    pub fn try_enter(&self) -> Result<GatePermit<'_>, QueryError> {
        use std::sync::atomic::Ordering;
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map(|_| GatePermit(self))
            .map_err(|_| QueryError::TooManyQueries(self.max))
    }

    /// Queries running now.
    pub fn active(&self) -> usize {
        self.active.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for GatePermit<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Read access to stored series. The query crate owns this trait; the server implements it
/// over the time-series engine, and [`MemReader`] implements it in memory for tests.
pub trait SeriesReader: Send + Sync {
    /// Calls `visit` once per matching series with its samples in `[start_ms, end_ms]`
    /// (inclusive), sorted by time; series in any order. An error from `visit` stops the
    /// walk and is returned.
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        visit: &mut Visit<'_>,
    ) -> Result<(), QueryError>;

    /// Like [`SeriesReader::select`] over the span of `windows`, but a reader may hand over
    /// some samples as [`Bucket`] summaries: each bucket must be clean for `windows`
    /// ([`Windows::is_clean`]) and summarise *every* sample of the series in its
    /// `[start, last_ts]` (last write wins, stale markers skipped as `select` would return
    /// them); the raw samples are all others in the span. Series without any sample or
    /// bucket in the span are skipped. The default hands everything over raw.
    fn select_summaries(
        &self,
        matchers: &[Matcher],
        windows: &Windows,
        visit: &mut SummaryVisit<'_>,
    ) -> Result<(), QueryError> {
        let Some((start, end)) = windows.span() else {
            return Ok(());
        };
        self.select(matchers, start, end, &mut |key, ts, vals| {
            visit(key, &[], ts, vals)
        })
    }

    /// Splits the work of [`SeriesReader::select`] into `shards` parts: calls `visit` for
    /// the matching series of part `shard` only (`shard < shards`); the parts are disjoint
    /// and together are what `select` returns. Shards may run on different threads. The
    /// default puts every series in shard 0.
    fn select_shard(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        shard: usize,
        shards: usize,
        visit: &mut Visit<'_>,
    ) -> Result<(), QueryError> {
        let _ = shards;
        if shard == 0 {
            self.select(matchers, start_ms, end_ms, visit)
        } else {
            Ok(())
        }
    }

    /// [`SeriesReader::select_shard`] for a caller whose result does not depend on the
    /// order the series arrive in (the parts of a mergeable aggregation, which groups and
    /// sorts afterwards): a reader may hand them over in whatever order is cheapest to read.
    /// The parts must still be disjoint and together be what `select` returns. The default
    /// is `select_shard`.
    fn select_shard_unordered(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        shard: usize,
        shards: usize,
        visit: &mut Visit<'_>,
    ) -> Result<(), QueryError> {
        self.select_shard(matchers, start_ms, end_ms, shard, shards, visit)
    }

    /// [`SeriesReader::select_summaries`] split into shards as
    /// [`SeriesReader::select_shard`] does. The default puts every series in shard 0.
    fn select_summaries_shard(
        &self,
        matchers: &[Matcher],
        windows: &Windows,
        shard: usize,
        shards: usize,
        visit: &mut SummaryVisit<'_>,
    ) -> Result<(), QueryError> {
        let _ = shards;
        if shard == 0 {
            self.select_summaries(matchers, windows, visit)
        } else {
            Ok(())
        }
    }

    /// The series matching `matchers` (an empty slice matches every series) with samples in
    /// `[start_ms, end_ms]`, at most `limit` (Prometheus 2.42 judges "with samples" per
    /// chunk, which is the same unless a chunk's samples straddle the range).
    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<SeriesKey>, QueryError>;

    /// Sorted label names (`__name__` included) of the matching series (an empty slice
    /// matches every series) with samples in `[start_ms, end_ms]` (as [`SeriesReader::series`]
    /// judges it), at most `limit`. Prometheus 2.42 is coarser here: it lists the names of
    /// every series in any block overlapping the range.
    fn label_names(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, QueryError>;

    /// Sorted values of label `name` over the matching series (an empty slice matches
    /// every series) with samples in `[start_ms, end_ms]` (as [`SeriesReader::series`] judges
    /// it), at most `limit`; Prometheus 2.42 is block-coarse here too.
    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, QueryError>;
}

/// Parses a series selector such as `up{job="api"}` or `{"a.b.c"}` into matchers, for
/// `match[]` parameters. Anything but a plain vector selector is `bad_data`.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, QueryError> {
    let expr =
        promql_parser::parser::parse(s).map_err(|e| QueryError::BadData(format!("1:1: parse error: {e}")))?;
    match expr {
        promql_parser::parser::Expr::VectorSelector(vs) => {
            if vs.offset.is_some() || vs.at.is_some() {
                return Err(QueryError::BadData(
                    "a series selector may not carry offset or @".into(),
                ));
            }
            selector_matchers(&vs)
        }
        _ => Err(QueryError::BadData(format!(
            "expected a series selector, got {s:?}"
        ))),
    }
}

/// The matchers of a parsed vector selector, its metric name included.
pub(crate) fn selector_matchers(
    vs: &promql_parser::parser::VectorSelector,
) -> Result<Vec<Matcher>, QueryError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::NotSupported("`or` inside a selector".into()));
    }
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::equal(model::METRIC_NAME_LABEL, name.clone()));
    }
    for m in &vs.matchers.matchers {
        use promql_parser::label::MatchOp as P;
        let (op, value) = match &m.op {
            P::Equal => (MatchOp::Equal, m.value.clone()),
            P::NotEqual => (MatchOp::NotEqual, m.value.clone()),
            // Go's `\w \d \s \b` are ASCII-only: keep Prometheus' meaning
            P::Re(_) => (MatchOp::Regex, functions::go_regex(&m.value)),
            P::NotRe(_) => (MatchOp::NotRegex, functions::go_regex(&m.value)),
        };
        let matcher =
            Matcher::new(op, m.name.clone(), value).map_err(|e| QueryError::BadData(e.to_string()))?;
        out.push(matcher);
    }
    if out.iter().all(|m| m.matches_empty()) {
        return Err(QueryError::BadData(
            "vector selector must contain at least one non-empty matcher".into(),
        ));
    }
    Ok(out)
}

/// Whether a series key satisfies all matchers (a missing label reads as `""`).
pub fn matches_all(key: &SeriesKey, matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| m.matches(key.get(&m.name).unwrap_or("")))
}
