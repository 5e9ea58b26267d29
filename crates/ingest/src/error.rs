//! [`IngestError`]: why ingest could not start.

use std::net::SocketAddr;

use crate::config::ConfigError;

/// Why [`crate::Ingest`] could not be built or its listeners started. None is retryable
/// without a config or environment change.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A config value cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `graphite_templates` or `plaintext_allow_cidrs` did not parse.
    #[error("ingest.graphite_templates: {0}")]
    Templates(String),
    /// The switch registry lacks a source's switch.
    #[error("no kill switch registered for ingest source {0:?}")]
    MissingSwitch(&'static str),
    /// A listen address did not parse.
    #[error("ingest.{key}: {addr:?} is not host:port, \"\" or \"off\"")]
    BadListenAddr {
        /// The config key.
        key: &'static str,
        /// The value.
        addr: String,
    },
    /// A listener could not bind.
    #[error("cannot listen on {addr} for {listener}: {source}")]
    Bind {
        /// The source name.
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start an ingest thread: {0}")]
    Spawn(std::io::Error),
}
