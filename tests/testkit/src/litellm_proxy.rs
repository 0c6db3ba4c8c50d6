//! LiteLLM's real proxy (litellm 1.110.2) on a test's database, so that a test asks the proxy,
//! not the rows, whether a key works.
//!
//! What it needs is installed by `tests/litellm-proxy/install` into `target/litellm-proxy`, run
//! from here once per test process under a file lock (so parallel test binaries do not race),
//! and reused while the pins in `tests/litellm-proxy/` are unchanged. Nothing is skipped: when
//! something cannot be installed, the test fails saying what is missing.
//!
//! The proxy reads one database, so each test that uses it starts its own, on port 0 (it says
//! which port it bound), with its models answered by `mock_response` (no upstream is called) and
//! its coordination Redis on the machine's Redis under a namespace of the test's own.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::litellm_schema::{EXTRAS_VARIABLE, LITELLM_VERSION, LiteLlmSchema, target_dir};

/// The proxy's master key in the tests.
pub const MASTER_KEY: &str = "sk-entra-sync-tests-master-key";

/// How long the proxy may take to answer its readiness check (about 30 s on an idle machine).
const START_LIMIT: Duration = Duration::from_secs(240);

/// What a test's proxy is started with.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The database it reads and writes (the test's).
    pub database_url: String,
    /// The namespace of its coordination Redis (`general_settings.coordination_redis`), the one
    /// entra-sync's `ENTRA_SYNC_LITELLM_REDIS_NAMESPACE` names.
    pub redis_namespace: String,
    /// How long it keeps keys, teams and users in its in-memory cache
    /// (`general_settings.user_api_key_cache_ttl`; LiteLLM's default is 60 s).
    pub cache_ttl: Duration,
    /// Its models: name and the LiteLLM model behind it (`openai/<name>` unless a test wants a
    /// model with a price in LiteLLM's cost map), each answered by `mock_response`.
    pub models: Vec<(String, String)>,
}

/// A running proxy, killed when dropped (its query engine follows).
pub struct LiteLlmProxy {
    child: Child,
    url: String,
    log_path: PathBuf,
    folder: PathBuf,
    http: reqwest::Client,
}

impl LiteLlmProxy {
    /// Installs LiteLLM's proxy when needed, starts it, and waits until it answers.
    pub async fn start(settings: &ProxySettings) -> Self {
        let schema = LiteLlmSchema::under_test();
        assert!(
            *schema == LiteLlmSchema::Pinned,
            "LiteLLM's proxy {LITELLM_VERSION} runs on the schema it was built for, not on {}: \
             unset {EXTRAS_VARIABLE} for the proxy's tests and the demo's --with-proxy",
            schema.describe()
        );
        // Off the test's runtime, which serves graph-sim and the webhook meanwhile.
        let env = tokio::task::spawn_blocking(installed)
            .await
            .expect("the installer's thread");
        let folder = std::env::temp_dir().join(format!(
            "entra-sync-litellm-proxy-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&folder).expect("a temporary folder for the proxy");
        let config = folder.join("config.yaml");
        std::fs::write(&config, config_yaml(settings)).expect("the proxy's config file");
        let log_path = folder.join("proxy.log");
        let log = File::create(&log_path).expect("the proxy's log file");
        let binary = env
            .iter()
            .find(|(k, _)| k == "LITELLM_PROXY_BIN")
            .map(|(_, v)| v.clone())
            .expect("the installer names LiteLLM's binary");
        let started = Instant::now();
        let child = Command::new(&binary)
            .args(["--config"])
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", "0", "--num_workers", "1"])
            .current_dir(&folder)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("DATABASE_URL", &settings.database_url)
            .env("DISABLE_SCHEMA_UPDATE", "true")
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_TELEMETRY", "False")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the proxy's log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("LiteLLM's proxy ({binary}) could not be started: {e}"));
        let mut proxy = Self {
            child,
            url: String::new(),
            log_path,
            folder,
            http: reqwest::Client::new(),
        };
        proxy.url = proxy.wait_until_ready().await;
        eprintln!(
            "LiteLLM's proxy answers at {} after {:.1} s",
            proxy.url,
            started.elapsed().as_secs_f64()
        );
        proxy
    }

    async fn wait_until_ready(&mut self) -> String {
        let deadline = Instant::now() + START_LIMIT;
        let mut url = None;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "LiteLLM's proxy exited ({status}) before answering; its log:\n{}",
                    self.log_tail()
                );
            }
            if url.is_none() {
                url = bound_url(&self.log());
            }
            if let Some(url) = &url {
                let ready = self
                    .http
                    .get(format!("{url}/health/readiness"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    return url.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "LiteLLM's proxy did not answer within {START_LIMIT:?}; its log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything the proxy (and its query engine) logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// `GET path` with `key` as the bearer: the status and the JSON body (`Null` when none).
    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        let request = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(key);
        answer(request).await
    }

    /// `POST path` with `key` as the bearer and a JSON body.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> (StatusCode, Value) {
        let request = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(body);
        answer(request).await
    }

    /// A chat completion on `model` with `key`: the status and the body.
    pub async fn chat(&self, key: &str, model: &str) -> (StatusCode, Value) {
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
        });
        self.post("/chat/completions", key, &body).await
    }
}

