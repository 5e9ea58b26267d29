//! The arithmetic of PromQL: range-window functions, aggregations, binary operators and
//! `histogram_quantile`, each a faithful port of Prometheus 2.x `promql/functions.go` and
//! `promql/engine.go` semantics (NaN handling, extrapolation, matching errors).

use std::collections::HashMap;

use promql_parser::parser::{LabelModifier, VectorMatchCardinality};

use crate::QueryError;
use crate::eval::Series;
use crate::labels::Labels;

/// Functions that take a range vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeFn {
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    SumOverTime,
    CountOverTime,
    LastOverTime,
    QuantileOverTime,
    StddevOverTime,
    StdvarOverTime,
    Rate,
    Irate,
    Increase,
    Delta,
    Idelta,
    Deriv,
    Changes,
    Resets,
    AbsentOverTime,
    PresentOverTime,
    PredictLinear,
}

impl RangeFn {
    const ALL: [(&'static str, RangeFn); 20] = [
        ("avg_over_time", RangeFn::AvgOverTime),
        ("min_over_time", RangeFn::MinOverTime),
        ("max_over_time", RangeFn::MaxOverTime),
        ("sum_over_time", RangeFn::SumOverTime),
        ("count_over_time", RangeFn::CountOverTime),
        ("last_over_time", RangeFn::LastOverTime),
        ("quantile_over_time", RangeFn::QuantileOverTime),
        ("stddev_over_time", RangeFn::StddevOverTime),
        ("stdvar_over_time", RangeFn::StdvarOverTime),
        ("rate", RangeFn::Rate),
        ("irate", RangeFn::Irate),
        ("increase", RangeFn::Increase),
        ("delta", RangeFn::Delta),
        ("idelta", RangeFn::Idelta),
        ("deriv", RangeFn::Deriv),
        ("changes", RangeFn::Changes),
        ("resets", RangeFn::Resets),
        ("absent_over_time", RangeFn::AbsentOverTime),
        ("present_over_time", RangeFn::PresentOverTime),
        ("predict_linear", RangeFn::PredictLinear),
    ];

    pub(crate) fn from_name(name: &str) -> Option<RangeFn> {
        RangeFn::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    pub(crate) fn name(self) -> &'static str {
        RangeFn::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }
}

/// What a window function knows besides the samples.
pub(crate) struct WindowCtx {
    /// `ref - range` (inclusive), ms.
    pub range_start: i64,
    /// `ref` (inclusive), ms.
    pub range_end: i64,
    /// The selector's range, ms.
    pub range_ms: i64,
    /// The step's evaluation time, ms (`predict_linear` extrapolates from it).
    pub step_time: i64,
    /// The scalar parameter at this step (`quantile_over_time`'s φ, `predict_linear`'s t).
    pub param: f64,
}

/// Runs `f` over one non-empty window. `None` means "no output at this step".
pub(crate) fn apply(f: RangeFn, ts: &[i64], vals: &[f64], ctx: &WindowCtx) -> Option<f64> {
    let n = vals.len();
    let first = *vals.first()?;
    let last = *vals.last()?;
    match f {
        RangeFn::SumOverTime => Some(sum(vals)),
        RangeFn::CountOverTime => Some(n as f64),
        RangeFn::LastOverTime => Some(last),
        RangeFn::AvgOverTime => Some(avg(vals)),
        RangeFn::MinOverTime => Some(
            vals.iter()
                .fold(first, |m, v| if *v < m || m.is_nan() { *v } else { m }),
        ),
        RangeFn::MaxOverTime => Some(
            vals.iter()
                .fold(first, |m, v| if *v > m || m.is_nan() { *v } else { m }),
        ),
        RangeFn::QuantileOverTime => Some(quantile(ctx.param, vals.to_vec())),
        RangeFn::StddevOverTime => Some(stdvar(vals).sqrt()),
        RangeFn::StdvarOverTime => Some(stdvar(vals)),
        RangeFn::Rate => extrapolated_rate(ts, vals, ctx, true, true),
        RangeFn::Increase => extrapolated_rate(ts, vals, ctx, true, false),
        RangeFn::Delta => extrapolated_rate(ts, vals, ctx, false, false),
        RangeFn::Irate => instant_value(ts, vals, true),
        RangeFn::Idelta => instant_value(ts, vals, false),
        RangeFn::Deriv => {
            if n < 2 {
                return None;
            }
            Some(linear_regression(ts, vals, *ts.first()?).0)
        }
        RangeFn::PredictLinear => {
            if n < 2 {
                return None;
            }
            let (slope, intercept) = linear_regression(ts, vals, ctx.step_time);
            Some(slope * ctx.param + intercept)
        }
        RangeFn::Changes => {
            let mut c = 0usize;
            for w in vals.windows(2) {
                let (prev, cur) = (w[0], w[1]);
                if cur != prev && !(cur.is_nan() && prev.is_nan()) {
                    c += 1;
                }
            }
            Some(c as f64)
        }
        RangeFn::Resets => Some(vals.windows(2).filter(|w| w[1] < w[0]).count() as f64),
        RangeFn::AbsentOverTime | RangeFn::PresentOverTime => Some(1.0),
    }
}

/// Whether `f` can be computed from [`crate::Bucket`] summaries plus raw samples.
pub(crate) fn summarisable(f: RangeFn) -> bool {
    matches!(
        f,
        RangeFn::SumOverTime
            | RangeFn::CountOverTime
            | RangeFn::MinOverTime
            | RangeFn::MaxOverTime
            | RangeFn::LastOverTime
            | RangeFn::AvgOverTime
    )
}

/// `f` (one of [`summarisable`]) over a window made of raw samples and clean buckets.
/// min, max, count and last equal the raw computation exactly (the buckets keep PromQL's
/// NaN rule for min and max); sum is a compensated sum of the raw values and the bucket
/// sums, and avg that sum over the count, so both differ from Prometheus' sequential
/// Neumaier sum and incremental mean by float rounding only; a sum that overflows to ±inf
/// from finite samples is not rescued as the incremental mean would (known limit).
pub(crate) fn apply_summarised(
    f: RangeFn,
    ts: &[i64],
    vals: &[f64],
    buckets: &[crate::Bucket],
) -> Option<f64> {
    let count = buckets.iter().fold(vals.len() as f64, |c, b| c + b.count as f64);
    if count == 0.0 {
        return None;
    }
    // PromQL's rule: NaN only when every value is NaN (a bucket's min/max keeps it)
    let min_max = |max: bool| {
        let parts = buckets.iter().map(|b| if max { b.max } else { b.min });
        vals.iter().copied().chain(parts).reduce(|m, v| {
            let better = if max { v > m } else { v < m };
            if better || m.is_nan() { v } else { m }
        })
    };
    let total = || {
        let (mut s, mut c) = (0.0, 0.0);
        for v in vals.iter().copied().chain(buckets.iter().map(|b| b.sum)) {
            (s, c) = kahan_inc(v, s, c);
        }
        if s.is_infinite() { s } else { s + c }
    };
    match f {
        RangeFn::CountOverTime => Some(count),
        RangeFn::SumOverTime => Some(total()),
        RangeFn::AvgOverTime => Some(total() / count),
        RangeFn::MinOverTime => min_max(false),
        RangeFn::MaxOverTime => min_max(true),
        RangeFn::LastOverTime => {
            let raw = ts.last().copied().zip(vals.last().copied());
            let bucket = buckets.iter().map(|b| (b.last_ts, b.last)).max_by_key(|p| p.0);
            match (raw, bucket) {
                (Some(r), Some(b)) => Some(if b.0 > r.0 { b.1 } else { r.1 }),
                (Some(r), None) => Some(r.1),
                (None, Some(b)) => Some(b.1),
                (None, None) => None,
            }
        }
        _ => None,
    }
}

/// Neumaier-compensated sum, exactly as Prometheus 2.42's `sum_over_time`, so results agree
/// to the last bit (a faster lane-wise sum differed in the last bits, which `ceil` or a
/// comparison can turn into a different answer).
fn sum(vals: &[f64]) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for v in vals {
        (sum, c) = kahan_inc(*v, sum, c);
    }
    if sum.is_infinite() { sum } else { sum + c }
}

