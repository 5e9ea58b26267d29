//! Kill switches: named `open | paused | blackholed` states for ingest sources and
//! background jobs, persisted in a JSON file so they survive restarts.
//!
//! File format (`switches.json` in the data dir), version 1:
//! `{"version": 1, "switches": {"graphite-tcp": "open", "compaction": "paused"}}`. Writes are atomic (temp file, fsync,
//! rename, fsync of the directory). Names in the file that are not registered are kept, so a
//! downgrade does not forget a job's switch; registered names missing from the file are
//! `open`.
//!
//! Hot paths read a switch through [`SwitchHandle`] (one atomic load); changes bump a
//! version on a `watch` channel so paused readers resume promptly.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use model::telemetry::Exposition;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The state of one switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchState {
    /// Working normally.
    Open,
    /// Not working: HTTP sources answer 503, plaintext sockets are not read, jobs wait.
    Paused,
    /// Accepting and discarding: data is read, counted (`blackholed`) and dropped.
    Blackholed,
}

impl SwitchState {
    /// `"open"`, `"paused"` or `"blackholed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SwitchState::Open => "open",
            SwitchState::Paused => "paused",
            SwitchState::Blackholed => "blackholed",
        }
    }

    const ALL: [SwitchState; 3] = [SwitchState::Open, SwitchState::Paused, SwitchState::Blackholed];

    const fn to_u8(self) -> u8 {
        match self {
            SwitchState::Open => 0,
            SwitchState::Paused => 1,
            SwitchState::Blackholed => 2,
        }
    }

    const fn from_u8(v: u8) -> SwitchState {
        match v {
            1 => SwitchState::Paused,
            2 => SwitchState::Blackholed,
            _ => SwitchState::Open,
        }
    }
}

impl std::str::FromStr for SwitchState {
    type Err = SwitchError;

    fn from_str(s: &str) -> Result<SwitchState, SwitchError> {
        SwitchState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| SwitchError::BadState(s.to_owned()))
    }
}

/// Why a switch operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// No switch has this name.
    #[error("unknown switch {0:?}")]
    Unknown(String),
    /// The state is not `open`, `paused` or `blackholed`.
    #[error("unknown switch state {0:?}")]
    BadState(String),
    /// The state file could not be read or written.
    #[error("switch file {path}: {source}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The state file is not a JSON object of names to states.
    #[error("switch file {path} is corrupt: {detail}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What the JSON parser said.
        detail: String,
    },
}

/// The version of the switch file format.
const FILE_VERSION: u32 = 1;

/// The switch file as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchFile {
    version: u32,
    switches: BTreeMap<String, SwitchState>,
}

/// A cheap, cloneable reader of one switch, for hot paths.
#[derive(Debug, Clone)]
pub struct SwitchHandle(Arc<AtomicU8>);

impl SwitchHandle {
    /// The current state.
    pub fn state(&self) -> SwitchState {
        SwitchState::from_u8(self.0.load(Ordering::Acquire))
    }
}

/// The registry of switches.
#[derive(Debug)]
pub struct Switches {
    path: PathBuf,
    /// Registered switches, in registration order.
    states: Vec<(String, Arc<AtomicU8>)>,
    /// Serialises writers of the file; holds unregistered names found in the file.
    write: Mutex<BTreeMap<String, SwitchState>>,
    version: tokio::sync::watch::Sender<u64>,
}

