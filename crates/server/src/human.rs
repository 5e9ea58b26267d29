//! The human plane's HTTP API: health, readiness, self-metrics, kill switches, rejections,
//! export, admin actions, the Prometheus query API and StatsD timer quantiles merged from the
//! sketch log (`GET /api/v1/statsd/quantile`, in `human/statsd_quantile.rs`).
//!
//! Auth: `Authorization: Bearer <token>`. `/healthz` and `/readyz` need no token (load
//! balancers probe them); every other route needs a `read` or `admin` token, and state
//! changes (`PUT /api/v1/switches/{name}`, `POST /api/v1/admin/*`) need `admin`. An `ingest`
//! token is refused here (403): robots write, they do not read. `/metrics` needs `read`, so a
//! Prometheus scraping Roaster sends a read token as its bearer credentials.
//!
//! Budget: all of this runs on the human runtime; at most `human_max_concurrent_requests`
//! requests are served at once (others wait), and storage work (queries, export, series and
//! label listings, compaction, snapshots) runs in `spawn_blocking` under a semaphore of
//! `human_max_concurrent_queries` permits, held until the blocking work ends. The Prometheus
//! query API runs under the same permits but in `block_in_place` on the worker that parsed the
//! request, which saves two thread hand-offs per query (≈ 30 % of a one-series `query_range`);
//! a query is cut by its own `[query] timeout_ms`, not by `human_request_timeout_ms`. A small
//! query (see [`inline_candidate`]) is first evaluated right on the worker under a deadline of
//! `human_inline_query_budget_us` (`block_in_place` itself hands the worker's core to another
//! thread: two more thread switches per request); one that overruns it is dropped and run
//! again under `block_in_place` with what is left of its timeout. Invariant: the worker is held
//! by such an attempt for at most the budget plus the storage's index lookup (the selector's
//! posting lists intersected; the attempt reads in id order, so the matching ids are not
//! sorted by key first), one series' read and the rendering of what was read by then.
//!
//! Heartbeat definitions: `GET /api/v1/heartbeats[/{name}]` (read), `PUT`/`DELETE
//! /api/v1/heartbeats/{name}` (admin); see [`crate::heartbeat`] (pings are on the robot plane).
//!
//! Audit: [`crate::audit::record`] wraps the whole router, so every response carries an
//! `X-Request-Id` and every mutation (refused ones included) becomes an `audit.api` event.
//!
//! Errors use the Prometheus API envelope: `{"status":"error","errorType":"…","error":"…"}`.
//!
//! Events: `GET /api/v1/events` (search, cursor pages) and `GET /api/v1/annotations` (compact,
//! for graphs) need `read`; see [`crate::events`] for parameters and answers.
//!
//! Kill switches: `GET /api/v1/switches` lists the ingest sources and the `compaction` job.
//! A paused `compaction` switch refuses `POST /api/v1/admin/compact` (409) and pauses the
//! engine's background sealing, retention and compaction (`tsdb::Db::set_maintenance_paused`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use model::telemetry::{Counter, Exposition, Histogram};
use model::{Clock, Matcher};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::adapters::TsdbReader;
use crate::config::Config;
use crate::heartbeat::{self, Heartbeats};
use crate::readiness::{self, Readiness};
use crate::tokens::{Scope, TokenStore};

mod statsd_quantile;

/// Everything the human plane needs, handed over by [`crate::Server`].
pub struct HumanParts {
    /// The whole config (the `[server]` budgets and `[query]` limits are read here).
    pub config: Config,
    /// Storage.
    pub db: Arc<tsdb::Db>,
    /// The event store's handle (search, annotations, recording audit events).
    pub events: crate::events::Events,
    /// Ingest (switch metrics, rejections, readiness, metrics).
    pub ingest: Arc<ingest::Ingest>,
    /// Kill switches.
    pub switches: Arc<ingest::Switches>,
    /// Tokens.
    pub tokens: Arc<TokenStore>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Readiness state shared with shutdown.
    pub readiness: Arc<Readiness>,
    /// The heartbeat registry (definitions API and `/metrics` gauges).
    pub heartbeats: Arc<Heartbeats>,
    /// The audit trail (its middleware wraps every route).
    pub audit: Arc<crate::audit::AuditLog>,
    /// How the human listener's busy-polling fared (rendered on `/metrics`).
    pub busy_poll: Arc<crate::busy_poll::BusyPollMetrics>,
}

