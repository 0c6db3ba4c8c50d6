//! Redis for tests: a stream key of its own per test, reading it back, and a proxy that can
//! cut or stall the connection to Redis in the middle of a test (the machine's Redis is shared by
//! tests running in parallel, so no test may stop it).

use std::collections::HashMap;
use std::net::SocketAddr;

/// The Redis the tests use: `ENTRA_SYNC_TEST_REDIS`, by default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    RedisServer::machine().url
}

/// A Redis server the tests run against: the machine's own, or one of the older or other
/// servers that `tests/servers/start` runs beside it (see [`crate::shared_servers`]), so that the
/// stream code is tested on every kind of server entra-sync supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisServer {
    url: String,
    /// What it is, for the sentences of failures.
    name: &'static str,
    /// The variable that names it.
    variable: &'static str,
    /// What to do when it does not answer.
    remedy: &'static str,
}

impl RedisServer {
    /// The machine's Redis (7.0 on Debian bookworm): `ENTRA_SYNC_TEST_REDIS`, by default
    /// `redis://127.0.0.1:6379`.
    pub fn machine() -> Self {
        Self::from_env(
            "ENTRA_SYNC_TEST_REDIS",
            "redis://127.0.0.1:6379",
            "the machine's Redis",
            "start it",
        )
    }

    /// Redis 6.2: `ENTRA_SYNC_TEST_REDIS6`, by default `redis://127.0.0.1:6380`, where
    /// `tests/servers/start` runs it (started here when it does not answer). Fails, with what to
    /// do, when it does not answer or is not a Redis 6.
    pub fn redis6() -> Self {
        let server = Self::from_env(
            "ENTRA_SYNC_TEST_REDIS6",
            "redis://127.0.0.1:6380",
            "Redis 6.2",
            START_TEST_SERVERS,
        )
        .started();
        let version = server.info_field("redis_version").unwrap_or_default();
        assert!(
            version.starts_with("6.") && server.info_field("valkey_version").is_none(),
            "ENTRA_SYNC_TEST_REDIS6 ({}) is Redis {version:?}, not Redis 6: point it at a Redis 6.x server.",
            server.url
        );
        server
    }

    /// Valkey: `ENTRA_SYNC_TEST_VALKEY`, by default `redis://127.0.0.1:6381`, where
    /// `tests/servers/start` runs it (started here when it does not answer). Fails, with what to
    /// do, when it does not answer or is not Valkey.
    pub fn valkey() -> Self {
        let server = Self::from_env(
            "ENTRA_SYNC_TEST_VALKEY",
            "redis://127.0.0.1:6381",
            "Valkey",
            START_TEST_SERVERS,
        )
        .started();
        assert!(
            server.info_field("valkey_version").is_some(),
            "ENTRA_SYNC_TEST_VALKEY ({}) is not Valkey (its INFO has no valkey_version): point it at a Valkey server.",
            server.url
        );
        server
    }

    /// A server at `url` that the test itself runs (see [`crate::servers::OwnRedis`]).
    pub fn at(url: &str, name: &'static str) -> Self {
        Self {
            url: url.to_owned(),
            name,
            variable: "no variable",
            remedy: "the test starts it itself",
        }
    }

    fn from_env(
        variable: &'static str,
        default: &str,
        name: &'static str,
        remedy: &'static str,
    ) -> Self {
        Self {
            url: std::env::var(variable).unwrap_or_else(|_| default.to_owned()),
            name,
            variable,
            remedy,
        }
    }

    /// The server, once it answers: at its default address, where `tests/servers/start` runs
    /// it, the script is run first when it does not answer. One its variable names elsewhere is
    /// left to whoever runs it.
    fn started(self) -> Self {
        if std::env::var_os(self.variable).is_none() {
            crate::shared_servers::ensure(&format!("{} at {}", self.name, self.url), || {
                self.answers()
            });
        }
        self
    }

    /// Whether it answers PING within a few seconds.
    fn answers(&self) -> bool {
        let timeout = std::time::Duration::from_secs(2);
        ::redis::Client::open(self.url.as_str())
            .and_then(|client| client.get_connection_with_timeout(timeout))
            .and_then(|mut connection| ::redis::cmd("PING").query::<String>(&mut connection))
            .is_ok()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A field of the server's `INFO` (its default sections), e.g. `redis_version` or
    /// `used_cpu_user`.
    pub fn info_field(&self, field: &str) -> Option<String> {
        let info: String = ::redis::cmd("INFO")
            .query(&mut self.connection())
            .expect("INFO");
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    }

    /// A connection, or the test fails with what to do.
    pub fn connection(&self) -> ::redis::Connection {
        let url = &self.url;
        ::redis::Client::open(url.as_str())
            .and_then(|client| client.get_connection())
            .unwrap_or_else(|e| {
                panic!(
                    "{} is not reachable at {url} ({e}): {}, or point {} at a server.",
                    self.name, self.remedy, self.variable
                )
            })
    }
}

const START_TEST_SERVERS: &str =
    "run tests/servers/start (the tests run it themselves when the server does not answer)";

fn connection() -> ::redis::Connection {
    RedisServer::machine().connection()
}

/// A stream key no other test uses, deleted when dropped.
#[derive(Debug)]
pub struct TestStream {
    key: String,
    server: RedisServer,
}

impl TestStream {
    pub fn new() -> Self {
        Self::on(&RedisServer::machine())
    }

    /// A stream of its own on `server`.
    pub fn on(server: &RedisServer) -> Self {
        Self::named_on(
            server,
            format!("entra-sync-test:{}", uuid::Uuid::new_v4().simple()),
        )
    }

    /// A stream with a key the caller chose (and keeps unique), deleted when dropped.
    pub fn named(key: impl Into<String>) -> Self {
        Self::named_on(&RedisServer::machine(), key)
    }

