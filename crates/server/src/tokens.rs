//! API tokens: random, shown once, stored hashed in `<data-dir>/tokens.json`.
//!
//! A token is `rst_<scope>_<64 hex digits>` (32 random bytes from the operating system). Only
//! its SHA-256 is stored: tokens are high-entropy, so a fast hash is enough (no password
//! stretching needed), and lookups compare digests in constant time (`subtle`).
//!
//! Scopes: `ingest` (robot plane only: cannot read or manage), `read` (human plane reads),
//! `admin` (everything, including switches, compaction, snapshots).
//!
//! File format (a contract; `version` bumps on change):
//! ```json
//! {"version":1,"tokens":[{"name":"ci","scope":"read","hash":"<sha256 hex>","created_at_ms":1763700000000}]}
//! ```
//!
//! Concurrency: the CLI (`roaster token create`) and a running server may both write the file.
//! Every read-modify-write holds an exclusive advisory lock on `tokens.json.lock`, and the file
//! is replaced atomically (write `tokens.json.tmp`, fsync, rename, fsync the directory), so
//! readers never see a torn file and no writer loses another's token. A running server checks
//! the file's modification time (and length) on each authentication and reloads it when it
//! changed, so a token created offline works at once, without a restart. That check is one
//! `stat` per request, done inline on the request path (cheaper than a hop to a blocking pool).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The token file's name inside the data directory.
pub const TOKENS_FILE: &str = "tokens.json";
const FORMAT_VERSION: u32 = 1;
/// Name given to the token set by `ROASTER_ADMIN_TOKEN`.
pub const ENV_ADMIN_NAME: &str = "admin-from-env";
/// Name given to the admin token generated at first start.
pub const FIRST_ADMIN_NAME: &str = "first-admin";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Robot plane ingest only.
    Ingest,
    /// Human plane reads.
    Read,
    /// Everything.
    Admin,
}

impl Scope {
    /// The scope's name as written in tokens and files.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may use the human plane's read endpoints.
    pub fn can_read(self) -> bool {
        matches!(self, Scope::Read | Scope::Admin)
    }

    /// Whether a token of this scope may change state (switches, compaction, snapshots).
    pub fn can_admin(self) -> bool {
        self == Scope::Admin
    }

    /// Whether a token of this scope may send data to the robot plane. Admin may too, so one
    /// token is enough for a quick start; read may not.
    pub fn can_ingest(self) -> bool {
        matches!(self, Scope::Ingest | Scope::Admin)
    }
}

impl std::str::FromStr for Scope {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Scope, TokenError> {
        match s {
            "ingest" => Ok(Scope::Ingest),
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(TokenError::BadScope(other.to_owned())),
        }
    }
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read, written or locked.
    #[error("token file {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The token file is not valid JSON of the expected shape.
    #[error("token file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// An unknown scope name.
    #[error("unknown scope {0:?} (expected ingest, read or admin)")]
    BadScope(String),
    /// A token name was empty or too long.
    #[error("token name must be 1 to 128 characters")]
    BadName,
    /// A token with this name already exists.
    #[error("a token named {0:?} already exists")]
    Duplicate(String),
    /// A supplied token (from `ROASTER_ADMIN_TOKEN`) was empty.
    #[error("token is empty")]
    Empty,
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

/// One stored token: no secret, only its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Human-chosen name, unique in the file.
    pub name: String,
    /// What the token may do.
    pub scope: Scope,
    /// SHA-256 of the token, lowercase hex.
    pub hash: String,
    /// When it was created, UTC milliseconds.
    pub created_at_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

impl TokenFile {
    /// Adds an admin token named `base` (or `base-2`, `base-3`, … when taken).
    fn push_admin(&mut self, base: &str, hash: String, now_ms: i64) {
        let mut name = base.to_owned();
        let mut n = 1;
        while self.tokens.iter().any(|t| t.name == name) {
            n += 1;
            name = format!("{base}-{n}");
        }
        self.tokens.push(TokenRecord {
            name,
            scope: Scope::Admin,
            hash,
            created_at_ms: now_ms,
        });
    }
}

/// A parsed record ready for constant-time lookups.
#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    scope: Scope,
    name: String,
}

/// File identity used to notice changes made by another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The token file of one data directory, cached in memory and reloaded when the file changes.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    lock_path: PathBuf,
    cache: Mutex<(Option<Stamp>, Arc<Vec<Entry>>)>,
}

/// A freshly created token: the secret is in `token` and exists nowhere else.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The secret, `rst_<scope>_<hex>`; show it once.
    pub token: String,
    /// The stored record.
    pub record: TokenRecord,
}