/// Self-telemetry of the human plane.
#[derive(Debug, Default)]
pub struct HumanMetrics {
    /// Request latency, all routes.
    pub request_seconds: Histogram,
    /// Requests answered, by status class (index 0 = 1xx … 4 = 5xx).
    pub responses: [Counter; 5],
    /// Requests refused for a missing or unknown token.
    pub unauthenticated: Counter,
    /// Requests refused for an insufficient scope.
    pub forbidden: Counter,
    /// Time spent waiting for a query permit.
    pub query_wait_seconds: Histogram,
    /// Small queries answered on the request's worker within `human_inline_query_budget_us`.
    pub inline_answered: Counter,
    /// Small queries that overran the budget and were run again under `block_in_place`.
    pub inline_handed_over: Counter,
}

impl HumanMetrics {
    fn render(&self, out: &mut Exposition) {
        out.histogram(
            "roaster_human_request_duration_seconds",
            "Latency of human-plane HTTP requests, from routing to the response head.",
            &[],
            &self.request_seconds,
        );
        out.family(
            "roaster_human_responses_total",
            "counter",
            "Human-plane HTTP responses by status class.",
        );
        for (i, c) in self.responses.iter().enumerate() {
            let class = format!("{}xx", i + 1);
            out.sample(
                "roaster_human_responses_total",
                &[("code", &class)],
                c.get() as f64,
            );
        }
        out.family(
            "roaster_human_auth_failures_total",
            "counter",
            "Human-plane requests refused by authentication or authorization.",
        );
        out.sample(
            "roaster_human_auth_failures_total",
            &[("reason", "unauthenticated")],
            self.unauthenticated.get() as f64,
        );
        out.sample(
            "roaster_human_auth_failures_total",
            &[("reason", "forbidden")],
            self.forbidden.get() as f64,
        );
        out.histogram(
            "roaster_human_query_wait_seconds",
            "Time human-plane storage requests waited for a query slot.",
            &[],
            &self.query_wait_seconds,
        );
        out.family(
            "roaster_human_inline_queries_total",
            "counter",
            "Small query API requests tried on the request's worker: answered within \
             human_inline_query_budget_us, or handed over to block_in_place past it.",
        );
        out.sample(
            "roaster_human_inline_queries_total",
            &[("outcome", "answered")],
            self.inline_answered.get() as f64,
        );
        out.sample(
            "roaster_human_inline_queries_total",
            &[("outcome", "handed_over")],
            self.inline_handed_over.get() as f64,
        );
    }
}

struct Inner {
    parts: HumanParts,
    reader: TsdbReader,
    queries: Arc<Semaphore>,
    metrics: HumanMetrics,
}

/// The shared state of the human plane's handlers.
#[derive(Clone)]
pub struct HumanState(Arc<Inner>);

impl HumanState {
    /// Builds the state from its parts.
    pub fn new(parts: HumanParts) -> HumanState {
        let permits = parts.config.server.human_max_concurrent_queries;
        HumanState(Arc::new(Inner {
            reader: TsdbReader::new(parts.db.clone()),
            queries: Arc::new(Semaphore::new(permits)),
            metrics: HumanMetrics::default(),
            parts,
        }))
    }

