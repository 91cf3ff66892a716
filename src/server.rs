//! The listening socket and the accept loop (docs/protocol.md §1).
//!
//! [`Listener::bind`] owns the socket file's life cycle: it replaces a stale socket, refuses to
//! replace anything else, opens the file to the gateway's workers (mode 0766, as stock runners
//! do; [`crate::peers`] then checks who connected) and, when dropped, removes the file only if
//! it is still the one it created (on a gateway reload a new runner may already listen on the
//! same path). [`serve`] accepts until its
//! shutdown future resolves, then stops accepting, lets calls in flight finish for the drain
//! timeout, answers the calls still running with an error frame (not a bare end of stream), and
//! returns: the whole stop fits in the gateway's 1 s (docs/HARDENING.md). [`serve_per_core`]
//! does the same with one single-threaded runtime per worker thread, each accepting from the
//! shared socket and serving the connections it accepted.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::conf_cache::{CacheLimits, ConfCache};
use crate::config::Config;
use crate::connection;
use crate::framed::ByteBudget;
use crate::limits::Limits;
use crate::metrics::{self, RunnerMetrics};
use crate::peers::PeerPolicy;
use ext_plugin_sdk::host::StateRegistry;
use ext_plugin_sdk::metrics::Metrics;
use ext_plugin_sdk::Registry;

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) cache: Arc<ConfCache>,
    pub(crate) state: StateRegistry,
    pub(crate) limits: Limits,
    pub(crate) metrics: RunnerMetrics,
    /// What every connection's frames still arriving may hold together.
    pub(crate) buffers: ByteBudget,
    /// Set when the drain timeout has passed: connections answer the call they are serving with
    /// SERVICE_UNAVAILABLE and close.
    pub(crate) abandon: watch::Sender<bool>,
    pub(crate) peers: PeerPolicy,
}

/// A configured runner: settings, plugins, and the conf cache they fill.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

impl Runner {
    pub fn new(config: Config, registry: Registry) -> Runner {
        let cache = Arc::new(ConfCache::new(CacheLimits::from(&config)));
        let metrics = match config.metrics_listen {
            Some(_) => RunnerMetrics::new(config.metrics_max_routes),
            None => RunnerMetrics::default(),
        };
        let state = StateRegistry::with_metrics(metrics.registry().clone())
            .retaining(config.state_retention, config.clock.clone());
        let shared = Arc::new(Shared {
            buffers: ByteBudget::new(config.max_buffered_bytes),
            peers: PeerPolicy::new(config.allow_peers.clone(), config.max_connections_per_uid),
            config,
            registry,
            cache,
            state,
            limits: Limits::default(),
            metrics,
            abandon: watch::Sender::new(false),
        });
        metrics::watch_conf_cache(&shared);
        Runner { shared }
    }

    /// The metrics registry: the runner's own metrics and every plugin's. A custom runner may
    /// register its own here (see [`ext_plugin_sdk::metrics`]). Disabled (counting, exporting
    /// nothing) unless `metrics_listen` is set.
    pub fn metrics(&self) -> &Metrics {
        self.shared.metrics.registry()
    }

    /// What `GET /metrics` answers now; `None` when metrics are off.
    pub fn render_metrics(&self) -> Option<String> {
        self.shared
            .metrics
            .is_on()
            .then(|| self.shared.metrics.render())
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Prepared chains currently cached.
    pub fn cached_confs(&self) -> usize {
        self.shared.cache.len()
    }

    /// The cached chains' accounted size, in bytes (bounded by `conf_cache_bytes`).
    pub fn cached_conf_bytes(&self) -> usize {
        self.shared.cache.bytes()
    }

    /// Bytes that connections' frame buffers hold of the `max_buffered_bytes` budget now.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.buffers.used()
    }

    /// Hands out conf tokens from `next` on. Tokens wrap after 2^32 prepares; tests of the wrap
    /// start the count next to a live token instead.
    #[doc(hidden)]
    pub fn set_next_conf_token(&self, next: u32) {
        self.shared.cache.set_next_token(next);
    }
}

/// A bound Unix socket that removes its file when dropped, if the file is still its own.
pub struct Listener {
    inner: UnixListener,
    _file: SocketFile,
}

struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), error = %e, "could not remove the socket file");
                }
            }
            Ok(_) => {
                debug!(path = %self.path.display(), "socket file belongs to another runner now; left in place")
            }
            Err(_) => {}
        }
    }
}

impl Listener {
    pub(crate) async fn accept(&self) -> io::Result<tokio::net::UnixStream> {
        self.inner.accept().await.map(|(s, _)| s)
    }

    /// Binds `path`, replacing a stale socket file. Must run inside a tokio runtime.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                // APISIX starts the new runner on the old one's path when it reloads; say so,
                // since anyone else taking a live runner's socket is a mistake worth seeing.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    tracing::warn!(
                        path = %path.display(),
                        "a live runner is listening on this socket; taking the path over (the old runner keeps its connections until it exits)"
                    );
                } else {
                    tracing::info!(path = %path.display(), "replacing a stale socket file");
                }
                fs::remove_file(path)?
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; refusing to replace it",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let inner = UnixListener::bind(path)?;
        // The gateway's workers often run as another user than the runner.
        fs::set_permissions(path, fs::Permissions::from_mode(0o766))?;
        let meta = fs::symlink_metadata(path)?;
        Ok(Listener {
            inner,
            _file: SocketFile {
                path: path.to_owned(),
                dev: meta.dev(),
                ino: meta.ino(),
            },
        })
    }
}

/// Serves connections until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    listener: Listener,
    runner: Runner,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let shared = runner.shared;
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    let _metrics = (shared.config.metrics_listen.clone())
        .map(|address| metrics::endpoint::spawn(address, shared.clone(), stop_rx.clone()));
    let connections = accept_until(&listener.inner, &shared, &slots, &stop_rx, shutdown).await;
    // Stop accepting and take the socket file away first, so the gateway's new connections fail
    // fast instead of waiting on a runner that is leaving.
    drop(listener);
    let _ = stop_tx.send(true);
    drain(connections, &shared).await.log(&shared);
}

/// Serves connections like [`serve`], on `threads` threads that each run a single-threaded
/// runtime: every thread accepts from the shared socket and serves the connections it accepted
/// itself, to the end (no work stealing, no cross-thread wake-ups). The caller's runtime keeps
/// the metrics endpoint and waits for `shutdown`; then every thread stops accepting and drains.
/// Fails only if a thread or its runtime cannot be started.
pub async fn serve_per_core(
    listener: Listener,
    runner: Runner,
    threads: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let shared = runner.shared;
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    let _metrics = (shared.config.metrics_listen.clone())
        .map(|address| metrics::endpoint::spawn(address, shared.clone(), stop_rx.clone()));
    let mut cores = Vec::with_capacity(threads);
    for i in 0..threads {
        // Everything that can fail is done here, before any thread serves.
        let socket = listener.inner.as_fd().try_clone_to_owned()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shared, slots, stop_rx) = (shared.clone(), slots.clone(), stop_rx.clone());
        let core = std::thread::Builder::new()
            .name(format!("runner-core-{i}"))
            .spawn(move || {
                let drained = runtime.block_on(async move {
                    let socket = std::os::unix::net::UnixListener::from(socket);
                    let listener = match UnixListener::from_std(socket) {
                        Ok(l) => l,
                        Err(e) => {
                            error!("core {i}: cannot watch the socket: {e}");
                            return Drained::default();
                        }
                    };
                    // This thread's connections stop on a signal of its own, sent once the
                    // thread has stopped accepting and collected the connections that ended:
                    // the drain counts those the stop closes, as `serve`'s does.
                    let (core_stop_tx, core_stop_rx) = watch::channel(false);
                    let mut stop = stop_rx;
                    let stopped = async move {
                        let _ = stop.changed().await;
                    };
                    let connections =
                        accept_until(&listener, &shared, &slots, &core_stop_rx, stopped).await;
                    drop(listener);
                    let _ = core_stop_tx.send(true);
                    drain(connections, &shared).await
                });
                // As the main runtime does (`cli::run`): a prepare blocked in a plugin holds a
                // blocking thread no timeout stops; waiting for it would keep the process alive.
                runtime.shutdown_timeout(RUNTIME_GRACE);
                drained
            })?;
        cores.push(core);
    }
    shutdown.await;
    drop(listener);
    let _ = stop_tx.send(true);
    // Joining blocks: off this runtime's thread, which serves the metrics endpoint meanwhile.
    // One drain line for the runner, the threads' counts added up.
    let joined = tokio::task::spawn_blocking(move || {
        let mut total = Drained::default();
        let mut panicked = 0;
        for core in cores {
            match core.join() {
                Ok(d) => total.add(d),
                Err(_) => panicked += 1,
            }
        }
        (total, panicked)
    })
    .await;
    match joined {
        Ok((total, 0)) => total.log(&shared),
        Ok((total, _)) => {
            total.log(&shared);
            error!("a serving thread panicked");
        }
        Err(_) => error!("a serving thread panicked"),
    }
    Ok(())
}

