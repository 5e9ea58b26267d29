//! StatsD aggregation with Etsy StatsD 0.9 output semantics: metrics and `now` in, flushed
//! samples out. Pure: no clock, no I/O, no threads; the caller calls [`Aggregator::observe`]
//! for every parsed metric and [`Aggregator::flush`] once per flush interval.
//!
//! # Aggregation key
//!
//! A metric is aggregated under its name plus its DogStatsD tags, sorted (`a:1|c|#x:1,y:2`
//! and `a:1|c|#y:2,x:1` are one key). Tags become labels on every output series of the key
//! (a flag tag `f` becomes `f="true"`, see `wire::statsd`). A key has one type family:
//! counter, gauge, set, or timer (`ms`, `h` and `d` share the timer family). A metric whose
//! key already exists with another family is rejected ([`Rejected::TypeConflict`]): Roaster
//! has no per-type prefixes by default, so `x` as a counter and `x` as a timer would both
//! write `x.count`. Keys live until an idle-deletion knob removes them (never, by default,
//! as in Etsy); while they live, their type is fixed.
//!
//! # Output per flush (Etsy names; all samples carry the flush timestamp)
//!
//! `<p>` is `global_prefix`, the type prefix and the name joined with `.` (empty parts left
//! out; both prefixes are empty by default, so `<p>` is just the name).
//!
//! | type | series | value |
//! |---|---|---|
//! | counter | `<p>.count`, `<p>.rate` | sum of `value / sample_rate`; that sum per second of the configured interval |
//! | gauge | `<p>` | last value; `+N`/`-N` add to the previous value (0 when none); kept across flushes |
//! | set | `<p>.count` | distinct members seen this interval |
//! | timer | `<p>.count`, `<p>.count_ps` | sum of `1 / sample_rate` per value; per second |
//! | timer | `<p>.mean .upper .lower .sum .sum_squares .median .std` | over the values, sample rates ignored (as Etsy); `std` is the population standard deviation |
//! | timer, per percentile P | `<p>.count_P .mean_P .upper_P .sum_P .sum_squares_P` | over the lowest P% of the values (`round(P/100 × n)` of them); a negative P takes the highest values and names `lower_topP` instead of `upper_P` |
//!
//! Percentile names follow Etsy: `99.9` → `99_9`, `-10` → `top10`. An idle key (not seen
//! since the last flush) still emits, as Etsy does by default: counters and sets `0`,
//! timers only `.count 0` and `.count_ps 0`, gauges their last value. With
//! `delete_idle_counters` / `_timers` / `_sets` an idle key emits nothing and is removed;
//! with `delete_idle_gauges` a gauge is sent by the `gauges_max_ttl_flushes` flushes
//! that follow its last update and then removed (Etsy's `deleteGauges` + `gaugesMaxTTL`;
//! with the default of 1 it is sent once), and a later delta starts from 0 again.
//!
//! # Sketches
//!
//! Each timer key seen in an interval also yields a DDSketch of its values (relative
//! accuracy [`SKETCH_RELATIVE_ACCURACY`], every sketch built with [`sketch_config`] so any
//! two merge), keyed by `<p>` and the key's labels, in [`FlushOutput::sketches`]. Merging
//! the sketches of many flushes or hosts gives percentiles of the union without averaging
//! percentiles. Sample rates are not applied to sketches. The server stores them in the
//! sketch log ([`crate::sketchlog`]), queried through `/api/v1/statsd/quantile`.
//!
//! # Bounds
//!
//! - `max_keys` distinct aggregation keys; a metric that would create one more is rejected
//!   ([`Rejected::KeyLimit`]). Known keys keep aggregating. Raw spellings of a key (tag
//!   orders) are cached up to `2 × max_keys`; past that, uncached spellings still aggregate
//!   correctly but take the slow path.
//! - `max_timer_samples_per_key` raw values per timer per interval. Past it, count, sum,
//!   sum of squares, lower, upper, mean, std and the sketch stay exact (running values),
//!   while the retained values become a uniform random sample of the interval's values
//!   (reservoir sampling, Vitter's algorithm R). `median`, `upper_P`, `mean_P` come from
//!   that sample; `count_P` is exact (`round(P/100 × n)`), and `sum_P` / `sum_squares_P` are
//!   the sample's P-mean (and mean square) times `count_P`. [`FlushOutput::sampled_timers`]
//!   counts timers flushed this way.
//! - `max_timer_samples_total` raw values across all timers per interval. Once it is
//!   reached, each timer keeps the values it has (or up to [`TIMER_SAMPLES_FLOOR`], if fewer)
//!   and samples as above from then on. Worst-case memory for raw values is about
//!   `(max_timer_samples_total + max_keys × TIMER_SAMPLES_FLOOR) × 8` bytes.
//! - `max_set_members_per_key` distinct members per set per interval; further new members
//!   are rejected ([`Rejected::SetMemberLimit`]), so the flushed count saturates there.
//!
//! # Deliberate differences from Etsy StatsD
//!
//! - Counter and timer rates divide by the configured `flush_interval_ms`, as Etsy does,
//!   even when the caller flushes late; a flush is not skipped or stretched.
//! - Etsy's `-100` percentile sums read past the start of its cumulative array and yield
//!   `NaN`; here they are the sum of all values.
//! - Etsy's `histogram` bins option, key sanitising and its own statistics
//!   (`statsd.numStats`, `processing_time`, `timestamp_lag`) are not implemented; Roaster's
//!   self-telemetry lives in `ingest::telemetry`.
//! - Percentiles that are `0`, not finite or beyond ±100 produce nothing
//!   ([`AggregatorConfig::validate`] reports them).
//! - Etsy's `calculatedTimerMetrics` filter is not implemented: every timer statistic is sent.
//!
//! Known gap: keys of different names can still produce the same output series when no
//! type prefixes are set (a gauge named `x.count` and a counter named `x` both write
//! `x.count`); storage then keeps the last write. Set the type prefixes to rule it out.
//!
//! # Flushing without stalling ingest
//!
//! [`Aggregator::flush`] is [`Aggregator::take_interval`] (cheap: moves each key's numbers
//! out and resets them) followed by [`PendingFlush::finish`] (sorting timer values, naming
//! and allocating every output series). A caller sharing the aggregator behind a lock holds
//! it only for `take_interval` and finishes the flush outside it.
//!
//! **Invariant:** [`Aggregator::observe`] does not allocate for a known raw key, except
//! to remember a new set member or to grow a timer's value buffer (up to
//! `max_timer_samples_per_key`); every structure it grows is bounded by a config field.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use foldhash::fast::RandomState;
use model::{KeyError, Label, SeriesKey, Timestamp};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};
use wire::statsd::{StatsdMetric, StatsdValue, tags};

