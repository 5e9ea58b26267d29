//! The `roaster` binary: a thin shell over the `server` crate.
//!
//! - `roaster serve [--config PATH] [--data-dir DIR]`: run the server until SIGTERM/SIGINT.
//! - `roaster config check FILE` / `roaster config example`: validate / print the documented defaults.
//! - `roaster token create --scope ingest|read|admin --name NAME [--data-dir DIR]`: make a token
//!   offline, straight in the data directory's token file (safe beside a running server: the
//!   file is locked while written and replaced atomically, and the server notices the change).
//!   Every attempt is recorded as an `audit.token` event straight into the data directory's
//!   `events.db` (no token is made when the audit trail cannot be opened; if this creates the
//!   event store, its shard count is `[events] sqlite_shards` from the defaults and
//!   `ROASTER_EVENTS_*` variables).
//! - `roaster ctl switch SOURCE STATE`, `ctl switches`, `ctl compact`, `ctl snapshot DEST`: talk
//!   to a running server's human plane (`--url`, `--token` or `ROASTER_TOKEN`).
//!
//! - `roaster event …` / `roaster events search …`: record or search events (see [`events_cmd`]).
//!
//! `anyhow` and exit codes live only here: 0 success, 1 failure, 2 usage or invalid config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod events_cmd;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use model::Clock as _;
use server::config::{ADMIN_TOKEN_ENV, CLIENT_TOKEN_ENV, Config, EXAMPLE_TOML};
use server::tokens::{Scope, TokenStore};

