//! Everything the demo runs: graph-sim in this process, a LiteLLM database, a Redis stream, and
//! the webhook and the worker as the processes an operator would run. Dropping it stops the
//! processes, drops the database and deletes the streams, also when the demo is interrupted.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use entra_sync_testkit::TestDatabase;
use entra_sync_testkit::redis::{TestStream, redis_url};
use graph_sim::{GraphSim, SimConfig};

use crate::binaries::Binaries;

/// How long the demo waits for anything: a process to be ready, LiteLLM to show a change.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The running demo.
pub struct Demo {
    // Declared first, so they are stopped first (see `Drop`).
    processes: Vec<Process>,
    pub sim: GraphSim,
    pub db: TestDatabase,
    pub stream: TestStream,
    _dead_letter: TestStream,
    pub webhook_url: String,
    pub worker_health_url: String,
    /// With LiteLLM's proxy: the namespace of LiteLLM's coordination Redis the worker evicts
    /// from and the proxy listens on.
    pub litellm_redis_namespace: Option<String>,
}

/// A child process, killed when dropped, whose output goes to a log file.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(
        name: &'static str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        logs: &Path,
    ) -> Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Self { name, child, log })
    }

    /// Where the process listens, once it says so: told to listen on port 0, it binds a port of
    /// the system's choosing, which nothing else can take in between.
    async fn listen_address(&mut self) -> Result<SocketAddr> {
        let started = Instant::now();
        loop {
            self.check()?;
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(address) = entra_sync_testkit::listen::announced(&log) {
                return Ok(address);
            }
            if started.elapsed() > PATIENCE {
                bail!(
                    "{} did not say where it listens within {} s; its log is {}",
                    self.name,
                    PATIENCE.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An error when the process has stopped.
    fn check(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} stopped ({status}); its log is {}",
                self.name,
                self.log.display()
            ),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// Starts graph-sim with the demo's tenant, makes the database (LiteLLM's migrations, then
    /// `entra-sync-migrate up`), and starts the webhook and the worker; logs go to `logs`. With
    /// LiteLLM's proxy, the worker also evicts from the proxy's cache through LiteLLM's Redis.
    pub async fn start(
        binaries: &Binaries,
        run_id: &str,
        logs: &Path,
        options: crate::Options,
    ) -> Result<Self> {
        std::fs::create_dir_all(logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let sim = GraphSim::start(SimConfig::default(), crate::tenant::tenant())
            .await
            .context("graph-sim cannot start")?;
        let db = TestDatabase::litellm_only_for_demo().await;
        let migrate = Process::spawn(
            "entra-sync-migrate",
            &binaries.migrate(),
            &["up"],
            &[("DATABASE_URL", db.url().to_owned())],
            logs,
        )?;
        wait_for_exit(migrate).await?;

        let stream = TestStream::named(format!("entra-sync-demo:{run_id}:notifications"));
        let dead_letter = TestStream::named(format!("{}:dead", stream.key()));
        let client_state = uuid::Uuid::new_v4().simple().to_string();
        let tenant_id = sim.config().tenant_id.to_string();
        let shared = [
            ("REDIS_URL", redis_url()),
            ("ENTRA_SYNC_STREAM", stream.key().to_owned()),
            ("ENTRA_SYNC_CLIENT_STATE", client_state),
            ("RUST_LOG", "info".to_owned()),
        ];

        let mut webhook_env = shared.to_vec();
        webhook_env.extend([
            ("ENTRA_SYNC_LISTEN", "127.0.0.1:0".to_owned()),
            ("AZURE_TENANT_ID", tenant_id),
        ]);
        let mut webhook = Process::spawn(
            "entra-sync-webhook",
            &binaries.webhook(),
            &[],
            &webhook_env,
            logs,
        )?;
        let webhook_addr = webhook.listen_address().await?;

        let team_rules = logs.join("team-rules.yaml");
        std::fs::write(&team_rules, crate::story::TEAM_RULES)
            .with_context(|| format!("cannot write {}", team_rules.display()))?;
        let mut worker_env = shared.to_vec();
        worker_env.extend(sim.client_env());
        worker_env.extend([
            ("DATABASE_URL", db.url().to_owned()),
            ("ENTRA_SYNC_CONSUMER", "demo".to_owned()),
            ("ENTRA_SYNC_METRICS_LISTEN", "127.0.0.1:0".to_owned()),
            ("ENTRA_SYNC_PUBLIC_URL", format!("http://{webhook_addr}")),
            // Graph sends no notifications for app role assignments: the worker polls them, and
            // every poll is followed by a delta round. Short, so the demo does not wait.
            ("ENTRA_SYNC_POLL_SECONDS", "2".to_owned()),
            // Beyond sign-in: nested groups, owners as team admins, a team rule.
            ("ENTRA_SYNC_MEMBERSHIP", "transitive".to_owned()),
            ("ENTRA_SYNC_OWNERS_AS_ADMINS", "true".to_owned()),
            ("ENTRA_SYNC_TEAM_RULES", team_rules.display().to_string()),
        ]);
        let litellm_redis_namespace = options
            .with_proxy
            .then(|| format!("entra-sync-demo-{run_id}"));
        if let Some(namespace) = &litellm_redis_namespace {
            worker_env.extend([
                ("ENTRA_SYNC_LITELLM_REDIS_URL", redis_url()),
                ("ENTRA_SYNC_LITELLM_REDIS_NAMESPACE", namespace.clone()),
            ]);
        }
        let mut worker = Process::spawn(
            "entra-sync-worker",
            &binaries.worker(),
            &["run"],
            &worker_env,
            logs,
        )?;
        let health_addr = worker.listen_address().await?;

        let mut demo = Self {
            processes: vec![webhook, worker],
            sim,
            db,
            stream,
            _dead_letter: dead_letter,
            webhook_url: format!("http://{webhook_addr}"),
            worker_health_url: format!("http://{health_addr}"),
            litellm_redis_namespace,
        };
        let ready = [
            format!("{}/readyz", demo.webhook_url),
            format!("{}/readyz", demo.worker_health_url),
        ];
        for url in ready {
            demo.wait_ready(&url).await?;
        }
        Ok(demo)
    }

    /// An error when the webhook or the worker has stopped.
    pub fn check_processes(&mut self) -> Result<()> {
        self.processes.iter_mut().try_for_each(Process::check)
    }

    async fn wait_ready(&mut self, url: &str) -> Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let started = Instant::now();
        loop {
            self.check_processes()?;
            if let Ok(answer) = http.get(url).send().await
                && answer.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > PATIENCE {
                bail!("{url} did not answer within {} s", PATIENCE.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits for a short-lived process (the migrations) to succeed.
async fn wait_for_exit(mut process: Process) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = process.child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!(
                "{} failed ({status}); its log is {}",
                process.name,
                process.log.display()
            );
        }
        if started.elapsed() > PATIENCE {
            bail!(
                "{} did not finish within {} s",
                process.name,
                PATIENCE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The processes go first, so that nothing writes while the database and the streams go.
        self.processes.clear();
        self.sim.shutdown();
    }
}
