//! The SQLite event store against a real file in a temporary directory.

use std::collections::BTreeMap;

use model::event::{Arrival, Event, EventInput, EventLimits, decode_batch};
use model::{MatchOp, Matcher, Timestamp};
use store::{
    AnnotationQuery, EventQuery, EventStore, ItemResult, Retention, RetentionReport, SqliteConfig,
    SqliteStore, StoreError, shard_of,
};

const T0: i64 = 1_795_000_000_000;

/// The shard counts the query-semantics tests run against: the single file of an upgraded
/// install, and more shards than the default so ties between non-adjacent shards occur.
const SHARD_COUNTS: [usize; 2] = [1, 3];

fn open() -> (tempfile::TempDir, SqliteStore) {
    open_shards(SqliteConfig::new("unused").shards)
}

fn open_shards(shards: usize) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("roaster.db"));
    config.shards = shards;
    let store = SqliteStore::open(config).unwrap();
    assert_eq!(store.shards(), shards);
    (dir, store)
}

/// Builds a validated event from a compact JSON object, arriving at `T0 + 1 day`.
fn ev(json: &str) -> Event {
    let input: EventInput = serde_json::from_str(json).unwrap();
    input
        .validate(
            &Arrival {
                received_at: Timestamp(T0 + 86_400_000),
                source: "test",
                random: 7,
            },
            &EventLimits::default(),
        )
        .unwrap()
}

/// `n` events `i` at `T0 + i s`, host `web{i%3}`, kind alternating deploy/chef.
fn series(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let kind = if i % 2 == 0 { "deploy.finished" } else { "chef.run" };
            ev(&format!(
                r#"{{"id":"e{i:05}","time":{},"kind":"{kind}","host":"web{}","summary":"event number {i}","labels":{{"parity":"{}"}}}}"#,
                T0 + i as i64 * 1000,
                i % 3,
                if i % 2 == 0 { "even" } else { "odd" }
            ))
        })
        .collect()
}

fn ids(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

#[test]
fn round_trip_keeps_every_field() {
    let (_dir, store) = open();
    let e = ev(
        r#"{"id":"x1","time":"2026-11-19T06:09:16.5Z","kind":"deploy.finished","subject":"api",
            "actor":"alice","host":"web1","service":"api","labels":{"env":"prod","v":"1.2"},
            "severity":"critical","summary":"deployed","payload":{"z": 1, "a": ["keep  spacing"]}}"#,
    );
    assert_eq!(
        store.insert_batch(std::slice::from_ref(&e)).unwrap(),
        vec![ItemResult::Stored]
    );
    let page = store.query(&EventQuery::default()).unwrap();
    assert_eq!(page.events, vec![e]);
    assert_eq!(page.next_cursor, None);
}

#[test]
fn resending_stores_nothing_new() {
    // with several shards the duplicate inside one batch still meets its twin (same shard)
    for shards in [1, 2, 3] {
        let (_dir, store) = open_shards(shards);
        let batch = series(10);
        assert!(
            store
                .insert_batch(&batch)
                .unwrap()
                .iter()
                .all(|r| *r == ItemResult::Stored)
        );
        assert!(
            store
                .insert_batch(&batch)
                .unwrap()
                .iter()
                .all(|r| *r == ItemResult::Duplicate)
        );
        // a resend with a changed body is still a duplicate: stored events are never edited
        let mut changed = batch[0].clone();
        changed.summary = "rewritten".into();
        let mut twice = vec![changed, series(11).remove(10)];
        twice.push(twice[1].clone());
        assert_eq!(
            store.insert_batch(&twice).unwrap(),
            vec![ItemResult::Duplicate, ItemResult::Stored, ItemResult::Duplicate]
        );
        assert_eq!(store.count().unwrap(), 11);
        let page = store
            .query(&EventQuery {
                q: Some("rewritten".into()),
                ..Default::default()
            })
            .unwrap();
        assert!(page.events.is_empty());
    }
}

#[test]
fn batch_limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("db"));
    config.max_batch_items = 5;
    let store = SqliteStore::open(config).unwrap();
    assert!(matches!(
        store.insert_batch(&series(6)),
        Err(StoreError::BatchTooLarge { count: 6, max: 5 })
    ));
    assert_eq!(store.count().unwrap(), 0);
}

#[test]
fn filters_table() {
    // drive_max_rows 10,000: small matches are fetched and sorted; 1: every query walks a
    // time-ordered index. Both plans must give the same answers.
    for drive_max_rows in [10_000, 1] {
        for shards in SHARD_COUNTS {
            let dir = tempfile::tempdir().unwrap();
            let mut config = SqliteConfig::new(dir.path().join("db"));
            config.drive_max_rows = drive_max_rows;
            config.shards = shards;
            check_filters(&SqliteStore::open(config).unwrap());
        }
    }
}

