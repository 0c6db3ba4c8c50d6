//! Redis for tests: a stream key of its own per test, reading it back, and a proxy that can
//! cut or stall the connection to Redis in the middle of a test (the machine's Redis is shared by
//! tests running in parallel, so no test may stop it).

use std::collections::HashMap;
use std::net::SocketAddr;

/// The Redis the tests use: `ENTRA_SYNC_TEST_REDIS`, by default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("ENTRA_SYNC_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn connection() -> ::redis::Connection {
    let url = redis_url();
    ::redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection())
        .unwrap_or_else(|e| {
            panic!("Redis is not reachable at {url} ({e}): start it, or point ENTRA_SYNC_TEST_REDIS at a server.")
        })
}

/// A stream key no other test uses, deleted when dropped.
#[derive(Debug)]
pub struct TestStream {
    key: String,
}

impl TestStream {
    pub fn new() -> Self {
        Self::named(format!("entra-sync-test:{}", uuid::Uuid::new_v4().simple()))
    }

    /// A stream with a key the caller chose (and keeps unique), deleted when dropped.
    pub fn named(key: impl Into<String>) -> Self {
        // Fail here, with the sentence, rather than deep inside the code under test.
        drop(connection());
        Self { key: key.into() }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Every entry's fields, oldest first.
    pub fn entries(&self) -> Vec<HashMap<String, String>> {
        let entries: Vec<(String, HashMap<String, String>)> = ::redis::cmd("XRANGE")
            .arg(&self.key)
            .arg("-")
            .arg("+")
            .query(&mut connection())
            .expect("XRANGE on the test stream");
        entries.into_iter().map(|(_, fields)| fields).collect()
    }

    pub fn len(&self) -> usize {
        ::redis::cmd("XLEN")
            .arg(&self.key)
            .query(&mut connection())
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
        command.query(&mut connection())
    }
}

impl Default for TestStream {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let _: ::redis::RedisResult<()> =
            ::redis::cmd("DEL").arg(&self.key).query(&mut connection());
    }
}

/// A TCP proxy in front of the test Redis.
#[derive(Debug)]
pub struct RedisProxy {
    proxy: crate::proxy::TcpProxy,
}

impl RedisProxy {
    pub async fn start() -> Self {
        Self {
            proxy: crate::proxy::TcpProxy::start(redis_target()).await,
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

fn redis_target() -> SocketAddr {
    let url = redis_url();
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
