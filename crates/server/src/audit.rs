//! The audit trail of the human plane: every mutating request becomes one `audit.api` event
//! (who, what, when, from where, request id, result), stored through the event store.
//!
//! - [`record`] is an axum middleware on the whole human router, so routes added later are
//!   covered without anyone remembering to. It gives EVERY request (mutating or not) a fresh
//!   request id, returned in `X-Request-Id`; the audit event's id is that request id, so
//!   support can go from a client's log line to the event.
//! - **What is a mutation** ([`is_mutation`]): every method except GET, HEAD, OPTIONS and
//!   TRACE, minus the POST forms of the read-only Prometheus query API (`/api/v1/query`,
//!   `/query_range`, `/series`, `/labels`, `/label/NAME/values`), which carry a query in a form
//!   body and change nothing. Refused mutations (401, 403, 400, 404, 409, 5xx) are audited
//!   too: a failed attempt is exactly what an audit is for.
//! - **Who**: the bearer token's name and scope (looked up here, independently of the route's
//!   own check; `anonymous` when absent or unknown). **From where**: the peer IP of the TCP
//!   connection (the server is served with connect info) and the `User-Agent`, bounded.
//!   **What**: method, path, the query string and the top-level scalar fields of a JSON body,
//!   each value cut to `max_field_bytes`, at most `max_fields` of them, and never a field whose
//!   name suggests a secret (token, secret, password, passwd, key, credential, auth) — those are
//!   listed by name as `redacted`.
//! - **Never on the response path's SQLite**: events go into a bounded queue
//!   (`queue_capacity`) drained by one recorder thread that stores them in batches. A full queue
//!   makes the request wait up to `enqueue_timeout_ms` (audit is preferred over latency); only
//!   past that is the event dropped, logged at error level and counted in
//!   `roaster_audit_events_dropped_total`.
//! - **Append-only**: nothing in the API edits or deletes `audit.*` events; the store refuses to
//!   (see `store`'s contracts) and only its separate audit retention removes them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use model::event::{Event, EventId, Severity};
use model::telemetry::Exposition;
use model::{Clock, Timestamp};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::tokens::{Scope, TokenStore};

/// The response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The `source` of `audit.api` events.
pub const API_SOURCE: &str = "human-api";
/// Longest path kept in an audit event, in bytes (longer ones are cut on a char boundary).
pub const MAX_PATH_BYTES: usize = 512;

/// `[audit]`: the audit trail's queue and bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Audit events waiting for the recorder thread at most; past it requests wait.
    pub queue_capacity: usize,
    /// How long a request waits for room in a full queue before its audit event is dropped
    /// (and counted in `roaster_audit_events_dropped_total`).
    pub enqueue_timeout_ms: u64,
    /// Most events the recorder stores in one transaction.
    pub batch_max: usize,
    /// Longest value kept from a query parameter, body field or User-Agent, in bytes.
    pub max_field_bytes: usize,
    /// Most query parameters plus body fields kept per request.
    pub max_fields: usize,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            queue_capacity: 4096,
            enqueue_timeout_ms: 2_000,
            batch_max: 256,
            max_field_bytes: 256,
            max_fields: 16,
        }
    }
}

/// Whether a request changes state and so is audited (see the module doc).
pub fn is_mutation(method: &Method, path: &str) -> bool {
    if matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return false;
    }
    if *method == Method::POST {
        let read_only = matches!(
            path,
            "/api/v1/query" | "/api/v1/query_range" | "/api/v1/series" | "/api/v1/labels"
        ) || (path.starts_with("/api/v1/label/") && path.ends_with("/values"));
        return !read_only;
    }
    true
}

