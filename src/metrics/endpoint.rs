//! `--metrics-listen`: a minimal HTTP/1.1 responder for `GET /metrics` and `GET /healthz`, on
//! a TCP address or a Unix socket.
//!
//! One request per connection, answered and closed; at most [`MAX_SCRAPES`] at once, and a
//! request head must arrive within [`READ_TIMEOUT`] and fit in [`MAX_HEAD`] bytes. The bind is
//! retried: on a gateway reload APISIX starts the new runner while the old one still holds the
//! address for up to a second or so. After [`QUICK_RETRIES`] the endpoint keeps retrying every
//! [`SLOW_RETRY`] in the background, logging each failure (at most one line per interval),
//! and the runner serves the gateway all along: metrics never take the data path down.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, error, info, warn};

use super::text::CONTENT_TYPE;
use crate::limits::LimitLog;
use crate::server::{Listener, Shared};

/// Scrapes served at once; more wait in the listen backlog.
pub const MAX_SCRAPES: usize = 8;
/// The longest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head, and to read the answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Bind attempts 100 ms apart before the endpoint falls back to [`SLOW_RETRY`].
pub const QUICK_RETRIES: u32 = 50;
pub const SLOW_RETRY: Duration = Duration::from_secs(5);

/// Where `--metrics-listen` serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddress::Tcp(a) => write!(f, "{a}"),
            MetricsAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Reads `127.0.0.1:9092`, `[::1]:9092` or `unix:/abs/path.sock`.
pub fn parse_metrics_address(s: &str) -> Result<MetricsAddress, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!(
                "metrics address `{s}` must name an absolute path (e.g. unix:/run/ext-plugin-runner-metrics.sock)"
            ));
        }
        return Ok(MetricsAddress::Unix(path));
    }
    s.parse().map(MetricsAddress::Tcp).map_err(|_| {
        format!("metrics address `{s}` must be IP:PORT (e.g. 127.0.0.1:9092) or unix:/abs/path")
    })
}

enum Bound {
    Tcp(TcpListener),
    /// Owns the socket file, as the gateway socket's listener does.
    Unix(Listener),
}

impl Bound {
    async fn bind(address: &MetricsAddress) -> io::Result<Bound> {
        match address {
            MetricsAddress::Tcp(a) => TcpListener::bind(a).await.map(Bound::Tcp),
            MetricsAddress::Unix(p) => Listener::bind(p).map(Bound::Unix),
        }
    }

