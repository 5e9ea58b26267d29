//! The robot-plane HTTP ingest endpoints.
//!
//! | route | protocol | success | partial rejection |
//! |---|---|---|---|
//! | `POST /api/v1/write` | Prometheus remote-write 1.0 (protobuf + snappy) | 204 | 400, text naming the first rejected series; the rest is stored |
//! | `POST /write`, `POST /api/v2/write` | InfluxDB line protocol, `?precision=` | 204 | 400 `{"error":"partial write: ..."}`; the rest is stored |
//! | `POST /api/v1/ingest` | Roaster JSON (`wire::json`) | 200 `{"accepted":N,"too_old":N,"blackholed":false,"rejected":[{"index":i,"reason":"..","detail":".."}],"rejected_total":N}` | same, 200 |
//!
//! Remote-write follows Prometheus' own receiver: samples that can be stored are stored, and
//! when some series were refused (bad labels, cardinality limits) the answer is 400, which
//! remote-write clients do not retry, so nothing is duplicated and the refusal shows up in the
//! client's log as well as in `roaster_ingest_dropped_total` and the rejections list.
//!
//! Common to every route, in this order:
//! - token: `Authorization: Bearer T` (or `Token T`, as Influx clients send), or the password
//!   of `Authorization: Basic` or of `?p=T` (Influx v1 clients; the user name is ignored).
//!   Without the `ingest` scope: 401.
//! - kill switch: paused → 503 with `Retry-After`; blackholed → decoded, counted
//!   (`blackholed`), discarded, answered as success.
//! - body: at most `max_http_body_bytes` on the wire and after decompression (413);
//!   `Content-Encoding: gzip` is accepted for Influx and JSON.
//! - decode and series resolution run in a blocking job; the points are queued whole or not
//!   at all: a full queue answers 429 with `Retry-After` (counted `queue_full`).
//! - with `http_durable_ack`, the answer waits for the WAL fsync; storage unavailable → 503
//!   with `Retry-After`, storage refusing the batch → 500.
//!
//! Whole-request failures answer `{"error": "..."}` JSON (remote-write: plain text).

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use model::{Point, SeriesId, SeriesKey, Timestamp};
use tokio::sync::oneshot;

use crate::limiter::Refused;
use crate::queue::{Batch, QueueFull};
use crate::telemetry::reason;
use crate::{Shared, SinkError, Source, SwitchState, WriteOutcome};

/// Builds the router over the shared ingest state.
pub(crate) fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/write", post(remote_write))
        .route("/write", post(influx))
        .route("/api/v2/write", post(influx))
        .route("/api/v1/ingest", post(json))
        .with_state(sh)
}

type Params = Query<HashMap<String, String>>;

/// Most rejected items listed in a JSON answer; `rejected_total` gives the full count and
/// the rejections list (`GET /api/v1/ingest/rejections`) the latest of them.
const MAX_REJECTED_IN_ANSWER: usize = 100;

/// What a decoder produced from a body.
struct Decoded {
    samples: Vec<wire::Sample>,
    errors: Vec<wire::LineError>,
}

/// One refused or rejected item, for the answer.
struct Refusal {
    reason: &'static str,
    /// The 0-based position in the request (series for JSON/remote-write, line for Influx),
    /// when the decoder rejected it; `None` for series refused by limits or storage.
    index: Option<usize>,
    text: String,
}