/// Whether a field name looks like it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "key",
        "credential",
        "auth",
    ]
    .iter()
    .any(|s| n.contains(s))
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Keeps the bounded, non-secret fields of a query string and a JSON body.
fn fields(
    query: Option<&str>,
    body: &[u8],
    cfg: &AuditConfig,
) -> (BTreeMap<String, serde_json::Value>, Vec<String>) {
    let mut kept = BTreeMap::new();
    let mut redacted = Vec::new();
    let mut add = |name: &str, value: serde_json::Value| {
        let name = cut(name, cfg.max_field_bytes);
        if is_secret_name(&name) {
            if redacted.len() < cfg.max_fields {
                redacted.push(name);
            }
            return;
        }
        if kept.len() >= cfg.max_fields {
            return;
        }
        let value = match value {
            serde_json::Value::String(s) => serde_json::Value::String(cut(&s, cfg.max_field_bytes)),
            v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_) | serde_json::Value::Null) => v,
            // Nested values are summarised, not copied: they are unbounded and may hide secrets.
            serde_json::Value::Array(a) => serde_json::Value::String(format!("[{} items]", a.len())),
            serde_json::Value::Object(o) => serde_json::Value::String(format!("{{{} fields}}", o.len())),
        };
        kept.insert(name, value);
    };
    if let Some(q) = query
        && let Ok(pairs) = serde_urlencoded_pairs(q)
    {
        for (k, v) in pairs {
            add(&k, serde_json::Value::String(v));
        }
    }
    if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(body) {
        for (k, v) in obj {
            add(&k, v);
        }
    }
    (kept, redacted)
}

fn serde_urlencoded_pairs(q: &str) -> Result<Vec<(String, String)>, ()> {
    let uri: axum::http::Uri = format!("/?{q}").parse().map_err(|_| ())?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|_| ())
}

