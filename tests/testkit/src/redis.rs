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
        loop {
            let payloads: Vec<String> = received.iter().map(|(_, p)| p.clone()).collect();
            if done(&payloads) {
                return received;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(message) => received.push(message),
                Err(_) => return received,
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
