//! Redis for tests: a stream key of its own per test, reading it back, and a proxy that can
//! cut or stall the connection to Redis in the middle of a test (the machine's Redis is shared by
//! tests running in parallel, so no test may stop it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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
        // Fail here, with the sentence, rather than deep inside the code under test.
        drop(connection());
        Self {
            key: format!("entra-sync-test:{}", uuid::Uuid::new_v4().simple()),
        }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Connections are closed at once, as when Redis is down.
    Cut,
    /// Connections are accepted and never answered, as when Redis hangs.
    Stall,
}

/// A TCP proxy in front of the test Redis.
#[derive(Debug)]
pub struct RedisProxy {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl RedisProxy {
    pub async fn start() -> Self {
        let target = redis_target();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Redis proxy");
        let addr = listener.local_addr().expect("proxy address");
        let mode = Arc::new(Mutex::new(Mode::Forward));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let mode = mode.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let current = *mode.lock().expect("proxy mode");
                    let task = tokio::spawn(async move {
                        match current {
                            Mode::Cut => {}
                            Mode::Stall => std::future::pending::<()>().await,
                            Mode::Forward => {
                                if let Ok(mut outbound) = TcpStream::connect(target).await {
                                    let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            }
                        }
                    });
                    connections.lock().expect("proxy connections").push(task);
                }
            }
        });
        Self {
            addr,
            mode,
            connections,
            accept,
        }
    }

    /// The URL clients use instead of Redis's own.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("proxy mode") = mode;
        for task in self
            .connections
            .lock()
            .expect("proxy connections")
            .drain(..)
        {
            task.abort();
        }
    }

    /// Redis goes away: open connections are closed, new ones closed at once.
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    /// Redis hangs: open connections are closed, new ones accepted and never answered.
    pub fn stall(&self) {
        self.set(Mode::Stall);
    }

    /// Redis is back.
    pub fn restore(&self) {
        self.set(Mode::Forward);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self
            .connections
            .lock()
            .map(|mut c| c.drain(..).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            task.abort();
        }
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
