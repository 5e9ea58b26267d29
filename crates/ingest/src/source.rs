//! [`Source`]: the ingest sources, each with its own kill switch, counters and rejections.

use std::fmt;
use std::str::FromStr;

/// Where a point came from. The string forms are the kill-switch names and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Graphite plaintext over TCP.
    GraphiteTcp,
    /// Graphite plaintext over UDP.
    GraphiteUdp,
    /// StatsD over UDP.
    StatsdUdp,
    /// StatsD over TCP.
    StatsdTcp,
    /// Prometheus remote-write over HTTP.
    RemoteWrite,
    /// InfluxDB line protocol over HTTP.
    Influx,
    /// Roaster's JSON shape over HTTP.
    Json,
}

/// The kill-switch names of every ingest source, for [`crate::Switches::open`].
pub const SOURCE_NAMES: [&str; 7] = [
    "graphite-tcp",
    "graphite-udp",
    "statsd-udp",
    "statsd-tcp",
    "remote-write",
    "influx",
    "json",
];

impl Source {
    /// Every source, in a stable order (the order of [`SOURCE_NAMES`]).
    pub const ALL: [Source; 7] = [
        Source::GraphiteTcp,
        Source::GraphiteUdp,
        Source::StatsdUdp,
        Source::StatsdTcp,
        Source::RemoteWrite,
        Source::Influx,
        Source::Json,
    ];

    /// The name used for switches, metric labels and the rejections API.
    pub const fn as_str(self) -> &'static str {
        SOURCE_NAMES[self.index()]
    }

    /// A dense index, for per-source arrays.
    pub(crate) const fn index(self) -> usize {
        match self {
            Source::GraphiteTcp => 0,
            Source::GraphiteUdp => 1,
            Source::StatsdUdp => 2,
            Source::StatsdTcp => 3,
            Source::RemoteWrite => 4,
            Source::Influx => 5,
            Source::Json => 6,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of [`SOURCE_NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ingest source {0:?}")]
pub struct UnknownSource(pub String);

impl FromStr for Source {
    type Err = UnknownSource;

    fn from_str(s: &str) -> Result<Source, UnknownSource> {
        Source::ALL
            .into_iter()
            .find(|src| src.as_str() == s)
            .ok_or_else(|| UnknownSource(s.to_owned()))
    }
}

impl serde::Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (i, s) in Source::ALL.into_iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(s.as_str().parse::<Source>(), Ok(s));
        }
        assert!("graphite".parse::<Source>().is_err());
    }
}
