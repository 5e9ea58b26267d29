//! `roaster event` (record one event through the robot plane) and `roaster events search`
//! (query the human plane), for scripts and operators.
//!
//! - `roaster event --kind ansible.start --host web1 [--service S] [--subject S] [--actor A]
//!   [--label k=v]... [--severity info|warning|critical] [--id ID] [--time T] [--payload JSON]
//!   "summary"` POSTs to `--url` (default `$ROASTER_URL`, else `http://127.0.0.1:8081`, the
//!   robot plane) with an `ingest` token (`--token` or `$ROASTER_TOKEN`). `--time` is RFC 3339
//!   or unix milliseconds. Prints `stored ID` or `duplicate ID`; a rejected event exits 1 with
//!   the server's reason.
//! - `roaster events search [--from T] [--to T] [--kind K] [--host H] [--service S]
//!   [--label M]... [--q WORDS] [--limit N] [--all [--max-events N]] [--json]` GETs
//!   `/api/v1/events` from `--url` (default `$ROASTER_HUMAN_URL`, else
//!   `http://127.0.0.1:8080`) with a `read` token, printing one line per event (or the
//!   event's JSON per line with `--json`), newest first. `--all` follows cursors, at most
//!   `--max-events` events (default 10,000). `--from`/`--to` take RFC 3339 or unix seconds.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use server::config::CLIENT_TOKEN_ENV;

/// The variable naming the robot plane's URL for `roaster event`.
pub const URL_ENV: &str = "ROASTER_URL";
/// The variable naming the human plane's URL for `roaster events search`.
pub const HUMAN_URL_ENV: &str = "ROASTER_HUMAN_URL";

/// `roaster event …`: one event.
#[derive(Args)]
pub struct EventArgs {
    /// The robot plane's URL (default: $ROASTER_URL, else http://127.0.0.1:8081).
    #[arg(long)]
    url: Option<String>,
    /// An ingest token (default: $ROASTER_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// What happened, as a dotted verb (deploy.finished, ansible.start, ...).
    #[arg(long)]
    kind: String,
    /// The host it happened on.
    #[arg(long)]
    host: Option<String>,
    /// The service it concerns.
    #[arg(long)]
    service: Option<String>,
    /// What it is about.
    #[arg(long)]
    subject: Option<String>,
    /// Who did it.
    #[arg(long)]
    actor: Option<String>,
    /// A label NAME=VALUE (repeatable).
    #[arg(long = "label", value_name = "NAME=VALUE")]
    labels: Vec<String>,
    /// info, warning or critical.
    #[arg(long)]
    severity: Option<String>,
    /// An id, so a retry stores the event only once.
    #[arg(long)]
    id: Option<String>,
    /// When it happened: RFC 3339 or unix milliseconds (default: now, as the server sees it).
    #[arg(long)]
    time: Option<String>,
    /// Any JSON document kept with the event.
    #[arg(long)]
    payload: Option<String>,
    /// One line saying what happened.
    summary: String,
}

/// `roaster events …`.
#[derive(Subcommand)]
pub enum EventsCommand {
    /// Search stored events, newest first.
    Search(SearchArgs),
}

