//! HTTP helpers the server's end-to-end tests share: one request with an optional bearer
//! token and JSON body, answered whatever its status.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::time::Duration;

/// What a test needs from an answer.
pub struct Resp {
    /// The HTTP status.
    pub status: u16,
    /// The body as text (empty if it was not UTF-8).
    pub body: String,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    /// The `X-Request-Id` header.
    pub request_id: Option<String>,
}

impl Resp {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// An agent that answers every status (errors are the tests' to check).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// One `GET`, `DELETE`, `PUT` or `POST` with an optional bearer token and JSON body.
pub fn request(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Resp {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                a.get(url)
            } else {
                a.delete(url)
            };
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        "PUT" | "POST" => {
            let mut r = if method == "PUT" { a.put(url) } else { a.post(url) };
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            match body {
                Some(b) => r.content_type("application/json").send(b),
                None => r.send_empty(),
            }
        }
        other => panic!("{other}"),
    };
    let mut resp = resp.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (retry_after, request_id) = (header("retry-after"), header("x-request-id"));
    Resp {
        status: resp.status().as_u16(),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
        retry_after,
        request_id,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The admin token every in-process test server stores at start.
pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

/// A real server in process on a temporary data directory, on its own runtime, restartable
/// on the same directory; each test file wraps it with its own config and helpers.
pub struct Harness {
    /// The runtime the server was started on (tests `block_on` it).
    pub rt: tokio::runtime::Runtime,
    /// The running server (`None` only inside [`Harness::restart`]).
    pub server: Option<server::RunningServer>,
    dir: tempfile::TempDir,
    config: fn(&std::path::Path) -> server::config::Config,
    clock: std::sync::Arc<dyn model::Clock>,
}

impl Harness {
    /// Starts a server with `config(data_dir)`, the [`ADMIN`] token and `clock`.
    pub fn start(
        config: fn(&std::path::Path) -> server::config::Config,
        clock: std::sync::Arc<dyn model::Clock>,
    ) -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut h = Harness {
            rt,
            server: None,
            dir: tempfile::tempdir().unwrap(),
            config,
            clock,
        };
        h.restart();
        h
    }

    /// The server's data directory.
    pub fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Shuts the server down (if running) and starts it again on the same data directory.
    pub fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown()).unwrap();
        }
        let opts = server::StartOptions {
            admin_token: Some(ADMIN.into()),
            clock: self.clock.clone(),
        };
        let s = self
            .rt
            .block_on(server::Server::start_with((self.config)(&self.data()), opts))
            .unwrap();
        self.server = Some(s);
    }

    /// Shuts the server down gracefully.
    pub fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown()).unwrap();
        }
    }

    /// The bound address of `listener` (`human-http`, `robot-http`, `graphite-tcp`, …).
    pub fn addr(&self, listener: &str) -> String {
        self.server
            .as_ref()
            .unwrap()
            .addrs
            .get(listener)
            .unwrap()
            .to_string()
    }
}