impl TokenStore {
    /// The store of `data_dir` (the file need not exist yet; the directory is created).
    pub fn open(data_dir: &Path) -> Result<TokenStore, TokenError> {
        std::fs::create_dir_all(data_dir).map_err(|source| TokenError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let store = TokenStore {
            path: data_dir.join(TOKENS_FILE),
            lock_path: data_dir.join(format!("{TOKENS_FILE}.lock")),
            cache: Mutex::new((None, Arc::new(Vec::new()))),
        };
        store.refresh()?;
        Ok(store)
    }

    /// The scope of `token`, or `None` when it is unknown. Reloads the file first when it
    /// changed on disk; if the reload fails, the last good contents are used (and logged).
    pub fn authenticate(&self, token: &str) -> Option<Scope> {
        if let Err(e) = self.refresh() {
            tracing::warn!(error = %e, "token file reload failed; using the previous contents");
        }
        let entries = self.cache.lock().1.clone();
        let digest = digest(token);
        let mut found: Option<Scope> = None;
        // Look at every entry so the time taken does not depend on which one matched.
        for e in entries.iter() {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some(found.map_or(e.scope, |s| s.max(e.scope)));
            }
        }
        found
    }

    /// The name and scope of `token` (for who-did-it fields such as an event's `source`), or
    /// `None` when it is unknown. When two records share a digest, the broadest scope wins
    /// and the name is that record's. Reloads the file like [`TokenStore::authenticate`].
    pub fn identify(&self, token: &str) -> Option<(String, Scope)> {
        if let Err(e) = self.refresh() {
            tracing::warn!(error = %e, "token file reload failed; using the previous contents");
        }
        let entries = self.cache.lock().1.clone();
        let digest = digest(token);
        let mut found: Option<&Entry> = None;
        for e in entries.iter() {
            if bool::from(e.digest.ct_eq(&digest)) && found.is_none_or(|f| e.scope > f.scope) {
                found = Some(e);
            }
        }
        found.map(|e| (e.name.clone(), e.scope))
    }