/// Relative accuracy of every timer sketch: a quantile read from a sketch is within 1% of a
/// value of the data at that rank.
pub const SKETCH_RELATIVE_ACCURACY: f64 = 0.01;

/// Most bins a sketch grows to (DDSketch's default); with 1% accuracy 2048 bins cover
/// about 18 orders of magnitude before the lowest bins collapse.
pub const SKETCH_MAX_BINS: u32 = 2048;

/// Smallest magnitude a sketch tells apart from zero.
pub const SKETCH_MIN_VALUE: f64 = 1.0e-9;

/// The configuration of every timer sketch; sketches merge only when their configs match.
pub fn sketch_config() -> SketchConfig {
    SketchConfig::new(SKETCH_RELATIVE_ACCURACY, SKETCH_MAX_BINS, SKETCH_MIN_VALUE)
}

/// Raw values a timer may keep per interval even when `max_timer_samples_total` is spent,
/// so every timer has a sample to compute its median and percentiles from.
pub const TIMER_SAMPLES_FLOOR: usize = 16;

/// How many raw spellings of keys are cached, per allowed key.
const ALIASES_PER_KEY: usize = 2;

/// Aggregation settings. `Default` gives Etsy StatsD's defaults (10 s, 90th percentile,
/// nothing deleted when idle, no prefixes) plus Roaster's bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorConfig {
    /// The flush interval in milliseconds; `.rate` and `.count_ps` divide by it.
    pub flush_interval_ms: i64,
    /// Timer percentiles (Etsy's `percentThreshold`): each P in `(0, 100]` or `[-100, 0)`.
    pub percentiles: Vec<f64>,
    /// Emit nothing for counters not seen in an interval, and forget them (Etsy's
    /// `deleteCounters`); otherwise they emit `0`.
    pub delete_idle_counters: bool,
    /// Forget gauges once `gauges_max_ttl_flushes` flushes have passed since their last
    /// update (Etsy's `deleteGauges`); otherwise they repeat their last value forever.
    pub delete_idle_gauges: bool,
    /// Flushes that still send a gauge after its last update when `delete_idle_gauges` is
    /// on, the first included (Etsy's `gaugesMaxTTL`); at least 1.
    pub gauges_max_ttl_flushes: u32,
    /// Emit nothing for timers not seen in an interval, and forget them (Etsy's
    /// `deleteTimers`); otherwise they emit `.count 0` and `.count_ps 0`.
    pub delete_idle_timers: bool,
    /// Emit nothing for sets not seen in an interval, and forget them (Etsy's `deleteSets`);
    /// otherwise they emit `.count 0`.
    pub delete_idle_sets: bool,
    /// Most distinct aggregation keys (name + sorted tags) held at once.
    pub max_keys: usize,
    /// Most raw values kept per timer per interval (see the module doc for what happens
    /// beyond it).
    pub max_timer_samples_per_key: usize,
    /// Most raw timer values kept across all timers per interval (see the module doc).
    pub max_timer_samples_total: usize,
    /// Most distinct members per set per interval.
    pub max_set_members_per_key: usize,
    /// Prefix of every output name (Etsy's `globalPrefix`, `stats` there); empty: none.
    pub global_prefix: String,
    /// Prefix of counter outputs (Etsy's `prefixCounter`, `counters` there); empty: none.
    pub prefix_counter: String,
    /// Prefix of timer outputs (Etsy's `prefixTimer`, `timers` there); empty: none.
    pub prefix_timer: String,
    /// Prefix of gauge outputs (Etsy's `prefixGauge`, `gauges` there); empty: none.
    pub prefix_gauge: String,
    /// Prefix of set outputs (Etsy's `prefixSet`, `sets` there); empty: none.
    pub prefix_set: String,
}

impl Default for AggregatorConfig {
    fn default() -> AggregatorConfig {
        AggregatorConfig {
            flush_interval_ms: 10_000,
            percentiles: vec![90.0],
            delete_idle_counters: false,
            delete_idle_gauges: false,
            gauges_max_ttl_flushes: 1,
            delete_idle_timers: false,
            delete_idle_sets: false,
            max_keys: 100_000,
            max_timer_samples_per_key: 10_000,
            max_timer_samples_total: 10_000_000,
            max_set_members_per_key: 10_000,
            global_prefix: String::new(),
            prefix_counter: String::new(),
            prefix_timer: String::new(),
            prefix_gauge: String::new(),
            prefix_set: String::new(),
        }
    }
}

/// Why an [`AggregatorConfig`] is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The flush interval is not positive.
    #[error("flush_interval_ms must be greater than 0, got {0}")]
    FlushInterval(i64),
    /// A percentile is 0, not finite, or beyond ±100.
    #[error("percentile {0} is not in (0, 100] or [-100, 0)")]
    Percentile(f64),
    /// A bound is zero.
    #[error("{0} must be greater than 0")]
    ZeroBound(&'static str),
}

impl AggregatorConfig {
    /// Checks the settings; call it at startup so a bad value fails with its field name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.flush_interval_ms <= 0 {
            return Err(ConfigError::FlushInterval(self.flush_interval_ms));
        }
        if let Some(p) = self.percentiles.iter().find(|p| !valid_percentile(**p)) {
            return Err(ConfigError::Percentile(*p));
        }
        for (name, v) in [
            ("max_keys", self.max_keys),
            ("max_timer_samples_per_key", self.max_timer_samples_per_key),
            ("max_timer_samples_total", self.max_timer_samples_total),
            ("max_set_members_per_key", self.max_set_members_per_key),
            ("gauges_max_ttl_flushes", self.gauges_max_ttl_flushes as usize),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroBound(name));
            }
        }
        Ok(())
    }
}

