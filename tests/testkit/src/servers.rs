//! Servers of a test's own, which it may stop and start again: a Redis keeping its data on disk
//! (append-only file, every write synced), and a PgBouncer in transaction mode in front of the
//! test PostgreSQL. The machine's servers are shared by tests running in parallel, so no test may
//! restart them. Both listen on a Unix socket in a folder of the test's own: no port to race for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A folder of the test's own, removed when dropped.
#[derive(Debug)]
struct Folder(PathBuf);

impl Folder {
    fn new(kind: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "entra-sync-{kind}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("a temporary folder");
        Self(path)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start within {limit:?}");
}

/// A Redis server of the test's own (the machine's `redis-server`), persisting every write to
/// its append-only file, so that a restart loses nothing, as operators run the stream's Redis.
#[derive(Debug)]
pub struct OwnRedis {
    folder: Folder,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> Self {
        let mut redis = Self {
            folder: Folder::new("redis"),
            child: None,
        };
        redis.restart();
        redis
    }

    fn socket(&self) -> PathBuf {
        self.folder.0.join("redis.sock")
    }

    /// Its URL, for the webhook and the workers.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// The server, as the testkit's other Redis servers are named.
    pub fn server(&self) -> super::redis::RedisServer {
        super::redis::RedisServer::at(&self.url(), "the test's own Redis")
    }

    /// Stops it at once (SIGKILL), as a crash or a node going away would.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it (again), from what its append-only file holds, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.folder.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not be run ({e}): install Debian's redis-server")
            });
        self.child = Some(child);
        let url = self.url();
        wait_until(Duration::from_secs(10), "the test's own Redis", || {
            ::redis::Client::open(url.as_str())
                .and_then(|client| client.get_connection())
                .and_then(|mut connection| ::redis::cmd("PING").query::<String>(&mut connection))
                .is_ok()
        });
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PgBouncer of the test's own (Debian's `pgbouncer`), in transaction mode in front of the
/// test PostgreSQL, as Azure Database for PostgreSQL runs it.
#[derive(Debug)]
pub struct OwnPgBouncer {
    folder: Folder,
    child: Option<Child>,
}

/// The number in the socket's name (`.s.PGSQL.<port>`); nothing listens on TCP.
const SOCKET_PORT: u16 = 6433;

impl OwnPgBouncer {
    pub fn start() -> Self {
        let folder = Folder::new("pgbouncer");
        let server = super::postgres::server_addr();
        std::fs::write(
            folder.0.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={} port={} user=postgres\n\n[pgbouncer]\nlisten_addr =\n\
                 listen_port = {SOCKET_PORT}\nunix_socket_dir = {dir}\nauth_type = any\n\
                 pool_mode = transaction\ndefault_pool_size = 10\nmax_client_conn = 200\n\
                 ignore_startup_parameters = extra_float_digits\nlogfile = {dir}/pgbouncer.log\n",
                server.ip(),
                server.port(),
                dir = folder.0.display()
            ),
        )
        .expect("pgbouncer.ini");
        run_as_postgres_owner(&folder.0);
        let mut pgbouncer = Self {
            folder,
            child: None,
        };
        pgbouncer.restart();
        pgbouncer
    }

    /// A database's URL through it, with Prisma's `pgbouncer=true`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}&port={SOCKET_PORT}&pgbouncer=true",
            self.folder.0.display()
        )
    }

    /// Stops it at once (SIGKILL): every client connection drops.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it (again) and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        crate::shared_servers::ensure_pgbouncer_installed();
        let _ = std::fs::remove_file(self.folder.0.join(format!(".s.PGSQL.{SOCKET_PORT}")));
        let mut command = Command::new("pgbouncer");
        // PgBouncer refuses to run as root.
        if is_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(self.folder.0.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("pgbouncer could not be run ({e}): tests/servers/start installs it")
            });
        self.child = Some(child);
        let folder = self.folder.0.clone();
        wait_until(Duration::from_secs(10), "the test's own PgBouncer", || {
            Command::new("pg_isready")
                .args(["-q", "-h"])
                .arg(&folder)
                .args(["-p", &SOCKET_PORT.to_string()])
                .status()
                .is_ok_and(|status| status.success())
        });
    }
}

impl Drop for OwnPgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// As root, PgBouncer runs as postgres: its folder must be that user's.
fn run_as_postgres_owner(folder: &Path) {
    if !is_root() {
        return;
    }
    let status = Command::new("chown")
        .args(["-R", "postgres"])
        .arg(folder)
        .status()
        .expect("chown runs");
    assert!(
        status.success(),
        "cannot give {} to postgres",
        folder.display()
    );
}