/// What storing a request did.
struct Stored {
    outcome: WriteOutcome,
    refusals: Vec<Refusal>,
    blackholed: bool,
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

fn retry_later(sh: &Shared, status: StatusCode, msg: &str) -> Response {
    let mut r = error(status, msg);
    if let Ok(v) = HeaderValue::from_str(&sh.cfg.retry_after_seconds.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The token from `Authorization: Bearer|Token T`, from the password of
/// `Authorization: Basic` (as Telegraf's and other Influx v1 clients send `u`/`p`), or from
/// `?p=`.
fn token(headers: &HeaderMap, params: &HashMap<String, String>) -> Option<String> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if let Some(v) = auth {
        if let Some(t) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("Token ")) {
            return Some(t.trim().to_owned());
        }
        if let Some(b64) = v.strip_prefix("Basic ") {
            let creds = base64_decode(b64.trim())?;
            let creds = String::from_utf8(creds).ok()?;
            return creds.split_once(':').map(|(_, p)| p.to_owned());
        }
    }
    params.get("p").cloned()
}

/// Standard base64 (with or without padding); `None` on any other byte. Bounded by the
/// header size limit of the HTTP server.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | sextet(c)?;
        }
        let bytes = match chunk.len() {
            4 => 3,
            3 => {
                acc <<= 6;
                2
            }
            2 => {
                acc <<= 12;
                1
            }
            _ => return None,
        };
        let be = acc.to_be_bytes();
        out.extend_from_slice(be.get(1..1 + bytes)?);
    }
    Some(out)
}

/// Reads the body within `max_http_body_bytes`, gunzipping when asked.
async fn read_body(
    sh: &Shared,
    headers: &HeaderMap,
    body: Body,
    gzip_ok: bool,
) -> Result<bytes::Bytes, Response> {
    let limit = sh.cfg.max_http_body_bytes;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body exceeds max_http_body_bytes ({limit})"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let raw = axum::body::to_bytes(body, limit).await.map_err(|_| too_large())?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "gzip" | "x-gzip" if gzip_ok => {
            let mut out = Vec::new();
            let mut dec = flate2::read::GzDecoder::new(&raw[..]).take(limit as u64 + 1);
            dec.read_to_end(&mut out)
                .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad gzip body: {e}")))?;
            if out.len() > limit {
                return Err(too_large());
            }
            Ok(out.into())
        }
        "identity" | "" => Ok(raw),
        // remote-write bodies are snappy by protocol; the decoder checks them
        "snappy" if !gzip_ok => Ok(raw),
        other => Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("unsupported content-encoding {other:?}"),
        )),
    }
}

/// Everything before decoding: token, switch, body. `Ok(None)` = blackholed body read.
async fn admit(
    sh: &Shared,
    source: Source,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: Body,
    gzip_ok: bool,
) -> Result<bytes::Bytes, Response> {
    match token(headers, params) {
        Some(t) if sh.auth.allows_ingest(&t) => {}
        _ => {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "a token with the ingest scope is required",
            ));
        }
    }
    if sh.switch(source) == SwitchState::Paused {
        return Err(retry_later(
            sh,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("ingest source {source} is paused"),
        ));
    }
    read_body(sh, headers, body, gzip_ok).await
}

