//! Redis backends: one lazily connected, multiplexed client per distinct backend (address,
//! database, credentials / cluster nodes / sentinel set and master name), shared by every route
//! through a bounded process-wide registry, with a deadline on every command and a breaker.
//!
//! * Every command is bounded by `redis_timeout`, connecting included (with sentinels: by
//!   `redis_read_timeout`, plus `redis_connect_timeout` when it has to connect).
//! * A failure (timeout, I/O, any error from Redis) opens the backend's breaker and drops the
//!   connection: while open, calls fail at once without touching the network; after 1 s (then
//!   up to 5 s) one call probes with a fresh connection, and its success closes the breaker.
//! * One log line per state change (`warn` when a backend goes down, `info` when it is back),
//!   never one per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, FromRedisValue, IntoConnectionInfo,
    RedisConnectionInfo, Script,
};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use ext_plugin_sdk::metrics::Metrics;
use ext_plugin_sdk::ConfError;

use super::metrics::{Instruments, Outcome};
use super::sentinel::Sentinels;

/// TLS to a backend (`redis_ssl` / `redis_cluster_ssl`): the server's certificate is checked
/// against the system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` override them) unless `verify`
/// is off (`redis_ssl_verify: false`, APISIX's default).
#[derive(Clone, Copy, Debug)]
pub struct Tls {
    pub verify: bool,
}

/// Where a backend is.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp {
        host: String,
        port: u16,
        db: i64,
        username: Option<String>,
        password: Option<String>,
        tls: Option<Tls>,
    },
    Unix {
        path: String,
        db: i64,
        username: Option<String>,
        password: Option<String>,
    },
    Cluster {
        name: String,
        nodes: Vec<(String, u16)>,
        password: Option<String>,
        tls: Option<Tls>,
    },
    /// The master the sentinels name (`policy: "redis-sentinel"`).
    Sentinel {
        sentinels: Sentinels,
        db: i64,
        username: Option<String>,
        password: Option<String>,
    },
}

/// The most distinct backends one process keeps (a conf naming a new one beyond that fails).
pub const MAX_BACKENDS: usize = 256;