    /// Waits for a query slot.
    async fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        let started = Instant::now();
        let p = self
            .0
            .queries
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "shutting down"))?;
        self.0.metrics.query_wait_seconds.observe(started.elapsed());
        Ok(p)
    }

    /// The event store's handle.
    pub(crate) fn events(&self) -> &crate::events::Events {
        &self.0.parts.events
    }

    /// The current time from the server's clock.
    pub(crate) fn now(&self) -> model::Timestamp {
        self.0.parts.clock.now()
    }

    /// Runs event-store work on the blocking pool under a query permit.
    pub(crate) async fn blocking_events<T: Send + 'static>(
        &self,
        work: impl FnOnce(&crate::events::Events) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.blocking(move |inner| work(&inner.parts.events)).await
    }

    /// Runs storage work on this worker thread under a query permit, first handing the
    /// runtime's other tasks to another thread (`block_in_place`): the answer does not wait for
    /// a blocking-pool thread to wake up and then for this worker to be woken again, two
    /// cross-thread hand-offs that cost more than a small query itself.
    /// (`block_in_place` needs a multi-thread runtime; on any other, the blocking pool.)
    async fn inline<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        if tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return self.blocking(work).await;
        }
        let permit = self.permit().await?;
        let out = tokio::task::block_in_place(|| work(&self.0));
        drop(permit);
        Ok(out)
    }

    /// Runs storage work on the blocking pool under a query permit.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self.permit().await?;
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let out = work(&inner);
            drop(permit);
            out
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "human-plane storage task failed");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "storage task failed",
            )
        })
    }
}

impl axum::extract::FromRef<HumanState> for Arc<Heartbeats> {
    fn from_ref(state: &HumanState) -> Arc<Heartbeats> {
        state.0.parts.heartbeats.clone()
    }
}

/// The human plane's router.
pub fn router(state: HumanState) -> Router {
    let limits = &state.0.parts.config.server;
    let max_body = limits.human_max_body_bytes;
    let max_requests = limits.human_max_concurrent_requests;
    let read = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/switches", get(list_switches))
        .route("/api/v1/ingest/rejections", get(rejections))
        .route("/api/v1/export", get(export))
        .route("/api/v1/query", get(prom_api).post(prom_api))
        .route("/api/v1/query_range", get(prom_api).post(prom_api))
        .route("/api/v1/series", get(prom_api).post(prom_api))
        .route("/api/v1/labels", get(prom_api).post(prom_api))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/status/buildinfo", get(prom_api))
        .route("/api/v1/metadata", get(prom_api))
        .route("/api/v1/statsd/quantile", get(statsd_quantile::quantile))
        .route("/api/v1/events", get(crate::events::search))
        .route("/api/v1/annotations", get(crate::events::annotations))
        .route("/api/v1/heartbeats", get(heartbeat::list_handler))
        .route("/api/v1/heartbeats/{name}", get(heartbeat::get_handler))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    let admin = Router::new()
        .route("/api/v1/switches/{name}", put(set_switch))
        .route("/api/v1/admin/compact", post(compact))
        .route("/api/v1/admin/snapshot", post(snapshot))
        .route(
            "/api/v1/heartbeats/{name}",
            put(heartbeat::put_handler).delete(heartbeat::delete_handler),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(read)
        .merge(admin)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body))
        // Every route, present and future: request ids, and an audit event per mutation.
        .layer(middleware::from_fn_with_state(
            state.0.parts.audit.clone(),
            crate::audit::record,
        ))
        // Outermost first: the latency histogram includes time spent waiting for a request slot.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max_requests))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A refused human-plane request: the HTTP status, the Prometheus `errorType` and a message.
/// Rendered as `{"status":"error","errorType":…,"error":…}`, like the query API's errors.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    challenge: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"status": "error", "errorType": self.kind, "error": self.message});
        let mut r = (self.status, Json(body)).into_response();
        if self.challenge {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// Builds an [`ApiError`].
pub(crate) fn refuse(status: StatusCode, kind: &'static str, message: &str) -> ApiError {
    ApiError {
        status,
        kind,
        message: message.to_owned(),
        challenge: false,
    }
}

/// A Prometheus-style error response.
fn error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    refuse(status, kind, message).into_response()
}

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