    fn named_on(server: &RedisServer, key: impl Into<String>) -> Self {
        // Fail here, with the sentence, rather than deep inside the code under test.
        drop(server.connection());
        Self {
            key: key.into(),
            server: server.clone(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The server the stream is on.
    pub fn server(&self) -> &RedisServer {
        &self.server
    }

    /// Every entry's fields, oldest first.
    pub fn entries(&self) -> Vec<HashMap<String, String>> {
        self.entries_with_ids()
            .into_iter()
            .map(|(_, fields)| fields)
            .collect()
    }

    /// Every entry with its id, oldest first.
    pub fn entries_with_ids(&self) -> Vec<(String, HashMap<String, String>)> {
        ::redis::cmd("XRANGE")
            .arg(&self.key)
            .arg("-")
            .arg("+")
            .query(&mut self.server.connection())
            .expect("XRANGE on the test stream")
    }

    pub fn len(&self) -> usize {
        ::redis::cmd("XLEN")
            .arg(&self.key)
            .query(&mut self.server.connection())
            .expect("XLEN on the test stream")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs any command against the test's Redis (e.g. creating a consumer group).
    pub fn command(&self, args: &[&str]) -> ::redis::Value {
        self.try_command(args).expect("Redis command")
    }

    /// Runs a command that may fail (e.g. on a consumer group not created yet).
    pub fn try_command(&self, args: &[&str]) -> ::redis::RedisResult<::redis::Value> {
        let mut command = ::redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut self.server.connection())
    }
}

impl Default for TestStream {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        if let Ok(mut connection) =
            ::redis::Client::open(self.server.url()).and_then(|client| client.get_connection())
        {
            let _: ::redis::RedisResult<()> =
                ::redis::cmd("DEL").arg(&self.key).query(&mut connection);
        }
    }
}

/// A TCP proxy in front of the test Redis.
#[derive(Debug)]
pub struct RedisProxy {
    proxy: crate::proxy::TcpProxy,
}

impl RedisProxy {
    /// In front of the machine's Redis.
    pub async fn start() -> Self {
        Self::start_for(&RedisServer::machine()).await
    }

    /// In front of `server`.
    pub async fn start_for(server: &RedisServer) -> Self {
        Self {
            proxy: crate::proxy::TcpProxy::start(redis_target(server.url())).await,
        }
    }

    /// The URL clients use instead of Redis's own.
    pub fn url(&self) -> String {
        format!("redis://{}", self.proxy.addr())
    }

    /// Redis goes away: open connections are closed, new ones closed at once.
    pub fn cut(&self) {
        self.proxy.cut();
    }

    /// Redis hangs: open connections are closed, new ones accepted and never answered.
    pub fn stall(&self) {
        self.proxy.stall();
    }

    /// Redis is back.
    pub fn restore(&self) {
        self.proxy.restore();
    }
}

fn redis_target(url: &str) -> SocketAddr {
    let host_port = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve the Redis address in {url}"))
}

/// Runs one command against the test Redis.
pub fn query(args: &[&str]) -> ::redis::RedisResult<::redis::Value> {
    let mut command = ::redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(&mut connection())
}

/// A subscriber to one channel of the test Redis, as LiteLLM's proxy workers subscribe to its
/// cache invalidation channel. It listens on a thread of its own until dropped.
#[derive(Debug)]
pub struct Subscriber {
    messages: std::sync::mpsc::Receiver<(std::time::Instant, String)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Subscriber {
    /// Subscribes, and returns once Redis confirmed the subscription.
    pub fn subscribe(channel: &str) -> Self {
        use std::sync::atomic::Ordering;
        let (sender, messages) = std::sync::mpsc::channel();
        let (ready, subscribed) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let channel = channel.to_owned();
        std::thread::spawn(move || {
            let mut connection = connection();
            let mut pubsub = connection.as_pubsub();
            pubsub
                .subscribe(&channel)
                .expect("SUBSCRIBE on the test Redis");
            pubsub
                .set_read_timeout(Some(std::time::Duration::from_millis(100)))
                .expect("a read timeout");
            let _ = ready.send(());
            while !stopped.load(Ordering::Relaxed) {
                match pubsub.get_message() {
                    Ok(message) => {
                        let payload: String = message.get_payload().unwrap_or_default();
                        if sender.send((std::time::Instant::now(), payload)).is_err() {
                            return;
                        }
                    }
                    Err(error) if error.is_timeout() => {}
                    Err(_) => return,
                }
            }
        });
        subscribed
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the subscription is confirmed");
        Self { messages, stop }
    }

    /// Messages received until `done` says the ones so far are enough, or `limit` passed; each
    /// with when it arrived.
    pub fn receive_until(
        &self,
        done: impl Fn(&[String]) -> bool,
        limit: std::time::Duration,
    ) -> Vec<(std::time::Instant, String)> {
        let deadline = std::time::Instant::now() + limit;
        let mut received: Vec<(std::time::Instant, String)> = Vec::new();
        // The payloads so far, kept alongside: copying them all for every message made tens of
        // thousands of messages take minutes.
        let mut payloads: Vec<String> = Vec::new();
        loop {
            if done(&payloads) {
                return received;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(message) => {
                    payloads.push(message.1.clone());
                    received.push(message);
                }
                Err(_) => return received,
            }
        }
    }

    /// Every message until none came for `quiet`; each with when it arrived.
    pub fn receive_until_quiet(
        &self,
        quiet: std::time::Duration,
    ) -> Vec<(std::time::Instant, String)> {
        let mut received = Vec::new();
        while let Ok(message) = self.messages.recv_timeout(quiet) {
            received.push(message);
        }
        received
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
