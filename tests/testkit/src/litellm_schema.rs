//! LiteLLM's schema, built from LiteLLM's published migrations into a template database, then
//! completed with what the `litellm` release the tests run declares in its `schema.prisma` and
//! those migrations lack (see [`crate::prisma_schema`]).
//!
//! `ENTRA_SYNC_TEST_LITELLM_EXTRAS=<version>` builds the template from another
//! `litellm-proxy-extras` release's migrations instead, alone, as that release's LiteLLM applies
//! them (`.ci/run` runs the store's tests so on the oldest supported one).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::postgres;

/// The `litellm-proxy-extras` release whose migrations define the schema under test by default:
/// the newest published.
pub const LITELLM_PROXY_EXTRAS_VERSION: &str = "0.4.110";

/// The `litellm` release whose `schema.prisma` completes the default schema, and whose proxy the
/// proxy tests run (tests/litellm-proxy).
pub const LITELLM_VERSION: &str = "1.110.2";

/// The variable that selects another `litellm-proxy-extras` release's schema.
pub const EXTRAS_VARIABLE: &str = "ENTRA_SYNC_TEST_LITELLM_EXTRAS";

/// The LiteLLM schema the tests' databases hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LiteLlmSchema {
    /// [`LITELLM_PROXY_EXTRAS_VERSION`]'s migrations completed by [`LITELLM_VERSION`]'s
    /// `schema.prisma`: what the proxy tests need.
    Pinned,
    /// Another `litellm-proxy-extras` release's migrations, alone.
    Extras(String),
}

impl LiteLlmSchema {
    /// The schema this process's tests use: [`EXTRAS_VARIABLE`] when it names a release other
    /// than the pinned one, else the pinned schema. Panics on a value that is not a version.
    pub fn under_test() -> &'static Self {
        static SCHEMA: OnceLock<LiteLlmSchema> = OnceLock::new();
        SCHEMA.get_or_init(|| match std::env::var(EXTRAS_VARIABLE) {
            Ok(version) if !version.is_empty() && version != LITELLM_PROXY_EXTRAS_VERSION => {
                let version_like = version
                    .chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase() || c == '.');
                assert!(
                    version_like && version.starts_with(|c: char| c.is_ascii_digit()),
                    "{EXTRAS_VARIABLE}={version:?} is not a litellm-proxy-extras version (like 0.4.100)"
                );
                LiteLlmSchema::Extras(version)
            }
            _ => LiteLlmSchema::Pinned,
        })
    }

    /// The `litellm-proxy-extras` release whose migrations make the schema.
    pub fn extras_version(&self) -> &str {
        match self {
            Self::Pinned => LITELLM_PROXY_EXTRAS_VERSION,
            Self::Extras(version) => version,
        }
    }

    /// How it is made, for a reader: `litellm-proxy-extras 0.4.110, completed by litellm 1.110.2`.
    pub fn describe(&self) -> String {
        match self {
            Self::Pinned => format!(
                "litellm-proxy-extras {LITELLM_PROXY_EXTRAS_VERSION}, completed by litellm {LITELLM_VERSION}'s schema.prisma"
            ),
            Self::Extras(version) => format!("litellm-proxy-extras {version}"),
        }
    }

    /// The template database's name: one per schema.
    fn template_name(&self) -> String {
        match self {
            Self::Pinned => format!(
                "entra_sync_template_litellm_{}_schema_{}",
                LITELLM_PROXY_EXTRAS_VERSION.replace('.', "_"),
                LITELLM_VERSION.replace('.', "_")
            ),
            Self::Extras(version) => {
                format!(
                    "entra_sync_template_litellm_extras_{}",
                    version.replace('.', "_")
                )
            }
        }
    }
}