/// Resolves, queues and (when configured) waits for durability.
async fn store(
    sh: &Arc<Shared>,
    source: Source,
    decode: impl FnOnce(&Shared) -> Result<Decoded, String> + Send + 'static,
) -> Result<Stored, Response> {
    let now = sh.clock.now();
    let blackholed = sh.switch(source) == SwitchState::Blackholed;
    let sh2 = Arc::clone(sh);
    let job = tokio::task::spawn_blocking(move || -> Result<(Vec<Point>, Vec<Refusal>), String> {
        let decoded = decode(&sh2)?;
        if blackholed {
            sh2.dropped(source, reason::BLACKHOLED, decoded.samples.len());
            return Ok((Vec::new(), Vec::new()));
        }
        Ok(resolve(&sh2, source, decoded, now))
    });
    let (points, refusals) = match job.await {
        Ok(Ok(r)) => r,
        Ok(Err(msg)) => return Err(error(StatusCode::BAD_REQUEST, &msg)),
        Err(_) => {
            return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "ingest job failed"));
        }
    };
    let n = points.len();
    let mut acks = Vec::new();
    let mut batches = Vec::new();
    for chunk in points.chunks(sh.cfg.batch_max_points) {
        let (tx, rx) = oneshot::channel();
        acks.push(rx);
        batches.push(Batch {
            points: chunk.to_vec(),
            source,
            durable: sh.cfg.http_durable_ack,
            ack: Some(tx),
        });
    }
    match sh.queue.try_submit_all(batches, sh.shard()) {
        Ok(()) => {}
        Err(QueueFull::Full) => {
            sh.dropped(source, reason::QUEUE_FULL, n);
            return Err(retry_later(
                sh,
                StatusCode::TOO_MANY_REQUESTS,
                "ingest queue is full, retry later",
            ));
        }
        Err(QueueFull::TooBig) => {
            sh.dropped(source, reason::QUEUE_FULL, n);
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request has {n} points, more than queue_capacity_points ({})",
                    sh.cfg.queue_capacity_points
                ),
            ));
        }
        Err(QueueFull::Closed) => {
            return Err(retry_later(
                sh,
                StatusCode::SERVICE_UNAVAILABLE,
                "ingest is shutting down",
            ));
        }
    }
    let mut outcome = WriteOutcome::default();
    for rx in acks {
        match rx.await {
            Ok(Ok(o)) => {
                outcome.accepted += o.accepted;
                outcome.too_old += o.too_old;
            }
            Ok(Err(e @ SinkError::Unavailable(_))) => {
                return Err(retry_later(sh, StatusCode::SERVICE_UNAVAILABLE, &e.to_string()));
            }
            // not retryable: the same points would be refused again
            Ok(Err(e @ SinkError::Rejected(_))) => {
                return Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()));
            }
            Err(_) => {
                return Err(retry_later(
                    sh,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage writer stopped",
                ));
            }
        }
    }
    Ok(Stored {
        outcome,
        refusals,
        blackholed,
    })
}