/// The mean exactly as Prometheus 2.42's `avg_over_time`: an incremental, compensated mean
/// that cannot overflow, keeping an infinite mean when finite values follow. Bit-for-bit
/// agreement matters: a plain sum / count differs in the last bit, which `round`, or `rate`
/// over a subquery of it (a tiny decrease reads as a counter reset), turns into a visibly
/// different answer. It costs two divisions per sample (about 2× the sum / count).
fn avg(vals: &[f64]) -> f64 {
    let (mut mean, mut c, mut count): (f64, f64, f64) = (0.0, 0.0, 0.0);
    for v in vals {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (*v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

/// Neumaier-compensated addition, as Prometheus' `kahanSumInc`.
fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

fn stdvar(vals: &[f64]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for v in vals {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// `rate`, `increase` and `delta`: Prometheus' `extrapolatedRate`.
fn extrapolated_rate(
    ts: &[i64],
    vals: &[f64],
    ctx: &WindowCtx,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if vals.len() < 2 {
        return None;
    }
    let (first_t, last_t) = (*ts.first()?, *ts.last()?);
    let (first_v, last_v) = (*vals.first()?, *vals.last()?);
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for v in vals.iter().skip(1) {
            if *v < prev {
                result += prev;
            }
            prev = *v;
        }
    }
    let mut duration_to_start = first_t.saturating_sub(ctx.range_start) as f64 / 1000.0;
    let duration_to_end = ctx.range_end.saturating_sub(last_t) as f64 / 1000.0;
    let sampled_interval = (last_t - first_t) as f64 / 1000.0;
    let avg_between = sampled_interval / (vals.len() - 1) as f64;
    if is_counter && result > 0.0 && first_v >= 0.0 {
        let duration_to_zero = sampled_interval * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    let threshold = avg_between * 1.1;
    let mut extrapolate_to = sampled_interval;
    extrapolate_to += if duration_to_start < threshold {
        duration_to_start
    } else {
        avg_between / 2.0
    };
    extrapolate_to += if duration_to_end < threshold {
        duration_to_end
    } else {
        avg_between / 2.0
    };
    let mut factor = extrapolate_to / sampled_interval;
    if is_rate {
        factor /= ctx.range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: the last two samples.
fn instant_value(ts: &[i64], vals: &[f64], is_rate: bool) -> Option<f64> {
    let n = vals.len();
    if n < 2 {
        return None;
    }
    let (last, prev) = (*vals.get(n - 1)?, *vals.get(n - 2)?);
    let (last_t, prev_t) = (*ts.get(n - 1)?, *ts.get(n - 2)?);
    let mut result = if is_rate && last < prev { last } else { last - prev };
    let interval = last_t - prev_t;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// Least-squares fit with x in seconds relative to `intercept_time`: `(slope, intercept)`.
fn linear_regression(ts: &[i64], vals: &[f64], intercept_time: i64) -> (f64, f64) {
    let init_y = vals.first().copied().unwrap_or(f64::NAN);
    let mut const_y = true;
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, (t, v)) in ts.iter().zip(vals).enumerate() {
        if const_y && i > 0 && *v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = t.saturating_sub(intercept_time) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(*v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// Prometheus' `quantile`: linear interpolation between closest ranks, NaN sorted first.
pub(crate) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    let at = |i: f64| values.get(i as usize).copied().unwrap_or(f64::NAN);
    at(lower) * (1.0 - weight) + at(upper) * weight
}

/// The element-wise math functions: name → function. All drop the metric name.
pub(crate) fn math_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sqrt" => f64::sqrt,
        "sgn" => sgn,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "deg" => |v: f64| v * 180.0 / std::f64::consts::PI,
        "rad" => |v: f64| v * std::f64::consts::PI / 180.0,
        _ => return None,
    })
}

/// The calendar functions over unix seconds (UTC): name → function.
pub(crate) fn date_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "minute" => minute,
        "hour" => |v| civil(v).map_or(f64::NAN, |c| c.hour as f64),
        "day_of_month" => |v| civil(v).map_or(f64::NAN, |c| c.day as f64),
        "day_of_week" => |v| civil(v).map_or(f64::NAN, |c| c.weekday as f64),
        "day_of_year" => |v| civil(v).map_or(f64::NAN, |c| c.yday as f64),
        "days_in_month" => |v| civil(v).map_or(f64::NAN, |c| days_in_month(c.year, c.month) as f64),
        "month" => |v| civil(v).map_or(f64::NAN, |c| c.month as f64),
        "year" => |v| civil(v).map_or(f64::NAN, |c| c.year as f64),
        _ => return None,
    })
}

/// `minute()`: the minute of the hour of a unix time.
pub(crate) fn minute(v: f64) -> f64 {
    civil(v).map_or(f64::NAN, |c| c.minute as f64)
}

struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    weekday: i64,
    yday: i64,
}

/// Splits unix seconds (truncated, as Go's `int64(v)`) into a UTC calendar date.
fn civil(v: f64) -> Option<Civil> {
    if !v.is_finite() || v.abs() > 1e15 {
        return None;
    }
    let secs = v.trunc() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = i64::from(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0));
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM.get(usize::try_from(month - 1).ok()?)? + day + if month > 2 { leap } else { 0 };
    Some(Civil {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        weekday: (days + 4).rem_euclid(7),
        yday,
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Go's `math.Max`: NaN wins, +0 beats -0.
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { b } else { a }
    } else if a > b {
        a
    } else {
        b
    }
}

/// Go's `math.Min`: NaN wins, -0 beats +0.
pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if a == 0.0 && b == 0.0 {
        if a.is_sign_negative() { a } else { b }
    } else if a < b {
        a
    } else {
        b
    }
}

/// PromQL's `sgn`.
pub(crate) fn sgn(v: f64) -> f64 {
    if v < 0.0 {
        -1.0
    } else if v > 0.0 {
        1.0
    } else {
        v
    }
}

/// Order for `sort`/`sort_desc`: by value, NaN always last.
pub(crate) fn cmp_nan_last(a: f64, b: f64, desc: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => {
            let o = a.partial_cmp(&b).unwrap_or(Ordering::Equal);
            if desc { o.reverse() } else { o }
        }
    }
}