#[derive(Parser)]
#[command(name = "roaster", version, about = "Roaster: a self-hosted ops platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML config file; without it, the defaults (plus ROASTER_* variables) apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory; overrides `[server] data_dir` (default ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check or print the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage API tokens (works offline on the data directory).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Control a running server over its human-plane API.
    Ctl {
        /// The human plane's URL.
        #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An admin (or, for reads, read) token; defaults to the ROASTER_TOKEN variable.
        #[arg(long, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Record one event (robot plane; an ingest token).
    Event(events_cmd::EventArgs),
    /// Search events (human plane; a read token).
    Events {
        #[command(subcommand)]
        command: events_cmd::EventsCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (with ROASTER_* variables applied); exits non-zero naming the bad key.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the documented default configuration.
    Example,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once.
    Create {
        /// ingest (robot plane), read (human reads) or admin (everything).
        #[arg(long)]
        scope: String,
        /// A name to recognise the token by.
        #[arg(long)]
        name: String,
        /// The server's data directory.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Set a kill switch: SOURCE is an ingest source (graphite-tcp, statsd-udp, ..., events)
    /// or a job (compaction); STATE is open, paused or blackholed.
    Switch {
        /// The switch name.
        source: String,
        /// open, paused or blackholed.
        state: String,
    },
    /// List kill switches.
    Switches,
    /// Seal and compact all storage now; returns when done.
    Compact,
    /// Write a consistent copy of the data directory to DEST (an absolute path on the server).
    Snapshot {
        /// Destination directory (must not exist or be empty).
        dest: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, data_dir } => serve(config, data_dir),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{EXAMPLE_TOML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    scope,
                    name,
                    data_dir,
                },
        } => token_create(&scope, &name, &data_dir),
        Command::Ctl { url, token, command } => ctl(&url, token, command),
        Command::Event(args) => events_cmd::event(args),
        Command::Events { command } => events_cmd::events(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("roaster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, server::config::ConfigError> {
    let config = Config::load(path, std::env::vars())?;
    config.validate()?;
    Ok(config)
}

fn config_check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match load_config(Some(file)) {
        Ok(_) => {
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("roaster: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// Caps glibc's malloc arenas at one per core (at most 8) unless `MALLOC_ARENA_MAX` is set.
///
/// Why: glibc gives threads that allocate at the same time their own arenas, up to 8 per
/// core, and ingest runs many allocating threads (robot runtime, queue writers, blocking
/// pools); freed memory then sits in up to 16 arenas on this 2-core machine. Measured with the
/// peer harness (100k series × 360 points, BENCHMARKS.md): peak RSS 220 MiB with glibc's
/// default, 186 MiB with 2 arenas, same throughput. See
/// docs/decisions/2026-11-21-malloc-arenas.md.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let arenas = libc::c_int::try_from(cores).unwrap_or(1);
    // SAFETY: mallopt only tunes the allocator; it is called once at the start of `serve`,
    // before the server starts any thread, with a valid option and a positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn serve(config_path: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    limit_malloc_arenas();
    let mut config = match load_config(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roaster: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(dir) = data_dir {
        config.server.data_dir = dir.to_string_lossy().into_owned();
    }
    server::logging::init(&config.server.log_level)?;
    let opts = server::StartOptions {
        admin_token: std::env::var(ADMIN_TOKEN_ENV).ok().filter(|t| !t.is_empty()),
        ..server::StartOptions::default()
    };
    // A small runtime of its own drives startup, waits for a signal and drives shutdown; the
    // planes run on the server's own runtimes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("roaster-main")
        .build()
        .context("cannot start the main runtime")?;
    rt.block_on(async move {
        let running = server::Server::start_with(config, opts).await?;
        wait_for_signal().await?;
        running.shutdown().await?;
        anyhow::Ok(())
    })
    .inspect_err(|e| tracing::error!(error = %format!("{e:#}"), "roaster stopped with an error"))?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
    }
    Ok(())
}

fn token_create(scope: &str, name: &str, data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let scope: Scope = scope.parse()?;
    let store = TokenStore::open(data_dir)?;
    // Open the audit trail first: a token must not be made when its creation cannot be recorded.
    // SQLite lets this process write beside a running server.
    let events_db = data_dir.join(server::events::EVENTS_DB_FILE);
    // The [events] defaults plus ROASTER_EVENTS_* variables: if this creates the store (no
    // server ran yet), it gets the configured layout (`sqlite_shards`), which is then fixed.
    let events_config = load_config(None)
        .context("invalid ROASTER_* configuration variables")?
        .events
        .sqlite_config(events_db.clone());
    let events = store::SqliteStore::open(events_config)
        .with_context(|| format!("cannot open the audit trail in {}", events_db.display()))?;
    let now = model::SystemClock.now();
    let created = store.create(name, scope, now.millis());
    let error = created.as_ref().err().map(ToString::to_string);
    let event = server::audit::token_event("create", name, scope, &local_actor(), error.as_deref(), now);
    let recorded = store::EventStore::insert_batch(&events, std::slice::from_ref(&event));
    let t = created?;
    println!("{}", t.token);
    eprintln!(
        "roaster: created {} token {:?}; it is shown only once",
        scope.as_str(),
        t.record.name
    );
    if let Err(e) = recorded {
        eprintln!("roaster: the token was created but its audit event could not be stored: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Who runs an offline command, for the audit trail: `local:USER`.
fn local_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("local:{user}")
}

fn ctl(url: &str, token: Option<String>, command: CtlCommand) -> anyhow::Result<ExitCode> {
    let token = token
        .or_else(|| std::env::var(CLIENT_TOKEN_ENV).ok())
        .filter(|t| !t.is_empty())
        .with_context(|| format!("no token: pass --token or set {CLIENT_TOKEN_ENV}"))?;
    let base = url.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        // The server's audit trail records the User-Agent: say that this was `roaster ctl`.
        .user_agent(concat!("roaster-ctl/", env!("CARGO_PKG_VERSION")))
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3600)))
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let response = match command {
        CtlCommand::Switch { source, state } => agent
            .put(&format!("{base}/api/v1/switches/{source}"))
            .header("Authorization", &auth)
            .send_json(serde_json::json!({ "state": state })),
        CtlCommand::Switches => agent
            .get(&format!("{base}/api/v1/switches"))
            .header("Authorization", &auth)
            .call(),
        CtlCommand::Compact => agent
            .post(&format!("{base}/api/v1/admin/compact"))
            .header("Authorization", &auth)
            .send_empty(),
        CtlCommand::Snapshot { dest } => {
            let dest = if dest.is_absolute() {
                dest
            } else {
                std::env::current_dir()?.join(dest)
            };
            agent
                .post(&format!("{base}/api/v1/admin/snapshot"))
                .header("Authorization", &auth)
                .send_json(serde_json::json!({ "dest": dest }))
        }
    };
    let mut response = response.with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .context("cannot read the server's answer")?;
    if !status.is_success() {
        bail!("server answered {status}: {}", body.trim());
    }
    println!("{}", body.trim());
    Ok(ExitCode::SUCCESS)
}
