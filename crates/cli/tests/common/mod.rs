//! Helpers the binary's end-to-end tests share.

use std::path::Path;
use std::process::Command;

/// Creates a token with `roaster token create` against `data_dir` (a running server re-reads
/// the token file, so this works beside it) and returns the printed token.
pub fn create_token(data_dir: &Path, scope: &str, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_roaster"))
        .args(["token", "create", "--scope", scope, "--name", name])
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace()
        .find(|w| w.starts_with("rst_"))
        .unwrap_or_else(|| panic!("no token in {text:?}"))
        .to_string()
}