/// Turns decoded samples into points (limits, sink), counting every rejection.
fn resolve(sh: &Shared, source: Source, decoded: Decoded, now: Timestamp) -> (Vec<Point>, Vec<Refusal>) {
    let mut refusals = Vec::new();
    for e in &decoded.errors {
        sh.reject_line(source, e, now);
        if e.reason.is_rejection() {
            refusals.push(Refusal {
                reason: e.reason.as_str(),
                index: Some(e.line.saturating_sub(1)),
                text: format!("{} ({})", e.excerpt, e.detail),
            });
        }
    }
    let mut points = Vec::with_capacity(decoded.samples.len());
    let mut known: HashMap<SeriesKey, Result<SeriesId, &'static str>, foldhash::fast::RandomState> =
        HashMap::with_hasher(foldhash::fast::RandomState::default());
    let mut last: Option<(SeriesKey, Result<SeriesId, &'static str>)> = None;
    for s in decoded.samples {
        let ts = s.timestamp_ms.unwrap_or(now.millis());
        // samples of one series come together: remember the last key before hashing
        let id = match &last {
            Some((k, id)) if *k == s.key => *id,
            _ => {
                let id = match known.get(&s.key) {
                    Some(id) => *id,
                    None => {
                        let id = match sh.limiter.resolve(&s.key) {
                            Ok(id) => Ok(id),
                            Err(Refused { reason, detail }) => {
                                let text = format!("{} ({detail})", s.key);
                                sh.reject(source, reason, &text, now);
                                refusals.push(Refusal {
                                    reason,
                                    index: None,
                                    text,
                                });
                                Err(reason)
                            }
                        };
                        known.insert(s.key.clone(), id);
                        // the first refused sample was counted by `reject`
                        if id.is_err() {
                            last = Some((s.key, id));
                            continue;
                        }
                        id
                    }
                };
                last = Some((s.key, id));
                id
            }
        };
        match id {
            Ok(series) => points.push(Point {
                series,
                ts,
                value: s.value,
            }),
            Err(r) => sh.dropped(source, r, 1),
        }
    }
    (points, refusals)
}

async fn remote_write(
    State(sh): State<Arc<Shared>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let source = Source::RemoteWrite;
    let body = match admit(&sh, source, &headers, &params, body, false).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let stored = store(&sh, source, move |sh| {
        let rw = wire::remote_write::decode(&body, sh.cfg.max_http_body_bytes, &sh.limits)
            .map_err(|e| e.to_string())?;
        Ok(Decoded {
            samples: rw.samples,
            errors: rw.errors,
        })
    })
    .await;
    match stored {
        Err(r) => r,
        Ok(s) if s.refusals.is_empty() => StatusCode::NO_CONTENT.into_response(),
        Ok(s) => {
            let mut msg = format!(
                "{} series refused, {} samples stored; first: ",
                s.refusals.len(),
                s.outcome.accepted
            );
            for r in s.refusals.iter().take(3) {
                msg.push_str(&format!("[{}] {}; ", r.reason, r.text));
            }
            (StatusCode::BAD_REQUEST, msg).into_response()
        }
    }
}

async fn influx(
    State(sh): State<Arc<Shared>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let source = Source::Influx;
    let body = match admit(&sh, source, &headers, &params, body, true).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let precision = match params
        .get("precision")
        .map(|p| p.parse::<wire::influx::Precision>())
    {
        None => wire::influx::Precision::default(),
        Some(Ok(p)) => p,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let stored = store(&sh, source, move |sh| {
        let (samples, errors) = wire::influx::decode(&body, precision, &sh.limits);
        Ok(Decoded { samples, errors })
    })
    .await;
    match stored {
        Err(r) => r,
        Ok(s) if s.refusals.is_empty() => StatusCode::NO_CONTENT.into_response(),
        Ok(s) => {
            let mut msg = String::from("partial write:");
            for r in s.refusals.iter().take(3) {
                msg.push_str(&format!(" [{}] {};", r.reason, r.text));
            }
            msg.push_str(&format!(" dropped={}", s.refusals.len()));
            error(StatusCode::BAD_REQUEST, &msg)
        }
    }
}

async fn json(
    State(sh): State<Arc<Shared>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let source = Source::Json;
    let body = match admit(&sh, source, &headers, &params, body, true).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let stored = store(&sh, source, move |sh| {
        let (samples, errors) = wire::json::decode(&body, &sh.limits).map_err(|e| e.to_string())?;
        Ok(Decoded { samples, errors })
    })
    .await;
    match stored {
        Err(r) => r,
        Ok(s) => {
            let rejected: Vec<serde_json::Value> = s
                .refusals
                .iter()
                .take(MAX_REJECTED_IN_ANSWER)
                .map(|r| {
                    serde_json::json!({
                        "index": r.index,
                        "reason": r.reason,
                        "detail": r.text,
                    })
                })
                .collect();
            let body = serde_json::json!({
                "accepted": s.outcome.accepted,
                "too_old": s.outcome.too_old,
                "blackholed": s.blackholed,
                "rejected": rejected,
                "rejected_total": s.refusals.len(),
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_table() {
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("", Some(b"")),
            ("Zg==", Some(b"f")),
            ("Zm8=", Some(b"fo")),
            ("Zm9v", Some(b"foo")),
            ("Zm9vYg", Some(b"foob")),
            ("dTpyc3RfaW5nZXN0X3Rlc3Q=", Some(b"u:rst_ingest_test")),
            ("Z", None),
            ("Zm9v!", None),
        ];
        for (input, want) in cases {
            assert_eq!(base64_decode(input).as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn tokens_come_from_headers_or_the_query() {
        let mut h = HeaderMap::new();
        let mut q = HashMap::new();
        assert_eq!(token(&h, &q), None);
        q.insert("p".to_owned(), "from-query".to_owned());
        assert_eq!(token(&h, &q).as_deref(), Some("from-query"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpyc3RfaW5nZXN0X3Rlc3Q="),
        );
        assert_eq!(token(&h, &q).as_deref(), Some("rst_ingest_test"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Token abc"));
        assert_eq!(token(&h, &q).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  xyz "));
        assert_eq!(token(&h, &q).as_deref(), Some("xyz"));
    }
}