fn valid_percentile(p: f64) -> bool {
    p.is_finite() && p != 0.0 && p.abs() <= 100.0
}

/// Why a metric was not aggregated. The caller counts these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The metric would create a key beyond [`AggregatorConfig::max_keys`].
    #[error("statsd aggregation key limit of {limit} reached")]
    KeyLimit {
        /// The configured limit.
        limit: usize,
    },
    /// The key exists with another type family.
    #[error("statsd key already holds a {existing}, got a {got}")]
    TypeConflict {
        /// The key's family: `counter`, `gauge`, `timer` or `set`.
        existing: &'static str,
        /// The metric's family.
        got: &'static str,
    },
    /// The tags do not make a valid label set (e.g. the same tag name twice).
    #[error("statsd tags are not a valid label set: {0}")]
    BadTags(KeyError),
    /// The set already holds [`AggregatorConfig::max_set_members_per_key`] members this
    /// interval and the member is new.
    #[error("statsd set member limit of {limit} reached")]
    SetMemberLimit {
        /// The configured limit.
        limit: usize,
    },
}

impl Rejected {
    /// A stable snake_case code for metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rejected::KeyLimit { .. } => "statsd_key_limit",
            Rejected::TypeConflict { .. } => "statsd_type_conflict",
            Rejected::BadTags(_) => "statsd_bad_tags",
            Rejected::SetMemberLimit { .. } => "statsd_set_member_limit",
        }
    }
}

/// What one flush produced.
pub struct FlushOutput {
    /// The flush time; every sample is stamped with it.
    pub timestamp: Timestamp,
    /// Output series and their values, grouped by key (order otherwise unspecified).
    pub samples: Vec<(SeriesKey, f64)>,
    /// One sketch per timer key seen this interval, keyed by `<p>` and the key's labels
    /// (no suffix); all built with [`sketch_config`].
    pub sketches: Vec<(SeriesKey, DDSketch)>,
    /// Timer keys whose values exceeded `max_timer_samples_per_key` this interval, so their
    /// median and percentile outputs were estimated from a sample.
    pub sampled_timers: usize,
}

impl fmt::Debug for FlushOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushOutput")
            .field("timestamp", &self.timestamp)
            .field("samples", &self.samples)
            .field(
                "sketches",
                &self
                    .sketches
                    .iter()
                    .map(|(k, s)| (k, s.count()))
                    .collect::<Vec<_>>(),
            )
            .field("sampled_timers", &self.sampled_timers)
            .finish()
    }
}

/// The four type families; a key holds exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Counter,
    Gauge,
    Timer,
    Set,
}

impl Family {
    fn of(v: &StatsdValue<'_>) -> Family {
        match v {
            StatsdValue::Counter(_) => Family::Counter,
            StatsdValue::Gauge(_) | StatsdValue::GaugeDelta(_) => Family::Gauge,
            StatsdValue::Timer(_) | StatsdValue::Histogram(_) | StatsdValue::Distribution(_) => Family::Timer,
            StatsdValue::Set(_) => Family::Set,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Family::Counter => "counter",
            Family::Gauge => "gauge",
            Family::Timer => "timer",
            Family::Set => "set",
        }
    }
}

/// One timer's interval state.
struct Timer {
    /// Raw values: all of them while `n <= cap`, then a uniform reservoir of `cap`.
    values: Vec<f64>,
    /// Values observed this interval.
    n: u64,
    /// Sum of `1 / sample_rate` (Etsy's `timer_counters`).
    weighted_count: f64,
    sum: f64,
    sum_squares: f64,
    min: f64,
    max: f64,
    /// Welford's running mean and sum of squared deviations, for `std` once sampled.
    mean: f64,
    m2: f64,
    sketch: DDSketch,
}

impl Timer {
    fn new() -> Timer {
        Timer {
            values: Vec::new(),
            n: 0,
            weighted_count: 0.0,
            sum: 0.0,
            sum_squares: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            sketch: DDSketch::new(sketch_config()),
        }
    }

    fn add(&mut self, v: f64, rate: f64, cap: usize, rng: &mut XorShift) {
        self.n += 1;
        self.weighted_count += 1.0 / rate;
        self.sum += v;
        self.sum_squares += v * v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        let delta = v - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (v - self.mean);
        self.sketch.add(v);
        // at least one value, so every timer with values has a sample to report from
        if self.values.len() < cap.max(1) {
            self.values.push(v);
        } else {
            // Algorithm R: the n-th value replaces a random slot with probability cap / n.
            let j = rng.below(self.n);
            if let Some(slot) = usize::try_from(j).ok().and_then(|j| self.values.get_mut(j)) {
                *slot = v;
            }
        }
    }
}

/// The state of one key.
enum State {
    Counter {
        sum: f64,
    },
    Gauge {
        /// `None` once deleted for idleness; the slot is freed at the next flush unless
        /// updated again.
        value: Option<f64>,
        /// Flushes left before deletion, when `delete_idle_gauges` is on.
        ttl: u32,
    },
    Timer(Box<Timer>),
    Set {
        members: HashSet<Box<str>, RandomState>,
    },
}

impl State {
    fn family(&self) -> Family {
        match self {
            State::Counter { .. } => Family::Counter,
            State::Gauge { .. } => Family::Gauge,
            State::Timer(_) => Family::Timer,
            State::Set { .. } => Family::Set,
        }
    }
}

struct Entry {
    /// The canonical key: name and sorted labels, without prefixes or suffixes; shared with
    /// `canonical` and with pending flushes.
    key: Arc<SeriesKey>,
    /// Whether a metric arrived since the last flush.
    seen: bool,
    state: State,
}