/// Counters of the audit trail, rendered on `/metrics`.
#[derive(Debug, Default)]
struct AuditMetrics {
    queued: AtomicU64,
    recorded: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The audit trail: a bounded queue and the recorder thread behind it.
pub struct AuditLog {
    tx: Mutex<Option<mpsc::Sender<Event>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    metrics: Arc<AuditMetrics>,
    config: AuditConfig,
    max_body_bytes: usize,
    tokens: Arc<TokenStore>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why the audit trail could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The recorder thread could not be spawned.
    #[error("cannot start the audit recorder thread: {0}")]
    Thread(#[from] std::io::Error),
    /// A limit is zero.
    #[error("invalid [audit] {0}: must be at least 1")]
    Zero(&'static str),
}

impl AuditLog {
    /// Starts the recorder thread storing through `store` (so the event store's own counters
    /// see audit events too). `max_body_bytes` bounds how much of a
    /// request body the middleware reads (the human plane's body limit).
    pub fn start(
        config: AuditConfig,
        store: crate::events::Events,
        tokens: Arc<TokenStore>,
        clock: Arc<dyn Clock>,
        max_body_bytes: usize,
    ) -> Result<AuditLog, AuditError> {
        if config.queue_capacity == 0 {
            return Err(AuditError::Zero("queue_capacity"));
        }
        if config.batch_max == 0 {
            return Err(AuditError::Zero("batch_max"));
        }
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let metrics = Arc::new(AuditMetrics::default());
        let m = metrics.clone();
        let batch_max = config.batch_max;
        let thread = std::thread::Builder::new()
            .name("roaster-audit".into())
            .spawn(move || recorder(rx, store, m, batch_max))?;
        Ok(AuditLog {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            metrics,
            config,
            max_body_bytes,
            tokens,
            clock,
        })
    }

    /// Queues an event, waiting up to `enqueue_timeout_ms` for room; counts a drop otherwise.
    pub async fn submit(&self, event: Event) {
        let Some(tx) = self.tx.lock().clone() else {
            self.drop_event(&event, "the audit trail is closed");
            return;
        };
        let timeout = Duration::from_millis(self.config.enqueue_timeout_ms);
        match tx.send_timeout(event, timeout).await {
            Ok(()) => {
                self.metrics.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::SendTimeoutError::Timeout(ev)) => {
                self.drop_event(&ev, "the audit queue stayed full")
            }
            Err(mpsc::error::SendTimeoutError::Closed(ev)) => {
                self.drop_event(&ev, "the audit recorder stopped")
            }
        }
    }

    fn drop_event(&self, event: &Event, why: &str) {
        self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(request_id = %event.id, summary = %event.summary, reason = why, "AUDIT EVENT DROPPED");
    }

    /// Stops accepting events, lets the recorder store what is queued, and waits for it
    /// (blocking; call from a plain thread).
    pub fn close(&self) {
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take()
            && t.join().is_err()
        {
            tracing::error!("the audit recorder thread panicked");
        }
    }

    /// Renders the audit counters for `/metrics`.
    pub fn render_metrics(&self, out: &mut Exposition) {
        let m = &self.metrics;
        out.counter(
            "roaster_audit_events_recorded_total",
            "Audit events stored.",
            m.recorded.load(Ordering::Relaxed),
        );
        out.counter(
            "roaster_audit_events_dropped_total",
            "Audit events LOST because the queue stayed full past enqueue_timeout_ms or the trail was closed; should be 0.",
            m.dropped.load(Ordering::Relaxed),
        );
        out.counter(
            "roaster_audit_events_failed_total",
            "Audit events LOST because the event store refused them; should be 0.",
            m.failed.load(Ordering::Relaxed),
        );
        let queued = m.queued.load(Ordering::Relaxed);
        let done = m.recorded.load(Ordering::Relaxed) + m.failed.load(Ordering::Relaxed);
        out.gauge(
            "roaster_audit_queue_depth",
            "Audit events waiting for the recorder thread.",
            queued.saturating_sub(done) as f64,
        );
    }

    /// Builds the `audit.api` event of one request.
    fn api_event(&self, req: &Seen, status: StatusCode, elapsed: Duration) -> Event {
        let (actor, scope) = match &req.who {
            Some((n, s)) => (n.clone(), s.as_str()),
            None => ("anonymous".to_owned(), "none"),
        };
        let path = cut(&req.path, MAX_PATH_BYTES);
        let mut labels = BTreeMap::new();
        labels.insert("method".to_owned(), req.method.to_string());
        labels.insert("status".to_owned(), status.as_u16().to_string());
        labels.insert("scope".to_owned(), scope.to_owned());
        let payload = serde_json::json!({
            "request_id": req.id.as_str(),
            "method": req.method.as_str(),
            "path": path,
            "fields": req.fields,
            "redacted": req.redacted,
            "body_bytes": req.body_bytes,
            "status": status.as_u16(),
            "token": actor,
            "scope": scope,
            "peer": req.peer.map(|p| p.ip().to_string()),
            "user_agent": req.user_agent,
            "duration_ms": elapsed.as_millis() as u64,
        });
        let payload = serde_json::value::to_raw_value(&payload).ok();
        Event {
            id: req.id.clone(),
            time: req.at,
            received_at: req.at,
            source: API_SOURCE.to_owned(),
            kind: "audit.api".to_owned(),
            subject: Some(path.clone()),
            actor: Some(actor.clone()),
            host: None,
            service: None,
            labels,
            severity: if status.is_client_error() || status.is_server_error() {
                Severity::Warning
            } else {
                Severity::Info
            },
            summary: format!(
                "{} {} by {actor} ({scope}) from {} → {}",
                req.method,
                path,
                req.peer
                    .map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string()),
                status.as_u16()
            ),
            payload,
        }
    }
}

/// Stores queued events in batches until every sender is gone and the queue is empty.
fn recorder(
    mut rx: mpsc::Receiver<Event>,
    store: crate::events::Events,
    metrics: Arc<AuditMetrics>,
    batch_max: usize,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        // A busy database is retried briefly; anything else is logged and counted.
        let mut attempt = 0;
        loop {
            match store.record_batch(&batch) {
                Ok(_) => {
                    metrics.recorded.fetch_add(n, Ordering::Relaxed);
                    break;
                }
                Err(crate::events::EventsError::Store(e)) if e.is_retryable() && attempt < 5 => {
                    tracing::warn!(error = %e, attempt, "audit store busy; retrying");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50 * attempt));
                }
                Err(e) => {
                    metrics.failed.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(error = %e, events = n, "AUDIT EVENTS LOST: the event store refused them");
                    break;
                }
            }
        }
    }
}

/// What the middleware saw of a request before running it.
struct Seen {
    id: EventId,
    at: Timestamp,
    method: Method,
    path: String,
    who: Option<(String, Scope)>,
    peer: Option<SocketAddr>,
    user_agent: Option<String>,
    fields: BTreeMap<String, serde_json::Value>,
    redacted: Vec<String>,
    body_bytes: usize,
}

fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    // A failing random source only weakens uniqueness within one millisecond.
    let _ = getrandom::fill(&mut b);
    u128::from_le_bytes(b)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn with_request_id(mut resp: Response, id: &EventId) -> Response {
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// The middleware: request id on every response, an `audit.api` event for every mutation.
pub async fn record(State(audit): State<Arc<AuditLog>>, req: Request, next: Next) -> Response {
    let at = audit.clock.now();
    let id = EventId::generate(at, random_u128());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if !is_mutation(&method, &path) {
        return with_request_id(next.run(req).await, &id);
    }
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let who = bearer(&parts.headers).and_then(|t| audit.tokens.identify(t));
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| cut(s, audit.config.max_field_bytes));
    let mut seen = Seen {
        id: id.clone(),
        at,
        method,
        path,
        who,
        peer,
        user_agent,
        fields: BTreeMap::new(),
        redacted: Vec::new(),
        body_bytes: 0,
    };
    let bytes = match axum::body::to_bytes(body, audit.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            let resp = (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({
                    "status": "error",
                    "errorType": "bad_data",
                    "error": "request body exceeds server.human_max_body_bytes or could not be read",
                })),
            )
                .into_response();
            let ev = audit.api_event(&seen, resp.status(), started.elapsed());
            audit.submit(ev).await;
            return with_request_id(resp, &id);
        }
    };
    let (fields, redacted) = fields(parts.uri.query(), &bytes, &audit.config);
    seen.fields = fields;
    seen.redacted = redacted;
    seen.body_bytes = bytes.len();
    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let ev = audit.api_event(&seen, resp.status(), started.elapsed());
    audit.submit(ev).await;
    with_request_id(resp, &id)
}

