//! The servers tests share besides the machine's PostgreSQL and Redis: Redis 6.2, Valkey and
//! PgBouncer in transaction mode. `tests/servers/start` installs them under `target/` and starts
//! them (it leaves alone what already answers); a test that needs one runs it when its server
//! does not answer, so that `cargo test` needs nothing started by hand beforehand.
//!
//! The script runs at most once per test process, and one test process at a time: test binaries
//! and their threads run in parallel, and all of them may find the servers down at once.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The installer, the one place that knows how each server is had.
const SCRIPT: &str = "tests/servers/start";

/// Makes sure `what` answers (`answers` says whether it does), running `tests/servers/start` if it
/// does not. Fails, naming what is missing and how to get it, when it still does not answer.
pub(crate) fn ensure(what: &str, answers: impl Fn() -> bool) {
    if answers() {
        return;
    }
    if let Err(why) = start_all() {
        panic!(
            "{what} does not answer, and {SCRIPT}, which installs and starts it, failed: {why}. \
             Run {SCRIPT} to see why."
        );
    }
    assert!(
        answers(),
        "{what} does not answer, though {SCRIPT} ran (its output is in {}). Run {SCRIPT} to see why.",
        log_path().display()
    );
}

/// Makes sure Debian's `pgbouncer` is installed (for the PgBouncers tests run of their own),
/// running `tests/servers/start`, which installs it, when it is not.
pub(crate) fn ensure_pgbouncer_installed() {
    let installed = || {
        Command::new("pgbouncer")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    ensure("pgbouncer (Debian's package)", installed);
}

/// Runs the script once in this process, under a lock that other test processes share.
fn start_all() -> Result<(), String> {
    static OUTCOME: OnceLock<Result<(), String>> = OnceLock::new();
    OUTCOME.get_or_init(run_script_locked).clone()
}

fn run_script_locked() -> Result<(), String> {
    let root = servers_dir();
    fs::create_dir_all(&root).map_err(|e| format!("cannot create {} ({e})", root.display()))?;
    let lock = File::create(root.join(".lock"))
        .map_err(|e| format!("cannot create the lock file in {} ({e})", root.display()))?;
    // Released when `lock` is dropped, once the servers answer (or the script gave up).
    lock.lock()
        .map_err(|e| format!("cannot lock {} ({e})", root.display()))?;
    let log = File::create(log_path())
        .map_err(|e| format!("cannot create {} ({e})", log_path().display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot open {} twice ({e})", log_path().display()))?;
    // The output goes to a file, not a pipe: the servers it starts outlive it.
    let status = Command::new(workspace().join(SCRIPT))
        .current_dir(workspace())
        .env("CARGO_TARGET_DIR", target_dir())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(|e| format!("it could not be run ({e})"))?;
    if status.success() {
        Ok(())
    } else {
        let output = fs::read_to_string(log_path()).unwrap_or_default();
        Err(format!("{status}: {}", output.trim()))
    }
}

fn workspace() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace.canonicalize().unwrap_or(workspace)
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The script's folder (it installs and runs the servers there).
fn servers_dir() -> PathBuf {
    target_dir().join("test-servers")
}

fn log_path() -> PathBuf {
    servers_dir().join("start.log")
}