/// Rewrites a Go (RE2) regular expression so Rust's `regex` gives it Go's meaning: Go's Perl
/// classes `\d \w \s` (and their negations) and `\b \B` are ASCII-only, Rust's are Unicode.
/// Each becomes an explicit class (valid inside and outside brackets, as Rust nests classes),
/// so `\w+` does not match `São` here, as it does not in Prometheus. The whole is wrapped in
/// `(?-s:…)`: in Prometheus 2.x `.` does not match a newline (3.x changed that), and this
/// flag wins over the `(?s:…)` that callers (and `model::Matcher`) wrap patterns in.
pub(crate) fn go_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 24);
    out.push_str("(?-s:");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str("[0-9]"),
            Some('D') => out.push_str("[^0-9]"),
            Some('w') => out.push_str("[0-9A-Za-z_]"),
            Some('W') => out.push_str("[^0-9A-Za-z_]"),
            Some('s') => out.push_str("[\\t\\n\\f\\r ]"),
            Some('S') => out.push_str("[^\\t\\n\\f\\r ]"),
            Some('b') => out.push_str("(?-u:\\b)"),
            Some('B') => out.push_str("(?-u:\\B)"),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out.push(')');
    out
}

/// Whether `s` is a valid (classic) label name.
pub(crate) fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
}