/// `roaster events search …`.
#[derive(Args)]
pub struct SearchArgs {
    /// The human plane's URL (default: $ROASTER_HUMAN_URL, else http://127.0.0.1:8080).
    #[arg(long)]
    url: Option<String>,
    /// A read token (default: $ROASTER_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Earliest event time (RFC 3339 or unix seconds), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Latest event time (RFC 3339 or unix seconds), exclusive.
    #[arg(long)]
    to: Option<String>,
    /// Kind prefix on dot boundaries (`deploy` matches deploy.started and deploy.finished).
    #[arg(long)]
    kind: Option<String>,
    /// Exact host.
    #[arg(long)]
    host: Option<String>,
    /// Exact service.
    #[arg(long)]
    service: Option<String>,
    /// A label matcher NAME="VALUE" (or !=, =~, !~; repeatable).
    #[arg(long = "label", value_name = "MATCHER")]
    labels: Vec<String>,
    /// Full-text words, all of which must match (`word*` matches a prefix).
    #[arg(long)]
    q: Option<String>,
    /// Events per page (1..=1000).
    #[arg(long)]
    limit: Option<usize>,
    /// Follow cursors to the end (at most --max-events events).
    #[arg(long)]
    all: bool,
    /// With --all, stop after this many events.
    #[arg(long, default_value_t = 10_000)]
    max_events: usize,
    /// Print each event's JSON on its own line.
    #[arg(long)]
    json: bool,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

fn resolve_token(token: Option<String>) -> anyhow::Result<String> {
    token
        .or_else(|| std::env::var(CLIENT_TOKEN_ENV).ok())
        .filter(|t| !t.is_empty())
        .with_context(|| format!("no token: pass --token or set {CLIENT_TOKEN_ENV}"))
}

fn resolve_url(url: Option<String>, env: &str, default: &str) -> String {
    url.or_else(|| std::env::var(env).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| default.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// Runs `roaster event`.
pub fn event(a: EventArgs) -> anyhow::Result<ExitCode> {
    let token = resolve_token(a.token)?;
    let base = resolve_url(a.url, URL_ENV, "http://127.0.0.1:8081");
    let mut body = serde_json::Map::new();
    body.insert("kind".into(), a.kind.into());
    body.insert("summary".into(), a.summary.into());
    for (key, v) in [
        ("host", a.host),
        ("service", a.service),
        ("subject", a.subject),
        ("actor", a.actor),
        ("severity", a.severity),
        ("id", a.id),
    ] {
        if let Some(v) = v {
            body.insert(key.into(), v.into());
        }
    }
    if let Some(t) = a.time {
        let v = match t.parse::<i64>() {
            Ok(ms) => serde_json::Value::from(ms),
            Err(_) => serde_json::Value::from(t),
        };
        body.insert("time".into(), v);
    }
    let mut labels = serde_json::Map::new();
    for l in a.labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--label {l:?}: expected NAME=VALUE");
        };
        labels.insert(k.to_owned(), v.into());
    }
    if !labels.is_empty() {
        body.insert("labels".into(), labels.into());
    }
    if let Some(p) = a.payload {
        let v: serde_json::Value = serde_json::from_str(&p).context("--payload is not JSON")?;
        body.insert("payload".into(), v);
    }
    let mut resp = agent()
        .post(&format!("{base}/api/v1/events"))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(serde_json::Value::Object(body))
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status();
    let text = resp
        .body_mut()
        .read_to_string()
        .context("cannot read the server's answer")?;
    if !status.is_success() {
        bail!("server answered {status}: {}", text.trim());
    }
    let v: serde_json::Value = serde_json::from_str(&text).context("the server's answer is not JSON")?;
    let item = &v["results"][0];
    match item["status"].as_str() {
        Some(s @ ("stored" | "duplicate" | "blackholed")) => {
            println!("{s} {}", item["id"].as_str().unwrap_or(""));
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!(
            "event rejected ({}): {}",
            item["reason"].as_str().unwrap_or("?"),
            item["error"].as_str().unwrap_or(text.trim())
        ),
    }
}

/// Runs `roaster events …`.
pub fn events(command: EventsCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventsCommand::Search(a) => search(a),
    }
}

/// One event as a line: time, severity, kind, host, service, summary, id.
fn line(e: &serde_json::Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    format!(
        "{}  {:<8}  {}  host={}  service={}  {}  id={}",
        s("time"),
        s("severity"),
        s("kind"),
        s("host"),
        s("service"),
        s("summary"),
        s("id")
    )
}

fn search(a: SearchArgs) -> anyhow::Result<ExitCode> {
    let token = resolve_token(a.token)?;
    let base = resolve_url(a.url, HUMAN_URL_ENV, "http://127.0.0.1:8080");
    let mut params: Vec<(&str, String)> = Vec::new();
    for (k, v) in [
        ("from", a.from),
        ("to", a.to),
        ("kind", a.kind),
        ("host", a.host),
        ("service", a.service),
        ("q", a.q),
        ("limit", a.limit.map(|n| n.to_string())),
    ] {
        if let Some(v) = v {
            params.push((k, v));
        }
    }
    for l in a.labels {
        params.push(("label", l));
    }
    let agent = agent();
    let mut cursor: Option<String> = None;
    let mut printed = 0usize;
    loop {
        let mut req = agent
            .get(&format!("{base}/api/v1/events"))
            .header("Authorization", &format!("Bearer {token}"));
        for (k, v) in &params {
            req = req.query(*k, v);
        }
        if let Some(c) = &cursor {
            req = req.query("cursor", c);
        }
        let mut resp = req.call().with_context(|| format!("cannot reach {base}"))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .context("cannot read the server's answer")?;
        if !status.is_success() {
            bail!("server answered {status}: {}", text.trim());
        }
        let v: serde_json::Value = serde_json::from_str(&text).context("the server's answer is not JSON")?;
        let empty = Vec::new();
        for e in v["data"]["events"].as_array().unwrap_or(&empty) {
            if a.all && printed >= a.max_events {
                eprintln!("roaster: stopped after --max-events {} events", a.max_events);
                return Ok(ExitCode::SUCCESS);
            }
            if a.json {
                println!("{e}");
            } else {
                println!("{}", line(e));
            }
            printed += 1;
        }
        match v["data"]["next_cursor"].as_str() {
            Some(c) if a.all => cursor = Some(c.to_owned()),
            Some(_) => {
                eprintln!("roaster: more events match (use --all or a narrower query)");
                return Ok(ExitCode::SUCCESS);
            }
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}