fn check_filters(store: &SqliteStore) {
    store.insert_batch(&series(12)).unwrap();
    store
        .insert_batch(&[
            ev(r#"{"id":"svc","time":1795000100000,"kind":"deployment.odd","service":"db","summary":"not a deploy"}"#),
            ev(r#"{"id":"aud","time":1795000200000,"kind":"audit.api","actor":"bob","summary":"token created"}"#),
        ])
        .unwrap();
    let q = |f: fn(&mut EventQuery)| {
        let mut query = EventQuery::default();
        f(&mut query);
        ids(&store.query(&query).unwrap().events).join(",")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "everything, newest first",
            q(|_| {}),
            "aud,svc,e00011,e00010,e00009,e00008,e00007,e00006,e00005,e00004,e00003,e00002,e00001,e00000",
        ),
        ("limit", q(|q| q.limit = Some(2)), "aud,svc"),
        (
            "from inclusive, to exclusive",
            q(|q| {
                q.from = Some(Timestamp(T0 + 3000));
                q.to = Some(Timestamp(T0 + 6000))
            }),
            "e00005,e00004,e00003",
        ),
        (
            "host",
            q(|q| q.host = Some("web1".into())),
            "e00010,e00007,e00004,e00001",
        ),
        ("service", q(|q| q.service = Some("db".into())), "svc"),
        (
            "kind prefix on dot boundary",
            q(|q| q.kind_prefix = Some("deploy".into())),
            "e00010,e00008,e00006,e00004,e00002,e00000",
        ),
        (
            "kind prefix with trailing dot",
            q(|q| q.kind_prefix = Some("chef.".into())),
            "e00011,e00009,e00007,e00005,e00003,e00001",
        ),
        (
            "whole kind",
            q(|q| q.kind_prefix = Some("audit.api".into())),
            "aud",
        ),
        (
            "label =",
            q(|q| {
                q.labels = vec![Matcher::equal("parity", "odd")];
                q.host = Some("web0".into())
            }),
            "e00009,e00003",
        ),
        (
            "label != includes unlabelled",
            q(|q| {
                q.labels = vec![Matcher::new(MatchOp::NotEqual, "parity", "even").unwrap()];
                q.limit = Some(3)
            }),
            "aud,svc,e00011",
        ),
        (
            "label = empty means absent",
            q(|q| q.labels = vec![Matcher::equal("parity", "")]),
            "aud,svc",
        ),
        (
            "label =~ is anchored",
            q(|q| {
                q.labels = vec![Matcher::new(MatchOp::Regex, "parity", "od").unwrap()];
            }),
            "",
        ),
        (
            "label =~",
            q(|q| {
                q.labels = vec![Matcher::new(MatchOp::Regex, "parity", "o.d|x").unwrap()];
                q.host = Some("web0".into())
            }),
            "e00009,e00003",
        ),
        (
            "label !~ includes unlabelled",
            q(|q| {
                q.labels = vec![Matcher::new(MatchOp::NotRegex, "parity", "e.*").unwrap()];
                q.limit = Some(3)
            }),
            "aud,svc,e00011",
        ),
        (
            "full text summary word",
            q(|q| q.q = Some("number 7".into())),
            "e00007",
        ),
        (
            "full text kind phrase",
            q(|q| {
                q.q = Some("chef.run".into());
                q.limit = Some(2)
            }),
            "e00011,e00009",
        ),
        (
            "full text label",
            q(|q| {
                q.q = Some("parity=even".into());
                q.host = Some("web2".into())
            }),
            "e00008,e00002",
        ),
        ("full text actor not indexed", q(|q| q.q = Some("bob".into())), ""),
        ("full text prefix", q(|q| q.q = Some("tok*".into())), "aud"),
        (
            "full text punctuation only",
            q(|q| {
                q.q = Some("!!".into());
                q.limit = Some(1)
            }),
            "aud",
        ),
    ];
    for (name, got, want) in cases {
        assert_eq!(got, want, "{name}");
    }
    // the kind prefix is cut on dots: `deploy` does not take `deploy-x.run`
    store
        .insert_batch(&[ev(r#"{"id":"dash","kind":"deploy-x.run","summary":"dash"}"#)])
        .unwrap();
    let deploys = store
        .query(&EventQuery {
            kind_prefix: Some("deploy".into()),
            limit: Some(1000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(deploys.events.len(), 6);
    let dash = store
        .query(&EventQuery {
            kind_prefix: Some("deploy-x".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids(&dash.events), vec!["dash"]);
}

#[test]
fn full_text_with_host_is_exact_and_host_is_not_a_word() {
    let (_dir, store) = open();
    store
        .insert_batch(&[
            ev(r#"{"id":"a","kind":"chef.run","host":"web-01","summary":"applied nginx"}"#),
            ev(r#"{"id":"b","kind":"chef.run","host":"web-01-b","summary":"applied nginx"}"#),
            ev(r#"{"id":"c","kind":"chef.run","service":"web-01","summary":"applied nginx"}"#),
        ])
        .unwrap();
    let search = |q: &str, host: Option<&str>, service: Option<&str>| {
        let query = EventQuery {
            q: Some(q.into()),
            host: host.map(Into::into),
            service: service.map(Into::into),
            ..Default::default()
        };
        ids(&store.query(&query).unwrap().events).join(",")
    };
    assert_eq!(search("nginx", Some("web-01"), None), "a");
    assert_eq!(search("nginx", Some("web-01-b"), None), "b");
    assert_eq!(search("nginx", None, Some("web-01")), "c");
    assert_eq!(search("nginx", Some("--"), None), "");
    assert_eq!(
        search("web", None, None),
        "",
        "host and service are filters, not search words"
    );
}

#[test]
fn full_text_covers_payload_strings() {
    let (_dir, store) = open();
    store
        .insert_batch(&[
            ev(r#"{"id":"p1","kind":"chef.run","summary":"chef run","payload":{"recipes":["nginx::default","sysctl::reboot"],"count":42}}"#),
            ev(r#"{"id":"p2","kind":"chef.run","summary":"chef run","payload":"c2VjcmV0"}"#),
        ])
        .unwrap();
    let search = |q: &str| {
        ids(&store
            .query(&EventQuery {
                q: Some(q.into()),
                ..Default::default()
            })
            .unwrap()
            .events)
        .join(",")
    };
    assert_eq!(search("reboot"), "p1");
    assert_eq!(search("sysctl reboot"), "p1");
    assert_eq!(search("42"), "", "numbers in payloads are not indexed");
    assert_eq!(search("c2VjcmV0"), "p2");
    assert_eq!(search("recipes"), "", "keys are not indexed");
}

#[test]
fn hostile_queries_are_rejected_or_harmless() {
    let (_dir, store) = open();
    store.insert_batch(&series(3)).unwrap();
    let cases: Vec<(EventQuery, &str)> = vec![
        (
            EventQuery {
                limit: Some(0),
                ..Default::default()
            },
            "invalid",
        ),
        (
            EventQuery {
                limit: Some(1001),
                ..Default::default()
            },
            "invalid",
        ),
        (
            EventQuery {
                limit: Some(1000),
                ..Default::default()
            },
            "ok",
        ),
        (
            EventQuery {
                cursor: Some("nonsense".into()),
                ..Default::default()
            },
            "cursor",
        ),
        (
            EventQuery {
                cursor: Some("12_bad id".into()),
                ..Default::default()
            },
            "cursor",
        ),
        (
            EventQuery {
                cursor: Some("x_e00001".into()),
                ..Default::default()
            },
            "cursor",
        ),
        // a version-1 cursor (`<time>_<id>`, before schema 4) is refused, not misread
        (
            EventQuery {
                cursor: Some(format!("{}_e00001", T0 + 1000)),
                ..Default::default()
            },
            "cursor",
        ),
        (
            EventQuery {
                cursor: Some("v2.12".into()),
                ..Default::default()
            },
            "cursor",
        ),
        (
            EventQuery {
                cursor: Some("v2.12.x".into()),
                ..Default::default()
            },
            "cursor",
        ),
        // a version-2 cursor (`v2.<time>.<seq>`, the single-file store) does not resume
        (
            EventQuery {
                cursor: Some("v2.-12.-3".into()),
                ..Default::default()
            },
            "cursor",
        ),
        (
            EventQuery {
                cursor: Some("v3.-12.1.-3".into()),
                ..Default::default()
            },
            "ok",
        ),
        // a shard this store does not have
        (
            EventQuery {
                cursor: Some("v3.-12.2.-3".into()),
                ..Default::default()
            },
            "cursor",
        ),
        (
            EventQuery {
                cursor: Some("v3.-12.1.-3.4".into()),
                ..Default::default()
            },
            "cursor",
        ),
        (
            EventQuery {
                labels: vec![Matcher::equal("a\"]') --", "x")],
                ..Default::default()
            },
            "invalid",
        ),
        (
            EventQuery {
                labels: vec![Matcher::new(MatchOp::Regex, "a", "(a+)+$").unwrap()],
                ..Default::default()
            },
            "ok",
        ),
        (
            EventQuery {
                labels: vec![{
                    let mut m = Matcher::new(MatchOp::Regex, "a", "x").unwrap();
                    m.value = "(unclosed".into();
                    m
                }],
                ..Default::default()
            },
            "invalid",
        ),
        (
            EventQuery {
                labels: (0..17).map(|i| Matcher::equal(format!("l{i}"), "v")).collect(),
                ..Default::default()
            },
            "invalid",
        ),
        (
            EventQuery {
                q: Some("\" OR 1=1; DROP TABLE events; --".into()),
                ..Default::default()
            },
            "ok",
        ),
        (
            EventQuery {
                q: Some("NEAR(a b) AND NOT c:d ^e {f}".into()),
                ..Default::default()
            },
            "ok",
        ),
        (
            EventQuery {
                q: Some("x".repeat(5000)),
                ..Default::default()
            },
            "invalid",
        ),
        (
            EventQuery {
                q: Some("a b c d e f g h i j k l m n o p q".into()),
                ..Default::default()
            },
            "invalid",
        ),
        (
            EventQuery {
                host: Some("' OR 1=1 --".into()),
                ..Default::default()
            },
            "ok",
        ),
        (
            EventQuery {
                kind_prefix: Some("%".into()),
                ..Default::default()
            },
            "ok",
        ),
        (
            EventQuery {
                from: Some(Timestamp(i64::MAX)),
                to: Some(Timestamp(i64::MIN)),
                ..Default::default()
            },
            "ok",
        ),
    ];
    for (i, (query, want)) in cases.into_iter().enumerate() {
        let got = match store.query(&query) {
            Ok(_) => "ok",
            Err(StoreError::InvalidQuery(_)) => "invalid",
            Err(StoreError::InvalidCursor) => "cursor",
            Err(e) => panic!("case {i}: unexpected {e}"),
        };
        assert_eq!(got, want, "case {i}: {query:?}");
    }
    assert_eq!(store.count().unwrap(), 3);
}

#[test]
fn hostile_bodies_are_rejected_at_the_edge() {
    let limits = EventLimits::default();
    let huge = format!(
        r#"{{"kind":"a.b","summary":"s","payload":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let deep = format!(
        r#"{{"kind":"a.b","summary":"s","payload":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let arrival = Arrival {
        received_at: Timestamp(T0),
        source: "test",
        random: 1,
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"kind\":\"a.b\",\"summary\":\"\xff\xfe\"}".to_vec(), "body"),
        (b"\xc3\x28".to_vec(), "body"),
        (huge.into_bytes(), "item"),
        (deep.into_bytes(), "item"),
        (
            br#"{"kind":"a.b","summary":"s","payload":{"a":1}"#.to_vec(),
            "item",
        ),
        (br#"{"kind":"a.b","summary":"line\u2028sep"}"#.to_vec(), "ok"),
        (br#"{"kind":"a.b","summary":"nul\u0000"}"#.to_vec(), "item"),
        (
            br#"{"kind":"a.b","summary":"lone \ud800 surrogate"}"#.to_vec(),
            "item",
        ),
        (br#"[1, "x", null]"#.to_vec(), "item"),
        (format!("[{}]", vec!["{}"; 1001].join(",")).into_bytes(), "body"),
    ];
    for (i, (body, want)) in cases.into_iter().enumerate() {
        let got = match decode_batch(&body, &limits) {
            Err(_) => "body",
            Ok(items) => {
                let results: Vec<_> = items
                    .into_iter()
                    .map(|item| item.and_then(|input| input.validate(&arrival, &limits)))
                    .collect();
                if results.iter().all(Result::is_ok) {
                    "ok"
                } else {
                    "item"
                }
            }
        };
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn cursor_pages_are_stable_while_events_arrive() {
    for shards in SHARD_COUNTS {
        let (_dir, store) = open_shards(shards);
        store.insert_batch(&series(50)).unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut extra = 0;
        let mut ties = Vec::new();
        loop {
            let page = store
                .query(&EventQuery {
                    limit: Some(7),
                    cursor: cursor.clone(),
                    ..Default::default()
                })
                .unwrap();
            seen.extend(page.events.iter().map(|e| e.id.as_str().to_owned()));
            // between pages: newer events, and one at exactly the time of the last event seen
            if let Some(last) = page.events.last() {
                let newer = ev(&format!(
                    r#"{{"id":"new{extra}","time":{},"kind":"a.b","summary":"late"}}"#,
                    T0 + 100_000 + extra
                ));
                let tie = ev(&format!(
                    r#"{{"id":"a{extra}","time":{},"kind":"a.b","summary":"tie"}}"#,
                    last.time.0
                ));
                ties.push((tie.id.as_str().to_owned(), last.id.as_str().to_owned()));
                store.insert_batch(&[newer, tie]).unwrap();
                extra += 1;
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        // ties at one time sort by shard (higher first), then newest-stored first: an event
        // arriving at exactly the cursor's time shows on a later page exactly when its shard
        // comes after the cursor's, and never when it shares the cursor's shard
        for (tie, cursor_id) in &ties {
            let later = shard_of(tie, shards) < shard_of(cursor_id, shards);
            assert_eq!(
                seen.contains(tie),
                later && cursor_id != "e00000",
                "shards {shards}: tie {tie} at the time of {cursor_id}"
            );
        }
        let originals: Vec<String> = (0..50).rev().map(|i| format!("e{i:05}")).collect();
        let seen_originals: Vec<String> = seen.iter().filter(|id| id.starts_with('e')).cloned().collect();
        assert_eq!(seen_originals, originals);
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), seen.len(), "no event twice");
        assert!(
            seen.iter().all(|id| !id.starts_with("new")),
            "newer events never appear on later pages"
        );
    }
}

/// Many events at the same few times, spread over every shard, paged while events arrive in
/// every shard between pages (newer, older, and at the cursor's time): every page is exactly
/// the next `limit` events, in the documented order, of what is stored when it is asked for.
#[test]
fn pages_across_shards_skip_nothing_and_repeat_nothing() {
    for shards in SHARD_COUNTS {
        let (_dir, store) = open_shards(shards);
        // the model: (time, shard, insertion number) per stored id; within a shard the
        // insertion number orders as `seq` does (nothing is deleted here)
        let mut stored: Vec<(i64, usize, usize, String)> = Vec::new();
        let mut inserted = 0usize;
        let mut insert = |store: &SqliteStore, stored: &mut Vec<_>, events: Vec<Event>| {
            let results = store.insert_batch(&events).unwrap();
            for (e, r) in events.iter().zip(results) {
                assert_eq!(r, ItemResult::Stored);
                stored.push((
                    e.time.0,
                    shard_of(e.id.as_str(), shards),
                    inserted,
                    e.id.as_str().to_owned(),
                ));
                inserted += 1;
            }
        };
        let batch = |prefix: &str, times: &[i64]| -> Vec<Event> {
            times
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    ev(&format!(
                        r#"{{"id":"{prefix}-{i}","time":{},"kind":"k.x","summary":"s"}}"#,
                        T0 + t
                    ))
                })
                .collect()
        };
        // 120 events at 4 times (30 each, so every time has events in every shard)
        let times: Vec<i64> = (0..120).map(|i| (i % 4) * 1000).collect();
        insert(&store, &mut stored, batch("base", &times));
        let mut cursor: Option<String> = None;
        let mut last_key: Option<(i64, usize, usize)> = None;
        let mut seen: Vec<String> = Vec::new();
        for round in 0.. {
            let page = store
                .query(&EventQuery {
                    limit: Some(9),
                    cursor: cursor.clone(),
                    ..Default::default()
                })
                .unwrap();
            // what the model says this page must be
            let mut expect: Vec<&(i64, usize, usize, String)> = stored
                .iter()
                .filter(|(t, k, n, _)| last_key.is_none_or(|c| (*t, *k, *n) < c))
                .collect();
            expect.sort_by_key(|e| std::cmp::Reverse((e.0, e.1, e.2)));
            let want: Vec<&str> = expect.iter().take(9).map(|e| e.3.as_str()).collect();
            assert_eq!(ids(&page.events), want, "shards {shards}, round {round}");
            assert_eq!(
                page.next_cursor.is_some(),
                expect.len() > 9,
                "shards {shards}, round {round}"
            );
            seen.extend(want.iter().map(|s| (*s).to_owned()));
            let Some(last) = expect.get(8).filter(|_| page.next_cursor.is_some()) else {
                break;
            };
            last_key = Some((last.0, last.1, last.2));
            // between pages, into every shard: newer, at the cursor's time, and older
            let t = last.0 - T0;
            let ts: Vec<i64> = (0..12).map(|i| [t + 5000, t, t - 1][i % 3]).collect();
            insert(&store, &mut stored, batch(&format!("r{round}"), &ts));
            cursor = page.next_cursor;
        }
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), seen.len(), "shards {shards}: no event twice");
        assert!(seen.len() >= 120, "shards {shards}");
    }
}

#[test]
fn annotations_are_compact_oldest_first_and_bounded() {
    for shards in SHARD_COUNTS {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SqliteConfig::new(dir.path().join("db"));
        config.limits.max_annotations = 3;
        config.shards = shards;
        let store = SqliteStore::open(config).unwrap();
        store.insert_batch(&series(12)).unwrap();
        let a = store
            .annotations(&AnnotationQuery {
                from: Timestamp(T0 + 1000),
                to: Timestamp(T0 + 11_000),
                host: Some("web1".into()),
                ..Default::default()
            })
            .unwrap();
        let got: Vec<(&str, i64, &str)> = a
            .rows
            .iter()
            .map(|r| (r.id.as_str(), r.time.0 - T0, r.kind.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("e00001", 1000, "chef.run"),
                ("e00004", 4000, "deploy.finished"),
                ("e00007", 7000, "chef.run")
            ]
        );
        assert!(a.truncated);
        let deploys = store
            .annotations(&AnnotationQuery {
                from: Timestamp(T0),
                to: Timestamp(T0 + 5000),
                kind_prefix: Some("deploy".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            deploys.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["e00000", "e00002", "e00004"]
        );
        assert!(!deploys.truncated);
        assert_eq!(deploys.rows[0].summary, "event number 0");
    }
}

#[test]
fn retention_spares_audit_unless_told() {
    for shards in SHARD_COUNTS {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SqliteConfig::new(dir.path().join("db"));
        config.retention_chunk_rows = 3;
        config.shards = shards;
        let store = SqliteStore::open(config).unwrap();
        store.insert_batch(&series(10)).unwrap();
        let audit: Vec<Event> = (0..4)
            .map(|i| {
                ev(&format!(
                    r#"{{"id":"aud{i}","time":{},"kind":"audit.api","summary":"audited {i}"}}"#,
                    T0 + i * 1000
                ))
            })
            .collect();
        store.insert_batch(&audit).unwrap();
        let cases = [
            (
                Retention {
                    events_before: Timestamp(T0 + 5000),
                    audit_before: None,
                },
                RetentionReport {
                    events_deleted: 5,
                    audit_deleted: 0,
                },
                9,
            ),
            (
                Retention {
                    events_before: Timestamp(T0 + 5000),
                    audit_before: None,
                },
                RetentionReport::default(),
                9,
            ),
            (
                Retention {
                    events_before: Timestamp(T0 + 8000),
                    audit_before: Some(Timestamp(T0 + 2000)),
                },
                RetentionReport {
                    events_deleted: 3,
                    audit_deleted: 2,
                },
                4,
            ),
        ];
        for (retention, want, left) in cases {
            assert_eq!(store.delete_older_than(&retention).unwrap(), want);
            assert_eq!(store.count().unwrap(), left);
        }
        // deleted events are gone from the full-text index too
        let hits = store
            .query(&EventQuery {
                q: Some("number".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ids(&hits.events), vec!["e00009", "e00008"]);
        let audited = store
            .query(&EventQuery {
                q: Some("audited".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ids(&audited.events), vec!["aud3", "aud2"]);
    }
}

#[test]
fn reopening_keeps_data_and_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
        store.insert_batch(&series(5)).unwrap();
    }
    // callers hold the trait object, never the SQLite type
    let store: Box<dyn EventStore> = Box::new(SqliteStore::open(SqliteConfig::new(&path)).unwrap());
    assert_eq!(store.count().unwrap(), 5);
    assert_eq!(
        store.insert_batch(&series(5)).unwrap(),
        vec![ItemResult::Duplicate; 5]
    );
}

#[test]
fn a_file_that_is_not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, vec![0xAB; 8192]).unwrap();
    assert!(matches!(
        SqliteStore::open(SqliteConfig::new(&path)),
        Err(StoreError::Backend { .. })
    ));
}

#[test]
fn labels_round_trip_through_json() {
    let (_dir, store) = open();
    let mut e = ev(r#"{"id":"l","kind":"a.b","summary":"s"}"#);
    e.labels = BTreeMap::from([
        ("quote\"d".to_owned(), "v\"al".to_owned()),
        ("a".to_owned(), "ü".to_owned()),
    ]);
    store.insert_batch(std::slice::from_ref(&e)).unwrap();
    assert_eq!(store.query(&EventQuery::default()).unwrap().events, vec![e]);
}

#[test]
fn readers_see_whole_batches_while_a_writer_inserts() {
    // a batch is one transaction per shard, so only a 1-shard store shows whole batches
    let (_dir, store) = open_shards(1);
    let all = series(2000);
    std::thread::scope(|s| {
        s.spawn(|| {
            for batch in all.chunks(100) {
                store.insert_batch(batch).unwrap();
            }
        });
        let mut last = 0;
        while last < 2000 {
            let n = store.count().unwrap();
            assert!(
                n >= last && n % 100 == 0,
                "count {n} after {last}: a batch is all or nothing"
            );
            last = n;
            let page = store
                .query(&EventQuery {
                    limit: Some(10),
                    ..Default::default()
                })
                .unwrap();
            assert!(page.events.len() <= 10);
        }
    });
}

mod model_check {
    //! Paging through any query, under every plan, gives exactly the events an in-memory
    //! filter and sort give.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Spec {
        time: i64,
        host: Option<&'static str>,
        kind: &'static str,
        word: &'static str,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            0i64..20,
            prop::sample::select(vec![None, Some("web1"), Some("web2")]),
            prop::sample::select(vec!["deploy.finished", "deploy.started", "chef.run", "audit.api"]),
            prop::sample::select(vec!["alpha", "beta", "gamma"]),
        )
            .prop_map(|(time, host, kind, word)| Spec {
                time,
                host,
                kind,
                word,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn pages_match_an_in_memory_model(
            specs in prop::collection::vec(spec(), 0..60),
            host in prop::sample::select(vec![None, Some("web1")]),
            kind in prop::sample::select(vec![None, Some("deploy"), Some("audit.api")]),
            word in prop::sample::select(vec![None, Some("beta")]),
            page in 1usize..8,
            drive_max_rows in prop::sample::select(vec![1usize, 10_000]),
            shards in prop::sample::select(SHARD_COUNTS.to_vec()),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut config = SqliteConfig::new(dir.path().join("db"));
            config.drive_max_rows = drive_max_rows;
            config.shards = shards;
            let store = SqliteStore::open(config).unwrap();
            let events: Vec<Event> = specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let host = s.host.map(|h| format!(r#","host":"{h}""#)).unwrap_or_default();
                    ev(&format!(
                        r#"{{"id":"id{:02}","time":{},"kind":"{}","summary":"{} {i}"{host}}}"#,
                        (i * 37) % 100,
                        T0 + s.time,
                        s.kind,
                        s.word
                    ))
                })
                .collect();
            for batch in events.chunks(7) {
                store.insert_batch(batch).unwrap();
            }
            let want: Vec<&Event> = events
                .iter()
                .filter(|e| host.is_none_or(|h| e.host.as_deref() == Some(h)))
                .filter(|e| kind.is_none_or(|k| e.kind == k || e.kind.starts_with(&format!("{k}."))))
                .filter(|e| word.is_none_or(|w| e.summary.starts_with(w)))
                .collect();
            // newest first; equal times by shard (higher first), then newest-stored first (ids
            // are distinct, so every event is stored, in the order of `events`)
            let mut want: Vec<(usize, usize, &Event)> = want
                .into_iter()
                .map(|e| {
                    let pos = events.iter().position(|x| x.id == e.id).unwrap();
                    (shard_of(e.id.as_str(), shards), pos, e)
                })
                .collect();
            want.sort_by(|(ka, ia, a), (kb, ib, b)| (b.time, kb, ib).cmp(&(a.time, ka, ia)));
            let want: Vec<&Event> = want.into_iter().map(|(_, _, e)| e).collect();
            let mut got = Vec::new();
            let mut cursor = None;
            loop {
                let p = store
                    .query(&EventQuery {
                        host: host.map(Into::into),
                        kind_prefix: kind.map(Into::into),
                        q: word.map(Into::into),
                        limit: Some(page),
                        cursor: cursor.take(),
                        ..Default::default()
                    })
                    .unwrap();
                prop_assert!(p.events.len() <= page);
                got.extend(p.events);
                match p.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let got_ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
            let want_ids: Vec<&str> = want.iter().map(|e| e.id.as_str()).collect();
            prop_assert_eq!(got_ids, want_ids);
        }
    }
}

/// The number of full-text segments, from FTS5's structure record (`id = 10` of the `_data`
/// table): a 4-byte cookie, with `contentless_delete` the 4-byte version-2 marker, then the
/// level and segment counts as varints (one byte each while below 128).
fn fts_segments(path: &std::path::Path) -> u8 {
    let conn = rusqlite::Connection::open(path).unwrap();
    let blob: Vec<u8> = conn
        .query_row("SELECT block FROM events_fts_data WHERE id = 10", [], |r| {
            r.get(0)
        })
        .unwrap();
    let at = if blob[4..8] == [0xff, 0, 0, 1] { 8 } else { 4 };
    assert!(blob[at] < 128 && blob[at + 1] < 128, "{blob:?}");
    blob[at + 1]
}

#[test]
fn one_batch_writes_one_full_text_segment() {
    // FTS5 writes what it collected at every statement savepoint; a batch must reach the
    // index in one piece (one segment), not one tiny segment per event
    let (dir, store) = open();
    let batch = series(500);
    store.insert_batch(&batch).unwrap();
    assert_eq!(fts_segments(&dir.path().join("roaster.db")), 1);
    store.insert_batch(&series(900)[500..]).unwrap();
    assert_eq!(fts_segments(&dir.path().join("roaster.db")), 2);
}

/// Version 1's schema exactly as it shipped, with one event in it.
fn write_schema_v1(path: &std::path::Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, time INTEGER NOT NULL,
            received_at INTEGER NOT NULL, source TEXT NOT NULL, kind TEXT NOT NULL,
            subject TEXT, actor TEXT, host TEXT, service TEXT, labels TEXT NOT NULL,
            severity INTEGER NOT NULL, summary TEXT NOT NULL, payload TEXT);
        CREATE INDEX events_time ON events(time, id);
        CREATE INDEX events_host_time ON events(host, time, id);
        CREATE INDEX events_service_time ON events(service, time, id);
        CREATE INDEX events_kind_time ON events(kind, time);
        CREATE VIRTUAL TABLE events_fts USING fts5(
            kind, subject, summary, labels, payload, host, service,
            content='', contentless_delete=1);
        INSERT INTO events VALUES (1, 'old1', 1795000000000, 1795000000000, 'agent',
            'cert.renewed', NULL, NULL, 'web1', NULL, '{}', 0, 'renewed the certificate', NULL);
        INSERT INTO events_fts (rowid, kind, summary, host)
            VALUES (1, 'cert.renewed', 'renewed the certificate', 'web1');
        PRAGMA user_version = 1;",
    )
    .unwrap();
}

#[test]
fn a_version_1_file_is_migrated_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    write_schema_v1(&path);
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    assert_eq!(
        store.shards(),
        1,
        "a file from before sharding opens as one shard"
    );
    for (kind, q) in [
        (Some("cert"), None),
        (None, Some("certificate")),
        (Some("cert.renewed"), Some("renew*")),
    ] {
        let page = store
            .query(&EventQuery {
                kind_prefix: kind.map(Into::into),
                q: q.map(Into::into),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ids(&page.events), vec!["old1"], "{kind:?} {q:?}");
    }
    store.insert_batch(&series(3)).unwrap();
    assert_eq!(store.count().unwrap(), 4);
    store.close().unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    let kind_index: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'events_kind_time'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((version, kind_index), (5, 0));
    assert_eq!(index_sql(&conn), schema_4_indexes());
    // a file from a later schema is refused, not guessed at
    conn.execute_batch("PRAGMA user_version = 6;").unwrap();
    drop(conn);
    assert!(matches!(
        SqliteStore::open(SqliteConfig::new(&path)),
        Err(StoreError::Backend { op: "migrate", .. })
    ));
}

/// The event indexes' definitions, by name.
fn index_sql(conn: &rusqlite::Connection) -> Vec<(String, String)> {
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Schema 4's indexes: no id text in any of them (the rowid `seq` orders ties).
fn schema_4_indexes() -> Vec<(String, String)> {
    [
        (
            "events_host_time",
            "CREATE INDEX events_host_time ON events(host, time) WHERE host IS NOT NULL",
        ),
        (
            "events_service_time",
            "CREATE INDEX events_service_time ON events(service, time) WHERE service IS NOT NULL",
        ),
        ("events_time", "CREATE INDEX events_time ON events(time)"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect()
}

/// Version 3's schema exactly as it shipped (version 1's steps, then 2's and 3's), with
/// three events in it, two at the same millisecond.
fn write_schema_v3(path: &std::path::Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, time INTEGER NOT NULL,
            received_at INTEGER NOT NULL, source TEXT NOT NULL, kind TEXT NOT NULL,
            subject TEXT, actor TEXT, host TEXT, service TEXT, labels TEXT NOT NULL,
            severity INTEGER NOT NULL, summary TEXT NOT NULL, payload TEXT);
        CREATE INDEX events_time ON events(time, id);
        CREATE VIRTUAL TABLE events_fts USING fts5(
            kind, subject, summary, labels, payload, host, service,
            content='', contentless_delete=1);
        CREATE INDEX events_host_time ON events(host, time, id) WHERE host IS NOT NULL;
        CREATE INDEX events_service_time ON events(service, time, id) WHERE service IS NOT NULL;
        INSERT INTO events VALUES (1, 'old1', 1795000000000, 1795000000000, 'agent',
            'cert.renewed', NULL, NULL, 'web1', 'nginx', '{}', 0, 'renewed the certificate', NULL);
        INSERT INTO events_fts (rowid, kind, summary, host, service)
            VALUES (1, 'cert.renewed', 'renewed the certificate', 'web1', 'nginx');
        INSERT INTO events VALUES (2, 'old2', 1795000001000, 1795000001000, 'agent',
            'deploy.finished', NULL, NULL, 'web1', NULL, '{}', 0, 'deployed nginx', NULL);
        INSERT INTO events_fts (rowid, kind, summary, host)
            VALUES (2, 'deploy.finished', 'deployed nginx', 'web1');
        INSERT INTO events VALUES (3, 'old3', 1795000001000, 1795000001000, 'agent',
            'deploy.finished', NULL, NULL, 'web2', NULL, '{}', 0, 'deployed nginx', NULL);
        INSERT INTO events_fts (rowid, kind, summary, host)
            VALUES (3, 'deploy.finished', 'deployed nginx', 'web2');
        PRAGMA user_version = 3;",
    )
    .unwrap();
}

#[test]
fn a_version_3_file_is_migrated_and_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    write_schema_v3(&path);
    let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
    let cases: &[(EventQuery, &[&str])] = &[
        (EventQuery::default(), &["old3", "old2", "old1"]),
        (
            EventQuery {
                host: Some("web1".into()),
                ..Default::default()
            },
            &["old2", "old1"],
        ),
        (
            EventQuery {
                service: Some("nginx".into()),
                ..Default::default()
            },
            &["old1"],
        ),
        (
            EventQuery {
                q: Some("nginx".into()),
                host: Some("web1".into()),
                ..Default::default()
            },
            &["old2"],
        ),
        (
            EventQuery {
                kind_prefix: Some("cert".into()),
                q: Some("renew*".into()),
                ..Default::default()
            },
            &["old1"],
        ),
    ];
    for (query, want) in cases {
        assert_eq!(ids(&store.query(query).unwrap().events), *want, "{query:?}");
    }
    // pages of one event each walk the migrated (time, seq) order, ties newest-stored first
    let mut cursor = None;
    let mut seen = Vec::new();
    loop {
        let page = store
            .query(&EventQuery {
                limit: Some(1),
                cursor: cursor.take(),
                ..Default::default()
            })
            .unwrap();
        seen.extend(page.events.iter().map(|e| e.id.as_str().to_owned()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["old3", "old2", "old1"]);
    let a = store
        .annotations(&AnnotationQuery {
            from: Timestamp(T0),
            to: Timestamp(T0 + 2000),
            host: Some("web1".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        a.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["old1", "old2"]
    );
    // idempotency still holds across the migration, and new events are stored after it
    let resend = ev(r#"{"id":"old1","time":1795000000000,"kind":"cert.renewed","summary":"x"}"#);
    assert_eq!(
        store.insert_batch(&[resend]).unwrap(),
        vec![ItemResult::Duplicate]
    );
    store.insert_batch(&series(3)).unwrap();
    assert_eq!(store.count().unwrap(), 6);
    store.close().unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 5);
    assert_eq!(index_sql(&conn), schema_4_indexes());
}

/// The id → shard hash is part of the on-disk format (idempotency is checked per shard):
/// these values must never change.
#[test]
fn shard_hash_is_pinned() {
    let cases: [(&str, [usize; 3]); 6] = [
        ("", [1, 2, 5]),
        ("a", [0, 1, 12]),
        ("e00001", [1, 1, 3]),
        ("ev-00000042", [1, 1, 3]),
        ("0192f1c4-7a3e-7c1b-9a0e-4b6f2d1c8e55", [0, 0, 4]),
        ("deploy-42", [1, 1, 15]),
    ];
    for (id, want) in cases {
        let got = [2, 3, 16].map(|n| shard_of(id, n));
        assert_eq!(got, want, "{id:?}");
        assert_eq!(shard_of(id, 1), 0);
    }
    assert_eq!(
        store::shard_path(std::path::Path::new("/d/events.db"), 3),
        std::path::Path::new("/d/events.3.db")
    );
    assert_eq!(
        store::shard_path(std::path::Path::new("/d/events.db"), 0),
        std::path::Path::new("/d/events.db")
    );
    assert_eq!(
        store::shard_path(std::path::Path::new("/d/db"), 1),
        std::path::Path::new("/d/db.1")
    );
}

#[test]
fn the_layout_is_fixed_at_creation_and_checked_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let with = |shards: usize| {
        let mut c = SqliteConfig::new(&path);
        c.shards = shards;
        c
    };
    let store = SqliteStore::open(with(3)).unwrap();
    assert_eq!(store.shards(), 3);
    let batch = series(60);
    store.insert_batch(&batch).unwrap();
    for k in 0..3 {
        let n: i64 = rusqlite::Connection::open(store::shard_path(&path, k))
            .unwrap()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        let want = batch.iter().filter(|e| shard_of(e.id.as_str(), 3) == k).count();
        assert_eq!(
            n as usize, want,
            "shard {k} holds exactly the ids that hash to it"
        );
    }
    store.close().unwrap();
    drop(store);
    // the recorded count wins over the config
    let store = SqliteStore::open(with(2)).unwrap();
    assert_eq!(store.shards(), 3);
    assert_eq!(store.count().unwrap(), 60);
    assert!(
        store
            .insert_batch(&batch)
            .unwrap()
            .iter()
            .all(|r| *r == ItemResult::Duplicate)
    );
    store.close().unwrap();
    drop(store);
    // a shard file opened as shard 0 is refused
    assert!(matches!(
        SqliteStore::open(SqliteConfig::new(store::shard_path(&path, 1))),
        Err(StoreError::Layout(_))
    ));
    // a missing shard file is an error, never silently recreated
    std::fs::remove_file(store::shard_path(&path, 2)).unwrap();
    assert!(matches!(SqliteStore::open(with(3)), Err(StoreError::Layout(_))));
    assert!(!store::shard_path(&path, 2).exists());
    // out-of-range counts are refused before anything is created
    let other = dir.path().join("other.db");
    for bad in [0, store::MAX_SHARDS + 1] {
        let mut c = SqliteConfig::new(&other);
        c.shards = bad;
        assert!(matches!(SqliteStore::open(c), Err(StoreError::Layout(_))));
    }
    assert!(!other.exists());
}

#[test]
fn a_failed_shard_leaves_the_rest_stored_and_a_resend_completes_it() {
    // shard 1's file is made read-only from the outside by a long write lock, so its part of
    // a batch fails (busy); shard 0's part is stored; the resend stores the rest and answers
    // Duplicate for what went in
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut config = SqliteConfig::new(&path);
    config.shards = 2;
    config.busy_timeout = std::time::Duration::from_millis(50);
    let store = SqliteStore::open(config).unwrap();
    let batch = series(40);
    let blocker = rusqlite::Connection::open(store::shard_path(&path, 1)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store.insert_batch(&batch).unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let on_0 = batch.iter().filter(|e| shard_of(e.id.as_str(), 2) == 0).count();
    assert_eq!(store.count().unwrap() as usize, on_0);
    blocker.execute_batch("ROLLBACK").unwrap();
    let results = store.insert_batch(&batch).unwrap();
    for (e, r) in batch.iter().zip(&results) {
        let want = if shard_of(e.id.as_str(), 2) == 0 {
            ItemResult::Duplicate
        } else {
            ItemResult::Stored
        };
        assert_eq!(*r, want, "{}", e.id.as_str());
    }
    assert_eq!(store.count().unwrap(), 40);
}

/// Pages larger than a shard's expected share: when one shard holds most of the matching rows
/// (ids that all hash to it), the first round of a page (each shard's share plus slack) is not
/// enough and the store asks the full shards again. Every page must still be exactly the
/// model's next page.
#[test]
fn pages_are_exact_when_one_shard_holds_most_rows() {
    let shards = 3;
    let (_dir, store) = open_shards(shards);
    let mut ids: Vec<String> = (0..)
        .map(|i| format!("sk{i}"))
        .filter(|id| shard_of(id, shards) == 2)
        .take(250)
        .collect();
    ids.extend(
        (0..)
            .map(|i| format!("ot{i}"))
            .filter(|id| shard_of(id, shards) == 0)
            .take(10),
    );
    // (time, shard, insertion number, id)
    let mut model: Vec<(i64, usize, usize, String)> = Vec::new();
    for (chunk_no, chunk) in ids.chunks(50).enumerate() {
        let events: Vec<Event> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| {
                ev(&format!(
                    r#"{{"id":"{id}","time":{},"kind":"k.x","summary":"s"}}"#,
                    T0 + ((chunk_no * 50 + i) % 7) as i64
                ))
            })
            .collect();
        store.insert_batch(&events).unwrap();
        for e in &events {
            let n = model.len();
            model.push((
                e.time.0,
                shard_of(e.id.as_str(), shards),
                n,
                e.id.as_str().to_owned(),
            ));
        }
    }
    model.sort_by_key(|m| std::cmp::Reverse((m.0, m.1, m.2)));
    let want: Vec<&str> = model.iter().map(|m| m.3.as_str()).collect();
    for limit in [100, 37, 1000] {
        let mut got: Vec<String> = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .query(&EventQuery {
                    limit: Some(limit),
                    cursor: cursor.take(),
                    ..Default::default()
                })
                .unwrap();
            assert!(page.events.len() <= limit);
            got.extend(page.events.iter().map(|e| e.id.as_str().to_owned()));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(got, want, "limit {limit}");
    }
}

/// Annotations over many events of the same few times in every shard, cut by
/// `max_annotations`: oldest first, ties in the reverse of the page order (shard, then
/// insertion), truncated exactly when more matched.
#[test]
fn annotations_merge_shards_in_the_documented_order() {
    for shards in SHARD_COUNTS {
        for max in [7, 60, 500] {
            let dir = tempfile::tempdir().unwrap();
            let mut config = SqliteConfig::new(dir.path().join("db"));
            config.shards = shards;
            config.limits.max_annotations = max;
            let store = SqliteStore::open(config).unwrap();
            let events: Vec<Event> = (0..90)
                .map(|i| {
                    ev(&format!(
                        r#"{{"id":"an{i}","time":{},"kind":"deploy.x","summary":"s"}}"#,
                        T0 + (i % 3) * 10
                    ))
                })
                .collect();
            store.insert_batch(&events).unwrap();
            let mut model: Vec<(i64, usize, usize, &str)> = events
                .iter()
                .enumerate()
                .map(|(n, e)| (e.time.0, shard_of(e.id.as_str(), shards), n, e.id.as_str()))
                .collect();
            model.sort();
            let a = store
                .annotations(&AnnotationQuery {
                    from: Timestamp(T0),
                    to: Timestamp(T0 + 1000),
                    ..Default::default()
                })
                .unwrap();
            let want: Vec<&str> = model.iter().take(max).map(|m| m.3).collect();
            assert_eq!(
                a.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                want,
                "shards {shards} max {max}"
            );
            assert_eq!(a.truncated, max < 90, "shards {shards} max {max}");
        }
    }
}

/// A creation that crashed before shard 0 recorded the layout leaves empty shard files: the
/// next open completes it. A shard file with events beside a new `events.db` is refused.
#[test]
fn an_interrupted_creation_completes_and_orphaned_shards_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let remove_shard_0 = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("events.db{suffix}")));
        }
    };
    let mut config = SqliteConfig::new(&path);
    config.shards = 2;
    SqliteStore::open(config.clone()).unwrap().close().unwrap();
    remove_shard_0();
    let store = SqliteStore::open(config.clone()).unwrap();
    assert_eq!(store.shards(), 2);
    store.insert_batch(&series(20)).unwrap();
    assert_eq!(store.count().unwrap(), 20);
    store.close().unwrap();
    drop(store);
    remove_shard_0();
    assert!(matches!(SqliteStore::open(config), Err(StoreError::Layout(_))));
}