/// `histogram_quantile(φ, buckets)` over classic `le` buckets.
pub(crate) fn histogram_quantile(q: &[f64], series: Vec<Series>, n: usize) -> Vec<Series> {
    // group by labels without `le` (the name included, as Prometheus does); the name is
    // dropped from the output lazily, so two histograms that differ only by name collide
    // in the final result as they do in Prometheus; skip series whose `le` is not a number
    let mut groups: Vec<(Labels, Vec<(f64, usize)>)> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for (si, s) in series.iter().enumerate() {
        let Ok(le) = parse_go_float(s.labels.get("le")) else {
            continue;
        };
        let mut key = s.labels.clone();
        key.remove("le");
        let gi = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        if let Some(g) = groups.get_mut(gi) {
            g.1.push((le, si));
        }
    }
    let mut out = Vec::new();
    for (labels, members) in groups {
        let mut points = Vec::with_capacity(n);
        for i in 0..n {
            let buckets: Vec<(f64, f64)> = members
                .iter()
                .filter_map(|(le, si)| {
                    series
                        .get(*si)
                        .and_then(|s| s.points.get(i).copied().flatten())
                        .map(|v| (*le, v))
                })
                .collect();
            if buckets.is_empty() {
                points.push(None);
                continue;
            }
            points.push(Some(bucket_quantile(
                q.get(i).copied().unwrap_or(f64::NAN),
                buckets,
            )));
        }
        if points.iter().any(Option::is_some) {
            out.push(Series {
                labels,
                drop_name: true,
                points,
            });
        }
    }
    out
}

/// Parses a float as Go's `strconv.ParseFloat` does for `le` labels (`+Inf`, `Inf`, `NaN`).
fn parse_go_float(s: &str) -> Result<f64, ()> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| ()),
    }
}

fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // coalesce equal bounds
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (le, c) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == le => last.1 += c,
            _ => merged.push((le, c)),
        }
    }
    // ensure monotonic counts
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged.last().map_or(0.0, |b| b.1);
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let search = merged.len() - 1;
    let b = merged
        .get(..search)
        .map_or(search, |s| s.partition_point(|x| x.1 < rank));
    if b == search {
        return merged.get(search.wrapping_sub(1)).map_or(f64::NAN, |x| x.0);
    }
    let Some(&(bucket_end, mut count)) = merged.get(b) else {
        return f64::NAN;
    };
    if b == 0 && bucket_end <= 0.0 {
        return bucket_end;
    }
    let mut bucket_start = 0.0;
    if b > 0
        && let Some(&(prev_le, prev_c)) = merged.get(b - 1)
    {
        bucket_start = prev_le;
        count -= prev_c;
        rank -= prev_c;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// `by (…)` or `without (…)`.
pub(crate) enum Grouping {
    By(Vec<String>),
    Without(Vec<String>),
}

impl Grouping {
    fn key(&self, l: &Labels) -> Labels {
        match self {
            Grouping::By(names) if names.is_empty() => Labels::new(),
            Grouping::By(names) => l.keep_only(names),
            Grouping::Without(names) => l.without(names),
        }
    }
}

/// The parameter of `topk`/`bottomk`/`quantile` (per step) or `count_values` (a label).
pub(crate) enum AggParam {
    None,
    Scalar(Vec<f64>),
    Label(String),
}

#[derive(Clone, Copy)]
struct Acc {
    value: f64,
    mean: f64,
    count: f64,
}

/// Evaluates an aggregation step by step.
pub(crate) fn aggregate(
    op: &str,
    grouping: &Grouping,
    param: &AggParam,
    series: Vec<Series>,
    n: usize,
) -> Result<Vec<Series>, QueryError> {
    match op {
        "topk" | "bottomk" => return Ok(top_k(op == "topk", grouping, param, series, n)),
        "count_values" => {
            let AggParam::Label(label) = param else {
                return Err(QueryError::BadData("count_values needs a label name".into()));
            };
            if !is_label_name(label) {
                return Err(QueryError::BadData(format!("invalid label name {label:?}")));
            }
            let mut index: HashMap<Labels, usize> = HashMap::new();
            let mut out: Vec<Series> = Vec::new();
            for s in &series {
                let base = grouping.key(&s.labels);
                for (i, p) in s.points.iter().enumerate() {
                    let Some(v) = p else { continue };
                    let mut key = base.clone();
                    key.set(label, &crate::time::format_value(*v));
                    let gi = *index.entry(key.clone()).or_insert_with(|| {
                        out.push(Series {
                            labels: key,
                            drop_name: false,
                            points: vec![None; n],
                        });
                        out.len() - 1
                    });
                    if let Some(slot) = out.get_mut(gi).and_then(|g| g.points.get_mut(i)) {
                        *slot = Some(slot.unwrap_or(0.0) + 1.0);
                    }
                }
            }
            return Ok(out);
        }
        "quantile" => {
            let AggParam::Scalar(q) = param else {
                return Err(QueryError::BadData("quantile needs a scalar".into()));
            };
            let (keys, members) = groups(grouping, &series);
            let mut out = Vec::with_capacity(keys.len());
            for (labels, m) in keys.into_iter().zip(members) {
                let points = (0..n)
                    .map(|i| {
                        let vals: Vec<f64> = m
                            .iter()
                            .filter_map(|si| series.get(*si).and_then(|s| s.points.get(i).copied().flatten()))
                            .collect();
                        (!vals.is_empty()).then(|| quantile(q.get(i).copied().unwrap_or(f64::NAN), vals))
                    })
                    .collect();
                out.push(Series {
                    labels,
                    drop_name: false,
                    points,
                });
            }
            return Ok(nonempty(out));
        }
        _ => {}
    }
    let mut agg = StreamAgg::new(op, grouping, n)?;
    for s in series {
        agg.add(s);
    }
    Ok(agg.finish())
}

/// Whether an aggregation can fold its input one series at a time (see [`StreamAgg`]).
pub(crate) fn streamable(op: &str) -> bool {
    matches!(
        op,
        "sum" | "avg" | "count" | "min" | "max" | "group" | "stddev" | "stdvar"
    )
}

/// An aggregation folded one input series at a time: memory is groups × steps, whatever
/// the number of input series. Groups appear in first-seen order and each group folds its
/// series in arrival order, so results equal the batch computation.
pub(crate) struct StreamAgg<'g> {
    op: AggOp,
    grouping: &'g Grouping,
    n: usize,
    index: HashMap<Labels, usize>,
    groups: Vec<(Labels, Vec<Option<Acc>>)>,
}