async fn observe(State(state): State<HumanState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let resp = next.run(req).await;
    let m = &state.0.metrics;
    m.request_seconds.observe(started.elapsed());
    let class = usize::from(resp.status().as_u16() / 100).clamp(1, 5) - 1;
    if let Some(c) = m.responses.get(class) {
        c.inc();
    }
    resp
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn check(state: &HumanState, headers: &HeaderMap, allowed: fn(Scope) -> bool) -> Result<(), ApiError> {
    let Some(scope) = bearer(headers).and_then(|t| state.0.parts.tokens.authenticate(t)) else {
        state.0.metrics.unauthenticated.inc();
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token with read or admin scope is required",
        );
        r.challenge = true;
        return Err(r);
    };
    if !allowed(scope) {
        state.0.metrics.forbidden.inc();
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("a token with {} scope may not do this", scope.as_str()),
        ));
    }
    Ok(())
}

async fn require_read(State(state): State<HumanState>, req: Request, next: Next) -> Response {
    match check(&state, req.headers(), Scope::can_read) {
        Ok(()) => next.run(req).await,
        Err(r) => r.into_response(),
    }
}

async fn require_admin(State(state): State<HumanState>, req: Request, next: Next) -> Response {
    match check(&state, req.headers(), Scope::can_admin) {
        Ok(()) => next.run(req).await,
        Err(r) => r.into_response(),
    }
}

async fn readyz(State(state): State<HumanState>) -> Response {
    let mut reasons: Vec<&str> = Vec::new();
    if state.0.parts.readiness.is_shutting_down() {
        reasons.push(readiness::SHUTTING_DOWN);
    }
    let r = state.0.parts.readiness.clone();
    // The probe is file I/O: keep it off the async workers (no query permit: it is tiny).
    let writable = tokio::task::spawn_blocking(move || r.storage_writable())
        .await
        .unwrap_or(false);
    if !writable {
        reasons.push(readiness::STORAGE_NOT_WRITABLE);
    }
    match state.0.parts.db.readiness() {
        Ok(()) => {}
        Err(tsdb::NotReady::WalBacklog { .. }) => reasons.push(readiness::WAL_BACKLOG),
        Err(tsdb::NotReady::NotWritable(_)) => {
            if writable {
                reasons.push(readiness::STORAGE_NOT_WRITABLE);
            }
        }
        Err(tsdb::NotReady::Closed) => {
            if !reasons.contains(&readiness::SHUTTING_DOWN) {
                reasons.push(readiness::SHUTTING_DOWN);
            }
        }
    }
    if state.0.parts.ingest.readiness().is_err() {
        reasons.push(readiness::INGEST_QUEUE_SATURATED);
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))).into_response()
    } else {
        let body = serde_json::json!({"status": "not_ready", "reasons": reasons});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(state): State<HumanState>) -> Response {
    // No query permit: rendering is in-memory and quick, and a scrape must not starve behind
    // heavy queries (that is when the figures matter most). It reads /proc and takes storage
    // locks, so it still runs on the blocking pool.
    let inner = state.0.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        let mut out = Exposition::new();
        inner.parts.ingest.render_metrics(&mut out);
        inner.parts.switches.render_metrics(&mut out);
        inner.parts.db.render_metrics(&mut out);
        inner.parts.events.render_metrics(&mut out);
        inner.parts.heartbeats.render_metrics(&mut out);
        inner.parts.audit.render_metrics(&mut out);
        inner.metrics.render(&mut out);
        inner.parts.busy_poll.render(&mut out);
        crate::process::render(&mut out);
        out.finish()
    })
    .await;
    match rendered {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    }
}