async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("LiteLLM's proxy answers");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

impl Drop for LiteLlmProxy {
    fn drop(&mut self) {
        // Its query engine (engine.mjs) exits by itself once it is orphaned.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("ENTRA_SYNC_KEEP_PROXY_LOG").is_none() {
            let _ = std::fs::remove_dir_all(&self.folder);
        } else {
            eprintln!("LiteLLM's proxy log kept at {}", self.log_path.display());
        }
    }
}

/// `http://127.0.0.1:<port>` from uvicorn's "Uvicorn running on ..." line.
fn bound_url(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let rest = line.split("Uvicorn running on ").nth(1)?;
        let url = rest.split_whitespace().next()?;
        (!url.ends_with(":0")).then(|| url.to_owned())
    })
}

fn config_yaml(settings: &ProxySettings) -> String {
    let (host, port) = redis_host_port();
    let models: String = settings
        .models
        .iter()
        .map(|(name, model)| {
            format!(
                "  - model_name: {name}\n    litellm_params: {{model: {model}, api_key: sk-unused, mock_response: \"hello from {name}\"}}\n"
            )
        })
        .collect();
    format!(
        "model_list:\n{models}general_settings:\n  master_key: {MASTER_KEY}\n  user_api_key_cache_ttl: {ttl}\n  coordination_redis: {{host: \"{host}\", port: {port}, namespace: \"{namespace}\"}}\n",
        ttl = settings.cache_ttl.as_secs(),
        namespace = settings.redis_namespace,
    )
}

/// The machine's Redis (the tests' `redis_url()`) as host and port for LiteLLM's config.
fn redis_host_port() -> (String, u16) {
    let url = url::Url::parse(&crate::redis::redis_url()).expect("the test Redis URL parses");
    (
        url.host_str().unwrap_or("127.0.0.1").to_owned(),
        url.port().unwrap_or(6379),
    )
}

/// Runs the installer once per test process (under a file lock shared with other test
/// processes) and returns the environment it prints for the proxy: `PRISMA_QUERY_ENGINE_BINARY`
/// (the query engine stand-in), `LITELLM_PROXY_BIN`, `LITELLM_PROXY_SCHEMA` (LiteLLM's
/// schema.prisma) and Prisma's other variables. Blocks: call it off an async runtime's thread.
pub fn installed() -> &'static [(String, String)] {
    static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = target_dir().join("litellm-proxy");
        std::fs::create_dir_all(&root).expect("target/litellm-proxy can be created");
        let lock = File::create(root.with_extension("lock")).expect("the installer's lock file");
        lock.lock().expect("the installer's lock");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../litellm-proxy/install");
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .arg(&root)
            .output()
            .unwrap_or_else(|e| panic!("bash could not run {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "LiteLLM's proxy could not be installed by tests/litellm-proxy/install (it needs \
             Python 3.10+ with pip and venv, Node.js 18+ with npm, and PyPI and the npm \
             registry reachable):\n{stderr}"
        );
        if stderr.contains("installing") {
            eprintln!(
                "LiteLLM's proxy installed into {} in {:.1} s",
                root.display(),
                started.elapsed().as_secs_f64()
            );
        }
        let env_file = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        std::fs::read_to_string(&env_file)
            .unwrap_or_else(|e| panic!("the installer's env file {env_file}: {e}"))
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::bound_url;

    #[test]
    fn the_bound_port_is_read_from_uvicorns_line() {
        let log = "INFO:     Application startup complete.\n\
                   INFO:     Uvicorn running on http://127.0.0.1:45525 (Press CTRL+C to quit)\n";
        assert_eq!(bound_url(log).as_deref(), Some("http://127.0.0.1:45525"));
        assert_eq!(
            bound_url("INFO:     Uvicorn running on http://127.0.0.1:0 (Press"),
            None
        );
    }
}