/// Returns the template database, building it first if this machine has none yet. Safe to call
/// from many test processes at once: a file lock lets one of them build while the others wait.
pub fn template_database() -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let schema = LiteLlmSchema::under_test();
        let name = schema.template_name();
        if postgres::database_exists(&name) {
            return name;
        }
        let cache = cache_dir(schema.extras_version());
        fs::create_dir_all(&cache).expect("cannot create the wheel cache under target/");
        let lock = File::create(cache.join(".lock")).expect("cannot create the cache lock file");
        lock.lock().expect("cannot lock the wheel cache");
        if !postgres::database_exists(&name) {
            let migrations = download_migrations(&cache, schema.extras_version());
            let completion = match schema {
                LiteLlmSchema::Pinned => Some(download_schema_prisma(&cache)),
                LiteLlmSchema::Extras(_) => None,
            };
            build_template(&name, &migrations, completion.as_deref());
        }
        name
    })
}

/// The workspace's target folder (`CARGO_TARGET_DIR` when set).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn cache_dir(extras_version: &str) -> PathBuf {
    target_dir()
        .join("litellm-proxy-extras")
        .join(extras_version)
}

/// Downloads the `litellm` wheel (once) and keeps its `litellm/proxy/schema.prisma`.
fn download_schema_prisma(cache: &Path) -> PathBuf {
    let schema = cache.join(format!("schema-litellm-{LITELLM_VERSION}.prisma"));
    if schema.is_file() {
        return schema;
    }
    let wheels = cache.join("litellm-wheel");
    pip_download(&format!("litellm=={LITELLM_VERSION}"), &wheels);
    let wheel = find_wheel(&wheels, "litellm-");
    let extract = "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read('litellm/proxy/schema.prisma'))";
    let out = Command::new("python3")
        .args(["-c", extract])
        .arg(&wheel)
        .output()
        .expect("python3 could not be run to read the litellm wheel");
    if !out.status.success() {
        panic!(
            "cannot read schema.prisma from {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let staging = schema.with_extension("partial");
    fs::write(&staging, &out.stdout).expect("cannot write schema.prisma under target/");
    fs::rename(&staging, &schema).expect("cannot move schema.prisma into place");
    schema
}

/// `pip download` of one wheel, without its dependencies.
fn pip_download(requirement: &str, into: &Path) {
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
        .arg(into)
        .arg(requirement)
        .output()
        .expect("python3 could not be run: install Python 3 with pip to fetch LiteLLM's schema");
    if !out.status.success() {
        panic!(
            "pip could not download {requirement} (is PyPI reachable?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

fn find_wheel(folder: &Path, prefix: &str) -> PathBuf {
    fs::read_dir(folder)
        .expect("cannot read the wheel folder")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.extension().is_some_and(|ext| ext == "whl")
                && path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(prefix))
        })
        .expect("pip reported success but left no wheel")
}

/// Downloads and unpacks the wheel (once), returning its `migrations` folder.
fn download_migrations(cache: &Path, extras_version: &str) -> PathBuf {
    let unpacked = cache.join("unpacked");
    let migrations = unpacked.join("litellm_proxy_extras").join("migrations");
    if migrations.is_dir() {
        return migrations;
    }
    let wheels = cache.join("wheel");
    pip_download(&format!("litellm-proxy-extras=={extras_version}"), &wheels);
    let wheel = find_wheel(&wheels, "litellm_proxy_extras-");
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

/// Applies every migration, in sorted folder order, then what `schema.prisma` adds (when given),
/// to a scratch database, then renames it to the template's name so that no process ever sees a
/// half-built template.
fn build_template(name: &str, migrations: &Path, schema: Option<&Path>) {
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
    if let Some(schema) = schema {
        let schema_text = fs::read_to_string(schema).expect("cannot read schema.prisma");
        let completion = schema.with_extension("sql");
        fs::write(
            &completion,
            crate::prisma_schema::statements(&schema_text).join("\n"),
        )
        .expect("cannot write the schema completion under target/");
        postgres::run_file(&building, &completion);
    }
    postgres::admin(&format!(
        "alter database \"{building}\" rename to \"{name}\""
    ));
}