async fn list_switches(State(state): State<HumanState>) -> Response {
    let list: Vec<serde_json::Value> = state
        .0
        .parts
        .switches
        .list()
        .into_iter()
        .map(|(name, st)| {
            let kind = if name == crate::COMPACTION_SWITCH {
                "job"
            } else {
                "source"
            };
            serde_json::json!({"name": name, "state": st.as_str(), "kind": kind})
        })
        .collect();
    Json(serde_json::json!({"switches": list})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    state: String,
}

async fn set_switch(State(state): State<HumanState>, Path(name): Path<String>, body: Bytes) -> Response {
    let parsed: SwitchBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("body must be {{\"state\": \"open|paused|blackholed\"}}: {e}"),
            );
        }
    };
    let new: ingest::SwitchState = match parsed.state.parse() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_data", &e.to_string()),
    };
    let switches = &state.0.parts.switches;
    if switches.get(&name).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("unknown switch {name:?}"),
        );
    }
    if name == crate::COMPACTION_SWITCH && new == ingest::SwitchState::Blackholed {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "background jobs can only be open or paused",
        );
    }
    let sw = switches.clone();
    let n = name.clone();
    // Persisting fsyncs: keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || sw.set(&n, new)).await;
    match result {
        Ok(Ok(previous)) => {
            if name == crate::COMPACTION_SWITCH {
                state
                    .0
                    .parts
                    .db
                    .set_maintenance_paused(new == ingest::SwitchState::Paused);
            }
            Json(serde_json::json!({"name": name, "state": new.as_str(), "previous": previous.as_str()}))
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    }
}

async fn rejections(State(state): State<HumanState>) -> Response {
    let list: Vec<serde_json::Value> = state
        .0
        .parts
        .ingest
        .rejections()
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "source": r.source.as_str(),
                "reason": r.reason,
                "line": r.line_excerpt,
                "at_ms": r.at.millis(),
            })
        })
        .collect();
    Json(serde_json::json!({"rejections": list})).into_response()
}

/// Collects parameters the Prometheus way: the query string, plus a form body on POST.
pub(crate) async fn params(req: Request, max_body: usize) -> Result<Vec<(String, String)>, ApiError> {
    // The URI's query was checked by the HTTP parser already: decode it directly (what
    // `serde_urlencoded` does inside `Query`, without rebuilding and re-parsing a URI).
    let mut out: Vec<(String, String)> = match req.uri().query() {
        Some(q) => form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        None => Vec::new(),
    };
    if req.method() == Method::POST {
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let body = axum::body::to_bytes(req.into_body(), max_body)
            .await
            .map_err(|e| refuse(StatusCode::PAYLOAD_TOO_LARGE, "bad_data", &e.to_string()))?;
        if is_form {
            out.extend(serde_urlencoded_pairs(&body)?);
        } else if !body.is_empty() {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_data",
                "POST bodies must be application/x-www-form-urlencoded",
            ));
        }
    }
    Ok(out)
}

fn serde_urlencoded_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "bad_data", "parameters are not UTF-8"))?;
    let uri: axum::http::Uri = format!("/?{text}")
        .parse()
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "bad_data", "malformed parameters"))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad_data", &e.to_string()))
}

async fn prom_api(State(state): State<HumanState>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let max_body = state.0.parts.config.server.human_max_body_bytes;
    let params = match params(req, max_body).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    run_api(state, path, None, params).await
}

async fn label_values(State(state): State<HumanState>, Path(name): Path<String>, req: Request) -> Response {
    let max_body = state.0.parts.config.server.human_max_body_bytes;
    let params = match params(req, max_body).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    run_api(state, "/api/v1/label/values".into(), Some(name), params).await
}