impl<'g> StreamAgg<'g> {
    pub(crate) fn new(op: &str, grouping: &'g Grouping, n: usize) -> Result<StreamAgg<'g>, QueryError> {
        let op = match op {
            "sum" => AggOp::Sum,
            "avg" => AggOp::Avg,
            "count" => AggOp::Count,
            "min" => AggOp::Min,
            "max" => AggOp::Max,
            "group" => AggOp::Group,
            "stddev" => AggOp::Stddev,
            "stdvar" => AggOp::Stdvar,
            other => return Err(QueryError::NotSupported(format!("aggregation {other}"))),
        };
        Ok(StreamAgg {
            op,
            grouping,
            n,
            index: HashMap::new(),
            groups: Vec::new(),
        })
    }

    /// Folds one series in; returns the result slots newly allocated (a new group's steps).
    pub(crate) fn add(&mut self, mut s: Series) -> usize {
        if s.drop_name {
            s.labels.drop_name();
            s.drop_name = false;
        }
        let key = self.grouping.key(&s.labels);
        let mut allocated = 0;
        let gi = match self.index.get(&key) {
            Some(gi) => *gi,
            None => {
                self.index.insert(key.clone(), self.groups.len());
                self.groups.push((key, vec![None; self.n]));
                allocated = self.n;
                self.groups.len() - 1
            }
        };
        let op = self.op;
        if let Some((_, accs)) = self.groups.get_mut(gi) {
            for (acc, p) in accs.iter_mut().zip(&s.points) {
                let Some(v) = *p else { continue };
                *acc = Some(match *acc {
                    None => Acc {
                        value: match op {
                            AggOp::Count | AggOp::Group => 1.0,
                            AggOp::Stddev | AggOp::Stdvar => 0.0,
                            _ => v,
                        },
                        mean: v,
                        count: 1.0,
                    },
                    Some(a) => accumulate(op, a, v),
                });
            }
        }
        allocated
    }

    /// Result slots held (groups × steps).
    pub(crate) fn slots(&self) -> usize {
        self.groups.len().saturating_mul(self.n)
    }

    /// Whether [`StreamAgg::merge`] supports this aggregation (not stddev/stdvar).
    pub(crate) fn mergeable(op: &str) -> bool {
        matches!(op, "sum" | "avg" | "count" | "min" | "max" | "group")
    }

    /// Folds in an aggregation of *later* series (a later shard in key order), as if its
    /// series had been added here one by one: groups keep their first-seen order; min,
    /// max, count and group are exact; sum adds partial sums and avg weights partial means,
    /// so both differ from one sequential fold by float rounding only. Returns the result
    /// slots newly allocated.
    pub(crate) fn merge(&mut self, other: StreamAgg<'_>) -> usize {
        let op = self.op;
        let mut allocated = 0;
        for (key, accs) in other.groups {
            let gi = match self.index.get(&key) {
                Some(gi) => *gi,
                None => {
                    self.index.insert(key.clone(), self.groups.len());
                    self.groups.push((key, vec![None; self.n]));
                    allocated += self.n;
                    self.groups.len() - 1
                }
            };
            let Some((_, mine)) = self.groups.get_mut(gi) else {
                continue;
            };
            for (a, b) in mine.iter_mut().zip(accs) {
                let Some(b) = b else { continue };
                *a = Some(match *a {
                    None => b,
                    Some(a) => merge_acc(op, a, b),
                });
            }
        }
        allocated
    }

    /// The aggregated series, groups without any value left out.
    pub(crate) fn finish(self) -> Vec<Series> {
        let op = self.op;
        let out = self
            .groups
            .into_iter()
            .map(|(labels, accs)| Series {
                labels,
                drop_name: false,
                points: accs
                    .into_iter()
                    .map(|a| {
                        a.map(|a| match op {
                            AggOp::Avg => a.mean,
                            AggOp::Stdvar => a.value / a.count,
                            AggOp::Stddev => (a.value / a.count).sqrt(),
                            _ => a.value,
                        })
                    })
                    .collect(),
            })
            .collect();
        nonempty(out)
    }
}

/// The aggregations computed by folding one accumulator per group and step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggOp {
    Sum,
    Avg,
    Count,
    Min,
    Max,
    Group,
    Stddev,
    Stdvar,
}