/// First probe after a failure; the wait doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a Redis call gave no answer.
#[derive(Debug)]
pub enum Unavailable {
    /// The breaker is open: Redis was not asked.
    Open,
    Timeout,
    Error(redis::RedisError),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Open => f.write_str("backend down (breaker open)"),
            Unavailable::Timeout => f.write_str("timed out"),
            Unavailable::Error(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// One backend, shared by every limiter conf that names it.
pub struct Backend {
    /// For logs and the `backend` label: `host:port/db`, `unix:/path/db`, `cluster:<name>`;
    /// never a credential.
    name: String,
    target: Target,
    timeout: Duration,
    /// Added to `timeout` for a call that has to connect first.
    connect_timeout: Duration,
    /// The current connection attempt; replaced after a failure so the next probe reconnects.
    conn: Mutex<Arc<OnceCell<Conn>>>,
    /// Breaker: `down` while open; calls before `retry_at` (ms since `epoch`) do not go out.
    down: AtomicBool,
    retry_at: AtomicU64,
    backoff_ms: AtomicU64,
    epoch: Instant,
    instruments: Instruments,
}

fn registry() -> &'static Mutex<HashMap<String, Weak<Backend>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<Backend>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn secret(password: &Option<String>) -> String {
    password.as_deref().map_or(String::new(), |p| {
        Sha256::digest(p.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// `-`, `tls` or `tls-noverify`.
fn tls_id(tls: Option<Tls>) -> &'static str {
    match tls {
        None => "-",
        Some(Tls { verify: true }) => "tls",
        Some(Tls { verify: false }) => "tls-noverify",
    }
}

/// `host:port,host:port…`.
fn joined(nodes: &[(String, u16)]) -> String {
    let nodes: Vec<String> = nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    nodes.join(",")
}

/// The registry key: everything that makes two backends different (APISIX's pool key).
fn identity(t: &Target, timeout: Duration, connect_timeout: Duration) -> String {
    let ms = format!("{}+{}", timeout.as_millis(), connect_timeout.as_millis());
    match t {
        Target::Tcp {
            host,
            port,
            db,
            username,
            password,
            tls,
        } => format!(
            "tcp#{host}#{port}#{db}#{}#{}#{}#{ms}",
            username.as_deref().unwrap_or(""),
            secret(password),
            tls_id(*tls)
        ),
        Target::Unix {
            path,
            db,
            username,
            password,
        } => format!(
            "unix#{path}#{db}#{}#{}#{ms}",
            username.as_deref().unwrap_or(""),
            secret(password)
        ),
        Target::Cluster {
            name,
            nodes,
            password,
            tls,
        } => format!(
            "cluster#{name}#{}#{}#{}#{ms}",
            joined(nodes),
            secret(password),
            tls_id(*tls)
        ),
        Target::Sentinel {
            sentinels,
            db,
            username,
            password,
        } => {
            format!(
                "sentinel#{}#{}#{}#{}#{db}#{}#{}#{ms}",
                sentinels.master,
                joined(&sentinels.nodes),
                sentinels.username.as_deref().unwrap_or(""),
                secret(&sentinels.password),
                username.as_deref().unwrap_or(""),
                secret(password)
            )
        }
    }
}

/// The shared backend for `target` with `timeout` per command (plus `connect_timeout` for one
/// that connects): the live one if any conf holds it, else a new one (not connected until its
/// first command).
pub fn backend(
    target: Target,
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<Arc<Backend>, ConfError> {
    let id = identity(&target, timeout, connect_timeout);
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = map.get(&id).and_then(Weak::upgrade) {
        return Ok(b);
    }
    if map.len() >= MAX_BACKENDS {
        map.retain(|_, b| b.strong_count() > 0);
        if map.len() >= MAX_BACKENDS {
            return Err(ConfError::new(format!(
                "too many distinct Redis backends in use (at most {MAX_BACKENDS})"
            )));
        }
    }
    let name = match &target {
        Target::Tcp { host, port, db, .. } => format!("{host}:{port}/{db}"),
        Target::Unix { path, db, .. } => format!("unix:{path}/{db}"),
        Target::Cluster { name, .. } => format!("cluster:{name}"),
        Target::Sentinel { sentinels, .. } => format!("sentinel:{}", sentinels.master),
    };
    let b = Arc::new(Backend {
        instruments: Instruments::new(&name),
        name,
        target,
        timeout,
        connect_timeout,
        conn: Mutex::new(Arc::new(OnceCell::new())),
        down: AtomicBool::new(false),
        retry_at: AtomicU64::new(0),
        backoff_ms: AtomicU64::new(MIN_BACKOFF.as_millis() as u64),
        epoch: Instant::now(),
    });
    map.insert(id, Arc::downgrade(&b));
    Ok(b)
}

fn settings(db: i64, username: &Option<String>, password: &Option<String>) -> RedisConnectionInfo {
    let mut s = RedisConnectionInfo::default().set_db(db);
    if let Some(u) = username {
        s = s.set_username(u);
    }
    if let Some(p) = password {
        s = s.set_password(p);
    }
    s
}

/// Makes ring rustls's process-wide provider (once; a provider installed before stays).
fn crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A multiplexed connection to one server.
async fn single(
    addr: ConnectionAddr,
    redis: RedisConnectionInfo,
    config: &AsyncConnectionConfig,
) -> redis::RedisResult<Conn> {
    let client = Client::open(addr.into_connection_info()?.set_redis_settings(redis))?;
    Ok(Conn::Single(
        client
            .get_multiplexed_async_connection_with_config(config)
            .await?,
    ))
}

impl Backend {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Exports this backend's commands and state in `metrics` (every prepare naming it calls
    /// this; see [`super::metrics`]).
    pub fn attach(&self, metrics: &Metrics) {
        self.instruments.attach(metrics, &self.name);
    }

    /// Runs `script` with `keys` and `args`, bounded by the timeout and behind the breaker.
    pub async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[i64],
        member: Option<&str>,
    ) -> Result<T, Unavailable> {
        if !self.admit() {
            self.instruments.record(Outcome::BreakerOpen, None);
            return Err(Unavailable::Open);
        }
        let started = Instant::now();
        let cell = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let deadline = if cell.initialized() {
            self.timeout
        } else {
            self.timeout + self.connect_timeout
        };
        let run = async {
            let conn = cell.get_or_try_init(|| self.connect()).await?;
            let mut inv = script.key(key);
            for a in args {
                inv.arg(*a);
            }
            if let Some(m) = member {
                inv.arg(m);
            }
            match conn.clone() {
                Conn::Single(mut c) => inv.invoke_async(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
            }
        };
        let outcome = match tokio::time::timeout(deadline, run).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Unavailable::Error(e)),
            Err(_) => Err(Unavailable::Timeout),
        };
        self.instruments
            .record(Outcome::of(&outcome), Some(started.elapsed()));
        match &outcome {
            Ok(_) => self.succeeded(),
            Err(why) => self.failed(&cell, why),
        }
        outcome
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(self.connect_timeout)))
            .set_response_timeout(Some(self.timeout));
        match &self.target {
            Target::Tcp {
                host,
                port,
                db,
                username,
                password,
                tls,
            } => {
                let addr = match tls {
                    None => ConnectionAddr::Tcp(host.clone(), *port),
                    Some(tls) => {
                        crypto_provider();
                        ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port: *port,
                            insecure: !tls.verify,
                            tls_params: None,
                        }
                    }
                };
                single(addr, settings(*db, username, password), &config).await
            }
            Target::Unix {
                path,
                db,
                username,
                password,
            } => {
                let addr = ConnectionAddr::Unix(path.into());
                single(addr, settings(*db, username, password), &config).await
            }
            Target::Cluster {
                nodes,
                password,
                tls,
                ..
            } => {
                let scheme = if tls.is_some() { "rediss" } else { "redis" };
                let urls: Vec<String> = nodes
                    .iter()
                    .map(|(h, p)| format!("{scheme}://{h}:{p}"))
                    .collect();
                let mut b = redis::cluster::ClusterClient::builder(urls)
                    .retries(1)
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout);
                if let Some(tls) = tls {
                    crypto_provider();
                    b = b.tls(if tls.verify {
                        redis::TlsMode::Secure
                    } else {
                        redis::TlsMode::Insecure
                    });
                }
                if let Some(p) = password {
                    b = b.password(p);
                }
                Ok(Conn::Cluster(b.build()?.get_async_connection().await?))
            }
            Target::Sentinel {
                sentinels,
                db,
                username,
                password,
            } => {
                let redis = settings(*db, username, password);
                Ok(Conn::Single(
                    sentinels.connect_master(redis, &config).await?,
                ))
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go out: always while up; while down, one probe per back-off period.
    fn admit(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        let now = self.now_ms();
        let at = self.retry_at.load(Ordering::Acquire);
        // The one caller that moves `retry_at` on probes; the others fail at once.
        now >= at
            && self
                .retry_at
                .compare_exchange(
                    at,
                    now + self.backoff_ms.load(Ordering::Relaxed),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            self.instruments.set_down(false);
            self.backoff_ms
                .store(MIN_BACKOFF.as_millis() as u64, Ordering::Relaxed);
            tracing::info!(backend = %self.name, "redis backend is back");
        }
    }

    fn failed(&self, cell: &Arc<OnceCell<Conn>>, why: &Unavailable) {
        // The next call (a probe) reconnects instead of reusing a connection that failed.
        {
            let mut current = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if Arc::ptr_eq(&current, cell) {
                *current = Arc::new(OnceCell::new());
            }
        }
        let backoff = self.backoff_ms.load(Ordering::Relaxed);
        self.retry_at
            .store(self.now_ms() + backoff, Ordering::Release);
        if self.down.swap(true, Ordering::AcqRel) {
            let next = (backoff * 2).min(MAX_BACKOFF.as_millis() as u64);
            self.backoff_ms.store(next, Ordering::Relaxed);
        } else {
            self.instruments.set_down(true);
            tracing::warn!(
                backend = %self.name,
                error = %why,
                "redis backend unavailable: limiters use their failure mode until it answers again"
            );
        }
    }
}