/// A tiny deterministic PRNG for reservoir sampling; quality needs are modest and tests
/// stay reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n > 0`; modulo bias is negligible for reservoir sizes).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Etsy-compatible StatsD aggregator; see the module doc.
pub struct Aggregator {
    cfg: Arc<AggregatorConfig>,
    /// Raw spelling `name \0 tags` → slot. Keys come from untrusted clients: the hasher is
    /// randomly seeded.
    raw: HashMap<Box<[u8]>, u32, RandomState>,
    /// Canonical key → slot.
    canonical: HashMap<Arc<SeriesKey>, u32, RandomState>,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Reused buffer for the raw spelling, so lookups of known keys do not allocate.
    scratch: Vec<u8>,
    /// Raw timer values retained this interval, across all timers.
    timer_samples: usize,
    rng: XorShift,
}

impl fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregator")
            .field("cfg", &self.cfg)
            .field("keys", &self.canonical.len())
            .finish_non_exhaustive()
    }
}

impl Aggregator {
    /// An empty aggregator. Settings are taken as given; run
    /// [`AggregatorConfig::validate`] first to reject bad ones with a message.
    pub fn new(cfg: AggregatorConfig) -> Aggregator {
        Aggregator {
            cfg: Arc::new(cfg),
            raw: HashMap::default(),
            canonical: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            scratch: Vec::new(),
            timer_samples: 0,
            rng: XorShift(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AggregatorConfig {
        &self.cfg
    }

    /// Distinct aggregation keys currently held.
    pub fn key_count(&self) -> usize {
        self.canonical.len()
    }

    /// Adds one metric to the current interval. A sample rate outside `(0, 1]` (which
    /// `wire::statsd` never produces) is taken as 1.
    pub fn observe(&mut self, m: &StatsdMetric<'_>) -> Result<(), Rejected> {
        let rate = if m.sample_rate > 0.0 && m.sample_rate <= 1.0 {
            m.sample_rate
        } else {
            1.0
        };
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend_from_slice(m.name.as_bytes());
        scratch.push(0);
        scratch.extend_from_slice(m.tags.as_bytes());
        let slot = match self.raw.get(scratch.as_slice()) {
            Some(&i) if self.live(i) => Ok(i),
            _ => self.resolve_slow(m, &scratch),
        };
        self.scratch = scratch;
        let slot = slot?;
        let Some(Some(entry)) = self.slots.get_mut(slot as usize) else {
            // resolve_slow only returns live slots
            return Ok(());
        };
        let got = Family::of(&m.value);
        let existing = entry.state.family();
        if got != existing {
            return Err(Rejected::TypeConflict {
                existing: existing.as_str(),
                got: got.as_str(),
            });
        }
        entry.seen = true;
        match (&mut entry.state, m.value) {
            (State::Counter { sum }, StatsdValue::Counter(v)) => *sum += v / rate,
            (State::Gauge { value, ttl }, StatsdValue::Gauge(v)) => {
                *value = Some(v);
                *ttl = self.cfg.gauges_max_ttl_flushes;
            }
            (State::Gauge { value, ttl }, StatsdValue::GaugeDelta(d)) => {
                *value = Some(value.unwrap_or(0.0) + d);
                *ttl = self.cfg.gauges_max_ttl_flushes;
            }
            (
                State::Timer(t),
                StatsdValue::Timer(v) | StatsdValue::Histogram(v) | StatsdValue::Distribution(v),
            ) => {
                let per_key = self.cfg.max_timer_samples_per_key;
                // Past the shared budget a timer keeps what it has (at least a small floor)
                // and samples from then on.
                let cap = if self.timer_samples >= self.cfg.max_timer_samples_total {
                    t.values.len().max(TIMER_SAMPLES_FLOOR).min(per_key)
                } else {
                    per_key
                };
                let before = t.values.len();
                t.add(v, rate, cap, &mut self.rng);
                self.timer_samples += t.values.len().saturating_sub(before);
            }
            (State::Set { members }, StatsdValue::Set(s)) if !members.contains(s) => {
                if members.len() >= self.cfg.max_set_members_per_key {
                    return Err(Rejected::SetMemberLimit {
                        limit: self.cfg.max_set_members_per_key,
                    });
                }
                members.insert(Box::from(s));
            }
            // a known set member, or (impossible) a family mismatch checked above
            _ => {}
        }
        Ok(())
    }

    fn live(&self, slot: u32) -> bool {
        matches!(self.slots.get(slot as usize), Some(Some(_)))
    }

    /// A raw spelling not cached yet: canonicalise, find or create the key.
    fn resolve_slow(&mut self, m: &StatsdMetric<'_>, raw: &[u8]) -> Result<u32, Rejected> {
        let labels = tags(m.tags).map(|(k, v)| Label::new(k, v)).collect();
        let key = SeriesKey::new(m.name, labels).map_err(Rejected::BadTags)?;
        let slot = match self.canonical.get(&key) {
            Some(&i) => i,
            None => {
                if self.canonical.len() >= self.cfg.max_keys {
                    return Err(Rejected::KeyLimit {
                        limit: self.cfg.max_keys,
                    });
                }
                let state = match Family::of(&m.value) {
                    Family::Counter => State::Counter { sum: 0.0 },
                    Family::Gauge => State::Gauge {
                        value: None,
                        ttl: self.cfg.gauges_max_ttl_flushes,
                    },
                    Family::Timer => State::Timer(Box::new(Timer::new())),
                    Family::Set => State::Set {
                        members: HashSet::default(),
                    },
                };
                let key = Arc::new(key);
                let entry = Entry {
                    key: Arc::clone(&key),
                    seen: false,
                    state,
                };
                let slot = match self.free.pop() {
                    Some(i) => {
                        if let Some(s) = self.slots.get_mut(i as usize) {
                            *s = Some(entry);
                        }
                        i
                    }
                    None => {
                        // max_keys bounds the slot count far below u32::MAX in any sane
                        // configuration; refuse rather than wrap.
                        let Ok(i) = u32::try_from(self.slots.len()) else {
                            return Err(Rejected::KeyLimit {
                                limit: self.cfg.max_keys,
                            });
                        };
                        self.slots.push(Some(entry));
                        i
                    }
                };
                self.canonical.insert(key, slot);
                slot
            }
        };
        if self.raw.len() < self.cfg.max_keys.saturating_mul(ALIASES_PER_KEY) {
            self.raw.insert(Box::from(raw), slot);
        }
        Ok(slot)
    }

    /// Closes the interval and computes every output at `now`: [`Aggregator::take_interval`]
    /// followed by [`PendingFlush::finish`].
    pub fn flush(&mut self, now: Timestamp) -> FlushOutput {
        self.take_interval(now).finish()
    }

    /// Closes the interval cheaply: moves this interval's numbers out, resets per-interval
    /// state and forgets idle keys as configured, leaving the expensive part (sorting timer
    /// values, building output series) to [`PendingFlush::finish`]. A caller that shares the
    /// aggregator behind a lock holds it only for this call (one pass over the keys, no
    /// sorting, no allocation except one fresh timer per timer key seen), so observing never
    /// waits for a whole flush.
    pub fn take_interval(&mut self, now: Timestamp) -> PendingFlush {
        let mut items = Vec::with_capacity(self.canonical.len());
        // every timer with values is replaced by a fresh one below
        self.timer_samples = 0;
        let mut removed = false;
        for i in 0..self.slots.len() {
            let Some(Some(entry)) = self.slots.get_mut(i) else {
                continue;
            };
            let seen = std::mem::replace(&mut entry.seen, false);
            let (snapshot, forget) = match &mut entry.state {
                State::Counter { sum } => {
                    let forget = self.cfg.delete_idle_counters && !seen;
                    (Snapshot::Counter(std::mem::replace(sum, 0.0)), forget)
                }
                State::Gauge { value, ttl } => match *value {
                    None => (Snapshot::Nothing, true),
                    Some(v) => {
                        if self.cfg.delete_idle_gauges {
                            *ttl = ttl.saturating_sub(1);
                            if *ttl == 0 {
                                *value = None;
                            }
                        }
                        (Snapshot::Gauge(v), false)
                    }
                },
                State::Set { members } => {
                    let forget = self.cfg.delete_idle_sets && !seen;
                    let count = members.len();
                    members.clear();
                    (Snapshot::Set(count), forget)
                }
                State::Timer(t) if t.n > 0 => {
                    let full = std::mem::replace(t, Box::new(Timer::new()));
                    (Snapshot::Timer(full), false)
                }
                State::Timer(_) => (Snapshot::IdleTimer, self.cfg.delete_idle_timers),
            };
            if forget {
                if let Some(Some(entry)) = self.slots.get_mut(i).map(Option::take) {
                    self.canonical.remove(&*entry.key);
                    if let Ok(i) = u32::try_from(i) {
                        self.free.push(i);
                    }
                    removed = true;
                }
            } else {
                items.push((Arc::clone(&entry.key), snapshot));
            }
        }
        if removed {
            let slots = &self.slots;
            self.raw
                .retain(|_, i| matches!(slots.get(*i as usize), Some(Some(_))));
        }
        PendingFlush {
            timestamp: now,
            cfg: Arc::clone(&self.cfg),
            items,
        }
    }
}

/// One key's numbers for one interval, moved out of the aggregator.
enum Snapshot {
    Counter(f64),
    Gauge(f64),
    Set(usize),
    Timer(Box<Timer>),
    /// A timer with no values this interval, still reported (`delete_idle_timers` off).
    IdleTimer,
    /// Nothing to report (a gauge deleted for idleness).
    Nothing,
}

/// An interval taken out of an [`Aggregator`] by [`Aggregator::take_interval`], not yet
/// turned into samples. Independent of the aggregator: finish it on any thread.
pub struct PendingFlush {
    timestamp: Timestamp,
    cfg: Arc<AggregatorConfig>,
    items: Vec<(Arc<SeriesKey>, Snapshot)>,
}

impl fmt::Debug for PendingFlush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingFlush")
            .field("timestamp", &self.timestamp)
            .field("keys", &self.items.len())
            .finish()
    }
}

impl PendingFlush {
    /// Keys that will produce output.
    pub fn key_count(&self) -> usize {
        self.items.len()
    }

