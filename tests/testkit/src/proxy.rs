//! A TCP proxy that a test can cut (connections closed) or stall (connections never answered),
//! to take Redis or PostgreSQL away from the code under test without stopping the shared server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Connections are closed at once, as when Redis is down.
    Cut,
    /// Connections are accepted and never answered, as when The service hangs.
    Stall,
}

/// A TCP proxy to a service of the machine, which a test can cut or stall.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
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

    pub fn addr(&self) -> SocketAddr {
        self.addr
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

    /// The service goes away: open connections are closed, new ones closed at once.
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    /// The service hangs: open connections are closed, new ones accepted and never answered.
    pub fn stall(&self) {
        self.set(Mode::Stall);
    }

    /// The service is back.
    pub fn restore(&self) {
        self.set(Mode::Forward);
    }
}

impl Drop for TcpProxy {
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
