//! Where a process listens, in its own words.
//!
//! A test that starts `entra-sync-webhook` or `entra-sync-worker run` as a process gives it
//! `127.0.0.1:0` to listen on; the process binds a port the system picks and says which at start,
//! in a `listen` field of one log line (`listen=127.0.0.1:40123`, or `"listen":"..."` as JSON).
//! Reading that address is how the test finds the process: unlike a port picked by the test and
//! handed over, nothing else can take it in between.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How much of a process's log is kept, to show when its address never comes.
const KEPT: usize = 64 * 1024;

/// The address in the first `listen` field of `log` that names a bound port (port 0 is what was
/// asked for, never what was bound); colours and JSON lines are understood.
pub fn announced(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let line = without_colours(line);
        listen_fields(&line).find(|address| address.port() != 0)
    })
}

/// The values of the line's `listen` fields that are socket addresses.
fn listen_fields(line: &str) -> impl Iterator<Item = SocketAddr> + '_ {
    let text = line.match_indices("listen=").filter_map(|(at, field)| {
        // A field of its own, not the end of a longer name.
        let starts_field = line[..at]
            .chars()
            .next_back()
            .is_none_or(char::is_whitespace);
        let value = &line[at + field.len()..];
        starts_field.then(|| value.split_whitespace().next().unwrap_or_default())
    });
    let json = line.match_indices(r#""listen":""#).map(|(at, field)| {
        let value = &line[at + field.len()..];
        value.split('"').next().unwrap_or_default()
    });
    text.chain(json).filter_map(|value| value.parse().ok())
}

/// The line without its ANSI colour codes (`ESC [ ... letter`).
fn without_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for code in chars.by_ref() {
                    if code.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The end of a log, at most [`KEPT`] bytes of it.
fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(KEPT);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

/// Why a process's address is unknown, with the end of its log.
#[derive(Debug)]
pub struct NotAnnounced {
    pub process: String,
    pub reason: String,
    pub log: String,
}

impl std::fmt::Display for NotAnnounced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} did not say where it listens ({}): it logs a `listen` field at info level once \
             it has bound its port; its log ends with:\n{}",
            self.process,
            self.reason,
            tail(&self.log)
                .lines()
                .map(without_colours)
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

impl std::error::Error for NotAnnounced {}

#[derive(Default)]
struct Captured {
    /// The end of the log so far.
    log: String,
    address: Option<SocketAddr>,
    /// The process closed its stderr (it exited): nothing more will come.
    closed: bool,
}

/// A process's stderr, read on a thread of its own until the process closes it, so the process
/// never blocks on a full pipe; its lines are kept (the end of them), echoed to the test's own
/// stderr when asked, and searched for the address the process listens on.
#[derive(Clone)]
pub struct ProcessLog {
    process: String,
    captured: Arc<Mutex<Captured>>,
}

impl ProcessLog {
    /// Starts reading `stderr`, the pipe of the process named `process`; with `echo`, every line
    /// is also written to this process's stderr as it comes.
    pub fn capture(process: &str, stderr: impl Read + Send + 'static, echo: bool) -> Self {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let shared = captured.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr);
            let mut line = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if echo {
                    let _ = std::io::stderr().write_all(line.as_bytes());
                }
                let mut captured = shared.lock().expect("process log lock");
                if captured.address.is_none() {
                    captured.address = announced(&line);
                }
                captured.log.push_str(&line);
                if captured.log.len() > 2 * KEPT {
                    captured.log = tail(&captured.log).to_owned();
                }
            }
            shared.lock().expect("process log lock").closed = true;
        });
        Self {
            process: process.to_owned(),
            captured,
        }
    }

    /// The end of what the process logged so far.
    pub fn text(&self) -> String {
        self.captured.lock().expect("process log lock").log.clone()
    }

    /// Waits up to `limit` for the process to say where it listens.
    pub async fn listen_address(&self, limit: Duration) -> Result<SocketAddr, NotAnnounced> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (address, closed, log) = {
                let captured = self.captured.lock().expect("process log lock");
                (captured.address, captured.closed, captured.log.clone())
            };
            if let Some(address) = address {
                return Ok(address);
            }
            let reason = if closed {
                "it exited".to_owned()
            } else if tokio::time::Instant::now() >= deadline {
                format!("not within {} s", limit.as_secs_f64())
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            return Err(NotAnnounced {
                process: self.process.clone(),
                reason,
                log,
            });
        }
    }
}

/// Waits up to `limit` for the log file at `path`, which a process named `process` writes, to
/// say where the process listens.
pub async fn announced_in_file(
    process: &str,
    path: &Path,
    limit: Duration,
) -> Result<SocketAddr, NotAnnounced> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(address) = announced(&log) {
            return Ok(address);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NotAnnounced {
                process: process.to_owned(),
                reason: format!("not within {} s", limit.as_secs_f64()),
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_address_is_found_in_text_coloured_and_json_lines() {
        let text = "2025-01-01T00:00:00Z  INFO worker::health: health and metrics listening \
                    listen=127.0.0.1:40123";
        assert_eq!(announced(text), "127.0.0.1:40123".parse().ok());
        let coloured = "\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mwebhook\u{1b}[0m\
                        \u{1b}[2m:\u{1b}[0m webhook listening \u{1b}[3mlisten\u{1b}[0m\
                        \u{1b}[2m=\u{1b}[0m127.0.0.1:8123 \u{1b}[3mstream\u{1b}[0m\u{1b}[2m=\
                        \u{1b}[0ms";
        assert_eq!(announced(coloured), "127.0.0.1:8123".parse().ok());
        let json =
            r#"{"level":"INFO","fields":{"message":"webhook listening","listen":"[::1]:9000"}}"#;
        assert_eq!(announced(json), "[::1]:9000".parse().ok());
    }

    #[test]
    fn port_zero_and_other_fields_are_not_an_announcement() {
        let log = "ERROR webhook: cannot listen: refused listen=127.0.0.1:0\n\
                   INFO worker: worker running metrics_listen=127.0.0.1:9 \
                   ENTRA_SYNC_METRICS_LISTEN=127.0.0.1:9\n";
        assert_eq!(announced(log), None);
    }
}
