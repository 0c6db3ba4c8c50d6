//! `graph-sim`: runs the simulated Entra tenant and Graph API on a local port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use graph_sim::tenant::TenantFile;
use graph_sim::{GraphSim, SimConfig};
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "graph-sim", version, about)]
struct Cli {
    /// Address to listen on (loopback only: this is a test double).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// A tenant to load (users, groups with members, the app with roles and assignments).
    #[arg(long)]
    tenant: Option<PathBuf>,
    #[arg(long, env = "AZURE_TENANT_ID")]
    tenant_id: Option<Uuid>,
    #[arg(long, env = "AZURE_CLIENT_ID")]
    client_id: Option<Uuid>,
    #[arg(long, env = "AZURE_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Largest page any list answers with.
    #[arg(long, default_value_t = 100)]
    page_size: usize,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.listen.ip().is_loopback(),
        "graph-sim listens on loopback addresses only"
    );
    let tenant: TenantFile = match &cli.tenant {
        Some(path) => serde_json::from_slice(&std::fs::read(path)?)?,
        None => TenantFile::default(),
    };
    let mut config = SimConfig {
        page_size: cli.page_size,
        token_lifetime: Duration::from_secs(cli.token_lifetime),
        ..SimConfig::default()
    };
    if let Some(id) = cli.tenant_id {
        config.tenant_id = id;
    }
    if let Some(id) = cli.client_id {
        config.client_id = id;
    }
    if cli.client_secret.is_some() {
        config.client_secret = cli.client_secret;
    }
    let sim = GraphSim::start_on(cli.listen, config.clone(), tenant).await?;
    tracing::info!(
        url = sim.url(),
        tenant_id = %config.tenant_id,
        client_id = %config.client_id,
        graph = %sim.graph_url(),
        "graph-sim is running"
    );
    tokio::signal::ctrl_c().await?;
    sim.shutdown();
    Ok(())
}