    /// Binds, retrying as the module docs say; `None` only when `stop` fires first.
    async fn bind_retrying(
        address: &MetricsAddress,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Bound> {
        let failures = LimitLog::default();
        let mut attempt = 0u32;
        loop {
            match Bound::bind(address).await {
                Ok(bound) => return Some(bound),
                Err(e) => {
                    attempt += 1;
                    let wait = if attempt < QUICK_RETRIES {
                        debug!(%address, error = %e, attempt, "metrics bind failed; retrying");
                        Duration::from_millis(100)
                    } else {
                        if let Some(hits) = failures.hit() {
                            error!(%address, error = %e, hits,
                                "cannot listen for metrics; retrying every {SLOW_RETRY:?} (the runner serves the gateway meanwhile)");
                        }
                        SLOW_RETRY
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return None,
                    }
                }
            }
        }
    }
}

/// The metrics endpoint's task; aborted when dropped.
pub(crate) struct Endpoint(JoinHandle<()>);

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `/metrics` for `shared` at `address` until dropped. `/healthz` answers 503 once
/// `draining` is true.
pub(crate) fn spawn(
    address: MetricsAddress,
    shared: Arc<Shared>,
    draining: watch::Receiver<bool>,
) -> Endpoint {
    Endpoint(tokio::spawn(run(address, shared, draining)))
}

async fn run(address: MetricsAddress, shared: Arc<Shared>, mut draining: watch::Receiver<bool>) {
    let Some(bound) = Bound::bind_retrying(&address, &mut draining).await else {
        return;
    };
    info!(%address, "serving metrics at /metrics");
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    let accept_errors = LimitLog::default();
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let accepted = match &bound {
            Bound::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
            Bound::Unix(l) => l.accept().await.map(Conn::Unix),
        };
        match accepted {
            Ok(conn) => {
                let shared = shared.clone();
                let draining = draining.clone();
                tokio::spawn(async move {
                    let _ = timeout(READ_TIMEOUT * 2, conn.answer(&shared, &draining)).await;
                    drop(permit);
                });
            }
            Err(e) => {
                if let Some(hits) = accept_errors.hit() {
                    warn!(error = %e, hits, "metrics accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Conn {
    async fn answer(self, shared: &Shared, draining: &watch::Receiver<bool>) {
        let result = match self {
            Conn::Tcp(s) => answer(s, shared, draining).await,
            Conn::Unix(s) => answer(s, shared, draining).await,
        };
        if let Err(e) = result {
            debug!(error = %e, "metrics request failed");
        }
    }
}

/// An answer: status line, content type, body.
struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: String,
    /// `HEAD`: headers only.
    head_only: bool,
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    shared: &Shared,
    draining: &watch::Receiver<bool>,
) -> io::Result<()> {
    let head = match timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    };
    let reply = route(
        head.as_deref(),
        || shared.metrics.render(),
        *draining.borrow(),
    );
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    if reply.status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !reply.head_only {
        out.push_str(&reply.body);
    }
    timeout(READ_TIMEOUT, async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// The request head (up to the blank line), or `None` when it is too long or not text.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(String::from_utf8(buf).ok());
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// What a request head gets.
fn route(head: Option<&str>, metrics: impl FnOnce() -> String, draining: bool) -> Reply {
    let reply = |status, body: &str| Reply {
        status,
        content_type: TEXT,
        body: body.into(),
        head_only: false,
    };
    let Some(line) = head.and_then(|h| h.lines().next()) else {
        return reply("400 Bad Request", "bad request\n");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return reply("400 Bad Request", "bad request\n");
    };
    if !version.starts_with("HTTP/1.") {
        return reply("400 Bad Request", "bad request\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return reply("405 Method Not Allowed", "method not allowed\n"),
    };
    let path = target.split('?').next().unwrap_or(target);
    let mut r = match path {
        "/metrics" => Reply {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            body: metrics(),
            head_only: false,
        },
        "/healthz" if draining => reply("503 Service Unavailable", "draining\n"),
        "/healthz" => reply("200 OK", "ok\n"),
        _ => reply("404 Not Found", "not found; try /metrics or /healthz\n"),
    };
    r.head_only = head_only;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(head: &str, draining: bool) -> Reply {
        route(Some(head), || "m 1\n".into(), draining)
    }

    #[test]
    fn requests_are_routed_by_method_and_path() {
        let r = get("GET /metrics HTTP/1.1\r\nHost: x", false);
        assert_eq!(
            (r.status, r.content_type, &*r.body),
            ("200 OK", CONTENT_TYPE, "m 1\n")
        );
        assert_eq!(get("GET /metrics?x=1 HTTP/1.0", false).status, "200 OK");
        assert!(get("HEAD /metrics HTTP/1.1", false).head_only);
        assert_eq!(get("GET /healthz HTTP/1.1", false).body, "ok\n");
        assert_eq!(
            get("GET /healthz HTTP/1.1", true).status,
            "503 Service Unavailable"
        );
        assert_eq!(
            get("POST /metrics HTTP/1.1", false).status,
            "405 Method Not Allowed"
        );
        assert_eq!(get("GET / HTTP/1.1", false).status, "404 Not Found");
        assert_eq!(get("GET /metrics SPDY/3", false).status, "400 Bad Request");
        assert_eq!(route(None, String::new, false).status, "400 Bad Request");
    }

    #[test]
    fn addresses_are_tcp_or_absolute_unix_paths() {
        assert_eq!(
            parse_metrics_address("127.0.0.1:9092").unwrap(),
            MetricsAddress::Tcp("127.0.0.1:9092".parse().unwrap())
        );
        assert!(matches!(
            parse_metrics_address("[::1]:9092").unwrap(),
            MetricsAddress::Tcp(_)
        ));
        assert_eq!(
            parse_metrics_address("unix:/run/m.sock").unwrap(),
            MetricsAddress::Unix("/run/m.sock".into())
        );
        assert!(parse_metrics_address("unix:m.sock").is_err());
        assert!(parse_metrics_address("localhost:9092").is_err());
        assert!(parse_metrics_address("9092").is_err());
    }

    #[tokio::test]
    async fn a_busy_address_is_retried_until_it_frees() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = MetricsAddress::Tcp(held.local_addr().unwrap());
        let (_tx, mut rx) = watch::channel(false);
        let binding = tokio::spawn(async move { Bound::bind_retrying(&address, &mut rx).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!binding.is_finished(), "bound while the address was taken");
        drop(held);
        let bound = binding.await.unwrap();
        assert!(matches!(bound, Some(Bound::Tcp(_))));
    }
}
