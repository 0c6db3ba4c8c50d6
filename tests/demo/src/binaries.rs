//! The real binaries the demo runs, built by cargo with the demo's own profile and target dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where `entra-sync-webhook`, `entra-sync-worker` and `entra-sync-migrate` are.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The profile's folder under the target dir (`target/debug`), which also takes the logs.
    pub dir: PathBuf,
}

impl Binaries {
    pub fn webhook(&self) -> PathBuf {
        self.dir.join("entra-sync-webhook")
    }

    pub fn worker(&self) -> PathBuf {
        self.dir.join("entra-sync-worker")
    }

    pub fn migrate(&self) -> PathBuf {
        self.dir.join("entra-sync-migrate")
    }
}

/// Builds the webhook, the worker and the migrations with `cargo build` (the cargo that runs the
/// demo, in the profile the demo was built with), so they are never older than the source.
pub fn build() -> Result<Binaries> {
    let dir = profile_dir()?;
    let profile = match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(name) => name.to_owned(),
        None => bail!("cannot tell the cargo profile from {}", dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(&cargo)
        .current_dir(&workspace)
        .args(["build", "--quiet", "--profile", &profile])
        .args(["-p", "webhook", "-p", "worker", "-p", "migration"])
        .status()
        .with_context(|| format!("cannot run {}", Path::new(&cargo).display()))?;
    if !status.success() {
        bail!("cargo could not build the webhook and the worker (see above)");
    }
    let binaries = Binaries { dir };
    for binary in [binaries.webhook(), binaries.worker(), binaries.migrate()] {
        if !binary.is_file() {
            bail!(
                "cargo built, but {} is not there: build the demo without --target",
                binary.display()
            );
        }
    }
    Ok(binaries)
}

/// The folder of the running executable's profile: `target/debug` for the demo itself and for
/// its tests, which run from `target/debug/deps`.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the demo's own executable")?;
    let mut dir = exe
        .parent()
        .context("the demo's executable has no folder")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}
