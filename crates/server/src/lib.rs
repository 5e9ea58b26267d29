//! The composition root of `roaster serve`: it loads and validates the config, opens storage,
//! wires ingest and query to it through adapters, and runs two planes that never share a budget.
//!
//! ```text
//!   robots ──► robot runtime "roaster-robot" ──► ingest listeners + robot HTTP router
//!                                                    │ bounded queues, writer threads
//!                                                    ▼
//!                                    adapters::TsdbSink ──► tsdb::Db ◄── adapters::TsdbReader
//!                                                    block_in_place / spawn_blocking ▲
//!   humans ──► human runtime "roaster-human" ──► human HTTP router ────────────┘ query semaphore
//! ```
//!
//! Types that matter: [`config::Config`] (the TOML tree) → [`config::Settings`] (validated);
//! [`Server::start`] → [`RunningServer`] (bound addresses, the generated admin token,
//! [`RunningServer::shutdown`]); [`tokens::TokenStore`] (hashed tokens in `tokens.json`).
//!
//! Data directory layout: `tsdb/` (the engine's files), `events.db` (+ `-wal`, `-shm`: the
//! event store, see [`events`]), `tokens.json`, `switches.json`
//! (kill-switch states), `heartbeats.json` (API heartbeat definitions and every heartbeat's
//! state, see [`heartbeat`]), `listeners.json` (bound addresses by listener name; removed at start,
//! written once every listener is bound, removed again at shutdown).
//!
//! Invariants:
//! - robot traffic runs only on the robot runtime, human traffic only on the human runtime;
//!   spawns go through [`spawn_ingest`] and [`spawn_human`];
//! - storage is called from the human plane only inside `spawn_blocking` or, for the
//!   Prometheus query API, `block_in_place` (its worker hands the runtime's other tasks to a
//!   fresh thread first), under the `human_max_concurrent_queries` semaphore; the one exception
//!   is a small query API request tried on its worker under `human_inline_query_budget_us`
//!   (see `human.rs`); nothing calls `block_on` inside async code;
//! - shutdown order: mark not ready → stop accepting robots (plaintext listeners, robot HTTP)
//!   → `Ingest::drain` (flush StatsD, empty queues into storage) → stop the human plane →
//!   `AuditLog::close` (store the queued audit events) → `Db::close` (fsync the WAL) → `Events::close` (checkpoint `events.db`) → stop the runtimes. A drain that outlives
//!   `shutdown_timeout_ms` is abandoned, but storage is still closed.

#![warn(missing_docs)]

pub mod adapters;
pub mod audit;
pub mod busy_poll;
pub mod config;
pub mod events;
pub mod export;
pub mod heartbeat;
pub mod human;
pub mod logging;
pub mod process;
pub mod readiness;
pub mod tokens;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use model::{Clock, SystemClock};
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Settings};
use crate::tokens::{TokenError, TokenStore};