    /// Computes the samples and sketches (see the module doc for the names and values).
    pub fn finish(self) -> FlushOutput {
        let cfg = &*self.cfg;
        let mut out = FlushOutput {
            timestamp: self.timestamp,
            samples: Vec::new(),
            sketches: Vec::new(),
            sampled_timers: 0,
        };
        let secs = cfg.flush_interval_ms.max(1) as f64 / 1000.0;
        let mut scratch = TimerScratch::default();
        for (key, snapshot) in self.items {
            let names = Names { cfg, key: &key };
            match snapshot {
                Snapshot::Counter(sum) => {
                    names.push(&mut out, &cfg.prefix_counter, "count", sum);
                    names.push(&mut out, &cfg.prefix_counter, "rate", sum / secs);
                }
                Snapshot::Gauge(v) => names.push(&mut out, &cfg.prefix_gauge, "", v),
                Snapshot::Set(count) => names.push(&mut out, &cfg.prefix_set, "count", count as f64),
                Snapshot::IdleTimer => {
                    names.push(&mut out, &cfg.prefix_timer, "count", 0.0);
                    names.push(&mut out, &cfg.prefix_timer, "count_ps", 0.0);
                }
                Snapshot::Timer(t) => {
                    if t.n > t.values.len() as u64 {
                        out.sampled_timers += 1;
                    }
                    timer_outputs(&names, &mut out, &t, cfg, secs, &mut scratch);
                    if let Some(k) = names.key(&cfg.prefix_timer, "") {
                        out.sketches.push((k, t.sketch));
                    }
                }
                Snapshot::Nothing => {}
            }
        }
        out
    }
}

/// Buffers reused across the timers of one flush.
#[derive(Default)]
struct TimerScratch {
    sorted: Vec<f64>,
    cum: Vec<f64>,
    cum_sq: Vec<f64>,
}

/// Builds output series names for one key.
struct Names<'a> {
    cfg: &'a AggregatorConfig,
    key: &'a SeriesKey,
}

