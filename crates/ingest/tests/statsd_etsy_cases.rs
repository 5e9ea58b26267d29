//! Etsy StatsD compatibility of `ingest::statsd::aggregator`, driven by the golden cases in
//! `tests/data/statsd/etsy_cases.txt` (their format is described at the top of that file),
//! plus the properties a table cannot express: sketch merging and the shared benchmark's
//! "sum of every `.count`" contract.
//!
//! To change expected behaviour, edit the case file; a failure prints the case name, the
//! expected and the actual samples.

use std::collections::BTreeMap;

use ingest::statsd::aggregator::{Aggregator, AggregatorConfig, FlushOutput, SKETCH_RELATIVE_ACCURACY};
use model::{SeriesKey, Timestamp};
use wire::WireLimits;
use wire::statsd::visit_packet;

const CASES: &str = include_str!("data/statsd/etsy_cases.txt");

/// `name{k=v,k2=v2}` with labels sorted, or just `name`.
fn render(key: &SeriesKey) -> String {
    if key.labels().is_empty() {
        return key.name().to_owned();
    }
    let labels: Vec<String> = key
        .labels()
        .iter()
        .map(|l| format!("{}={}", l.name, l.value))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

fn set_config(cfg: &mut AggregatorConfig, setting: &str, case: &str) {
    let (k, v) = setting
        .split_once('=')
        .unwrap_or_else(|| panic!("{case}: bad config item {setting:?}"));
    let flag = || v.parse::<bool>().unwrap();
    let num = || v.parse::<usize>().unwrap();
    match k {
        "flush_interval_ms" => cfg.flush_interval_ms = v.parse().unwrap(),
        "percentiles" => cfg.percentiles = v.split(',').map(|p| p.parse().unwrap()).collect(),
        "delete_idle_counters" => cfg.delete_idle_counters = flag(),
        "delete_idle_gauges" => cfg.delete_idle_gauges = flag(),
        "gauges_max_ttl_flushes" => cfg.gauges_max_ttl_flushes = v.parse().unwrap(),
        "delete_idle_timers" => cfg.delete_idle_timers = flag(),
        "delete_idle_sets" => cfg.delete_idle_sets = flag(),
        "max_keys" => cfg.max_keys = num(),
        "max_timer_samples_per_key" => cfg.max_timer_samples_per_key = num(),
        "max_set_members_per_key" => cfg.max_set_members_per_key = num(),
        "max_timer_samples_total" => cfg.max_timer_samples_total = num(),
        "global_prefix" => cfg.global_prefix = v.to_owned(),
        "prefix_counter" => cfg.prefix_counter = v.to_owned(),
        "prefix_timer" => cfg.prefix_timer = v.to_owned(),
        "prefix_gauge" => cfg.prefix_gauge = v.to_owned(),
        "prefix_set" => cfg.prefix_set = v.to_owned(),
        other => panic!("{case}: unknown config key {other:?}"),
    }
}

/// Feeds one packet; returns the reason codes of its rejections, parse and aggregation alike.
fn send(agg: &mut Aggregator, packet: &str) -> Vec<String> {
    let packet = packet.replace("\\n", "\n");
    let mut rejections = Vec::new();
    visit_packet(packet.as_bytes(), &WireLimits::default(), |r| match r {
        Ok(m) => {
            if let Err(e) = agg.observe(&m) {
                rejections.push(e.as_str().to_owned());
            }
        }
        Err(e) => rejections.push(e.reason.as_str().to_owned()),
    });
    rejections
}

struct Check {
    subset: bool,
    expected: Vec<(String, f64)>,
    output: FlushOutput,
    line: usize,
}

fn close_enough(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs().max(1.0)
}

fn verify(case: &str, check: &Check, failures: &mut Vec<String>) {
    let got: BTreeMap<String, f64> = check
        .output
        .samples
        .iter()
        .map(|(k, v)| (render(k), *v))
        .collect();
    let mut problems = Vec::new();
    if got.len() != check.output.samples.len() {
        problems.push("duplicate output series".to_owned());
    }
    for (name, want) in &check.expected {
        match got.get(name) {
            Some(v) if close_enough(*v, *want) => {}
            Some(v) => problems.push(format!("{name}: want {want}, got {v}")),
            None => problems.push(format!("{name}: missing")),
        }
    }
    if !check.subset {
        for name in got.keys() {
            if !check.expected.iter().any(|(n, _)| n == name) {
                problems.push(format!("{name}: unexpected (value {})", got[name]));
            }
        }
    }
    if !problems.is_empty() {
        failures.push(format!(
            "case {case:?}, flush at line {}:\n  {}\n  all samples: {got:?}",
            check.line,
            problems.join("\n  ")
        ));
    }
}

#[test]
fn etsy_golden_cases() {
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut blocks: Vec<(usize, &str)> = Vec::new();
    for (i, line) in CASES.lines().enumerate() {
        if line.starts_with("=== ") {
            blocks.push((i + 1, line));
        }
    }
    let lines: Vec<&str> = CASES.lines().collect();
    for (n, (start, header)) in blocks.iter().enumerate() {
        cases += 1;
        let case = header.trim_start_matches("=== ");
        let end = blocks.get(n + 1).map_or(lines.len(), |(s, _)| s - 1);
        let mut cfg = AggregatorConfig::default();
        let mut agg: Option<Aggregator> = None;
        let mut now = 0i64;
        let mut pending_rejections: Vec<String> = Vec::new();
        let mut expected_rejections: Vec<String> = Vec::new();
        let mut check: Option<Check> = None;
        let finish_packet = |pending: &mut Vec<String>,
                             expected: &mut Vec<String>,
                             line: usize,
                             failures: &mut Vec<String>| {
            if pending != expected {
                failures.push(format!(
                    "case {case:?}, packet before line {line}: rejections want {expected:?}, got {pending:?}"
                ));
            }
            pending.clear();
            expected.clear();
        };
        for (offset, raw) in lines[*start..end].iter().enumerate() {
            let lineno = start + offset + 1;
            let line = raw.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("! ") {
                expected_rejections.push(rest.trim().to_owned());
                continue;
            }
            // any other line ends the previous packet's rejection list
            finish_packet(
                &mut pending_rejections,
                &mut expected_rejections,
                lineno,
                &mut failures,
            );
            if let Some(settings) = line.strip_prefix("config ") {
                assert!(agg.is_none(), "{case}: config after the first packet");
                for s in settings.split_whitespace() {
                    set_config(&mut cfg, s, case);
                }
                assert_eq!(cfg.validate(), Ok(()), "{case}");
            } else if let Some(packet) = line.strip_prefix("> ") {
                if let Some(c) = check.take() {
                    verify(case, &c, &mut failures);
                }
                let a = agg.get_or_insert_with(|| Aggregator::new(cfg.clone()));
                pending_rejections = send(a, packet);
            } else if line == "flush" || line == "flush subset" {
                if let Some(c) = check.take() {
                    verify(case, &c, &mut failures);
                }
                let a = agg.get_or_insert_with(|| Aggregator::new(cfg.clone()));
                now += cfg.flush_interval_ms;
                let output = a.flush(Timestamp(now));
                assert_eq!(output.timestamp, Timestamp(now));
                check = Some(Check {
                    subset: line == "flush subset",
                    expected: Vec::new(),
                    output,
                    line: lineno,
                });
            } else {
                let Some(c) = check.as_mut() else {
                    panic!("{case}: line {lineno}: expected sample outside a flush: {line:?}");
                };
                let (name, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("{case}: line {lineno}: want `name value`"));
                c.expected.push((name.to_owned(), value.parse().unwrap()));
            }
        }
        finish_packet(
            &mut pending_rejections,
            &mut expected_rejections,
            end,
            &mut failures,
        );
        if let Some(c) = check.take() {
            verify(case, &c, &mut failures);
        }
    }
    assert!(cases >= 40, "only {cases} cases parsed");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The shared benchmark sums `{__name__=~"host.+\.count"}` to check that nothing was lost:
/// every counter must land in exactly one `<name>.count` series per flush.
#[test]
fn counter_counts_sum_to_what_was_sent() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let mut sent = 0.0;
    let mut total = 0.0;
    for round in 0..3i32 {
        for host in 0..50 {
            for metric in 0..20 {
                let n = (host + metric + round) % 4;
                let packet = format!("host{host}.cpu{metric}.hits:{n}|c");
                assert!(send(&mut agg, &packet).is_empty());
                sent += f64::from(n);
            }
        }
        let out = agg.flush(Timestamp(i64::from(round) * 10_000));
        total += out
            .samples
            .iter()
            .filter(|(k, _)| k.name().starts_with("host") && k.name().ends_with(".count"))
            .map(|(_, v)| v)
            .sum::<f64>();
    }
    assert_eq!(total, sent);
    assert_eq!(agg.key_count(), 1000);
}

/// Merging the sketches of two flushes gives the quantiles of the union within the sketch's
/// relative accuracy, which averaging two `upper_90`s would not.
#[test]
fn merged_sketches_give_percentiles_of_the_union() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let mut all = Vec::new();
    // first interval: fast requests, second: slow ones
    let intervals: [&[f64]; 2] = [&[1.0, 2.0, 3.0, 4.0, 5.0], &[100.0, 200.0, 300.0, 400.0, 500.0]];
    let mut sketches = Vec::new();
    for (i, values) in intervals.iter().enumerate() {
        for v in values.iter() {
            assert!(send(&mut agg, &format!("req.latency:{v}|ms|#svc:api")).is_empty());
            all.push(*v);
        }
        // many more values, so quantiles are not just single points
        for k in 0..1000 {
            let v = values[0] * (1.0 + f64::from(k) / 1000.0);
            assert!(send(&mut agg, &format!("req.latency:{v}|ms|#svc:api")).is_empty());
            all.push(v);
        }
        let out = agg.flush(Timestamp(i as i64 * 10_000));
        assert_eq!(out.sketches.len(), 1);
        let (key, sketch) = out.sketches.into_iter().next().unwrap();
        assert_eq!(render(&key), "req.latency{svc=api}");
        sketches.push(sketch);
    }
    let mut merged = sketches[0].clone();
    merged.merge(&sketches[1]).unwrap();
    assert_eq!(merged.count(), all.len());
    all.sort_by(f64::total_cmp);
    for q in [0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
        let rank = (q * (all.len() - 1) as f64) as usize;
        let exact = all[rank];
        let estimate = merged.quantile(q).unwrap().unwrap();
        assert!(
            (estimate - exact).abs() <= SKETCH_RELATIVE_ACCURACY * exact.abs() + 1e-9,
            "q={q}: exact {exact}, sketch {estimate}"
        );
    }
}

/// Idle timers send no sketch; a flush with nothing observed sends nothing at all.
#[test]
fn sketches_only_for_timers_seen_in_the_interval() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    assert!(send(&mut agg, "t:1|ms\nc:1|c").is_empty());
    assert_eq!(agg.flush(Timestamp(1)).sketches.len(), 1);
    assert!(agg.flush(Timestamp(2)).sketches.is_empty());
    let mut empty = Aggregator::new(AggregatorConfig::default());
    let out = empty.flush(Timestamp(3));
    assert!(out.samples.is_empty() && out.sketches.is_empty());
}