/// Accepts connections from `listener` and serves each on a task of the current runtime, until
/// `shutdown` resolves; the connections still open are returned for [`drain`].
async fn accept_until(
    listener: &UnixListener,
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    stop_rx: &watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> JoinSet<()> {
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(1);
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: further connections wait in the listen backlog (and the gateway's
                // connect times out if none frees up). Logged once per interval, not per wait.
                if let Some(hits) = shared.limits.connections.hit() {
                    warn!(
                        limit = shared.config.max_connections,
                        hits, "--max-connections reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(1);
                // A peer `--allow-peers` refuses, or over its uid's share, is dropped unanswered.
                let Some(peer) = shared.peers.admit(&stream, &shared.limits) else {
                    continue;
                };
                shared.metrics.connection_opened();
                let shared = shared.clone();
                let stop = stop_rx.clone();
                connections.spawn(async move {
                    connection::serve(stream, shared, stop).await;
                    drop((permit, peer));
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                if let Some(hits) = shared.limits.accept_failures.hit() {
                    warn!(error = %e, hits, "accept failed; retrying in {backoff:?}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    // Connections that ended since the last accept are not in flight: collected now, before
    // the caller tells the rest to stop (after that, one that closes is one the stop closed).
    while connections.try_join_next().is_some() {}
    connections
}

/// How a drain went: the connections open when it began, and those still running at the drain
/// timeout (answered SERVICE_UNAVAILABLE, then closed).
#[derive(Debug, Default)]
struct Drained {
    open: usize,
    abandoned: usize,
}

impl Drained {
    fn add(&mut self, other: Drained) {
        self.open += other.open;
        self.abandoned += other.abandoned;
    }

    fn log(&self, shared: &Shared) {
        match self.abandoned {
            0 => info!(connections = self.open, "drained; exiting"),
            left => warn!(
                connections = self.open,
                left,
                "calls still running after {:?}; answered them SERVICE_UNAVAILABLE",
                shared.config.drain_timeout
            ),
        }
    }
}

/// Lets the calls in flight finish, for the drain timeout at most; past it, answers the calls
/// still running SERVICE_UNAVAILABLE (the `abandon` signal) and gives their connections
/// [`ABANDON_GRACE`] to send that.
///
/// `connections` are those open when the stop was sent ([`accept_until`] collected the ones
/// that ended before): the count includes those the stop has closed since.
async fn drain(mut connections: JoinSet<()>, shared: &Shared) -> Drained {
    let open = connections.len();
    let drained = tokio::time::timeout(shared.config.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_ok() {
        return Drained { open, abandoned: 0 };
    }
    let abandoned = connections.len();
    // Each connection answers its call and closes; one whose gateway does not read the answer
    // within the grace is cut off. Per core, the first thread here abandons every thread's
    // calls: they share the drain timeout, which has passed for all.
    shared.abandon.send_replace(true);
    let _ = tokio::time::timeout(ABANDON_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    // Not `shutdown().await`: a task whose plugin blocks its worker thread never ends, and
    // waiting for it would keep the process alive. Dropping the set aborts the rest.
    connections.abort_all();
    Drained { open, abandoned }
}

/// After the drain timeout, how long connections get to send their calls' error frames.
pub(crate) const ABANDON_GRACE: Duration = Duration::from_millis(50);

/// At exit, how long a runtime may take to drop what is left (tasks already cancelled).
/// With the drain timeout (800 ms) and the abandon grace (50 ms) this keeps a SIGTERM under the
/// gateway's 1 s.
pub(crate) const RUNTIME_GRACE: Duration = Duration::from_millis(50);