impl Names<'_> {
    /// `global_prefix.type_prefix.name.suffix` with empty parts left out, plus the labels.
    fn key(&self, type_prefix: &str, suffix: &str) -> Option<SeriesKey> {
        let base = self.key.name();
        let mut name = String::with_capacity(
            self.cfg.global_prefix.len() + type_prefix.len() + base.len() + suffix.len() + 3,
        );
        for part in [self.cfg.global_prefix.as_str(), type_prefix, base, suffix] {
            if part.is_empty() {
                continue;
            }
            if !name.is_empty() {
                name.push('.');
            }
            name.push_str(part);
        }
        // The labels are already canonical, so this cannot fail; a failure drops the sample.
        SeriesKey::new(name, self.key.labels().to_vec()).ok()
    }

    fn push(&self, out: &mut FlushOutput, type_prefix: &str, suffix: &str, value: f64) {
        if let Some(k) = self.key(type_prefix, suffix) {
            out.samples.push((k, value));
        }
    }
}

/// Etsy's `process_metrics.js` for one timer with values (see the module doc).
fn timer_outputs(
    names: &Names<'_>,
    out: &mut FlushOutput,
    t: &Timer,
    cfg: &AggregatorConfig,
    secs: f64,
    scratch: &mut TimerScratch,
) {
    let p = cfg.prefix_timer.as_str();
    let TimerScratch { sorted, cum, cum_sq } = scratch;
    sorted.clear();
    sorted.extend_from_slice(&t.values);
    sorted.sort_unstable_by(f64::total_cmp);
    let values: &[f64] = sorted;
    let count = values.len();
    let (Some(&min), Some(&max)) = (values.first(), values.last()) else {
        return;
    };
    let sampled = t.n > count as u64;
    // cumulative sums over the sorted values, as Etsy keeps them
    cum.clear();
    cum_sq.clear();
    let (mut s, mut sq) = (0.0, 0.0);
    for v in values {
        s += v;
        sq += v * v;
        cum.push(s);
        cum_sq.push(sq);
    }
    let at = |c: &[f64], i: usize| c.get(i).copied().unwrap_or(0.0);
    for &pct in cfg.percentiles.iter().filter(|p| valid_percentile(**p)) {
        let (mut n_in, mut sum, mut sum_sq, mut boundary, mut mean) = (count, min, min * min, max, min);
        if count > 1 {
            n_in = js_round(pct.abs() / 100.0 * count as f64);
            if n_in == 0 {
                continue;
            }
            if pct > 0.0 {
                boundary = at(values, n_in - 1);
                sum = at(cum, n_in - 1);
                sum_sq = at(cum_sq, n_in - 1);
            } else {
                boundary = at(values, count - n_in);
                let before = (count - n_in).checked_sub(1);
                sum = at(cum, count - 1) - before.map_or(0.0, |b| at(cum, b));
                sum_sq = at(cum_sq, count - 1) - before.map_or(0.0, |b| at(cum_sq, b));
            }
            mean = sum / n_in as f64;
        }
        let mut count_p = n_in as f64;
        if sampled {
            // scale the sample's threshold set to the whole interval
            count_p = js_round(pct.abs() / 100.0 * t.n as f64) as f64;
            sum = mean * count_p;
            sum_sq = sum_sq / n_in as f64 * count_p;
        }
        let clean = percentile_suffix(pct);
        let bound_name = if pct > 0.0 { "upper_" } else { "lower_" };
        names.push(out, p, &format!("count_{clean}"), count_p);
        names.push(out, p, &format!("mean_{clean}"), mean);
        names.push(out, p, &format!("{bound_name}{clean}"), boundary);
        names.push(out, p, &format!("sum_{clean}"), sum);
        names.push(out, p, &format!("sum_squares_{clean}"), sum_sq);
    }
    let mid = count / 2;
    let median = if count % 2 == 1 {
        at(values, mid)
    } else {
        (at(values, mid.saturating_sub(1)) + at(values, mid)) / 2.0
    };
    let (sum, sum_squares, mean, std, lower, upper) = if sampled {
        let n = t.n as f64;
        (
            t.sum,
            t.sum_squares,
            t.sum / n,
            (t.m2 / n).max(0.0).sqrt(),
            t.min,
            t.max,
        )
    } else {
        let sum = at(cum, count - 1);
        let mean = sum / count as f64;
        let diffs: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        (
            sum,
            at(cum_sq, count - 1),
            mean,
            (diffs / count as f64).sqrt(),
            min,
            max,
        )
    };
    names.push(out, p, "std", std);
    names.push(out, p, "upper", upper);
    names.push(out, p, "lower", lower);
    names.push(out, p, "count", t.weighted_count);
    names.push(out, p, "count_ps", t.weighted_count / secs);
    names.push(out, p, "sum", sum);
    names.push(out, p, "sum_squares", sum_squares);
    names.push(out, p, "mean", mean);
    names.push(out, p, "median", median);
}

/// JavaScript's `Math.round` for non-negative numbers (halves round up).
fn js_round(x: f64) -> usize {
    let r = (x + 0.5).floor();
    if r.is_finite() && r > 0.0 { r as usize } else { 0 }
}