/// Combines the accumulators of two disjoint runs of series (`b` after `a`).
fn merge_acc(op: AggOp, mut a: Acc, b: Acc) -> Acc {
    match op {
        AggOp::Sum | AggOp::Count => a.value += b.value,
        AggOp::Group => {}
        AggOp::Max => {
            if a.value < b.value || a.value.is_nan() {
                a.value = b.value;
            }
        }
        AggOp::Min => {
            if a.value > b.value || a.value.is_nan() {
                a.value = b.value;
            }
        }
        AggOp::Avg => {
            let count = a.count + b.count;
            a.mean = if a.mean.is_infinite() || b.mean.is_infinite() || a.mean.is_nan() || b.mean.is_nan() {
                // inf + inf = inf, inf - inf = NaN, inf + finite = inf: as the sequential mean
                a.mean + b.mean
            } else {
                a.mean + (b.mean - a.mean) * (b.count / count)
            };
            a.count = count;
        }
        AggOp::Stddev | AggOp::Stdvar => {
            // Chan et al.'s pairwise update (not used by the parallel path, kept total)
            let count = a.count + b.count;
            let delta = b.mean - a.mean;
            a.value += b.value + delta * delta * (a.count * b.count / count);
            a.mean += delta * (b.count / count);
            a.count = count;
        }
    }
    a
}

fn accumulate(op: AggOp, mut a: Acc, v: f64) -> Acc {
    match op {
        AggOp::Sum => a.value += v,
        AggOp::Count => a.value += 1.0,
        AggOp::Group => {}
        AggOp::Max => {
            if a.value < v || a.value.is_nan() {
                a.value = v;
            }
        }
        AggOp::Min => {
            if a.value > v || a.value.is_nan() {
                a.value = v;
            }
        }
        AggOp::Avg => {
            a.count += 1.0;
            if a.mean.is_infinite() {
                if v.is_infinite() && (a.mean > 0.0) == (v > 0.0) {
                    return a;
                }
                if !v.is_infinite() && !v.is_nan() {
                    return a;
                }
            }
            a.mean += v / a.count - a.mean / a.count;
        }
        AggOp::Stddev | AggOp::Stdvar => {
            // Welford
            a.count += 1.0;
            let delta = v - a.mean;
            a.mean += delta / a.count;
            a.value += delta * (v - a.mean);
        }
    }
    a
}

fn groups(grouping: &Grouping, series: &[Series]) -> (Vec<Labels>, Vec<Vec<usize>>) {
    let mut keys = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    if matches!(grouping, Grouping::By(v) if v.is_empty()) {
        if !series.is_empty() {
            keys.push(Labels::new());
            members.push((0..series.len()).collect());
        }
        return (keys, members);
    }
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for (si, s) in series.iter().enumerate() {
        let key = grouping.key(&s.labels);
        let gi = match index.get(&key) {
            Some(gi) => *gi,
            None => {
                index.insert(key.clone(), keys.len());
                keys.push(key);
                members.push(Vec::new());
                keys.len() - 1
            }
        };
        if let Some(m) = members.get_mut(gi) {
            m.push(si);
        }
    }
    (keys, members)
}

fn nonempty(v: Vec<Series>) -> Vec<Series> {
    v.into_iter()
        .filter(|s| s.points.iter().any(Option::is_some))
        .collect()
}

/// `topk`/`bottomk`: per step and group, the k largest (smallest) samples keep their own
/// labels; NaN ranks last.
fn top_k(top: bool, grouping: &Grouping, param: &AggParam, series: Vec<Series>, n: usize) -> Vec<Series> {
    let AggParam::Scalar(ks) = param else {
        return Vec::new();
    };
    let (_, members) = groups(grouping, &series);
    let mut keep: Vec<Vec<Option<f64>>> = vec![vec![None; n]; series.len()];
    for m in &members {
        for i in 0..n {
            let k = ks.get(i).copied().unwrap_or(0.0);
            if k.is_nan() || k < 1.0 {
                continue;
            }
            let k = if k > usize::MAX as f64 {
                usize::MAX
            } else {
                k as usize
            };
            let mut cands: Vec<(usize, f64)> = m
                .iter()
                .filter_map(|si| {
                    series
                        .get(*si)
                        .and_then(|s| s.points.get(i).copied().flatten())
                        .map(|v| (*si, v))
                })
                .collect();
            let order = |a: &(usize, f64), b: &(usize, f64)| cmp_nan_last(a.1, b.1, top).then(a.0.cmp(&b.0));
            if k < cands.len() {
                // only the k best need ordering
                cands.select_nth_unstable_by(k, order);
                cands.truncate(k);
            }
            cands.sort_by(order);
            for (si, v) in cands.into_iter().take(k) {
                if let Some(slot) = keep.get_mut(si).and_then(|p| p.get_mut(i)) {
                    *slot = Some(v);
                }
            }
        }
    }
    let mut out: Vec<Series> = series
        .into_iter()
        .zip(keep)
        .filter(|(_, p)| p.iter().any(Option::is_some))
        .map(|(mut s, p)| {
            s.points = p;
            s
        })
        .collect();
    if n == 1 {
        // instant queries list topk's answer in rank order
        out.sort_by(|a, b| {
            let (x, y) = (
                a.points.first().copied().flatten().unwrap_or(f64::NAN),
                b.points.first().copied().flatten().unwrap_or(f64::NAN),
            );
            cmp_nan_last(x, y, top)
        });
    }
    out
}

/// Whether an operator's result loses the metric name (arithmetic except `atan2`, as in
/// Prometheus 2.x).
pub(crate) fn drops_name(op: &str) -> bool {
    matches!(op, "+" | "-" | "*" | "/" | "%" | "^")
}

