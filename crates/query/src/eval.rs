//! The evaluator: walks a parsed PromQL expression and evaluates every node over all steps
//! of the query at once (an instant query is a range query with a single step).
//!
//! Values between nodes are `Value`s: a scalar per step, a vector of [`Series`] (one
//! optional point per step), or a string. A range vector only exists as a function argument
//! (where it is streamed, see `Evaluator::range_call`) or as the top-level result of an
//! instant query.
//!
//! Invariants:
//! - every `Series::points` has exactly `Steps::len()` entries;
//! - a series whose points are all `None` is not kept;
//! - `Series::drop_name` means "remove `__name__` before these labels are looked at"
//!   (delayed name removal, see the crate doc). Unless
//!   [`QueryLimits::delayed_name_removal`] is set, every node that drops the name removes it
//!   at once and checks its result as Prometheus 2.42 does (`check_same_labelset`), so a
//!   node's output never carries a pending drop.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use model::Matcher;
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, Offset, SubqueryExpr,
    VectorMatchCardinality, VectorSelector,
};

use crate::functions::{self, RangeFn};
use crate::labels::Labels;
use crate::{QueryError, QueryLimits, SeriesReader, selector_matchers};

/// Prometheus' stale marker: a NaN with this exact bit pattern ends a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether a value is Prometheus' stale marker.
pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// The first index at or after `from` whose time fails `pred` (times ascending). Steps
/// usually move a window edge by a sample or two, so look a few ahead before bisecting.
fn advance(ts: &[i64], from: usize, pred: impl Fn(i64) -> bool) -> usize {
    let mut i = from;
    for _ in 0..8 {
        match ts.get(i) {
            Some(t) if pred(*t) => i += 1,
            _ => return i,
        }
    }
    i + ts.get(i..).map_or(0, |rest| rest.partition_point(|t| pred(*t)))
}

/// Whether any value is a stale marker. Branch-free over chunks so it vectorises: this
/// runs over every sample a query reads.
/// The per-series checks every streaming select applies: the series and samples limits, the
/// deadline (every 64 series), and stale markers removed.
struct SeriesGate {
    series: usize,
    max_series: usize,
    max_samples: usize,
    deadline: Instant,
    ts_buf: Vec<i64>,
    val_buf: Vec<f64>,
}

impl SeriesGate {
    fn new(limits: &QueryLimits, deadline: Instant) -> SeriesGate {
        SeriesGate {
            series: 0,
            max_series: limits.max_series,
            max_samples: limits.max_samples,
            deadline,
            ts_buf: Vec::new(),
            val_buf: Vec::new(),
        }
    }

    /// Counts one more series and returns its samples without stale markers, or the limit
    /// it broke.
    fn admit<'a>(&'a mut self, ts: &'a [i64], vals: &'a [f64]) -> Result<(&'a [i64], &'a [f64]), QueryError> {
        self.series += 1;
        if self.series > self.max_series {
            return Err(QueryError::TooManySeries(self.max_series));
        }
        if self.series.is_multiple_of(64) && Instant::now() > self.deadline {
            return Err(QueryError::Timeout);
        }
        if ts.len() > self.max_samples {
            return Err(QueryError::TooManySamples);
        }
        let len = ts.len().min(vals.len());
        let (ts, vals) = (&ts[..len], &vals[..len]);
        if !has_stale(vals) {
            return Ok((ts, vals));
        }
        self.ts_buf.clear();
        self.val_buf.clear();
        for (t, v) in ts.iter().zip(vals) {
            if !is_stale(*v) {
                self.ts_buf.push(*t);
                self.val_buf.push(*v);
            }
        }
        Ok((&self.ts_buf, &self.val_buf))
    }
}

fn has_stale(vals: &[f64]) -> bool {
    vals.chunks(16).any(|c| {
        c.iter()
            .fold(false, |acc, v| acc | (v.to_bits() == STALE_NAN_BITS))
    })
}

/// The evaluation grid: `start, start+step, …, ≤ end`, all in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// First step.
    pub start: i64,
    /// Last possible step (inclusive).
    pub end: i64,
    /// Step width, > 0.
    pub step: i64,
}

impl Steps {
    /// Number of steps.
    pub fn len(&self) -> usize {
        if self.end < self.start || self.step <= 0 {
            return 0;
        }
        self.end
            .checked_sub(self.start)
            .and_then(|d| usize::try_from(d / self.step + 1).ok())
            .unwrap_or(0)
    }

    /// Whether there is no step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The time of step `i`.
    pub fn at(&self, i: usize) -> i64 {
        self.start
            .saturating_add(self.step.saturating_mul(i64::try_from(i).unwrap_or(i64::MAX)))
    }
}

/// One series of an instant vector over all steps.
#[derive(Debug, Clone)]
pub struct Series {
    /// The labels, `__name__` included until dropped.
    pub labels: Labels,
    /// Remove `__name__` before the labels are next used.
    pub drop_name: bool,
    /// One optional value per step.
    pub points: Vec<Option<f64>>,
}

impl Series {
    fn materialize(&mut self) {
        if self.drop_name {
            self.labels.drop_name();
            self.drop_name = false;
        }
    }
}

/// Raw samples of one series (a range vector, or a range query's result series).
#[derive(Debug, Clone, PartialEq)]
pub struct RawSeries {
    /// The labels.
    pub labels: Labels,
    /// Sample times, ascending.
    pub ts: Vec<i64>,
    /// Sample values, one per time.
    pub vals: Vec<f64>,
}

/// One sample of an instant vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The labels.
    pub labels: Labels,
    /// The evaluation time.
    pub t: i64,
    /// The value.
    pub v: f64,
}

/// The result of a query, as the API returns it.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    /// A scalar at time `t`.
    Scalar {
        /// Evaluation time.
        t: i64,
        /// The value.
        v: f64,
    },
    /// A string at time `t`.
    String {
        /// Evaluation time.
        t: i64,
        /// The value.
        v: String,
    },
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector (range query results, or a range selector in an instant query).
    Matrix(Vec<RawSeries>),
}

/// An intermediate value.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Scalar(Vec<f64>),
    Vector(Vec<Series>),
    Str(String),
}