/// The switch name of the background compaction job.
pub const COMPACTION_SWITCH: &str = "compaction";
/// The file, in the data directory, listing bound addresses by listener name.
pub const LISTENERS_FILE: &str = "listeners.json";
/// The file, in the data directory, holding kill-switch states.
pub const SWITCHES_FILE: &str = "switches.json";
/// The engine's subdirectory of the data directory.
pub const TSDB_DIR: &str = "tsdb";
/// The StatsD sketch log's subdirectory of the data directory (`ingest::sketchlog`).
pub const SKETCHES_DIR: &str = "sketches";

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created or written.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The path involved.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The token file could not be used.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// The audit trail could not start.
    #[error("audit: {0}")]
    Audit(#[from] audit::AuditError),
    /// The heartbeat registry could not be opened.
    #[error("heartbeats: {0}")]
    Heartbeats(#[from] heartbeat::HeartbeatError),
    /// The kill-switch file could not be used.
    #[error("kill switches: {0}")]
    Switches(#[from] ingest::SwitchError),
    /// Storage failed to open or close.
    #[error("storage: {0}")]
    Storage(#[from] tsdb::DbError),
    /// The event store failed to open or close.
    #[error("event store: {0}")]
    Events(#[from] store::StoreError),
    /// Ingest failed to start.
    #[error("ingest: {0}")]
    Ingest(#[from] ingest::IngestError),
    /// The StatsD sketch log could not be opened.
    #[error("statsd sketches: {0}")]
    SketchLog(#[from] ingest::sketchlog::SketchLogError),
    /// A listener could not bind.
    #[error("cannot listen for {listener} on {addr}: {source}")]
    Bind {
        /// The listener's name (`human-http`, `robot-http`).
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A runtime could not be built.
    #[error("cannot start the {name} runtime: {source}")]
    Runtime {
        /// `roaster-robot` or `roaster-human`.
        name: &'static str,
        /// The reason.
        source: std::io::Error,
    },
    /// A startup or shutdown task died (panicked or was cancelled).
    #[error("{task} task failed: {reason}")]
    Task {
        /// What the task was doing.
        task: &'static str,
        /// Why it ended.
        reason: String,
    },
    /// The graceful shutdown did not finish within `shutdown_timeout_ms`; storage was closed anyway.
    #[error("graceful shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

/// What the caller may pass beside the config.
#[derive(Clone)]
pub struct StartOptions {
    /// A token to store as an admin token (`ROASTER_ADMIN_TOKEN`); idempotent across restarts.
    pub admin_token: Option<String>,
    /// The clock; the system clock outside tests.
    pub clock: Arc<dyn Clock>,
}

impl Default for StartOptions {
    fn default() -> StartOptions {
        StartOptions {
            admin_token: None,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Where each listener ended up (after port 0 was resolved), by listener name:
/// `human-http`, `robot-http`, `graphite-tcp`, `graphite-udp`, `statsd-udp`, `statsd-tcp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BoundAddrs(pub BTreeMap<String, SocketAddr>);

impl BoundAddrs {
    /// The address of a listener, if it runs.
    pub fn get(&self, listener: &str) -> Option<SocketAddr> {
        self.0.get(listener).copied()
    }

    /// The robot plane's HTTP address, when it runs.
    pub fn robot(&self) -> Option<SocketAddr> {
        self.get("robot-http")
    }

    /// The human plane's address (always present).
    pub fn human(&self) -> Option<SocketAddr> {
        self.get("human-http")
    }
}

/// Spawns a task of the robot plane onto the robot runtime.
pub fn spawn_ingest<F>(robot: &Handle, task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    robot.spawn(task)
}

/// Spawns a task of the human plane onto the human runtime.
pub fn spawn_human<F>(human: &Handle, task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    human.spawn(task)
}

/// Runs blocking `work` on a fresh thread and awaits its result, so callers on any runtime
/// (including a current-thread one) never block their worker.
async fn off_runtime<T: Send + 'static>(
    task: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ServerError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("roaster-{task}"))
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| ServerError::Task {
            task,
            reason: e.to_string(),
        })?;
    rx.await.map_err(|_| ServerError::Task {
        task,
        reason: "the thread panicked".into(),
    })
}

fn join_error(task: &'static str) -> impl FnOnce(tokio::task::JoinError) -> ServerError {
    move |e| ServerError::Task {
        task,
        reason: e.to_string(),
    }
}

/// The entry point: builds and starts everything.
pub struct Server;

impl Server {
    /// Starts a server with default [`StartOptions`] (system clock, no preset admin token).
    pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
        Server::start_with(config, StartOptions::default()).await
    }

    /// Validates `config`, opens storage, binds every listener and starts both planes.
    /// Returns once everything listens; `listeners.json` is written by then.
    pub async fn start_with(config: Config, opts: StartOptions) -> Result<RunningServer, ServerError> {
        let settings = config.validate()?;
        let data_dir = settings.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        // A file left by an earlier run would point waiting tools at dead ports.
        let listeners_file = data_dir.join(LISTENERS_FILE);
        if let Err(source) = std::fs::remove_file(&listeners_file)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(ServerError::DataDir {
                path: listeners_file,
                source,
            });
        }
        let clock = opts.clock.clone();
        let now_ms = clock.now().millis();

        // Token and switch files are small, but their writes fsync: keep them off the caller's runtime.
        let (dir, preset) = (data_dir.clone(), opts.admin_token.clone());
        let (tokens, generated) = off_runtime("tokens", move || {
            let tokens = Arc::new(TokenStore::open(&dir)?);
            if let Some(t) = &preset {
                tokens.ensure_admin(t, now_ms)?;
            }
            let generated = tokens.ensure_first_admin(now_ms)?;
            Ok::<_, TokenError>((tokens, generated))
        })
        .await??;
        if let Some(t) = &generated {
            // Shown once: the file keeps only its hash.
            eprintln!("roaster: generated the first admin token (shown only once): {t}");
            tracing::warn!(token = %t, "generated the first admin token; it is shown only once");
        }
        let admin_token = opts.admin_token.clone().or(generated);

        let mut switch_names: Vec<&'static str> = ingest::SOURCE_NAMES.to_vec();
        switch_names.push(COMPACTION_SWITCH);
        switch_names.push(events::EVENTS_SWITCH);
        let switches_path = data_dir.join(SWITCHES_FILE);
        let switches = off_runtime("switches", move || {
            ingest::Switches::open(&switches_path, &switch_names)
        })
        .await??;

        let db_dir = data_dir.join(TSDB_DIR);
        let db_opts = adapters::tsdb_options(&config.storage);
        let db_clock = clock.clone();
        let db = off_runtime("storage-open", move || tsdb::Db::open(&db_dir, db_opts, db_clock)).await??;
        // The `compaction` switch survives restarts like the others: apply it before any round runs.
        db.set_maintenance_paused(switches.get(COMPACTION_SWITCH) == Some(ingest::SwitchState::Paused));

        let (dir, ev_config, ev_clock) = (data_dir.clone(), config.events.clone(), clock.clone());
        let events = match off_runtime("events-open", move || {
            events::Events::open(&dir, &ev_config, ev_clock)
        })
        .await
        {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => {
                let _ = db.close();
                return Err(e.into());
            }
            Err(e) => {
                let _ = db.close();
                return Err(e);
            }
        };

        // Robots yield the CPU to humans when both want it (ingest::priority).
        let robot_rt = build_runtime(
            "roaster-robot",
            config.server.robot_worker_threads,
            None,
            config.ingest.robot_thread_nice,
        )?;
        let human_rt = build_runtime(
            "roaster-human",
            config.server.human_worker_threads,
            Some(config.server.human_max_blocking_threads),
            0,
        )?;
        let mut running = RunningServer {
            addrs: BoundAddrs::default(),
            admin_token,
            settings: settings.clone(),
            db: db.clone(),
            events: events.clone(),
            audit: None,
            ingest: None,
            readiness: Arc::new(readiness::Readiness::new(
                &data_dir,
                settings.readiness_probe_cache,
            )),
            robot_cancel: CancellationToken::new(),
            human_cancel: CancellationToken::new(),
            tasks: Vec::new(),
            robot_rt: Some(robot_rt),
            human_rt: Some(human_rt),
        };
        // From here on, a failure must still close storage and stop the runtimes: `running`
        // owns them, and its shutdown does both.
        match running.launch(config, tokens, switches, clock).await {
            Ok(()) => Ok(running),
            Err(e) => {
                let _ = running.shutdown_inner().await;
                Err(e)
            }
        }
    }
}

fn build_runtime(
    name: &'static str,
    workers: usize,
    max_blocking: Option<usize>,
    thread_nice: i32,
) -> Result<Runtime, ServerError> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(workers).thread_name(name).enable_all();
    if thread_nice != 0 {
        b.on_thread_start(move || ingest::priority::lower_current_thread(thread_nice));
    }
    if let Some(n) = max_blocking {
        b.max_blocking_threads(n);
    }
    b.build().map_err(|source| ServerError::Runtime { name, source })
}

/// A started server. Call [`RunningServer::shutdown`] to stop it gracefully; dropping it
/// stops the runtimes abruptly (storage is still closed).
pub struct RunningServer {
    /// Where each listener is bound.
    pub addrs: BoundAddrs,
    /// The admin token set through [`StartOptions::admin_token`], or the one generated at first
    /// start; `None` when the data directory already had an admin token.
    pub admin_token: Option<String>,
    settings: Settings,
    db: Arc<tsdb::Db>,
    events: events::Events,
    audit: Option<Arc<audit::AuditLog>>,
    ingest: Option<Arc<ingest::Ingest>>,
    readiness: Arc<readiness::Readiness>,
    robot_cancel: CancellationToken,
    human_cancel: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    robot_rt: Option<Runtime>,
    human_rt: Option<Runtime>,
}

impl RunningServer {
    /// The event store's handle (what the planes record events through).
    pub fn events(&self) -> &events::Events {
        &self.events
    }

    fn handles(&self) -> Result<(Handle, Handle), ServerError> {
        match (&self.robot_rt, &self.human_rt) {
            (Some(r), Some(h)) => Ok((r.handle().clone(), h.handle().clone())),
            _ => Err(ServerError::Task {
                task: "start",
                reason: "runtimes already stopped".into(),
            }),
        }
    }

    async fn launch(
        &mut self,
        config: Config,
        tokens: Arc<TokenStore>,
        switches: Arc<ingest::Switches>,
        clock: Arc<dyn Clock>,
    ) -> Result<(), ServerError> {
        let (robot, human) = self.handles()?;
        let sink = Arc::new(adapters::TsdbSink::new(self.db.clone()));
        let (dir, hb_config, hb_defs) = (
            self.settings.data_dir.clone(),
            config.heartbeat.clone(),
            config.heartbeats.clone(),
        );
        let hb_sinks = heartbeat::HeartbeatSinks {
            samples: Some(sink.clone()),
            events: Some(self.events.clone()),
        };
        let hb_clock = clock.clone();
        let heartbeats = off_runtime("heartbeats", move || {
            heartbeat::Heartbeats::open(&dir, &hb_config, &hb_defs, hb_clock, hb_sinks)
        })
        .await??;
        let heartbeats = Arc::new(heartbeats);
        let audit = Arc::new(audit::AuditLog::start(
            config.audit.clone(),
            self.events.clone(),
            tokens.clone(),
            clock.clone(),
            config.server.human_max_body_bytes,
        )?);
        self.audit = Some(audit.clone());
        let ingest = Arc::new(ingest::Ingest::new(
            config.ingest.clone(),
            sink,
            tokens.clone(),
            switches.clone(),
            clock.clone(),
        )?);
        if let Some(cfg) = config.ingest.sketch_log_config() {
            let dir = self.settings.data_dir.join(SKETCHES_DIR);
            let log = ingest::sketchlog::SketchLog::open(dir, cfg, clock.now().millis())?;
            ingest.attach_sketch_log(Arc::new(log));
        }
        self.ingest = Some(ingest.clone());

        // Robot plane: plaintext listeners, then the robot HTTP listener.
        let cancel = self.robot_cancel.clone();
        let ing = ingest.clone();
        let plaintext = spawn_ingest(&robot, async move { ing.start_listeners(cancel).await })
            .await
            .map_err(join_error("ingest listeners"))??;
        let mut addrs = BoundAddrs::default();
        for (name, addr) in [
            ("graphite-tcp", plaintext.graphite_tcp),
            ("graphite-udp", plaintext.graphite_udp),
            ("statsd-udp", plaintext.statsd_udp),
            ("statsd-tcp", plaintext.statsd_tcp),
        ] {
            if let Some(addr) = addr {
                addrs.0.insert(name.to_owned(), addr);
            }
        }
        if let Some(addr) = self.settings.robot_listen {
            let events_switch = switches
                .handle(events::EVENTS_SWITCH)
                .ok_or_else(|| ServerError::Task {
                    task: "robot listener",
                    reason: "the events switch is not registered".into(),
                })?;
            let router = ingest
                .robot_router()
                .merge(events::robot_router(events::RobotEvents {
                    events: self.events.clone(),
                    tokens: tokens.clone(),
                    switch: events_switch,
                    retry_after_seconds: config.ingest.retry_after_seconds,
                }))
                // Heartbeat pings come from jobs, which are robots: same plane, ingest tokens.
                .merge(heartbeat::robot_router(heartbeat::PingState {
                    heartbeats: heartbeats.clone(),
                    tokens: tokens.clone(),
                }));
            let cancel = self.robot_cancel.clone();
            let (bound, task) = spawn_ingest(
                &robot,
                serve_http(
                    "robot-http",
                    addr,
                    router,
                    Duration::ZERO,
                    Default::default(),
                    cancel,
                ),
            )
            .await
            .map_err(join_error("robot listener"))??;
            addrs.0.insert("robot-http".into(), bound);
            self.tasks.push(("robot-http", task));
        }

        // Human plane.
        let busy_poll_metrics = Arc::new(busy_poll::BusyPollMetrics::default());
        let state = human::HumanState::new(human::HumanParts {
            busy_poll: busy_poll_metrics.clone(),
            config: config.clone(),
            db: self.db.clone(),
            events: self.events.clone(),
            ingest: ingest.clone(),
            switches,
            tokens,
            clock,
            readiness: self.readiness.clone(),
            heartbeats: heartbeats.clone(),
            audit,
        });
        let router = human::router(state);
        let retention = self.events.clone().retention_loop(self.human_cancel.clone());
        self.tasks
            .push(("event-retention", spawn_human(&human, retention)));
        let interval = config.heartbeat.series_interval_ms;
        if interval > 0 {
            let cancel = self.human_cancel.clone();
            let hb = heartbeats.clone();
            let task = spawn_human(&human, heartbeat::series_loop(hb, interval, cancel));
            self.tasks.push(("heartbeat-series", task));
        }
        let cancel = self.human_cancel.clone();
        let addr = self.settings.human_listen;
        let busy_poll = Duration::from_micros(config.server.human_busy_poll_us);
        let (bound, task) = spawn_human(
            &human,
            serve_http("human-http", addr, router, busy_poll, busy_poll_metrics, cancel),
        )
        .await
        .map_err(join_error("human listener"))??;
        addrs.0.insert("human-http".into(), bound);
        self.tasks.push(("human-http", task));

        for (name, addr) in &addrs.0 {
            tracing::info!(listener = name.as_str(), addr = %addr, "listening");
        }
        let listeners: BTreeMap<&str, String> =
            addrs.0.iter().map(|(k, v)| (k.as_str(), v.to_string())).collect();
        let json = serde_json::to_vec_pretty(&listeners).map_err(|e| ServerError::Task {
            task: "listeners file",
            reason: e.to_string(),
        })?;
        let path = self.settings.data_dir.join(LISTENERS_FILE);
        tokens::write_atomic(&path, &json).map_err(|source| ServerError::DataDir { path, source })?;
        self.addrs = addrs;
        Ok(())
    }

    /// Stops gracefully (see the crate doc for the order). Errors if the drain overran
    /// `shutdown_timeout_ms` or storage failed to close; storage is closed in every case.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.shutdown_inner().await
    }

    async fn shutdown_inner(&mut self) -> Result<(), ServerError> {
        self.readiness.set_shutting_down();
        let _ = std::fs::remove_file(self.settings.data_dir.join(LISTENERS_FILE));
        let timeout = self.settings.shutdown_timeout;
        let started = std::time::Instant::now();
        tracing::info!(timeout_ms = timeout.as_millis() as u64, "shutting down");
        let mut result = Ok(());

        self.robot_cancel.cancel();
        if let (Some(ingest), Ok((robot, _))) = (self.ingest.clone(), self.handles()) {
            let drain = spawn_ingest(&robot, async move { ingest.drain().await });
            match tokio::time::timeout(timeout, drain).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "ingest drain failed"),
                Err(_) => {
                    tracing::error!("ingest drain did not finish in time; closing storage anyway");
                    result = Err(ServerError::ShutdownTimeout(timeout));
                }
            }
        }
        self.human_cancel.cancel();
        for (name, task) in std::mem::take(&mut self.tasks) {
            let left = timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(100));
            match tokio::time::timeout(left, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(listener = name, error = %e, "listener task failed"),
                Err(_) => tracing::warn!(listener = name, "listener still had open connections at shutdown"),
            }
        }
        // The human plane is stopped: store what the audit queue still holds before the event
        // store closes.
        if let Some(audit) = self.audit.take() {
            let left = timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(2));
            match tokio::time::timeout(left, off_runtime("audit-close", move || audit.close())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "closing the audit trail failed"),
                Err(_) => {
                    tracing::error!("the audit queue did not drain in time; some audit events may be lost")
                }
            }
        }
        let db = self.db.clone();
        match off_runtime("storage-close", move || db.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "closing storage failed");
                result = Err(ServerError::Storage(e));
            }
            Err(e) => result = Err(e),
        }
        let events = self.events.clone();
        match off_runtime("events-close", move || events.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "closing the event store failed");
                if result.is_ok() {
                    result = Err(ServerError::Events(e));
                }
            }
            Err(e) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        // Stop the planes and wait for them, so every task and thread holding storage lets
        // go of it: the engine keeps its directory lock until its last handle drops, and a
        // restart in the same process must find it free.
        self.ingest = None;
        let rts: Vec<Runtime> = [self.robot_rt.take(), self.human_rt.take()]
            .into_iter()
            .flatten()
            .collect();
        let budget = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(2));
        let db = Arc::downgrade(&self.db);
        let released = off_runtime("runtime-stop", move || {
            for rt in rts {
                rt.shutdown_timeout(Duration::from_secs(1));
            }
            // Ingest's writer threads exit once their queue's senders are gone; give them the
            // rest of the budget to drop their storage handles.
            let deadline = std::time::Instant::now() + budget;
            while db.strong_count() > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            db.strong_count() <= 1
        })
        .await;
        if !matches!(released, Ok(true)) {
            tracing::warn!(
                "storage is still referenced after shutdown; its directory lock outlives this server"
            );
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
        result
    }

    /// Stops the runtimes on a separate thread: dropping a runtime inside async code panics.
    fn stop_runtimes(&mut self) {
        let rts: Vec<Runtime> = [self.robot_rt.take(), self.human_rt.take()]
            .into_iter()
            .flatten()
            .collect();
        if rts.is_empty() {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("roaster-rt-stop".into())
            .spawn(move || {
                for rt in rts {
                    rt.shutdown_timeout(Duration::from_secs(1));
                }
            });
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if self.robot_rt.is_some() {
            self.robot_cancel.cancel();
            self.human_cancel.cancel();
            if let Err(e) = self.db.close() {
                tracing::error!(error = %e, "closing storage on drop failed");
            }
            if let Some(audit) = self.audit.take() {
                audit.close();
            }
            if let Err(e) = self.events.close() {
                tracing::error!(error = %e, "closing the event store on drop failed");
            }
            self.stop_runtimes();
        }
    }
}

/// Binds `addr` and serves `router` until `cancel` fires; returns the bound address and the
/// serving task. Runs on the runtime of the plane it belongs to. Connections busy-poll for
/// their next request for up to `busy_poll` ([`busy_poll`]; zero: never).
async fn serve_http(
    listener: &'static str,
    addr: SocketAddr,
    router: axum::Router,
    busy_poll: Duration,
    busy_poll_metrics: Arc<busy_poll::BusyPollMetrics>,
    cancel: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServerError> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            listener,
            addr,
            source,
        })?;
    let bound = tcp.local_addr().map_err(|source| ServerError::Bind {
        listener,
        addr,
        source,
    })?;
    let task = tokio::spawn(async move {
        // Connect info gives handlers (the audit trail) the peer address.
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        // `tap_io` only so that axum's connect-info support (implemented for tapped listeners
        // of any kind) gives handlers the peer's `SocketAddr`.
        let tcp = axum::serve::ListenerExt::tap_io(
            busy_poll::PollingListener::new(tcp, busy_poll, busy_poll_metrics),
            |_| {},
        );
        let serve = axum::serve(tcp, service).with_graceful_shutdown(cancel.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(listener, error = %e, "http server stopped with an error");
        }
    });
    Ok((bound, task))
}
