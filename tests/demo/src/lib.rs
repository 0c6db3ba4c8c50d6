//! The demo (`cargo run -p entra-sync-demo`): graph-sim plays an Entra tenant, LiteLLM's database
//! is built from LiteLLM's published migrations, the real `entra-sync-webhook` and
//! `entra-sync-worker run` run as processes, and a short story of changes in Entra is played while
//! LiteLLM's teams and members are printed after each step. Everything it made goes at the end.
//!
//! The same story runs as a test (`tests/story.rs`), so the demo keeps working.

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

/// Starts everything, plays the story, and cleans up (also when the returned future is dropped,
/// as on Ctrl-C). The processes' logs go to `logs`. Returns how long each step took to appear.
pub async fn run(
    binaries: &Binaries,
    run_id: &str,
    logs: &Path,
    out: &mut dyn Write,
) -> Result<Vec<Duration>> {
    let mut demo = Demo::start(binaries, run_id, logs).await?;
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
        entra_sync_testkit::LITELLM_PROXY_EXTRAS_VERSION
    )?;
    writeln!(out, "Redis stream   {}", demo.stream.key())?;
    writeln!(out, "webhook        {}", demo.webhook_url)?;
    writeln!(out, "worker         {} (health)", demo.worker_health_url)?;
    story::play(&mut demo, out).await
}