/// Evaluates `query` at time `t` (milliseconds).
pub fn evaluate_instant(
    reader: &dyn SeriesReader,
    query: &str,
    t: i64,
    limits: &QueryLimits,
) -> Result<QueryValue, QueryError> {
    let expr = parse(query)?;
    let steps = Steps {
        start: t,
        end: t,
        step: 1,
    };
    let mut ev = Evaluator::new(reader, limits, steps);
    // A range selector or subquery at the top level returns its raw samples.
    match unwrap_parens(&expr) {
        Expr::MatrixSelector(ms) => {
            let w = ev.window(&ms.vs, millis(&ms.range), None)?;
            let mut out = Vec::new();
            let mut held = 0usize;
            let max_samples = limits.max_samples;
            ev.select_raw(&ms.vs, &w, &mut |labels, ts, vals| {
                held = held.saturating_add(ts.len());
                if held > max_samples {
                    return Err(QueryError::TooManySamples);
                }
                out.push(RawSeries {
                    labels: labels.clone(),
                    ts: ts.to_vec(),
                    vals: vals.to_vec(),
                });
                Ok(())
            })?;
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            return Ok(QueryValue::Matrix(out));
        }
        Expr::Subquery(sq) => {
            let mut out = Vec::new();
            ev.subquery_raw(sq, &mut |labels, _drop, ts, vals| {
                out.push(RawSeries {
                    labels: labels.clone(),
                    ts: ts.to_vec(),
                    vals: vals.to_vec(),
                });
                Ok(())
            })?;
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            return Ok(QueryValue::Matrix(out));
        }
        _ => {}
    }
    let ordered = is_ordered(&expr);
    match ev.eval(&expr)? {
        Value::Scalar(v) => Ok(QueryValue::Scalar {
            t,
            v: v.first().copied().unwrap_or(f64::NAN),
        }),
        Value::Str(s) => Ok(QueryValue::String { t, v: s }),
        Value::Vector(series) => {
            let mut out = Vec::with_capacity(series.len());
            for mut s in series {
                s.materialize();
                if let Some(Some(v)) = s.points.first() {
                    out.push(Sample {
                        labels: s.labels,
                        t,
                        v: *v,
                    });
                }
            }
            let mut seen: Vec<&Labels> = out.iter().map(|s| &s.labels).collect();
            seen.sort();
            if seen.windows(2).any(|w| w[0] == w[1]) {
                return Err(same_labelset());
            }
            if !ordered {
                out.sort_by(|a, b| a.labels.cmp(&b.labels));
            }
            Ok(QueryValue::Vector(out))
        }
    }
}

/// Evaluates `query` over `[start, end]` every `step` milliseconds into a matrix.
pub fn evaluate_range(
    reader: &dyn SeriesReader,
    query: &str,
    steps: Steps,
    limits: &QueryLimits,
) -> Result<Vec<RawSeries>, QueryError> {
    let expr = parse(query)?;
    match unwrap_parens(&expr) {
        Expr::MatrixSelector(_) | Expr::Subquery(_) => {
            return Err(QueryError::BadData(
                "invalid expression type \"range vector\" for range query, must be Scalar or instant Vector"
                    .into(),
            ));
        }
        Expr::StringLiteral(_) => {
            return Err(QueryError::BadData(
                "invalid expression type \"string\" for range query, must be Scalar or instant Vector".into(),
            ));
        }
        _ => {}
    }
    if steps.len() > limits.max_points_per_series_in_range.saturating_add(1) {
        return Err(QueryError::BadData(format!(
            "exceeded maximum resolution of {} points per timeseries",
            limits.max_points_per_series_in_range
        )));
    }
    let mut ev = Evaluator::new(reader, limits, steps);
    let series = match ev.eval(&expr)? {
        Value::Scalar(v) => vec![Series {
            labels: Labels::new(),
            drop_name: false,
            points: v.into_iter().map(Some).collect(),
        }],
        Value::Vector(v) => v,
        Value::Str(_) => return Err(QueryError::BadData("string in range query".into())),
    };
    let mut merged: HashMap<Labels, Vec<Option<f64>>> = HashMap::new();
    for mut s in series {
        s.materialize();
        match merged.get_mut(&s.labels) {
            Some(points) => {
                for (slot, p) in points.iter_mut().zip(s.points) {
                    if p.is_some() {
                        if slot.is_some() {
                            return Err(same_labelset());
                        }
                        *slot = p;
                    }
                }
            }
            None => {
                merged.insert(s.labels, s.points);
            }
        }
    }
    let mut out: Vec<RawSeries> = merged
        .into_iter()
        .filter_map(|(labels, points)| {
            // sized once: growing by doubling reallocates ~9 times for a few hundred steps
            let present = points.iter().filter(|p| p.is_some()).count();
            let mut ts = Vec::with_capacity(present);
            let mut vals = Vec::with_capacity(present);
            for (i, p) in points.into_iter().enumerate() {
                if let Some(v) = p {
                    ts.push(steps.at(i));
                    vals.push(v);
                }
            }
            (!ts.is_empty()).then_some(RawSeries { labels, ts, vals })
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

fn same_labelset() -> QueryError {
    QueryError::Execution("vector cannot contain metrics with the same labelset".into())
}

fn parse(query: &str) -> Result<Expr, QueryError> {
    promql_parser::parser::parse(query).map_err(|e| QueryError::BadData(format!("parse error: {e}")))
}

fn unwrap_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_parens(&p.expr),
        e => e,
    }
}

/// Whether the result order is meaningful (`sort`, `sort_desc`, `topk`, `bottomk`), so it
/// must not be re-sorted.
fn is_ordered(e: &Expr) -> bool {
    match unwrap_parens(e) {
        Expr::Call(c) => matches!(c.func.name, "sort" | "sort_desc"),
        Expr::Aggregate(a) => matches!(a.op.to_string().as_str(), "topk" | "bottomk"),
        _ => false,
    }
}

fn millis(d: &std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => millis(d),
        Some(Offset::Neg(d)) => -millis(d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => millis(&d),
        Err(e) => -millis(&e.duration()),
    }
}

/// Where a selector's window ends at each step: `(at or step time) - offset`, and how far
/// back it reaches.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Reference time per step.
    pub refs: Vec<i64>,
    /// Range in milliseconds (lookback delta for instant selectors).
    pub range: i64,
}

impl Window {
    fn min_ref(&self) -> i64 {
        self.refs.iter().copied().min().unwrap_or(0)
    }
    fn max_ref(&self) -> i64 {
        self.refs.iter().copied().max().unwrap_or(0)
    }
}

/// Receives one series of a range selector: labels, times, values.
type RawVisit<'a> = dyn FnMut(&Labels, &[i64], &[f64]) -> Result<(), QueryError> + 'a;
/// Receives one series of a subquery: labels, whether its name is to be dropped, times, values.
type SubqueryVisit<'a> = dyn FnMut(&Labels, bool, &[i64], &[f64]) -> Result<(), QueryError> + 'a;

/// Receives the series of a node one at a time and answers how many result slots it keeps.
type Sink<'a> = dyn FnMut(Series) -> Result<usize, QueryError> + 'a;

/// A sink that keeps every series in `out`.
fn collect_into(out: &mut Vec<Series>) -> impl FnMut(Series) -> Result<usize, QueryError> + '_ {
    |s| {
        let slots = s.points.len();
        out.push(s);
        Ok(slots)
    }
}

