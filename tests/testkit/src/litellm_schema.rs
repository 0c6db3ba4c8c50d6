//! LiteLLM's schema, built from LiteLLM's published migrations into a template database.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::postgres;

/// The `litellm-proxy-extras` release whose migrations define the schema under test.
pub const LITELLM_PROXY_EXTRAS_VERSION: &str = "0.4.110";

/// The template database's name: one per LiteLLM schema version.
fn template_name() -> String {
    format!(
        "entra_sync_template_litellm_{}",
        LITELLM_PROXY_EXTRAS_VERSION.replace('.', "_")
    )
}

/// Returns the template database, building it first if this machine has none yet. Safe to call
/// from many test processes at once: a file lock lets one of them build while the others wait.
pub fn template_database() -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let name = template_name();
        if postgres::database_exists(&name) {
            return name;
        }
        let cache = cache_dir();
        fs::create_dir_all(&cache).expect("cannot create the wheel cache under target/");
        let lock = File::create(cache.join(".lock")).expect("cannot create the cache lock file");
        lock.lock().expect("cannot lock the wheel cache");
        if !postgres::database_exists(&name) {
            let migrations = download_migrations(&cache);
            build_template(&name, &migrations);
        }
        name
    })
}

fn cache_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target
        .join("litellm-proxy-extras")
        .join(LITELLM_PROXY_EXTRAS_VERSION)
}

/// Downloads and unpacks the wheel (once), returning its `migrations` folder.
fn download_migrations(cache: &Path) -> PathBuf {
    let unpacked = cache.join("unpacked");
    let migrations = unpacked.join("litellm_proxy_extras").join("migrations");
    if migrations.is_dir() {
        return migrations;
    }
    let wheels = cache.join("wheel");
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
        ])
        .arg(&wheels)
        .arg(format!(
            "litellm-proxy-extras=={LITELLM_PROXY_EXTRAS_VERSION}"
        ))
        .output()
        .expect("python3 could not be run: install Python 3 with pip to fetch LiteLLM's schema");
    if !out.status.success() {
        panic!(
            "pip could not download litellm-proxy-extras=={LITELLM_PROXY_EXTRAS_VERSION} (is PyPI reachable?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let wheel = fs::read_dir(&wheels)
        .expect("cannot read the wheel folder")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .expect("pip reported success but left no wheel");
    let staging = cache.join("unpacking");
    let _ = fs::remove_dir_all(&staging);
    let out = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&staging)
        .output()
        .expect("python3 could not be run to unpack the wheel");
    if !out.status.success() {
        panic!(
            "cannot unpack {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let _ = fs::remove_dir_all(&unpacked);
    fs::rename(&staging, &unpacked).expect("cannot move the unpacked wheel into place");
    migrations
}

/// Applies every migration, in sorted folder order, to a scratch database, then renames it to the
/// template's name so that no process ever sees a half-built template.
fn build_template(name: &str, migrations: &Path) {
    let building = format!("{name}_building");
    postgres::admin(&format!(
        "drop database if exists \"{building}\" with (force)"
    ));
    postgres::admin(&format!("create database \"{building}\""));
    let mut folders: Vec<PathBuf> = fs::read_dir(migrations)
        .expect("cannot read LiteLLM's migrations folder")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("migration.sql").is_file())
        .collect();
    folders.sort();
    assert!(
        folders.len() > 100,
        "LiteLLM's wheel holds only {} migrations; the download looks broken",
        folders.len()
    );
    for folder in &folders {
        postgres::run_file(&building, &folder.join("migration.sql"));
    }
    postgres::admin(&format!(
        "alter database \"{building}\" rename to \"{name}\""
    ));
}