    /// The stored records (no secrets), in file order.
    pub fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        Ok(self.read_file()?.tokens)
    }

    /// Creates a token named `name` with `scope`, stores its digest and returns the secret.
    pub fn create(&self, name: &str, scope: Scope, now_ms: i64) -> Result<NewToken, TokenError> {
        if name.is_empty() || name.chars().count() > 128 {
            return Err(TokenError::BadName);
        }
        let token = generate(scope)?;
        let record = TokenRecord {
            name: name.to_owned(),
            scope,
            hash: hex::encode(digest(&token)),
            created_at_ms: now_ms,
        };
        self.modify(|file| {
            if file.tokens.iter().any(|t| t.name == record.name) {
                return Err(TokenError::Duplicate(record.name.clone()));
            }
            file.tokens.push(record.clone());
            Ok(true)
        })?;
        Ok(NewToken { token, record })
    }

    /// Makes sure `token` is stored as an admin token (idempotent: nothing changes when it is
    /// already there). Used for `ROASTER_ADMIN_TOKEN`.
    pub fn ensure_admin(&self, token: &str, now_ms: i64) -> Result<(), TokenError> {
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        let hash = hex::encode(digest(token));
        self.modify(|file| {
            if let Some(t) = file.tokens.iter_mut().find(|t| t.hash == hash) {
                if t.scope == Scope::Admin {
                    return Ok(false);
                }
                t.scope = Scope::Admin;
                return Ok(true);
            }
            file.push_admin(ENV_ADMIN_NAME, hash.clone(), now_ms);
            Ok(true)
        })?;
        Ok(())
    }

    /// When no admin token exists, creates one and returns its secret (to be shown once);
    /// otherwise returns `None`.
    pub fn ensure_first_admin(&self, now_ms: i64) -> Result<Option<String>, TokenError> {
        let token = generate(Scope::Admin)?;
        let hash = hex::encode(digest(&token));
        let created = self.modify(|file| {
            if file.tokens.iter().any(|t| t.scope == Scope::Admin) {
                return Ok(false);
            }
            file.push_admin(FIRST_ADMIN_NAME, hash.clone(), now_ms);
            Ok(true)
        })?;
        Ok(created.then_some(token))
    }

    fn stamp(&self) -> Result<Option<Stamp>, TokenError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(Some(Stamp {
                modified: m.modified().ok(),
                len: m.len(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TokenError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Reloads the cache when the file's stamp changed.
    fn refresh(&self) -> Result<(), TokenError> {
        let stamp = self.stamp()?;
        if self.cache.lock().0 == stamp && stamp.is_some() {
            return Ok(());
        }
        let file = self.read_file()?;
        let entries = file
            .tokens
            .iter()
            .filter_map(|t| {
                let mut d = [0u8; 32];
                hex::decode_to_slice(&t.hash, &mut d).ok()?;
                Some(Entry {
                    digest: d,
                    scope: t.scope,
                    name: t.name.clone(),
                })
            })
            .collect();
        *self.cache.lock() = (stamp, Arc::new(entries));
        Ok(())
    }

    fn read_file(&self) -> Result<TokenFile, TokenError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TokenFile {
                    version: FORMAT_VERSION,
                    tokens: Vec::new(),
                });
            }
            Err(source) => {
                return Err(TokenError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let file: TokenFile = serde_json::from_slice(&bytes).map_err(|e| TokenError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if file.version != FORMAT_VERSION {
            return Err(TokenError::Corrupt {
                path: self.path.clone(),
                reason: format!("unsupported version {}", file.version),
            });
        }
        Ok(file)
    }

    /// Read-modify-write under the lock file; `change` returns whether it changed anything.
    fn modify(
        &self,
        change: impl FnOnce(&mut TokenFile) -> Result<bool, TokenError>,
    ) -> Result<bool, TokenError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TokenError::Io { path, source }
        };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(io(&self.lock_path))?;
        lock.lock().map_err(io(&self.lock_path))?;
        let mut file = self.read_file()?;
        let changed = change(&mut file)?;
        if changed {
            let text = serde_json::to_vec_pretty(&file).map_err(|e| TokenError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            write_atomic(&self.path, &text).map_err(io(&self.path))?;
        }
        drop(lock);
        self.refresh()?;
        Ok(changed)
    }
}

impl ingest::TokenCheck for TokenStore {
    fn allows_ingest(&self, bearer_token: &str) -> bool {
        self.authenticate(bearer_token).is_some_and(Scope::can_ingest)
    }
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Directory fsync makes the rename itself durable; not all platforms allow opening a
        // directory, and failing to do so is not worth failing the write.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn generate(scope: Scope) -> Result<String, TokenError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(format!("rst_{}_{}", scope.as_str(), hex::encode(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_tokens_authenticate_with_their_scope() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let cases = [
            ("robot", Scope::Ingest),
            ("grafana", Scope::Read),
            ("ops", Scope::Admin),
        ];
        for (name, scope) in cases {
            let t = store.create(name, scope, 1).unwrap();
            assert!(t.token.starts_with(&format!("rst_{}_", scope.as_str())));
            assert_eq!(t.token.len(), 4 + scope.as_str().len() + 1 + 64);
            assert_eq!(store.authenticate(&t.token), Some(scope), "{name}");
        }
        assert_eq!(store.authenticate("rst_admin_00"), None);
        assert_eq!(store.authenticate(""), None);
        // The secret is not stored anywhere.
        let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!text.contains("rst_"));
    }

    #[test]
    fn scope_table() {
        // (scope, read, admin, ingest)
        let table = [
            (Scope::Ingest, false, false, true),
            (Scope::Read, true, false, false),
            (Scope::Admin, true, true, true),
        ];
        for (s, r, a, i) in table {
            assert_eq!((s.can_read(), s.can_admin(), s.can_ingest()), (r, a, i), "{s:?}");
        }
    }

    #[test]
    fn duplicate_names_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        store.create("a", Scope::Read, 1).unwrap();
        assert!(matches!(
            store.create("a", Scope::Admin, 1),
            Err(TokenError::Duplicate(_))
        ));
        assert!(matches!(
            store.create("", Scope::Admin, 1),
            Err(TokenError::BadName)
        ));
    }

    #[test]
    fn env_admin_token_is_idempotent_and_first_admin_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        store.ensure_admin("s3cret-admin", 1).unwrap();
        store.ensure_admin("s3cret-admin", 2).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(store.authenticate("s3cret-admin"), Some(Scope::Admin));
        // An admin exists, so nothing is generated.
        assert_eq!(store.ensure_first_admin(3).unwrap(), None);

        let dir2 = tempfile::tempdir().unwrap();
        let store2 = TokenStore::open(dir2.path()).unwrap();
        let first = store2.ensure_first_admin(1).unwrap().unwrap();
        assert_eq!(store2.authenticate(&first), Some(Scope::Admin));
        assert_eq!(store2.ensure_first_admin(2).unwrap(), None);
    }

    #[test]
    fn a_second_store_sees_tokens_written_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let server_view = TokenStore::open(dir.path()).unwrap();
        let cli_view = TokenStore::open(dir.path()).unwrap();
        let t = cli_view.create("late", Scope::Read, 1).unwrap();
        assert_eq!(server_view.authenticate(&t.token), Some(Scope::Read));
    }

    #[test]
    fn corrupt_file_is_reported_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKENS_FILE), b"{not json").unwrap();
        assert!(matches!(
            TokenStore::open(dir.path()),
            Err(TokenError::Corrupt { .. })
        ));
    }
}