/// Evaluation state for one query.
pub(crate) struct Evaluator<'a> {
    reader: &'a dyn SeriesReader,
    limits: &'a QueryLimits,
    deadline: Instant,
    /// The query's own grid (for `@ start()` / `@ end()`).
    query_steps: Steps,
    /// The grid the current node is evaluated on (differs inside subqueries).
    steps: Steps,
    /// Result slots (series × steps) held so far, for `max_samples`. Never decremented:
    /// a conservative bound on what the query holds at once.
    samples: usize,
    /// (part, parts): selectors read only this part of their series (see
    /// `Evaluator::aggregate_parallel` and `Evaluator::collect_parallel`); (0, 1) reads all.
    shard: (usize, usize),
    /// Selectors may read series in the reader's cheapest order
    /// ([`SeriesReader::select_shard_unordered`]): set for the parts of a mergeable
    /// aggregation, whose result does not depend on the order series arrive in.
    unordered: bool,
    /// Series handed over by the reader so far (all selectors), for `max_series` across
    /// parts.
    series_read: usize,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(reader: &'a dyn SeriesReader, limits: &'a QueryLimits, steps: Steps) -> Self {
        Evaluator {
            reader,
            limits,
            deadline: Instant::now() + limits.timeout,
            query_steps: steps,
            steps,
            samples: 0,
            shard: (0, 1),
            unordered: false,
            series_read: 0,
        }
    }

    fn check_deadline(&self) -> Result<(), QueryError> {
        if Instant::now() > self.deadline {
            return Err(QueryError::Timeout);
        }
        Ok(())
    }

    fn account(&mut self, n: usize) -> Result<(), QueryError> {
        self.samples = self.samples.saturating_add(n);
        if self.samples > self.limits.max_samples {
            return Err(QueryError::TooManySamples);
        }
        Ok(())
    }

    fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        match at {
            None => None,
            Some(AtModifier::Start) => Some(self.query_steps.start),
            Some(AtModifier::End) => Some(self.query_steps.end),
            Some(AtModifier::At(t)) => Some(system_time_ms(t)),
        }
    }

    fn window(&self, vs: &VectorSelector, range: i64, _sub: Option<()>) -> Result<Window, QueryError> {
        let off = offset_ms(&vs.offset);
        let at = self.at_ms(&vs.at);
        let refs = (0..self.steps.len())
            .map(|i| at.unwrap_or(self.steps.at(i)).saturating_sub(off))
            .collect();
        Ok(Window { refs, range })
    }

    /// Streams each matching series' non-stale samples in `[min_ref - range, max_ref]`.
    fn select_raw(
        &mut self,
        vs: &VectorSelector,
        w: &Window,
        visit: &mut RawVisit<'_>,
    ) -> Result<(), QueryError> {
        self.select_keys(vs, w, &mut |key, ts, vals| {
            let labels = Labels::from_key(key);
            visit(&labels, ts, vals)
        })
    }

    /// Streams each matching series' non-stale samples (keys unconverted).
    fn select_keys(
        &mut self,
        vs: &VectorSelector,
        w: &Window,
        visit: &mut crate::Visit<'_>,
    ) -> Result<(), QueryError> {
        let matchers: Vec<Matcher> = selector_matchers(vs)?;
        let start = w.min_ref().saturating_sub(w.range);
        let end = w.max_ref();
        let mut gate = SeriesGate::new(self.limits, self.deadline);
        let (part, parts) = self.shard;
        let mut admit = |key: &model::SeriesKey, ts: &[i64], vals: &[f64]| {
            let (ts, vals) = gate.admit(ts, vals)?;
            visit(key, ts, vals)
        };
        let res = if self.unordered {
            self.reader
                .select_shard_unordered(&matchers, start, end, part, parts, &mut admit)
        } else {
            self.reader
                .select_shard(&matchers, start, end, part, parts, &mut admit)
        };
        self.series_read = self.series_read.saturating_add(gate.series);
        res?;
        self.check_deadline()
    }

    /// Streams each matching series as clean buckets plus raw samples (see
    /// [`SeriesReader::select_summaries`]), stale markers removed, with the same limits as
    /// [`Evaluator::select_keys`].
    fn select_summaries(
        &mut self,
        vs: &VectorSelector,
        w: &Window,
        visit: &mut crate::SummaryVisit<'_>,
    ) -> Result<(), QueryError> {
        let matchers: Vec<Matcher> = selector_matchers(vs)?;
        let windows = crate::Windows::new(w.refs.clone(), w.range);
        let mut gate = SeriesGate::new(self.limits, self.deadline);
        let (part, parts) = self.shard;
        let res = self.reader.select_summaries_shard(
            &matchers,
            &windows,
            part,
            parts,
            &mut |key, buckets, ts, vals| {
                let (ts, vals) = gate.admit(ts, vals)?;
                visit(key, buckets, ts, vals)
            },
        );
        self.series_read = self.series_read.saturating_add(gate.series);
        res?;
        self.check_deadline()
    }

    /// Evaluates a subquery and streams its series as raw samples, the window for each
    /// outer step being `[ref - range, ref]`.
    fn subquery_raw(&mut self, sq: &SubqueryExpr, visit: &mut SubqueryVisit<'_>) -> Result<(), QueryError> {
        let (inner, series) = self.eval_subquery(sq)?;
        for mut s in series {
            let drop = s.drop_name;
            s.drop_name = false;
            let mut ts = Vec::new();
            let mut vals = Vec::new();
            for (i, p) in s.points.iter().enumerate() {
                if let Some(v) = p {
                    ts.push(inner.at(i));
                    vals.push(*v);
                }
            }
            visit(&s.labels, drop, &ts, &vals)?;
        }
        Ok(())
    }

    fn subquery_window(&self, sq: &SubqueryExpr) -> Window {
        let off = offset_ms(&sq.offset);
        let at = self.at_ms(&sq.at);
        let refs = (0..self.steps.len())
            .map(|i| at.unwrap_or(self.steps.at(i)).saturating_sub(off))
            .collect();
        Window {
            refs,
            range: millis(&sq.range),
        }
    }

    fn eval_subquery(&mut self, sq: &SubqueryExpr) -> Result<(Steps, Vec<Series>), QueryError> {
        let w = self.subquery_window(sq);
        let interval = sq
            .step
            .as_ref()
            .map(millis)
            .filter(|s| *s > 0)
            .unwrap_or(self.limits.subquery_step_ms)
            .max(1);
        let lo = w.min_ref().saturating_sub(w.range);
        let mut start = interval * (lo / interval);
        if start < lo {
            start = start.saturating_add(interval);
        }
        let inner = Steps {
            start,
            end: w.max_ref(),
            step: interval,
        };
        if inner.len() > self.limits.max_samples {
            return Err(QueryError::TooManySamples);
        }
        let outer = std::mem::replace(&mut self.steps, inner);
        let res = self.eval(&sq.expr);
        self.steps = outer;
        match res? {
            Value::Vector(v) => Ok((inner, v)),
            Value::Scalar(v) => Ok((
                inner,
                vec![Series {
                    labels: Labels::new(),
                    drop_name: false,
                    points: v.into_iter().map(Some).collect(),
                }],
            )),
            Value::Str(_) => Err(QueryError::BadData("subquery of a string".into())),
        }
    }

    pub(crate) fn eval(&mut self, expr: &Expr) -> Result<Value, QueryError> {
        self.eval_with(expr, true)
    }

    /// `need_labels = false` lets a selector or range function skip building labels because
    /// the consumer (an aggregation without grouping) ignores them.
    fn eval_with(&mut self, expr: &Expr, need_labels: bool) -> Result<Value, QueryError> {
        self.check_deadline()?;
        let n = self.steps.len();
        match expr {
            Expr::NumberLiteral(l) => Ok(Value::Scalar(vec![l.val; n])),
            Expr::StringLiteral(s) => Ok(Value::Str(s.val.clone())),
            Expr::Paren(p) => self.eval_with(&p.expr, need_labels),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Value::Scalar(v) => Ok(Value::Scalar(v.into_iter().map(|x| -x).collect())),
                Value::Vector(mut series) => {
                    for s in &mut series {
                        s.drop_name = true;
                        for p in s.points.iter_mut().flatten() {
                            *p = -*p;
                        }
                    }
                    self.check_same_labelset(&mut series, false)?;
                    Ok(Value::Vector(series))
                }
                Value::Str(_) => Err(QueryError::BadData("unary minus on a string".into())),
            },
            Expr::VectorSelector(vs) => self.vector_selector_vec(vs, need_labels, false),
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Err(QueryError::BadData(
                "a range vector is only allowed as a function argument here".into(),
            )),
            Expr::Call(c) => {
                let mut v = self.call(c, need_labels)?;
                // a range function checks its own output as it streams (`range_call`)
                if RangeFn::from_name(c.func.name).is_none()
                    && let Value::Vector(series) = &mut v
                {
                    self.check_same_labelset(series, true)?;
                }
                Ok(v)
            }
            Expr::Aggregate(a) => {
                let mut v = self.aggregate(a)?;
                if let Value::Vector(series) = &mut v {
                    self.check_same_labelset(series, true)?;
                }
                Ok(v)
            }
            Expr::Binary(b) => {
                let mut v = self.binary(b)?;
                if let Value::Vector(series) = &mut v {
                    self.check_same_labelset(series, true)?;
                }
                Ok(v)
            }
            Expr::Extension(_) => Err(QueryError::NotSupported("extension expressions".into())),
        }
    }

    /// An instant vector selector: the latest non-stale sample within the lookback delta
    /// of each step's reference time. With `timestamps`, the sample's time (seconds)
    /// replaces its value (for `timestamp()`).
    fn vector_selector(
        &mut self,
        vs: &VectorSelector,
        need_labels: bool,
        timestamps: bool,
        sink: &mut Sink<'_>,
    ) -> Result<(), QueryError> {
        let w = self.window(vs, self.limits.lookback_delta_ms, None)?;
        let mut produced = 0usize;
        let budget = self.limits.max_samples.saturating_sub(self.samples);
        let lookback = w.range;
        let matchers = selector_matchers(vs)?;
        let start = w.min_ref().saturating_sub(lookback);
        let end = w.max_ref();
        let max_series = self.limits.max_series;
        let deadline = self.deadline;
        let mut n = 0usize;
        let (part, parts) = self.shard;
        let monotone = w.refs.windows(2).all(|p| p[0] <= p[1]);
        let mut each = |key: &model::SeriesKey, ts: &[i64], vals: &[f64]| {
            n += 1;
            if n > max_series {
                return Err(QueryError::TooManySeries(max_series));
            }
            if n.is_multiple_of(64) && Instant::now() > deadline {
                return Err(QueryError::Timeout);
            }
            let mut points = Vec::with_capacity(w.refs.len());
            let mut any = false;
            let mut idx = 0usize;
            for r in &w.refs {
                idx = if monotone {
                    // steps only move forward: walk on from the last step's sample
                    advance(ts, idx, |t| t <= *r)
                } else {
                    ts.partition_point(|t| *t <= *r)
                };
                let p = match idx.checked_sub(1) {
                    Some(i) => match (ts.get(i), vals.get(i)) {
                        (Some(t), Some(v)) if *t >= r.saturating_sub(lookback) && !is_stale(*v) => {
                            Some(if timestamps { *t as f64 / 1000.0 } else { *v })
                        }
                        _ => None,
                    },
                    None => None,
                };
                any |= p.is_some();
                points.push(p);
            }
            if any {
                // the sink reports the slots it keeps (a slot per step, present or not), so
                // memory stays within max_samples even for sparse series over many steps
                let kept = sink(Series {
                    labels: if need_labels {
                        Labels::from_key(key)
                    } else {
                        Labels::new()
                    },
                    drop_name: false,
                    points,
                })?;
                produced = produced.saturating_add(kept);
            }
            if produced > budget {
                return Err(QueryError::TooManySamples);
            }
            Ok(())
        };
        let res = if self.unordered {
            self.reader
                .select_shard_unordered(&matchers, start, end, part, parts, &mut each)
        } else {
            self.reader
                .select_shard(&matchers, start, end, part, parts, &mut each)
        };
        self.series_read = self.series_read.saturating_add(n);
        res?;
        self.account(produced)
    }

    /// An instant vector selector's series, collected.
    fn vector_selector_vec(
        &mut self,
        vs: &VectorSelector,
        need_labels: bool,
        timestamps: bool,
    ) -> Result<Value, QueryError> {
        let mut out = Vec::new();
        self.vector_selector(vs, need_labels, timestamps, &mut collect_into(&mut out))?;
        Ok(Value::Vector(out))
    }

    /// Evaluates `expr` into `sink` one series at a time: selectors and range functions
    /// stream straight from the reader, anything else is evaluated and then handed over.
    fn stream(&mut self, expr: &Expr, need_labels: bool, sink: &mut Sink<'_>) -> Result<(), QueryError> {
        match expr {
            Expr::Paren(p) => self.stream(&p.expr, need_labels, sink),
            Expr::VectorSelector(vs) => self.vector_selector(vs, need_labels, false, sink),
            Expr::Call(c) if RangeFn::from_name(c.func.name).is_some() => {
                let args: Vec<&Expr> = c.args.args.iter().map(|a| a.as_ref()).collect();
                let f = RangeFn::from_name(c.func.name).unwrap_or(RangeFn::SumOverTime);
                self.range_call(f, &args, need_labels, sink)
            }
            other => match self.eval_with(other, need_labels)? {
                Value::Vector(series) => {
                    for s in series {
                        sink(s)?;
                    }
                    Ok(())
                }
                _ => Err(QueryError::BadData("expected an instant vector".into())),
            },
        }
    }

    fn scalar_arg(&mut self, e: &Expr) -> Result<Vec<f64>, QueryError> {
        match self.eval(e)? {
            Value::Scalar(v) => Ok(v),
            _ => Err(QueryError::BadData("expected a scalar argument".into())),
        }
    }

    fn vector_arg(&mut self, e: &Expr) -> Result<Vec<Series>, QueryError> {
        match self.eval(e)? {
            Value::Vector(v) => Ok(v),
            _ => Err(QueryError::BadData("expected an instant vector argument".into())),
        }
    }

    fn string_arg(&mut self, e: &Expr) -> Result<String, QueryError> {
        match unwrap_parens(e) {
            Expr::StringLiteral(s) => Ok(s.val.clone()),
            _ => Err(QueryError::BadData("expected a string literal argument".into())),
        }
    }

    fn call(&mut self, c: &Call, need_labels: bool) -> Result<Value, QueryError> {
        let name = c.func.name;
        let args: Vec<&Expr> = c.args.args.iter().map(|a| a.as_ref()).collect();
        if let Some(f) = RangeFn::from_name(name) {
            let mut out = Vec::new();
            self.range_call(f, &args, need_labels, &mut collect_into(&mut out))?;
            return Ok(Value::Vector(out));
        }
        let n = self.steps.len();
        match name {
            "time" => Ok(Value::Scalar(
                (0..n).map(|i| self.steps.at(i) as f64 / 1000.0).collect(),
            )),
            "vector" => {
                let v = self.scalar_arg(arg(&args, 0)?)?;
                Ok(Value::Vector(vec![Series {
                    labels: Labels::new(),
                    drop_name: false,
                    points: v.into_iter().map(Some).collect(),
                }]))
            }
            "scalar" => {
                let series = self.vector_arg(arg(&args, 0)?)?;
                let out = (0..n)
                    .map(|i| {
                        let mut it = series.iter().filter_map(|s| s.points.get(i).copied().flatten());
                        match (it.next(), it.next()) {
                            (Some(v), None) => v,
                            _ => f64::NAN,
                        }
                    })
                    .collect();
                Ok(Value::Scalar(out))
            }
            "timestamp" => {
                let a = arg(&args, 0)?;
                let mut series = match unwrap_parens(a) {
                    Expr::VectorSelector(vs) => match self.vector_selector_vec(vs, true, true)? {
                        Value::Vector(v) => v,
                        _ => Vec::new(),
                    },
                    other => {
                        let mut v = self.vector_arg(other)?;
                        for s in &mut v {
                            for (i, p) in s.points.iter_mut().enumerate() {
                                if p.is_some() {
                                    *p = Some(self.steps.at(i) as f64 / 1000.0);
                                }
                            }
                        }
                        v
                    }
                };
                for s in &mut series {
                    s.drop_name = true;
                }
                Ok(Value::Vector(series))
            }
            "pi" => Ok(Value::Scalar(vec![std::f64::consts::PI; n])),
            _ if functions::math_fn(name).is_some() => {
                let f = functions::math_fn(name).unwrap_or(f64::abs);
                let mut series = self.vector_arg(arg(&args, 0)?)?;
                for s in &mut series {
                    s.drop_name = true;
                    for p in s.points.iter_mut().flatten() {
                        *p = f(*p);
                    }
                }
                Ok(Value::Vector(series))
            }
            _ if functions::date_fn(name).is_some() => {
                let f = functions::date_fn(name).unwrap_or(functions::minute);
                let mut series = match args.first() {
                    Some(a) => self.vector_arg(a)?,
                    None => vec![Series {
                        labels: Labels::new(),
                        drop_name: false,
                        points: (0..n).map(|i| Some(self.steps.at(i) as f64 / 1000.0)).collect(),
                    }],
                };
                for s in &mut series {
                    s.drop_name = true;
                    for p in s.points.iter_mut().flatten() {
                        *p = f(*p);
                    }
                }
                Ok(Value::Vector(series))
            }
            "round" => {
                let mut series = self.vector_arg(arg(&args, 0)?)?;
                let to = match args.get(1) {
                    Some(e) => self.scalar_arg(e)?,
                    None => vec![1.0; n],
                };
                for s in &mut series {
                    s.drop_name = true;
                    for (p, to) in s.points.iter_mut().zip(&to) {
                        if let Some(v) = p {
                            let inv = 1.0 / to;
                            *v = (*v * inv + 0.5).floor() / inv;
                        }
                    }
                }
                Ok(Value::Vector(series))
            }
            "clamp" | "clamp_min" | "clamp_max" => {
                let mut series = self.vector_arg(arg(&args, 0)?)?;
                let (lo, hi) = match name {
                    "clamp" => (self.scalar_arg(arg(&args, 1)?)?, self.scalar_arg(arg(&args, 2)?)?),
                    "clamp_min" => (self.scalar_arg(arg(&args, 1)?)?, vec![f64::INFINITY; n]),
                    _ => (vec![f64::NEG_INFINITY; n], self.scalar_arg(arg(&args, 1)?)?),
                };
                for s in &mut series {
                    s.drop_name = true;
                    for (i, p) in s.points.iter_mut().enumerate() {
                        let (Some(lo), Some(hi)) = (lo.get(i), hi.get(i)) else {
                            continue;
                        };
                        if let Some(v) = *p {
                            *p = if name == "clamp" && hi < lo {
                                None
                            } else {
                                Some(functions::go_max(*lo, functions::go_min(*hi, v)))
                            };
                        }
                    }
                }
                series.retain(|s| s.points.iter().any(Option::is_some));
                Ok(Value::Vector(series))
            }
            "sort" | "sort_desc" => {
                let mut series = self.vector_arg(arg(&args, 0)?)?;
                if n == 1 {
                    let desc = name == "sort_desc";
                    series.sort_by(|a, b| {
                        let (x, y) = (
                            a.points.first().copied().flatten().unwrap_or(f64::NAN),
                            b.points.first().copied().flatten().unwrap_or(f64::NAN),
                        );
                        functions::cmp_nan_last(x, y, desc)
                    });
                }
                Ok(Value::Vector(series))
            }
            "label_replace" => {
                let mut series = self.vector_arg(arg(&args, 0)?)?;
                let dst = self.string_arg(arg(&args, 1)?)?;
                let repl = self.string_arg(arg(&args, 2)?)?;
                let src = self.string_arg(arg(&args, 3)?)?;
                let re = self.string_arg(arg(&args, 4)?)?;
                // Prometheus reports these as evaluation errors (`execution`), not parse errors
                let regex =
                    regex::Regex::new(&format!("^(?s:{})$", functions::go_regex(&re))).map_err(|e| {
                        QueryError::Execution(format!(
                            "invalid regular expression in label_replace(): {re}: {e}"
                        ))
                    })?;
                if !functions::is_label_name(&dst) {
                    return Err(QueryError::Execution(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    )));
                }
                for s in &mut series {
                    s.materialize();
                    let value = s.labels.get(&src).to_owned();
                    if let Some(caps) = regex.captures(&value) {
                        let mut res = String::new();
                        caps.expand(&repl, &mut res);
                        s.labels.set(&dst, &res);
                    }
                }
                Ok(Value::Vector(series))
            }
            "label_join" => {
                let mut series = self.vector_arg(arg(&args, 0)?)?;
                let dst = self.string_arg(arg(&args, 1)?)?;
                let sep = self.string_arg(arg(&args, 2)?)?;
                let mut srcs = Vec::new();
                for a in args.iter().skip(3) {
                    srcs.push(self.string_arg(a)?);
                }
                if !functions::is_label_name(&dst) {
                    return Err(QueryError::Execution(format!(
                        "invalid destination label name in label_join(): {dst}"
                    )));
                }
                for s in &mut series {
                    s.materialize();
                    let joined = srcs
                        .iter()
                        .map(|l| s.labels.get(l))
                        .collect::<Vec<_>>()
                        .join(&sep);
                    s.labels.set(&dst, &joined);
                }
                Ok(Value::Vector(series))
            }
            "absent" => {
                let a = arg(&args, 0)?;
                let series = self.vector_arg(a)?;
                let labels = absent_labels(a);
                let points: Vec<Option<f64>> = (0..n)
                    .map(|i| {
                        (!series
                            .iter()
                            .any(|s| s.points.get(i).copied().flatten().is_some()))
                        .then_some(1.0)
                    })
                    .collect();
                Ok(Value::Vector(nonempty(vec![Series {
                    labels,
                    drop_name: false,
                    points,
                }])))
            }
            "histogram_quantile" => {
                let q = self.scalar_arg(arg(&args, 0)?)?;
                let series = self.vector_arg(arg(&args, 1)?)?;
                Ok(Value::Vector(functions::histogram_quantile(&q, series, n)))
            }
            other => Err(QueryError::NotSupported(format!("function {other}()"))),
        }
    }

    /// A function over a range vector. The range vector is streamed one series at a time;
    /// for each step the function runs over the samples in `[ref - range, ref]`.
    fn range_call(
        &mut self,
        f: RangeFn,
        args: &[&Expr],
        need_labels: bool,
        sink: &mut Sink<'_>,
    ) -> Result<(), QueryError> {
        let n = self.steps.len();
        let (matrix_idx, param) = match f {
            RangeFn::QuantileOverTime => (1, Some(self.scalar_arg(arg(args, 0)?)?)),
            RangeFn::PredictLinear => (0, Some(self.scalar_arg(arg(args, 1)?)?)),
            _ => (0, None),
        };
        let m = unwrap_parens(arg(args, matrix_idx)?);
        let keep_name = f == RangeFn::LastOverTime;
        // Prometheus 2.42 drops the name here and refuses two outputs with the same labels
        // anywhere in the result; a selector naming one metric cannot produce two
        let check = !self.limits.delayed_name_removal
            && match m {
                Expr::MatrixSelector(ms) => !keep_name && !names_one_metric(&ms.vs),
                _ => true,
            };
        let need_labels = need_labels || check;
        let hasher = std::collections::hash_map::RandomState::new();
        let mut seen_labels: std::collections::HashSet<u64> = std::collections::HashSet::new();
        let steps = self.steps;
        let max_samples = self.limits.max_samples;
        let mut produced = 0usize;
        let budget = self.limits.max_samples.saturating_sub(self.samples);
        let mut seen_any: Vec<bool> = vec![false; n];
        let mut per_series = |labels: Labels,
                              drop: bool,
                              ts: &[i64],
                              vals: &[f64],
                              buckets: &[crate::Bucket],
                              w: &Window|
         -> Result<(), QueryError> {
            let mut points = Vec::with_capacity(n);
            let mut any = false;
            let mut lo = 0usize;
            let mut hi = 0usize;
            let (mut blo, mut bhi) = (0usize, 0usize);
            let monotone = w.refs.windows(2).all(|p| p[0] <= p[1]);
            for (i, r) in w.refs.iter().enumerate() {
                let from = r.saturating_sub(w.range);
                if monotone {
                    // windows only move forward: gallop from the last edge
                    lo = advance(ts, lo, |t| t < from);
                    hi = advance(ts, hi.max(lo), |t| t <= *r);
                } else {
                    lo = ts.partition_point(|t| *t < from);
                    hi = ts.partition_point(|t| *t <= *r).max(lo);
                }
                if !buckets.is_empty() {
                    // clean buckets: inside this window iff their start is
                    blo = buckets.partition_point(|b| b.start < from);
                    bhi = buckets.partition_point(|b| b.start <= *r).max(blo);
                }
                if hi - lo > max_samples {
                    return Err(QueryError::TooManySamples);
                }
                let (Some(wts), Some(wvals)) = (ts.get(lo..hi), vals.get(lo..hi)) else {
                    points.push(None);
                    continue;
                };
                let wbuckets = buckets.get(blo..bhi).unwrap_or(&[]);
                if (!wts.is_empty() || !wbuckets.is_empty())
                    && let Some(s) = seen_any.get_mut(i)
                {
                    *s = true;
                }
                if !wbuckets.is_empty() {
                    let p = functions::apply_summarised(f, wts, wvals, wbuckets);
                    any |= p.is_some();
                    points.push(p);
                    continue;
                }
                let ctx = functions::WindowCtx {
                    range_start: from,
                    range_end: *r,
                    range_ms: w.range,
                    step_time: steps.at(i),
                    param: param.as_ref().and_then(|p| p.get(i).copied()).unwrap_or(f64::NAN),
                };
                let p = if wts.is_empty() {
                    None
                } else {
                    functions::apply(f, wts, wvals, &ctx)
                };
                any |= p.is_some();
                points.push(p);
            }
            if any && f != RangeFn::AbsentOverTime {
                let mut s = Series {
                    labels,
                    drop_name: drop || !keep_name,
                    points,
                };
                if check {
                    s.materialize();
                    if !seen_labels.insert(std::hash::BuildHasher::hash_one(&hasher, &s.labels)) {
                        return Err(same_labelset());
                    }
                }
                let kept = sink(s)?;
                produced = produced.saturating_add(kept);
            }
            if produced > budget {
                return Err(QueryError::TooManySamples);
            }
            Ok(())
        };
        match m {
            Expr::MatrixSelector(ms) => {
                let w = self.window(&ms.vs, millis(&ms.range), None)?;
                if self.limits.use_rollups && functions::summarisable(f) {
                    self.select_summaries(&ms.vs, &w, &mut |key, buckets, ts, vals| {
                        let labels = if need_labels {
                            Labels::from_key(key)
                        } else {
                            Labels::new()
                        };
                        per_series(labels, false, ts, vals, buckets, &w)
                    })?;
                } else {
                    self.select_keys(&ms.vs, &w, &mut |key, ts, vals| {
                        let labels = if need_labels {
                            Labels::from_key(key)
                        } else {
                            Labels::new()
                        };
                        per_series(labels, false, ts, vals, &[], &w)
                    })?;
                }
            }
            Expr::Subquery(sq) => {
                let w = self.subquery_window(sq);
                self.subquery_raw(sq, &mut |labels, drop, ts, vals| {
                    per_series(labels.clone(), drop, ts, vals, &[], &w)
                })?;
            }
            _ => {
                return Err(QueryError::BadData(format!(
                    "expected a range vector argument for {}()",
                    f.name()
                )));
            }
        }
        self.account(produced)?;
        if f == RangeFn::AbsentOverTime {
            let labels = absent_labels(m);
            let points: Vec<Option<f64>> = seen_any.iter().map(|s| (!s).then_some(1.0)).collect();
            if points.iter().any(Option::is_some) {
                let kept = sink(Series {
                    labels,
                    drop_name: false,
                    points,
                })?;
                self.account(kept)?;
            }
        }
        Ok(())
    }

    /// Prometheus 2.42's name dropping and `ContainsSameLabelset` check for one node's result
    /// (unless [`QueryLimits::delayed_name_removal`]): pending name drops are applied now, and
    /// two series with the same labels are the error "vector cannot contain metrics with the
    /// same labelset" — at any one step (`per_step`, what `rangeEval` checks after a function
    /// call, an aggregation or an operator), or anywhere in the result (unary minus).
    fn check_same_labelset(&self, series: &mut [Series], per_step: bool) -> Result<(), QueryError> {
        if self.limits.delayed_name_removal {
            return Ok(());
        }
        for s in series.iter_mut() {
            s.materialize();
        }
        if series.len() < 2 {
            return Ok(());
        }
        let mut groups: HashMap<&Labels, Vec<usize>> = HashMap::with_capacity(series.len());
        for (i, s) in series.iter().enumerate() {
            groups.entry(&s.labels).or_default().push(i);
        }
        for idx in groups.values().filter(|g| g.len() > 1) {
            if !per_step {
                return Err(same_labelset());
            }
            let mut taken = vec![false; self.steps.len()];
            for s in idx.iter().filter_map(|i| series.get(*i)) {
                for (slot, p) in taken.iter_mut().zip(&s.points) {
                    if p.is_some() {
                        if *slot {
                            return Err(same_labelset());
                        }
                        *slot = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn aggregate(&mut self, a: &AggregateExpr) -> Result<Value, QueryError> {
        let op = a.op.to_string().to_lowercase();
        let n = self.steps.len();
        let grouping_free = a.modifier.is_none()
            || matches!(&a.modifier, Some(LabelModifier::Include(l)) if l.labels.is_empty());
        let need_labels = !grouping_free
            || !matches!(
                op.as_str(),
                "sum" | "avg" | "count" | "min" | "max" | "group" | "stddev" | "stdvar" | "quantile"
            );
        let grouping = match &a.modifier {
            None => functions::Grouping::By(Vec::new()),
            Some(LabelModifier::Include(l)) => functions::Grouping::By(l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => functions::Grouping::Without(l.labels.clone()),
        };
        if let Some(out) = self.aggregate_parallel(&op, &a.expr, &grouping, need_labels)? {
            return Ok(Value::Vector(out));
        }
        if functions::streamable(&op) {
            // fold series in as the reader hands them over: memory is groups × steps
            let mut agg = functions::StreamAgg::new(&op, &grouping, n)?;
            self.stream(&a.expr, need_labels, &mut |s| Ok(agg.add(s)))?;
            return Ok(Value::Vector(agg.finish()));
        }
        let mut series = match self.collect_parallel(&a.expr, need_labels)? {
            Some(v) => v,
            None => match self.eval_with(&a.expr, need_labels)? {
                Value::Vector(v) => v,
                _ => return Err(QueryError::BadData("aggregation over a non-vector".into())),
            },
        };
        for s in &mut series {
            s.materialize();
        }
        let param = match (&a.param, op.as_str()) {
            (Some(p), "count_values") => functions::AggParam::Label(self.string_arg(p)?),
            (Some(p), _) => functions::AggParam::Scalar(self.scalar_arg(p)?),
            (None, _) => functions::AggParam::None,
        };
        let out = functions::aggregate(&op, &grouping, &param, series, n)?;
        Ok(Value::Vector(out))
    }

    /// How many parts `inner` (parentheses removed) may be evaluated in at once: one selector
    /// or one range function of range selectors, more than one thread configured, not
    /// already inside a part, and no result-wide duplicate check needed. `None`: one thread.
    fn parallel_parts(&self, inner: &Expr) -> Option<usize> {
        let threads = self.limits.threads();
        let qualifies = match inner {
            Expr::VectorSelector(_) => true,
            Expr::Call(c) => {
                RangeFn::from_name(c.func.name).is_some_and(|f| f != RangeFn::AbsentOverTime)
                    && c.args
                        .args
                        .iter()
                        .any(|a| matches!(unwrap_parens(a), Expr::MatrixSelector(_)))
                    && c.args
                        .args
                        .iter()
                        .all(|a| matches!(unwrap_parens(a), Expr::MatrixSelector(_) | Expr::NumberLiteral(_)))
            }
            _ => false,
        };
        // With 2.42's eager name drop, a range function over a selector that may match several
        // names must refuse duplicate label sets across the WHOLE result, which parts that each
        // see a share of the series cannot check: such queries stay on one thread.
        let needs_whole_result_check = !self.limits.delayed_name_removal
            && match inner {
                Expr::Call(c) => {
                    RangeFn::from_name(c.func.name).is_some_and(|f| f != RangeFn::LastOverTime)
                        && c.args.args.iter().any(|a| match unwrap_parens(a) {
                            Expr::MatrixSelector(ms) => !names_one_metric(&ms.vs),
                            _ => false,
                        })
                }
                _ => false,
            };
        (threads >= 2 && qualifies && !needs_whole_result_check && self.shard.1 == 1).then_some(threads)
    }

    /// Runs `work` on `threads` part evaluators at once (part `i` of `threads` reads only its
    /// share of each selector's series; `unordered`: in the reader's cheapest order) and
    /// returns their results in part order. Every part starts from this evaluator's sample
    /// count and deadline; the series they read are summed against `max_series` and added
    /// here. The first error (or a panicked or unstartable thread) wins.
    fn run_parts<T: Send>(
        &mut self,
        threads: usize,
        unordered: bool,
        work: impl Fn(&mut Evaluator<'a>) -> Result<T, QueryError> + Sync,
    ) -> Result<Vec<T>, QueryError> {
        let (reader, limits, deadline) = (self.reader, self.limits, self.deadline);
        let (query_steps, steps, samples) = (self.query_steps, self.steps, self.samples);
        let work = &work;
        let parts: Vec<Result<(T, usize), QueryError>> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..threads)
                .map(|part| {
                    std::thread::Builder::new()
                        .name("query-part".into())
                        .spawn_scoped(sc, move || {
                            let mut ev = Evaluator {
                                reader,
                                limits,
                                deadline,
                                query_steps,
                                steps,
                                samples,
                                shard: (part, threads),
                                unordered,
                                series_read: 0,
                            };
                            let out = work(&mut ev)?;
                            Ok((out, ev.series_read))
                        })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| Err(QueryError::Execution("a query thread panicked".into()))),
                    Err(e) => Err(QueryError::Execution(format!("cannot start a query thread: {e}"))),
                })
                .collect()
        });
        let mut out = Vec::with_capacity(parts.len());
        let mut series = 0usize;
        for part in parts {
            let (v, read) = part?;
            series = series.saturating_add(read);
            out.push(v);
        }
        if series > self.limits.max_series {
            return Err(QueryError::TooManySeries(self.limits.max_series));
        }
        self.series_read = self.series_read.saturating_add(series);
        Ok(out)
    }

    /// `sum/avg/count/min/max/group` over one selector or one range function of a range
    /// selector, evaluated in [`QueryLimits::threads`] parts at once: each thread reads its
    /// own run of the matching series in the reader's cheapest order
    /// (`SeriesReader::select_shard_unordered`) into its own partial aggregation, and the
    /// partials are merged (groups in first-seen order; the result is sorted by labels
    /// afterwards, and sums differ from one sequential fold by float rounding only). `None`
    /// when the expression does not qualify or one thread is configured. Limits: every part checks the deadline and the whole `max_samples`
    /// budget (so transient memory is at most threads × that), series are summed over the
    /// parts against `max_series`, and the merged result is accounted once.
    fn aggregate_parallel(
        &mut self,
        op: &str,
        expr: &Expr,
        grouping: &functions::Grouping,
        need_labels: bool,
    ) -> Result<Option<Vec<Series>>, QueryError> {
        let inner = unwrap_parens(expr);
        let Some(threads) = self.parallel_parts(inner) else {
            return Ok(None);
        };
        if !functions::StreamAgg::mergeable(op) {
            return Ok(None);
        }
        let n = self.steps.len();
        let parts = self.run_parts(threads, true, |ev| {
            let mut agg = functions::StreamAgg::new(op, grouping, n)?;
            ev.stream(inner, need_labels, &mut |s| Ok(agg.add(s)))?;
            Ok(agg)
        })?;
        let mut merged: Option<functions::StreamAgg<'_>> = None;
        let mut slots = 0usize;
        for agg in parts {
            match merged.as_mut() {
                None => {
                    slots = agg.slots();
                    merged = Some(agg);
                }
                Some(m) => slots = slots.saturating_add(m.merge(agg)),
            }
        }
        self.account(slots)?;
        Ok(Some(merged.map(functions::StreamAgg::finish).unwrap_or_default()))
    }

    /// The series of one selector or one range function of range selectors (see
    /// [`Evaluator::parallel_parts`]), evaluated in parts at once for an aggregation that
    /// needs them all (`topk`, `quantile`, …): each thread reads its own contiguous run of
    /// the matching series in key order (`SeriesReader::select_shard`), and the runs are
    /// joined in part order, so the result holds the series in exactly the order one thread
    /// would (ties in `topk` are broken by that order). Limits as in
    /// [`Evaluator::aggregate_parallel`]. `None` when the expression does not qualify.
    fn collect_parallel(
        &mut self,
        expr: &Expr,
        need_labels: bool,
    ) -> Result<Option<Vec<Series>>, QueryError> {
        let inner = unwrap_parens(expr);
        let Some(threads) = self.parallel_parts(inner) else {
            return Ok(None);
        };
        let parts = self.run_parts(threads, false, |ev| {
            let mut out = Vec::new();
            ev.stream(inner, need_labels, &mut collect_into(&mut out))?;
            Ok(out)
        })?;
        let all: Vec<Series> = parts.into_iter().flatten().collect();
        self.account(all.iter().map(|s| s.points.len()).sum())?;
        Ok(Some(all))
    }

    fn binary(&mut self, b: &BinaryExpr) -> Result<Value, QueryError> {
        let op = b.op.to_string().to_lowercase();
        let return_bool = b.return_bool();
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let out = l
                    .iter()
                    .zip(&r)
                    .map(|(x, y)| {
                        let (v, keep) = functions::binop(&op, *x, *y)?;
                        Ok(if functions::is_comparison(&op) {
                            if keep { 1.0 } else { 0.0 }
                        } else {
                            v
                        })
                    })
                    .collect::<Result<Vec<f64>, QueryError>>()?;
                Ok(Value::Scalar(out))
            }
            (Value::Vector(v), Value::Scalar(s)) => Ok(Value::Vector(functions::vector_scalar(
                &op,
                v,
                &s,
                false,
                return_bool,
            )?)),
            (Value::Scalar(s), Value::Vector(v)) => Ok(Value::Vector(functions::vector_scalar(
                &op,
                v,
                &s,
                true,
                return_bool,
            )?)),
            (Value::Vector(l), Value::Vector(r)) => {
                let card = b
                    .modifier
                    .as_ref()
                    .map(|m| m.card.clone())
                    .unwrap_or(VectorMatchCardinality::OneToOne);
                let matching = b.modifier.as_ref().and_then(|m| m.matching.clone());
                let m = functions::Matching::new(card, matching);
                let out = if matches!(op.as_str(), "and" | "or" | "unless") {
                    functions::set_op(&op, l, r, &m, self.steps.len())
                } else {
                    functions::vector_vector(&op, l, r, &m, return_bool, self.steps.len())?
                };
                Ok(Value::Vector(out))
            }
            _ => Err(QueryError::BadData(format!("binary operator {op} on a string"))),
        }
    }
}