/// Builds an `audit.token` event for an offline token action (`roaster token create`):
/// `actor` is the local user running the command, `subject` the token's name, `error` the
/// reason the action failed (`None` when it succeeded).
pub fn token_event(
    action: &str,
    name: &str,
    scope: Scope,
    actor: &str,
    error: Option<&str>,
    at: Timestamp,
) -> Event {
    let (name, actor) = (cut(name, 256), cut(actor, 256));
    let result = if error.is_some() { "error" } else { "ok" };
    let payload = serde_json::json!({
        "action": action,
        "token": name,
        "scope": scope.as_str(),
        "result": result,
        "error": error.map(|e| cut(e, 512)),
    });
    let mut labels = BTreeMap::new();
    labels.insert("action".to_owned(), action.to_owned());
    labels.insert("scope".to_owned(), scope.as_str().to_owned());
    labels.insert("result".to_owned(), result.to_owned());
    let summary = match error {
        None => format!("token {name} ({}) {action} by {actor}", scope.as_str()),
        Some(e) => format!(
            "token {name} ({}) {action} by {actor} failed: {}",
            scope.as_str(),
            cut(e, 256)
        ),
    };
    Event {
        id: EventId::generate(at, random_u128()),
        time: at,
        received_at: at,
        source: "roaster-cli".to_owned(),
        kind: "audit.token".to_owned(),
        subject: Some(name),
        actor: Some(actor),
        host: None,
        service: None,
        labels,
        severity: if error.is_some() {
            Severity::Warning
        } else {
            Severity::Info
        },
        summary,
        payload: serde_json::value::to_raw_value(&payload).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_table() {
        let cases = [
            (Method::GET, "/api/v1/switches", false),
            (Method::HEAD, "/metrics", false),
            (Method::PUT, "/api/v1/switches/graphite-tcp", true),
            (Method::POST, "/api/v1/admin/compact", true),
            (Method::DELETE, "/api/v1/heartbeats/x", true),
            (Method::PATCH, "/anything", true),
            (Method::POST, "/api/v1/query", false),
            (Method::POST, "/api/v1/query_range", false),
            (Method::POST, "/api/v1/series", false),
            (Method::POST, "/api/v1/labels", false),
            (Method::POST, "/api/v1/label/job/values", false),
            (Method::POST, "/api/v1/query/extra", true),
        ];
        for (m, p, want) in cases {
            assert_eq!(is_mutation(&m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn fields_are_bounded_and_secrets_redacted() {
        let cfg = AuditConfig {
            max_field_bytes: 8,
            max_fields: 3,
            ..AuditConfig::default()
        };
        let body = br#"{"state":"paused","token":"rst_admin_x","api_key":"k","nested":{"a":1},"long":"0123456789abc","n":5}"#;
        let (kept, redacted) = fields(Some("dry_run=1&password=p"), body, &cfg);
        assert_eq!(redacted, vec!["password", "api_key", "token"]);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept["dry_run"], "1");
        assert_eq!(kept["long"], "01234567…");
        assert_eq!(kept["n"], 5);
        let all = serde_json::to_string(&kept).unwrap();
        assert!(!all.contains("rst_admin"));
        assert_eq!(cut("ééé", 3), "é…");
    }

    /// The real SQLite store behind a gate the test holds shut, so the recorder thread stays
    /// busy and the queue fills as it would behind a stalled disk.
    struct GatedStore {
        inner: store::SqliteStore,
        gate: Arc<parking_lot::Mutex<()>>,
    }

    impl store::EventStore for GatedStore {
        fn insert_batch(&self, events: &[Event]) -> Result<Vec<store::ItemResult>, store::StoreError> {
            let _open = self.gate.lock();
            self.inner.insert_batch(events)
        }
        fn query(&self, q: &store::EventQuery) -> Result<store::Page, store::StoreError> {
            self.inner.query(q)
        }
        fn annotations(&self, q: &store::AnnotationQuery) -> Result<store::Annotations, store::StoreError> {
            self.inner.annotations(q)
        }
        fn delete_older_than(
            &self,
            r: &store::Retention,
        ) -> Result<store::RetentionReport, store::StoreError> {
            self.inner.delete_older_than(r)
        }
        fn count(&self) -> Result<u64, store::StoreError> {
            self.inner.count()
        }
        fn close(&self) -> Result<(), store::StoreError> {
            self.inner.close()
        }
    }

    #[test]
    fn a_full_queue_waits_then_drops_loudly_and_close_drains() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(parking_lot::Mutex::new(()));
        let sqlite =
            store::SqliteStore::open(store::SqliteConfig::new(dir.path().join("events.db"))).unwrap();
        let gated: Arc<dyn store::EventStore> = Arc::new(GatedStore {
            inner: sqlite,
            gate: gate.clone(),
        });
        let clock: Arc<dyn Clock> = Arc::new(model::ManualClock::new(Timestamp(1_700_000_000_000)));
        let events = crate::events::Events::with_store(
            gated.clone(),
            &crate::events::EventsConfig::default(),
            clock.clone(),
        );
        let tokens = Arc::new(TokenStore::open(dir.path()).unwrap());
        let cfg = AuditConfig {
            queue_capacity: 2,
            enqueue_timeout_ms: 50,
            ..AuditConfig::default()
        };
        let audit = AuditLog::start(cfg, events, tokens, clock, 1024).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let shut = gate.lock();
        let ev = |i: u32| {
            token_event(
                "create",
                &format!("t{i}"),
                Scope::Read,
                "test",
                None,
                Timestamp(i64::from(i)),
            )
        };
        rt.block_on(async {
            // One is taken by the recorder (stuck at the gate), two fill the queue; the rest
            // wait enqueue_timeout_ms each and are dropped.
            audit.submit(ev(0)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            for i in 1..=4 {
                let started = Instant::now();
                audit.submit(ev(i)).await;
                if i > 2 {
                    assert!(
                        started.elapsed() >= Duration::from_millis(50),
                        "a full queue waits first"
                    );
                }
            }
        });
        let mut out = Exposition::new();
        audit.render_metrics(&mut out);
        let text = out.finish();
        assert!(text.contains("roaster_audit_events_dropped_total 2"), "{text}");
        drop(shut);
        audit.close();
        assert_eq!(
            gated.count().unwrap(),
            3,
            "close stores everything that was queued"
        );
        let mut out = Exposition::new();
        audit.render_metrics(&mut out);
        let text = out.finish();
        assert!(text.contains("roaster_audit_events_recorded_total 3"), "{text}");
        assert!(text.contains("roaster_audit_queue_depth 0"), "{text}");
        // Closed: a late event is dropped and counted, never silently lost.
        rt.block_on(audit.submit(ev(9)));
        let mut out = Exposition::new();
        audit.render_metrics(&mut out);
        assert!(out.finish().contains("roaster_audit_events_dropped_total 3"));
    }
}