async fn run_api(
    state: HumanState,
    path: String,
    label: Option<String>,
    params: Vec<(String, String)>,
) -> Response {
    let config = &state.0.parts.config;
    let timeout = config.server.human_request_timeout_ms;
    let budget = std::time::Duration::from_micros(config.server.human_inline_query_budget_us);
    let mut limits = config.query.clone();
    if !budget.is_zero() && inline_candidate(&path, &params) {
        let permit = match state.permit().await {
            Ok(p) => p,
            Err(r) => return r.into_response(),
        };
        let started = Instant::now();
        let mut small = limits.clone();
        small.timeout = small.timeout.min(budget);
        let reader = Budgeted {
            inner: &state.0.reader,
            deadline: started + small.timeout,
        };
        let resp = dispatch(&state.0, &reader, &path, label.as_deref(), &params, &small);
        drop(permit);
        if !resp.is_timeout() {
            state.0.metrics.inline_answered.inc();
            return json_response(resp.status, resp.body);
        }
        state.0.metrics.inline_handed_over.inc();
        // Too big for the worker: start again off it, with what is left of the timeout.
        limits.timeout = limits.timeout.saturating_sub(started.elapsed());
    }
    let work =
        state.inline(move |inner| dispatch(inner, &inner.reader, &path, label.as_deref(), &params, &limits));
    match tokio::time::timeout(std::time::Duration::from_millis(timeout), work).await {
        Ok(Ok(resp)) => json_response(resp.status, resp.body),
        Ok(Err(r)) => r.into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "query did not finish within human_request_timeout_ms",
        ),
    }
}

/// One query API call, routed by `path`.
fn dispatch(
    inner: &Inner,
    reader: &dyn query::SeriesReader,
    path: &str,
    label: Option<&str>,
    params: &[(String, String)],
    limits: &query::QueryLimits,
) -> query::api::ApiResponse {
    let now = inner.parts.clock.now();
    match path {
        "/api/v1/query" => query::api::query(reader, params, now, limits),
        "/api/v1/query_range" => query::api::query_range(reader, params, limits),
        "/api/v1/series" => query::api::series(reader, params, limits),
        "/api/v1/labels" => query::api::labels(reader, params, limits),
        "/api/v1/label/values" => query::api::label_values(reader, label.unwrap_or(""), params, limits),
        "/api/v1/status/buildinfo" => query::api::buildinfo(env!("CARGO_PKG_VERSION")),
        _ => query::api::metadata(),
    }
}

/// Longest query text tried on the request's worker (parsing is not under the budget).
const INLINE_MAX_QUERY_BYTES: usize = 512;

/// Whether a query API call may first be tried on the request's worker under
/// `human_inline_query_budget_us`: an instant or range query whose text is at most
/// [`INLINE_MAX_QUERY_BYTES`] and holds no `(`, `[`, `~` or `!`, so it is selectors with
/// equality matchers, numbers and operators: no function, aggregation, subquery or range
/// (whose cost grows with more than the series read), and no regex or negative matcher (whose
/// index lookup scans a label's values before the first series is read). Its cost is then the
/// series it reads, which [`Budgeted`] and the evaluator's timeout cut at the budget (after
/// the index lookup, which is not cut: intersecting the selector's posting lists, without a
/// sort by key since [`Budgeted`] reads in id order). A `(` or
/// `!` inside a quoted label value only makes a query go straight to `block_in_place`.
fn inline_candidate(path: &str, params: &[(String, String)]) -> bool {
    if !matches!(path, "/api/v1/query" | "/api/v1/query_range") {
        return false;
    }
    // the same parameter `query::api` reads: the first `query`
    params
        .iter()
        .find(|(k, _)| k == "query")
        .is_some_and(|(_, q)| q.len() <= INLINE_MAX_QUERY_BYTES && !q.contains(['(', '[', '~', '!']))
}

/// A [`query::SeriesReader`] that stops the walk with [`query::QueryError::Timeout`] once
/// `deadline` has passed, checked before each series is handed over (the evaluator itself
/// checks its deadline only every 64 series). It bounds how long a query tried on the
/// request's worker holds it: past the deadline by at most one series' read.
struct Budgeted<'r> {
    inner: &'r dyn query::SeriesReader,
    deadline: Instant,
}

impl Budgeted<'_> {
    fn check(&self) -> Result<(), query::QueryError> {
        if Instant::now() > self.deadline {
            return Err(query::QueryError::Timeout);
        }
        Ok(())
    }
}