/// Whether `op` is a comparison operator.
pub(crate) fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// One binary operation on two floats: `(value, keep)`; comparisons return the left value
/// and whether the comparison holds.
pub(crate) fn binop(op: &str, l: f64, r: f64) -> Result<(f64, bool), QueryError> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => return Err(QueryError::NotSupported(format!("operator {other}"))),
    })
}

/// Vector ⊕ scalar (or scalar ⊕ vector when `swap`).
pub(crate) fn vector_scalar(
    op: &str,
    mut series: Vec<Series>,
    scalar: &[f64],
    swap: bool,
    return_bool: bool,
) -> Result<Vec<Series>, QueryError> {
    let cmp = is_comparison(op);
    for s in &mut series {
        for (p, sv) in s.points.iter_mut().zip(scalar) {
            let Some(v) = *p else { continue };
            let (l, r) = if swap { (*sv, v) } else { (v, *sv) };
            let (mut value, keep) = binop(op, l, r)?;
            if cmp && swap {
                value = r;
            }
            *p = if return_bool {
                Some(if keep { 1.0 } else { 0.0 })
            } else if keep {
                Some(value)
            } else {
                None
            };
        }
        if drops_name(op) || return_bool {
            s.drop_name = true;
        }
    }
    Ok(nonempty(series))
}

/// How two vectors are matched.
pub(crate) struct Matching {
    card: VectorMatchCardinality,
    on: bool,
    labels: Vec<String>,
}

impl Matching {
    pub(crate) fn new(card: VectorMatchCardinality, m: Option<LabelModifier>) -> Matching {
        let (on, labels) = match m {
            Some(LabelModifier::Include(l)) => (true, l.labels),
            Some(LabelModifier::Exclude(l)) => (false, l.labels),
            None => (false, Vec::new()),
        };
        Matching { card, on, labels }
    }

    fn signature(&self, l: &Labels) -> Labels {
        if self.on {
            l.keep_only(&self.labels)
        } else {
            l.without(&self.labels)
        }
    }

    fn include(&self) -> &[String] {
        match &self.card {
            VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => &l.labels,
            _ => &[],
        }
    }
}

fn materialized(mut v: Vec<Series>) -> Vec<Series> {
    for s in &mut v {
        if s.drop_name {
            s.labels.drop_name();
            s.drop_name = false;
        }
    }
    v
}

/// `and`, `or`, `unless`, step by step.
pub(crate) fn set_op(op: &str, lhs: Vec<Series>, rhs: Vec<Series>, m: &Matching, n: usize) -> Vec<Series> {
    let mut lhs = materialized(lhs);
    let rhs = materialized(rhs);
    let lsig: Vec<Labels> = lhs.iter().map(|s| m.signature(&s.labels)).collect();
    let rsig: Vec<Labels> = rhs.iter().map(|s| m.signature(&s.labels)).collect();
    let (lid, rid, nsig) = signature_ids(&lsig, &rsig);
    // per step: which signatures have a value on one side
    let mut present = vec![false; nsig];
    let mark = |side: &[Series], ids: &[usize], i: usize, present: &mut Vec<bool>| {
        present.iter_mut().for_each(|p| *p = false);
        for (s, id) in side.iter().zip(ids) {
            if s.points.get(i).copied().flatten().is_some()
                && let Some(p) = present.get_mut(*id)
            {
                *p = true;
            }
        }
    };
    match op {
        "and" | "unless" => {
            for i in 0..n {
                mark(&rhs, &rid, i, &mut present);
                for (s, id) in lhs.iter_mut().zip(&lid) {
                    let hit = present.get(*id).copied().unwrap_or(false);
                    if (op == "and") != hit
                        && let Some(p) = s.points.get_mut(i)
                    {
                        *p = None;
                    }
                }
            }
            nonempty(lhs)
        }
        _ => {
            let mut right_out = rhs;
            for i in 0..n {
                mark(&lhs, &lid, i, &mut present);
                for (s, id) in right_out.iter_mut().zip(&rid) {
                    if present.get(*id).copied().unwrap_or(false)
                        && let Some(p) = s.points.get_mut(i)
                    {
                        *p = None;
                    }
                }
            }
            lhs.extend(right_out);
            nonempty(lhs)
        }
    }
}

/// Numbers each distinct signature, so per-step matching indexes arrays instead of hashing
/// label sets: `(ids of the first side, ids of the second side, number of ids)`.
fn signature_ids(a: &[Labels], b: &[Labels]) -> (Vec<usize>, Vec<usize>, usize) {
    let mut ids: HashMap<&Labels, usize> = HashMap::new();
    let mut id_of = |l| {
        let next = ids.len();
        *ids.entry(l).or_insert(next)
    };
    let ia: Vec<usize> = a.iter().map(&mut id_of).collect();
    let ib: Vec<usize> = b.iter().map(&mut id_of).collect();
    let n = ids.len();
    (ia, ib, n)
}