fn arg<'e>(args: &[&'e Expr], i: usize) -> Result<&'e Expr, QueryError> {
    args.get(i)
        .copied()
        .ok_or_else(|| QueryError::BadData("missing function argument".into()))
}

/// Whether a selector can only match series of one metric name (an equality matcher on
/// `__name__`), so dropping the name cannot make two of them equal.
fn names_one_metric(vs: &VectorSelector) -> bool {
    vs.name.is_some()
        || vs.matchers.matchers.iter().any(|m| {
            m.name == model::METRIC_NAME_LABEL && matches!(m.op, promql_parser::label::MatchOp::Equal)
        })
}

fn nonempty(v: Vec<Series>) -> Vec<Series> {
    v.into_iter()
        .filter(|s| s.points.iter().any(Option::is_some))
        .collect()
}

/// The labels `absent()` reports, as Prometheus builds them: walking the selector's
/// matchers, the first equality matcher of a label sets it; any other matcher of that label
/// (a second equality included) removes it for good. Nothing for anything but a plain selector.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match unwrap_parens(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::new(),
    };
    let mut labels = Labels::new();
    let mut has: Vec<&str> = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == model::METRIC_NAME_LABEL {
            continue;
        }
        if matches!(m.op, promql_parser::label::MatchOp::Equal) && !has.contains(&m.name.as_str()) {
            labels.set(&m.name, &m.value);
            has.push(&m.name);
        } else {
            labels.remove(&m.name);
        }
    }
    labels
}