impl query::SeriesReader for Budgeted<'_> {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        visit: &mut query::Visit<'_>,
    ) -> Result<(), query::QueryError> {
        self.select_shard(matchers, start_ms, end_ms, 0, 1, visit)
    }

    /// Reads in the inner reader's cheapest order ([`query::SeriesReader::select_shard_unordered`]):
    /// an inline candidate has no function or aggregation (so no `sort`, `topk` or other
    /// result whose order follows the series order) and its result is sorted by labels
    /// afterwards, so the order series arrive in changes nothing; and the engine then does
    /// not sort the matching series by key before the first one is read, which would hold
    /// the worker outside the budget for a selector matching many series.
    fn select_shard(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        shard: usize,
        shards: usize,
        visit: &mut query::Visit<'_>,
    ) -> Result<(), query::QueryError> {
        self.select_shard_unordered(matchers, start_ms, end_ms, shard, shards, visit)
    }

    fn select_shard_unordered(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        shard: usize,
        shards: usize,
        visit: &mut query::Visit<'_>,
    ) -> Result<(), query::QueryError> {
        self.check()?;
        self.inner
            .select_shard_unordered(matchers, start_ms, end_ms, shard, shards, &mut |key, ts, vals| {
                self.check()?;
                visit(key, ts, vals)
            })
    }

    fn select_summaries(
        &self,
        matchers: &[Matcher],
        windows: &query::Windows,
        visit: &mut query::SummaryVisit<'_>,
    ) -> Result<(), query::QueryError> {
        self.select_summaries_shard(matchers, windows, 0, 1, visit)
    }

    fn select_summaries_shard(
        &self,
        matchers: &[Matcher],
        windows: &query::Windows,
        shard: usize,
        shards: usize,
        visit: &mut query::SummaryVisit<'_>,
    ) -> Result<(), query::QueryError> {
        self.check()?;
        self.inner
            .select_summaries_shard(matchers, windows, shard, shards, &mut |key, buckets, ts, vals| {
                self.check()?;
                visit(key, buckets, ts, vals)
            })
    }

    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<model::SeriesKey>, query::QueryError> {
        self.check()?;
        self.inner.series(matchers, start_ms, end_ms, limit)
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, query::QueryError> {
        self.check()?;
        self.inner.label_names(matchers, start_ms, end_ms, limit)
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, query::QueryError> {
        self.check()?;
        self.inner.label_values(name, matchers, start_ms, end_ms, limit)
    }
}

async fn export(State(state): State<HumanState>, req: Request) -> Response {
    let params = match params(req, 0).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let mut selectors: Vec<Vec<Matcher>> = Vec::new();
    let (mut start, mut end) = (i64::MIN, i64::MAX);
    for (k, v) in &params {
        match k.as_str() {
            "match[]" => match query::parse_selector(v) {
                Ok(m) if m.iter().all(Matcher::matches_empty) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_data",
                        &format!(
                            "match[] {v:?} must contain at least one matcher that does not match the empty string"
                        ),
                    );
                }
                Ok(m) => selectors.push(m),
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_data", &format!("match[]: {e}")),
            },
            "start" | "end" => {
                let Some(t) = crate::export::parse_time(v) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_data",
                        &format!("{k}: {v:?} is neither RFC 3339 nor unix seconds"),
                    );
                };
                if k == "start" {
                    start = t;
                } else {
                    end = t;
                }
            }
            _ => {}
        }
    }
    if selectors.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "at least one match[] is required",
        );
    }
    let permit = match state.permit().await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let cap = state.0.parts.config.server.export_buffer_series;
    let max_points = state.0.parts.config.server.export_max_points;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(cap);
    let db = state.0.parts.db.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        stream_series(&db, &selectors, start, end, max_points, &tx);
    });
    let (mut body_tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
    tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            match item {
                Ok(bytes) => {
                    if body_tx.send_data(bytes).await.is_err() {
                        return; // the client went away; dropping rx stops the walk
                    }
                }
                Err(e) => {
                    body_tx.abort(e);
                    return;
                }
            }
        }
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/stream+json"),
        )],
        Body::new(body),
    )
        .into_response()
}