impl Switches {
    /// Loads the state file at `path` (missing = all open) and registers `names`.
    pub fn open(path: &Path, names: &[&str]) -> Result<Arc<Switches>, SwitchError> {
        let io = |source| SwitchError::Io {
            path: path.to_owned(),
            source,
        };
        let on_disk: BTreeMap<String, SwitchState> = match std::fs::read(path) {
            Ok(bytes) => {
                let file: SwitchFile = serde_json::from_slice(&bytes).map_err(|e| SwitchError::Corrupt {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
                if file.version != FILE_VERSION {
                    return Err(SwitchError::Corrupt {
                        path: path.to_owned(),
                        detail: format!("unsupported version {}", file.version),
                    });
                }
                file.switches
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        let mut states: Vec<(String, Arc<AtomicU8>)> = Vec::with_capacity(names.len());
        for name in names {
            if states.iter().any(|(n, _)| n == name) {
                continue;
            }
            let st = on_disk.get(*name).copied().unwrap_or(SwitchState::Open);
            states.push(((*name).to_owned(), Arc::new(AtomicU8::new(st.to_u8()))));
        }
        let unregistered = on_disk
            .into_iter()
            .filter(|(n, _)| !names.contains(&n.as_str()))
            .collect();
        let (version, _) = tokio::sync::watch::channel(0);
        Ok(Arc::new(Switches {
            path: path.to_owned(),
            states,
            write: Mutex::new(unregistered),
            version,
        }))
    }

    fn slot(&self, name: &str) -> Option<&Arc<AtomicU8>> {
        self.states.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    /// The state of a switch, `None` when no switch has this name.
    pub fn get(&self, name: &str) -> Option<SwitchState> {
        self.slot(name)
            .map(|s| SwitchState::from_u8(s.load(Ordering::Acquire)))
    }

    /// A hot-path reader of one switch.
    pub fn handle(&self, name: &str) -> Option<SwitchHandle> {
        self.slot(name).map(|s| SwitchHandle(Arc::clone(s)))
    }

    /// Sets a switch and persists all states; returns the previous state. The new state is
    /// in effect only once it is on disk.
    pub fn set(&self, name: &str, state: SwitchState) -> Result<SwitchState, SwitchError> {
        let slot = self
            .slot(name)
            .ok_or_else(|| SwitchError::Unknown(name.to_owned()))?;
        let unregistered = self.write.lock();
        let previous = SwitchState::from_u8(slot.load(Ordering::Acquire));
        let mut all = unregistered.clone();
        for (n, s) in &self.states {
            all.insert(n.clone(), SwitchState::from_u8(s.load(Ordering::Acquire)));
        }
        all.insert(name.to_owned(), state);
        self.persist(&all)?;
        slot.store(state.to_u8(), Ordering::Release);
        drop(unregistered);
        self.version.send_modify(|v| *v = v.wrapping_add(1));
        tracing::info!(
            switch = name,
            from = previous.as_str(),
            to = state.as_str(),
            "kill switch changed"
        );
        Ok(previous)
    }

    fn persist(&self, all: &BTreeMap<String, SwitchState>) -> Result<(), SwitchError> {
        let io = |source| SwitchError::Io {
            path: self.path.clone(),
            source,
        };
        let file = SwitchFile {
            version: FILE_VERSION,
            switches: all.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(|e| SwitchError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        json.push(b'\n');
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    /// Every registered switch and its state, in registration order.
    pub fn list(&self) -> Vec<(String, SwitchState)> {
        self.states
            .iter()
            .map(|(n, s)| (n.clone(), SwitchState::from_u8(s.load(Ordering::Acquire))))
            .collect()
    }

    /// A receiver whose value changes whenever any switch changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// `roaster_switch_state{name,state}`: 1 for the current state, 0 for the others.
    pub fn render_metrics(&self, out: &mut Exposition) {
        out.family(
            SWITCH_STATE,
            "gauge",
            "Kill switch states: 1 for the current state of each switch.",
        );
        for (name, st) in self.list() {
            for candidate in SwitchState::ALL {
                let v = if candidate == st { 1.0 } else { 0.0 };
                out.sample(SWITCH_STATE, &[("name", &name), ("state", candidate.as_str())], v);
            }
        }
    }
}

/// Metric name of the switch states.
pub const SWITCH_STATE: &str = "roaster_switch_state";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopen_and_keeps_unknown_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switches.json");
        let s = Switches::open(&path, &["graphite-tcp", "compaction"]).unwrap();
        let mut rx = s.subscribe();
        assert_eq!(s.get("graphite-tcp"), Some(SwitchState::Open));
        assert_eq!(
            s.set("compaction", SwitchState::Paused).unwrap(),
            SwitchState::Open
        );
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(matches!(
            s.set("nope", SwitchState::Paused),
            Err(SwitchError::Unknown(_))
        ));
        drop(s);

        let s = Switches::open(&path, &["graphite-tcp"]).unwrap();
        s.set("graphite-tcp", SwitchState::Blackholed).unwrap();
        let s = Switches::open(&path, &["graphite-tcp", "compaction"]).unwrap();
        assert_eq!(
            s.list(),
            vec![
                ("graphite-tcp".into(), SwitchState::Blackholed),
                ("compaction".into(), SwitchState::Paused)
            ]
        );
        let h = s.handle("graphite-tcp").unwrap();
        s.set("graphite-tcp", SwitchState::Open).unwrap();
        assert_eq!(h.state(), SwitchState::Open);
        let mut e = Exposition::new();
        s.render_metrics(&mut e);
        let text = e.finish();
        assert!(
            text.contains("roaster_switch_state{name=\"compaction\",state=\"paused\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn states_parse_and_corrupt_file_is_an_error() {
        assert_eq!("paused".parse::<SwitchState>().unwrap(), SwitchState::Paused);
        assert!("closed".parse::<SwitchState>().is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switches.json");
        std::fs::write(&path, br#"{"version": 1, "switches": {"a": "shut"}}"#).unwrap();
        assert!(matches!(
            Switches::open(&path, &["a"]),
            Err(SwitchError::Corrupt { .. })
        ));
    }
}