/// Etsy's `clean_pct`: the percentile as JavaScript prints it, first `.` → `_`, `-` → `top`.
pub fn percentile_suffix(pct: f64) -> String {
    format!("{pct}").replacen('.', "_", 1).replacen('-', "top", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric<'a>(name: &'a str, value: StatsdValue<'a>, rate: f64, tags: &'a str) -> StatsdMetric<'a> {
        StatsdMetric {
            name,
            value,
            sample_rate: rate,
            tags,
        }
    }

    fn get(out: &FlushOutput, name: &str) -> Option<f64> {
        out.samples
            .iter()
            .find(|(k, _)| k.name() == name && k.labels().is_empty())
            .map(|(_, v)| *v)
    }

    #[test]
    fn tag_order_does_not_split_a_key() {
        let mut a = Aggregator::new(AggregatorConfig::default());
        for tags in ["x:1,y:2", "y:2,x:1", "y:2,x:1"] {
            a.observe(&metric("hits", StatsdValue::Counter(1.0), 1.0, tags))
                .unwrap();
        }
        assert_eq!(a.key_count(), 1);
        let out = a.flush(Timestamp(10_000));
        let want = SeriesKey::new("hits.count", vec![Label::new("x", "1"), Label::new("y", "2")]).unwrap();
        assert!(out.samples.contains(&(want, 3.0)), "{out:?}");
        assert!(out.samples.iter().all(|(k, _)| k.labels().len() == 2));
    }

    #[test]
    fn rejections() {
        let cfg = AggregatorConfig {
            max_keys: 2,
            max_set_members_per_key: 1,
            ..AggregatorConfig::default()
        };
        let mut a = Aggregator::new(cfg);
        let cases: &[(StatsdMetric<'_>, Result<(), &str>)] = &[
            (metric("a", StatsdValue::Counter(1.0), 1.0, ""), Ok(())),
            (
                metric("a", StatsdValue::Timer(1.0), 1.0, ""),
                Err("statsd_type_conflict"),
            ),
            (
                metric("a", StatsdValue::Counter(1.0), 1.0, "k:1,k:2"),
                Err("statsd_bad_tags"),
            ),
            (metric("s", StatsdValue::Set("x"), 1.0, ""), Ok(())),
            (metric("s", StatsdValue::Set("x"), 1.0, ""), Ok(())),
            (
                metric("s", StatsdValue::Set("y"), 1.0, ""),
                Err("statsd_set_member_limit"),
            ),
            (
                metric("c", StatsdValue::Counter(1.0), 1.0, ""),
                Err("statsd_key_limit"),
            ),
            // known keys keep aggregating at the limit
            (metric("a", StatsdValue::Counter(1.0), 1.0, ""), Ok(())),
        ];
        for (m, want) in cases {
            let got = a.observe(m).map_err(|e| e.as_str());
            assert_eq!(got, *want, "{m:?}");
        }
        assert_eq!(a.key_count(), 2);
    }

    #[test]
    fn idle_keys_are_forgotten_when_configured() {
        let cfg = AggregatorConfig {
            delete_idle_counters: true,
            delete_idle_timers: true,
            delete_idle_sets: true,
            delete_idle_gauges: true,
            max_keys: 4,
            ..AggregatorConfig::default()
        };
        let mut a = Aggregator::new(cfg);
        let ms = [
            metric("c", StatsdValue::Counter(1.0), 1.0, ""),
            metric("t", StatsdValue::Timer(1.0), 1.0, ""),
            metric("s", StatsdValue::Set("m"), 1.0, ""),
            metric("g", StatsdValue::Gauge(1.0), 1.0, ""),
        ];
        for m in &ms {
            a.observe(m).unwrap();
        }
        assert_eq!(a.key_count(), 4);
        assert!(!a.flush(Timestamp(1)).samples.is_empty());
        // nothing seen: nothing emitted, every key forgotten
        let out = a.flush(Timestamp(2));
        assert!(out.samples.is_empty(), "{out:?}");
        assert_eq!(a.key_count(), 0);
        // a forgotten key's slot and type are free again
        a.observe(&metric("c", StatsdValue::Timer(1.0), 1.0, "")).unwrap();
        for m in &ms[1..] {
            a.observe(m).unwrap();
        }
        assert_eq!(a.key_count(), 4);
    }

    #[test]
    fn prefixes() {
        let cfg = AggregatorConfig {
            global_prefix: "stats".into(),
            prefix_counter: "counters".into(),
            prefix_timer: "timers".into(),
            prefix_gauge: "gauges".into(),
            prefix_set: "sets".into(),
            ..AggregatorConfig::default()
        };
        let mut a = Aggregator::new(cfg);
        a.observe(&metric("c", StatsdValue::Counter(1.0), 1.0, ""))
            .unwrap();
        a.observe(&metric("t", StatsdValue::Timer(1.0), 1.0, "")).unwrap();
        a.observe(&metric("g", StatsdValue::Gauge(1.0), 1.0, "")).unwrap();
        a.observe(&metric("s", StatsdValue::Set("x"), 1.0, "")).unwrap();
        let out = a.flush(Timestamp(1));
        for name in [
            "stats.counters.c.count",
            "stats.counters.c.rate",
            "stats.timers.t.mean",
            "stats.gauges.g",
            "stats.sets.s.count",
        ] {
            assert!(get(&out, name).is_some(), "{name}: {out:?}");
        }
        assert_eq!(out.sketches.len(), 1);
        assert_eq!(out.sketches[0].0.name(), "stats.timers.t");
    }

    #[test]
    fn reservoir_keeps_exact_running_statistics() {
        let cfg = AggregatorConfig {
            max_timer_samples_per_key: 100,
            ..AggregatorConfig::default()
        };
        let mut a = Aggregator::new(cfg);
        for i in 1..=1000 {
            a.observe(&metric("t", StatsdValue::Timer(f64::from(i)), 1.0, ""))
                .unwrap();
        }
        let out = a.flush(Timestamp(1));
        assert_eq!(out.sampled_timers, 1);
        assert_eq!(get(&out, "t.count"), Some(1000.0));
        assert_eq!(get(&out, "t.count_90"), Some(900.0));
        assert_eq!(get(&out, "t.sum"), Some(500_500.0));
        assert_eq!(get(&out, "t.lower"), Some(1.0));
        assert_eq!(get(&out, "t.upper"), Some(1000.0));
        assert_eq!(get(&out, "t.mean"), Some(500.5));
        let std = get(&out, "t.std").unwrap();
        assert!((std - 288.674_990_257_210_7).abs() < 1e-6, "{std}");
        // estimated from a uniform sample of 100: loose bounds
        let median = get(&out, "t.median").unwrap();
        assert!((300.0..=700.0).contains(&median), "{median}");
        let upper_90 = get(&out, "t.upper_90").unwrap();
        assert!((800.0..=980.0).contains(&upper_90), "{upper_90}");
        // the sketch saw every value
        assert_eq!(out.sketches[0].1.count(), 1000);
    }

    #[test]
    fn take_interval_separates_intervals() {
        let mut a = Aggregator::new(AggregatorConfig::default());
        a.observe(&metric("c", StatsdValue::Counter(1.0), 1.0, ""))
            .unwrap();
        a.observe(&metric("t", StatsdValue::Timer(5.0), 1.0, "")).unwrap();
        let pending = a.take_interval(Timestamp(1));
        assert_eq!(pending.key_count(), 2);
        // metrics arriving before the pending flush is finished belong to the next interval
        a.observe(&metric("c", StatsdValue::Counter(2.0), 1.0, ""))
            .unwrap();
        a.observe(&metric("t", StatsdValue::Timer(7.0), 1.0, "")).unwrap();
        let first = pending.finish();
        assert_eq!(first.timestamp, Timestamp(1));
        assert_eq!(get(&first, "c.count"), Some(1.0));
        assert_eq!(get(&first, "t.mean"), Some(5.0));
        assert_eq!(first.sketches[0].1.count(), 1);
        let second = a.flush(Timestamp(2));
        assert_eq!(get(&second, "c.count"), Some(2.0));
        assert_eq!(get(&second, "t.mean"), Some(7.0));
        assert_eq!(get(&second, "t.count"), Some(1.0));
    }

    proptest::proptest! {
        /// Arbitrary StatsD-shaped packets never panic the aggregator, every output carries
        /// the key's labels, and counter counts equal the sum of `value / rate` sent.
        #[test]
        fn arbitrary_packets_aggregate_consistently(
            lines in proptest::collection::vec("[abc]{1,2}:-?[0-9]{1,3}(\\.[0-9])?\\|(c|g|ms|h|d|s)(\\|@0\\.[1-9])?(\\|#[xy]:[12](,[xy]:[12])?)?", 1..40),
            max_keys in 1usize..6,
            cap in 1usize..4,
        ) {
            let cfg = AggregatorConfig {
                max_keys,
                max_timer_samples_per_key: cap,
                max_set_members_per_key: cap,
                ..AggregatorConfig::default()
            };
            let mut a = Aggregator::new(cfg);
            let mut counters: HashMap<SeriesKey, f64> = HashMap::new();
            for line in &lines {
                let (metrics, _) = wire::statsd::parse_packet(line.as_bytes(), &wire::WireLimits::default());
                for m in metrics {
                    let accepted = a.observe(&m).is_ok();
                    if let (true, StatsdValue::Counter(v)) = (accepted, m.value) {
                        let labels = tags(m.tags).map(|(k, v)| Label::new(k, v)).collect();
                        let key = SeriesKey::new(format!("{}.count", m.name), labels).unwrap();
                        *counters.entry(key).or_default() += v / m.sample_rate;
                    }
                }
                proptest::prop_assert!(a.key_count() <= max_keys);
            }
            let out = a.flush(Timestamp(1));
            for (key, want) in &counters {
                let got = out.samples.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
                proptest::prop_assert!(got.is_some_and(|g| (g - want).abs() < 1e-6), "{key}: {got:?} vs {want}");
            }
            for (_, sketch) in &out.sketches {
                proptest::prop_assert!(sketch.count() > 0);
            }
        }
    }

    #[test]
    fn shared_timer_budget_keeps_a_floor_per_timer() {
        let cfg = AggregatorConfig {
            max_timer_samples_per_key: 100,
            max_timer_samples_total: 20,
            ..AggregatorConfig::default()
        };
        let mut a = Aggregator::new(cfg);
        for name in ["a", "b"] {
            for i in 1..=50 {
                a.observe(&metric(name, StatsdValue::Timer(f64::from(i)), 1.0, ""))
                    .unwrap();
            }
        }
        let out = a.flush(Timestamp(1));
        // a filled the budget (20 values), b kept the floor (16): both sampled
        assert_eq!(out.sampled_timers, 2);
        for name in ["a", "b"] {
            assert_eq!(get(&out, &format!("{name}.count")), Some(50.0));
            assert_eq!(get(&out, &format!("{name}.sum")), Some(1275.0));
            assert_eq!(get(&out, &format!("{name}.upper")), Some(50.0));
            assert!(get(&out, &format!("{name}.median")).is_some());
        }
        // the budget is per interval
        a.observe(&metric("a", StatsdValue::Timer(1.0), 1.0, "")).unwrap();
        assert_eq!(a.flush(Timestamp(2)).sampled_timers, 0);
    }

    #[test]
    fn timer_sample_rate_out_of_range_counts_once() {
        let mut a = Aggregator::new(AggregatorConfig::default());
        a.observe(&metric("t", StatsdValue::Timer(1.0), 0.0, "")).unwrap();
        a.observe(&metric("c", StatsdValue::Counter(1.0), 7.0, ""))
            .unwrap();
        let out = a.flush(Timestamp(1));
        assert_eq!(get(&out, "t.count"), Some(1.0));
        assert_eq!(get(&out, "c.count"), Some(1.0));
    }

    #[test]
    fn percentile_suffixes() {
        let cases = [
            (90.0, "90"),
            (99.9, "99_9"),
            (-10.0, "top10"),
            (50.5, "50_5"),
            (100.0, "100"),
        ];
        for (p, want) in cases {
            assert_eq!(percentile_suffix(p), want);
        }
    }

    #[test]
    fn config_validation() {
        assert_eq!(AggregatorConfig::default().validate(), Ok(()));
        let bad = [
            AggregatorConfig {
                flush_interval_ms: 0,
                ..AggregatorConfig::default()
            },
            AggregatorConfig {
                percentiles: vec![101.0],
                ..AggregatorConfig::default()
            },
            AggregatorConfig {
                percentiles: vec![0.0],
                ..AggregatorConfig::default()
            },
            AggregatorConfig {
                max_keys: 0,
                ..AggregatorConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