/// Arithmetic and comparison between two vectors, step by step.
pub(crate) fn vector_vector(
    op: &str,
    lhs: Vec<Series>,
    rhs: Vec<Series>,
    m: &Matching,
    return_bool: bool,
    n: usize,
) -> Result<Vec<Series>, QueryError> {
    let one_to_many = matches!(m.card, VectorMatchCardinality::OneToMany(_));
    let one_to_one = matches!(m.card, VectorMatchCardinality::OneToOne);
    let (many, one) = if one_to_many {
        (materialized(rhs), materialized(lhs))
    } else {
        (materialized(lhs), materialized(rhs))
    };
    let many_sig: Vec<Labels> = many.iter().map(|s| m.signature(&s.labels)).collect();
    let one_sig: Vec<Labels> = one.iter().map(|s| m.signature(&s.labels)).collect();
    let (many_id, one_id, nsig) = signature_ids(&many_sig, &one_sig);
    let drop_name = drops_name(op);
    let mut out: Vec<Series> = Vec::new();
    let mut out_index: HashMap<Labels, usize> = HashMap::new();
    // (many, one) pair → output series; result labels are computed once per pair
    let mut pair_out: HashMap<(usize, usize), usize> = HashMap::new();
    // per step: the "one" side's series per signature, and the outputs made per signature
    let mut right: Vec<Option<usize>> = vec![None; nsig];
    let mut matched: Vec<Vec<usize>> = vec![Vec::new(); nsig];
    let present =
        |side: &[Series], i: usize| side.iter().any(|s| s.points.get(i).copied().flatten().is_some());
    for i in 0..n {
        // Prometheus short-circuits a step where either side is empty: nothing can match, so
        // duplicates on the other side are no error there
        if !present(&many, i) || !present(&one, i) {
            continue;
        }
        right.iter_mut().for_each(|r| *r = None);
        matched.iter_mut().for_each(Vec::clear);
        for (oi, s) in one.iter().enumerate() {
            if s.points.get(i).copied().flatten().is_none() {
                continue;
            }
            let Some(slot) = one_id.get(oi).and_then(|id| right.get_mut(*id)) else {
                continue;
            };
            if let Some(prev) = slot.replace(oi) {
                let side = if one_to_many { "left" } else { "right" };
                let k = one_sig.get(oi).map(|k| k.to_string()).unwrap_or_default();
                let other = one.get(prev).map(|p| p.labels.to_string()).unwrap_or_default();
                return Err(QueryError::Execution(format!(
                    "found duplicate series for the match group {k} on the {side} hand-side of the operation: [{}, {other}];many-to-many matching not allowed: matching labels must be unique on one side",
                    s.labels
                )));
            }
        }
        for (mi, s) in many.iter().enumerate() {
            let Some(lv) = s.points.get(i).copied().flatten() else {
                continue;
            };
            let Some(&sig) = many_id.get(mi) else { continue };
            let Some(oi) = right.get(sig).copied().flatten() else {
                continue;
            };
            let Some(rv) = one.get(oi).and_then(|o| o.points.get(i).copied().flatten()) else {
                continue;
            };
            let (vl, vr) = if one_to_many { (rv, lv) } else { (lv, rv) };
            let (mut value, keep) = binop(op, vl, vr)?;
            if return_bool {
                value = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            let target = match pair_out.get(&(mi, oi)) {
                Some(t) => *t,
                None => {
                    let mut l = s.labels.clone();
                    if drop_name || return_bool {
                        l.drop_name();
                    }
                    if one_to_one {
                        l = if m.on {
                            l.keep_only(&m.labels)
                        } else {
                            l.without_keep_name(&m.labels)
                        };
                    }
                    for name in m.include() {
                        let v = one
                            .get(oi)
                            .map(|o| o.labels.get(name).to_owned())
                            .unwrap_or_default();
                        l.set(name, &v);
                    }
                    let t = match out_index.get(&l) {
                        Some(t) => *t,
                        None => {
                            out_index.insert(l.clone(), out.len());
                            out.push(Series {
                                labels: l,
                                drop_name: false,
                                points: vec![None; n],
                            });
                            out.len() - 1
                        }
                    };
                    pair_out.insert((mi, oi), t);
                    t
                }
            };
            let Some(seen) = matched.get_mut(sig) else {
                continue;
            };
            if one_to_one {
                if !seen.is_empty() {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
            } else if seen.contains(&target) {
                return Err(QueryError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches".into(),
                ));
            }
            seen.push(target);
            if let Some(slot) = out.get_mut(target).and_then(|s| s.points.get_mut(i)) {
                if slot.is_some() {
                    return Err(QueryError::Execution(
                        "vector cannot contain metrics with the same labelset".into(),
                    ));
                }
                *slot = Some(value);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod go_regex_tests {
    use super::go_regex;

    #[test]
    fn perl_classes_are_ascii_as_in_go() {
        // (pattern, input, whole match in Go's RE2)
        let cases: &[(&str, &str, bool)] = &[
            (r"\w+", "abc_1", true),
            (r"\w+", "São", false),
            (r"\W", "ã", true),
            (r"\d+", "123", true),
            (r"\d", "٣", false),
            (r"\D", "٣", true),
            (r"\s", " ", true),
            (r"\s", "\u{a0}", false),
            (r"\S", "\u{a0}", true),
            (r"[\w-]+", "a-b", true),
            (r"[^\w]", "ö", true),
            (r"a\b.*", "a ö", true),
            (r"\\w", "\\w", true),
            (r"\.", ".", true),
            (r"\pL+", "São", true),
            (r"a.b", "a\nb", false),
            (r".*", "a\nb", false),
            (r"a\nb", "a\nb", true),
            (r"(?s)a.b", "a\nb", true),
            (r"a|b", "b", true),
        ];
        for (pattern, input, want) in cases {
            let re = regex::Regex::new(&format!("^(?s:{})$", go_regex(pattern)))
                .unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(re.is_match(input), *want, "{pattern} on {input:?}");
        }
    }
}