/// Walks every selector's series (each series once, even when several selectors match it)
/// and sends one line per series. Runs on the blocking pool.
fn stream_series(
    db: &tsdb::Db,
    selectors: &[Vec<Matcher>],
    start: i64,
    end: i64,
    max_points: u64,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut seen: std::collections::HashSet<model::SeriesId> = std::collections::HashSet::new();
    let mut points: u64 = 0;
    for matchers in selectors {
        let select = match db.select(matchers, start, end) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        for series in select {
            let s = match series {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "export: reading a series failed");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            if s.timestamps.is_empty() || (selectors.len() > 1 && !seen.insert(s.id)) {
                continue;
            }
            points = points.saturating_add(s.timestamps.len() as u64);
            if points > max_points {
                tracing::warn!(max_points, "export stopped at export_max_points");
                let _ = tx.blocking_send(Err(std::io::Error::other("export_max_points reached")));
                return;
            }
            let line = crate::export::render_line(&s.key, &s.timestamps, &s.values);
            if tx.blocking_send(Ok(Bytes::from(line))).is_err() {
                return;
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    dest: String,
}

async fn compact(State(state): State<HumanState>) -> Response {
    if state.0.parts.switches.get(crate::COMPACTION_SWITCH) == Some(ingest::SwitchState::Paused) {
        return error(
            StatusCode::CONFLICT,
            "paused",
            "compaction is paused (PUT /api/v1/switches/compaction {\"state\":\"open\"})",
        );
    }
    let started = Instant::now();
    match state.blocking(|inner| inner.parts.db.compact_now()).await {
        Ok(Ok(report)) => {
            let mut body = crate::adapters::compact_report_json(&report);
            if let Some(obj) = body.as_object_mut() {
                obj.insert("elapsed_ms".into(), (started.elapsed().as_millis() as u64).into());
            }
            Json(serde_json::json!({"status": "success", "data": body})).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "execution", &e.to_string()),
        Err(r) => r.into_response(),
    }
}

async fn snapshot(State(state): State<HumanState>, body: Bytes) -> Response {
    let parsed: SnapshotBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("body must be {{\"dest\": \"/path\"}}: {e}"),
            );
        }
    };
    let dest = std::path::PathBuf::from(&parsed.dest);
    if !dest.is_absolute() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "dest must be an absolute path",
        );
    }
    let data_dir = std::path::PathBuf::from(&state.0.parts.config.server.data_dir);
    let result = state
        .blocking(move |inner| crate::adapters::snapshot(&inner.parts.db, &data_dir, &dest))
        .await;
    match result {
        Ok(Ok(())) => {
            Json(serde_json::json!({"status": "success", "data": {"dest": parsed.dest}})).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "execution", &e),
        Err(r) => r.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::inline_candidate;

    fn params(q: &str) -> Vec<(String, String)> {
        vec![("query".into(), q.into()), ("step".into(), "10s".into())]
    }

    #[test]
    fn only_small_selector_queries_are_tried_inline() {
        for q in [
            r#"{__name__="host0.cpu0.usage_user"}"#,
            r#"usage_user{host="host0",cpu="cpu0"}"#,
            "up",
            "a + b * 2",
            "a offset 5m",
        ] {
            assert!(inline_candidate("/api/v1/query_range", &params(q)), "{q}");
            assert!(inline_candidate("/api/v1/query", &params(q)), "{q}");
        }
        for q in [
            "sum(up)",
            "rate(a[5m])",
            r#"{__name__=~"host.+"}"#,
            r#"up{job!="x"}"#,
            "(a)",
        ] {
            assert!(!inline_candidate("/api/v1/query_range", &params(q)), "{q}");
        }
        assert!(!inline_candidate(
            "/api/v1/query_range",
            &params(&"a+".repeat(300))
        ));
        assert!(!inline_candidate("/api/v1/series", &params("up")));
        assert!(!inline_candidate("/api/v1/query", &[]));
        // the first `query` counts, as in `query::api`
        let two = vec![("query".into(), "sum(a)".into()), ("query".into(), "a".into())];
        assert!(!inline_candidate("/api/v1/query", &two));
    }
}
