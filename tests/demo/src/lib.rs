//! The demo (`cargo run -p entra-sync-demo`): graph-sim plays an Entra tenant, LiteLLM's database
//! is built from LiteLLM's published migrations, the real `entra-sync-webhook` and
//! `entra-sync-worker run` run as processes, and a short story of changes in Entra is played while
//! LiteLLM's teams and members are printed after each step. Everything it made goes at the end.
//!
//! With `--with-proxy`, LiteLLM's real proxy runs on the same database, and the member removed in
//! the story has made a key through it: the demo prints the proxy's answer to that key before and
//! after the change in Entra, and how long after the change it was refused.
//!
//! The same story runs as a test (`tests/story.rs`), so the demo keeps working.

pub mod access;
pub mod binaries;
pub mod story;
pub mod tenant;
pub mod world;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::binaries::Binaries;
use crate::world::Demo;

/// What the demo runs besides graph-sim, the database, the webhook and the worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// LiteLLM's proxy on the demo's database (`--with-proxy`), and the worker evicting from its
    /// cache through LiteLLM's Redis.
    pub with_proxy: bool,
}

/// Starts everything, plays the story, and cleans up (also when the returned future is dropped,
/// as on Ctrl-C). The processes' logs go to `logs`. Returns how long each step took to appear.
pub async fn run(
    binaries: &Binaries,
    run_id: &str,
    logs: &Path,
    out: &mut dyn Write,
) -> Result<Vec<Duration>> {
    let played = run_with(binaries, run_id, logs, out, Options::default()).await?;
    Ok(played.took)
}

/// [`run`], with LiteLLM's proxy when `options` say so.
pub async fn run_with(
    binaries: &Binaries,
    run_id: &str,
    logs: &Path,
    out: &mut dyn Write,
    options: Options,
) -> Result<story::Played> {
    let mut demo = Demo::start(binaries, run_id, logs, options).await?;
    let config = demo.sim.config();
    writeln!(
        out,
        "graph-sim      {}  tenant {}, {} people, groups Engineering and Research",
        demo.sim.url(),
        config.tenant_id,
        tenant::PEOPLE.len()
    )?;
    writeln!(
        out,
        "LiteLLM's db   {}  (litellm-proxy-extras {}, then entra-sync-migrate up)",
        demo.db.name(),
        entra_sync_testkit::LiteLlmSchema::under_test().extras_version()
    )?;
    writeln!(out, "Redis stream   {}", demo.stream.key())?;
    writeln!(out, "webhook        {}", demo.webhook_url)?;
    writeln!(out, "worker         {} (health)", demo.worker_health_url)?;
    // Declared after `demo`, so dropped (stopped) before the database goes.
    let proxy = match &demo.litellm_redis_namespace {
        Some(namespace) => {
            let started = std::time::Instant::now();
            let proxy = access::start_proxy(demo.db.url(), namespace).await;
            writeln!(
                out,
                "LiteLLM proxy  {}  (litellm {}, ready after {:.0} s; coordination Redis namespace {namespace})",
                proxy.url(),
                entra_sync_testkit::LITELLM_VERSION,
                started.elapsed().as_secs_f64()
            )?;
            Some(proxy)
        }
        None => None,
    };
    story::play(&mut demo, proxy.as_ref(), out).await
}
