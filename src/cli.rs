//! The command line: flags override the environment the gateway sets; [`run`] is the whole
//! program.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use crate::codec::ProtocolSetting;
use crate::config::{
    parse_listen_address, Config, DEFAULT_CONF_EXPIRE_SECS, DEFAULT_LISTEN_ADDRESS,
    MAX_CONF_EXPIRE_SECS,
};
use crate::frame::MAX_PAYLOAD;
use crate::log_fields::SafeFields;
use crate::log_format::{JsonLines, LogFormat};
use crate::metrics::{parse_metrics_address, DEFAULT_MAX_ROUTES};
use crate::peers::AllowPeers;
use crate::server::{serve, serve_per_core, Listener, Runner, RUNTIME_GRACE};
use crate::signals;
use ext_plugin_catalogue::opensergo;
use ext_plugin_sdk::host::Retention;
use ext_plugin_sdk::{Plugin, Registry};

/// What `--help` and `--version` say about a runner binary: its name, version and one-line
/// description. A custom runner passes its own, usually with [`about!`](crate::about).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct About {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
}

impl About {
    pub const fn new(
        name: &'static str,
        version: &'static str,
        description: &'static str,
    ) -> About {
        About {
            name,
            version,
            description,
        }
    }

    /// This crate's own binary, `ext-plugin-runner`.
    pub const fn runner() -> About {
        About::new(
            "ext-plugin-runner",
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_DESCRIPTION"),
        )
    }
}

/// The [`About`] of the crate this is written in, from its `Cargo.toml` (`name`, `version`,
/// `description`).
#[macro_export]
macro_rules! about {
    () => {
        $crate::cli::About::new(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_DESCRIPTION"),
        )
    };
}

/// The runner's flags. The gateway spawns it with APISIX_LISTEN_ADDRESS and
/// APISIX_CONF_EXPIRE_TIME set; flags override them.
#[derive(Debug, Parser)]
#[command(name = "ext-plugin-runner", version, about, long_about = None)]
pub struct Cli {
    /// Socket to listen on, as `unix:/abs/path.sock`.
    #[arg(long, env = "APISIX_LISTEN_ADDRESS", default_value = DEFAULT_LISTEN_ADDRESS)]
    pub listen: String,

    /// The gateway's conf cache expiry in seconds; prepared chains are kept 1.2 x this long
    /// after their last use.
    #[arg(long, env = "APISIX_CONF_EXPIRE_TIME", default_value_t = DEFAULT_CONF_EXPIRE_SECS,
          value_parser = parse_conf_expire)]
    pub conf_expire: u64,

    /// Payload protocol: `auto` (decided per connection from its first frame), `flatbuffers`
    /// (stock Apache APISIX, ext-plugin-proto v0.6.1) or `capnp` (this project's schema).
    #[arg(long, env = "EXT_PLUGIN_RUNNER_PROTOCOL", default_value = "auto")]
    pub protocol: ProtocolSetting,

    /// Log filter in tracing's EnvFilter syntax (e.g. `info`, `ext_plugin_runner=debug`).
    /// Overrides RUST_LOG; the default is `info`.
    #[arg(long)]
    pub log: Option<String>,

    /// Worker threads; the default is one per CPU.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// How the worker threads share connections: `per-core` (one single-threaded runtime per
    /// worker; a connection stays on the thread that accepted it) or `work-stealing` (one
    /// runtime; an idle thread takes ready connections from a busy one). BENCHMARKS.md compares
    /// them: per-core has the shorter tail on two CPUs and is level elsewhere: the default.
    #[arg(long, value_enum, default_value_t = ThreadModel::PerCore)]
    pub runtime: ThreadModel,

    /// Prepared chains kept at most.
    #[arg(long, default_value_t = Config::default().conf_cache_capacity)]
    pub conf_cache_capacity: usize,

    /// Bytes the cached chains may account for (key, confs and ~1 KiB each); past it the least
    /// recently used are dropped.
    #[arg(long, default_value_t = Config::default().conf_cache_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub conf_cache_bytes: u64,

    /// The largest conf one prepare_conf may carry (plugin names and JSON confs, in bytes); a
    /// larger one is refused.
    #[arg(long, default_value_t = Config::default().max_conf_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_conf_bytes: u64,

    /// Milliseconds within which every prepare_conf is answered; a chain not built by then is
    /// refused (its build goes on, and is cached if it finishes).
    #[arg(long, default_value_t = Config::default().prepare_timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub prepare_timeout_ms: u64,

    /// Chains built at once, overdue builds included; further prepares wait for a slot until
    /// their deadline. At most 256, half the blocking threads the runtime has, so hung builds
    /// always leave some.
    #[arg(long, default_value_t = Config::default().max_prepares_in_flight as u64,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_prepares_in_flight: u64,
    /// Plugin state values (a route's limiter counts) kept after their chains left the conf
    /// cache, so a route prepared again finds them; 0 keeps none.
    #[arg(long, default_value_t = Config::default().state_retention.capacity)]
    pub state_capacity: usize,

    /// How long such state is kept after its last chain went, in seconds.
    #[arg(long, default_value_t = Config::default().state_retention.idle.as_secs())]
    pub state_idle_secs: u64,

    /// Connections served at once.
    #[arg(long, default_value_t = Config::default().max_connections)]
    pub max_connections: usize,

    /// Who may connect, by the peer's credentials: `gateway` (the runner's own user, root, and
    /// the processes of the gateway that spawned it), `any`, or `uid:N` / `gid:N`; a
    /// comma-separated list admits the union (docs/operations.md).
    #[arg(long, value_name = "RULES", default_value_t = AllowPeers::default())]
    pub allow_peers: AllowPeers,

    /// Connections one peer uid may hold at once; the default is half of --max-connections.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_uid: Option<u64>,

    /// Deadline of one call in milliseconds (plugins plus extra_info round trips).
    #[arg(long, default_value_t = Config::default().call_timeout.as_millis() as u64)]
    pub call_timeout_ms: u64,

    /// The largest frame payload accepted, in bytes (at most 16777215, the protocol's own
    /// limit); a larger one is answered BAD_REQUEST and its connection closed.
    #[arg(long, default_value_t = Config::default().max_frame as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_PAYLOAD as u64))]
    pub max_frame: u64,

    /// Bytes of extra_info answers one call may read; past it the call is answered
    /// SERVICE_UNAVAILABLE.
    #[arg(long, default_value_t = Config::default().extra_info_budget as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub extra_info_budget: u64,

    /// Bytes buffered for incoming frames, over all connections; a connection whose frame
    /// needs more than is left is answered SERVICE_UNAVAILABLE and closed.
    #[arg(long, default_value_t = Config::default().max_buffered_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_buffered_bytes: u64,

    /// Seconds a connection may sit with no call in flight before the runner closes it. Keep it
    /// above the gateway's keepalive timeout (APISIX: 180 s).
    #[arg(long, default_value_t = Config::default().idle_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// Milliseconds a frame may stall part-way (or a reply wait for the gateway to read it)
    /// before the runner closes the connection.
    #[arg(long, default_value_t = Config::default().stall_timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout_ms: u64,

    /// Milliseconds within which a frame that has started arriving must be whole, however
    /// steadily it trickles; past it the connection is closed.
    #[arg(long, default_value_t = Config::default().frame_timeout.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub frame_timeout_ms: u64,

    /// Serve Prometheus metrics at `GET /metrics` (and `GET /healthz`) on `IP:PORT` (e.g.
    /// `127.0.0.1:9092`) or `unix:/abs/path.sock`. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Routes that get their own series in the metrics' `route` label; later ones are counted
    /// as `route="_other"`.
    #[arg(long, default_value_t = DEFAULT_MAX_ROUTES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_max_routes: u64,

    /// Log line format: `text` (human, the default) or `json` (one object per line with
    /// timestamp, level, target, message and fields).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Print the built-in plugins and exit.
    #[arg(long)]
    pub list_plugins: bool,

    #[command(flatten)]
    pub opensergo: OpenSergoFlags,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does instead of serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate chains offline, exactly as prepare_conf would, and exit: 0 when every chain
    /// prepares, 1 when any is refused, 2 when the input is unusable. Reads a JSON ext-plugin
    /// `conf` list, or an APISIX route or plugins object (every `ext-plugin-*` conf in it is
    /// checked; other plugins and fields are ignored). Listens on nothing.
    Check {
        /// The JSON file; `-` or nothing reads stdin.
        #[arg(value_name = "FILE|-")]
        file: Option<String>,
    },
}

/// Where the `opensergo` plugin's rules come from (docs/opensergo.md). With none of these set
/// the runner opens no rules file and no connection.
#[derive(Debug, Default, clap::Args)]
pub struct OpenSergoFlags {
    /// OpenSergo rules file (multi-document YAML of CRDs), watched and reloaded on change.
    #[arg(long, env = "EXT_PLUGIN_RUNNER_OPENSERGO_RULES")]
    pub opensergo_rules: Option<PathBuf>,

    /// The OpenSergo control plane, as JSON `{"endpoint": "host:port"}`.
    #[arg(long, env = "OPENSERGO_BOOTSTRAP_CONFIG")]
    pub opensergo_bootstrap_config: Option<String>,

    /// A file holding that JSON (used when the JSON itself is not given).
    #[arg(long, env = "OPENSERGO_BOOTSTRAP")]
    pub opensergo_bootstrap: Option<PathBuf>,

    /// The namespace of `opensergo` route confs that name none (default: `default`).
    #[arg(long, env = "EXT_PLUGIN_RUNNER_OPENSERGO_NAMESPACE")]
    pub opensergo_namespace: Option<String>,

    /// The app of `opensergo` route confs that name none.
    #[arg(long, env = "EXT_PLUGIN_RUNNER_OPENSERGO_APP")]
    pub opensergo_app: Option<String>,

    /// Print what the rules file applies to each resource, and exit (1 when it does not parse).
    #[arg(long)]
    pub opensergo_check: bool,
}

impl OpenSergoFlags {
    pub fn sources(&self) -> opensergo::Sources {
        opensergo::Sources {
            rules_file: self.opensergo_rules.clone(),
            bootstrap_config: self.opensergo_bootstrap_config.clone(),
            bootstrap_file: self.opensergo_bootstrap.clone(),
            defaults: opensergo::Defaults {
                namespace: self.opensergo_namespace.clone(),
                app: self.opensergo_app.clone(),
            },
        }
    }

    /// Starts the configured rule sources (on the current runtime) and hands their store to
    /// the registry's `opensergo` plugin.
    fn provide(&self, registry: Registry) -> Registry {
        let sources = self.sources();
        if !sources.any() {
            return registry;
        }
        if !registry.contains(opensergo::OpenSergo::NAME) {
            tracing::warn!("OpenSergo sources are configured but this runner has no `opensergo` plugin; ignored");
            return registry;
        }
        match opensergo::start(&sources) {
            Some(store) => registry.provide(store),
            None => registry,
        }
    }
}

impl Cli {
    /// The runner settings these flags describe.
    pub fn config(&self) -> Result<Config, String> {
        let listen: PathBuf = parse_listen_address(&self.listen)?;
        if self.conf_cache_capacity == 0 {
            return Err("--conf-cache-capacity must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.call_timeout_ms == 0 {
            return Err("--call-timeout-ms must be at least 1".into());
        }
        let metrics_listen = match &self.metrics_listen {
            Some(a) => {
                Some(parse_metrics_address(a).map_err(|e| format!("--metrics-listen: {e}"))?)
            }
            None => None,
        };
        Ok(Config {
            listen,
            conf_expire: Duration::from_secs(self.conf_expire),
            protocol: self.protocol,
            conf_cache_capacity: self.conf_cache_capacity,
            state_retention: Retention {
                capacity: self.state_capacity,
                idle: Duration::from_secs(self.state_idle_secs),
            },
            max_connections: self.max_connections,
            allow_peers: self.allow_peers.clone(),
            max_connections_per_uid: self
                .max_connections_per_uid
                .map_or((self.max_connections / 2).max(1), |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            // The parser capped it at MAX_PAYLOAD, which fits any usize.
            max_frame: self.max_frame as usize,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            stall_timeout: Duration::from_millis(self.stall_timeout_ms),
            frame_timeout: Duration::from_millis(self.frame_timeout_ms),
            conf_cache_bytes: to_usize(self.conf_cache_bytes),
            max_conf_bytes: to_usize(self.max_conf_bytes),
            prepare_timeout: Duration::from_millis(self.prepare_timeout_ms),
            max_prepares_in_flight: to_usize(self.max_prepares_in_flight),
            extra_info_budget: to_usize(self.extra_info_budget),
            max_buffered_bytes: to_usize(self.max_buffered_bytes),
            metrics_listen,
            metrics_max_routes: usize::try_from(self.metrics_max_routes).unwrap_or(usize::MAX),
            ..Config::default()
        })
    }
}

impl Cli {
    /// Parses the process's arguments (and environment) for the runner `about` describes; exits
    /// with clap's message and status 2 on a usage error, and after printing `--help` or
    /// `--version`.
    pub fn parse_for(about: About) -> Cli {
        Cli::parse_args_for(about, std::env::args_os())
    }

    /// [`Cli::parse_for`] with the arguments given (the first is the program's name).
    pub fn parse_args_for<I, T>(about: About, args: I) -> Cli
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = <Cli as clap::CommandFactory>::command()
            .name(about.name)
            .bin_name(about.name)
            .version(about.version)
            .about(about.description);
        let matches = command.get_matches_from(args);
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// A count from the command line; past what memory can address it is as good as unbounded.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `APISIX_CONF_EXPIRE_TIME` / `--conf-expire`: whole seconds, 1 to [`MAX_CONF_EXPIRE_SECS`],
/// checked before anything listens (a value past the range once panicked after "listening").
fn parse_conf_expire(value: &str) -> Result<u64, String> {
    let range = format!("APISIX_CONF_EXPIRE_TIME (--conf-expire) must be whole seconds from 1 to {MAX_CONF_EXPIRE_SECS} (ten years)");
    match value.trim().parse::<u64>() {
        Ok(secs) if (1..=MAX_CONF_EXPIRE_SECS).contains(&secs) => Ok(secs),
        _ => Err(range),
    }
}

/// The log filter: `--log`, else `RUST_LOG`, else `info`. A filter that does not parse is an
/// error wherever it came from: an operator who set one wants it, not a silent default.
fn log_filter(flag: Option<&str>, env: Option<&str>) -> Result<EnvFilter, String> {
    match (flag, env) {
        (Some(f), _) => EnvFilter::try_new(f).map_err(|e| format!("bad --log filter `{f}`: {e}")),
        (None, Some(f)) if !f.trim().is_empty() => {
            EnvFilter::try_new(f).map_err(|e| format!("bad RUST_LOG filter `{f}`: {e}"))
        }
        (None, _) => Ok(EnvFilter::new("info")),
    }
}

/// How the worker threads share connections (`--runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ThreadModel {
    WorkStealing,
    PerCore,
}

/// Runs the runner as a gateway spawns it: parses the command line and environment, sets up
/// logging to stderr, listens, and serves `registry`'s plugins until SIGTERM or SIGINT.
///
/// A runner with plugins of your own is one line: `fn main() -> ExitCode {
/// cli::run(ext_plugin_catalogue::builtin().with::<MyPlugin>(), ext_plugin_runner::about!()) }`.
pub fn run(registry: Registry, about: About) -> ExitCode {
    run_with_args(registry, about, std::env::args_os())
}

/// [`run`] with the arguments given instead of the process's (the first is the program's name):
/// for a runner embedded in another program, and for tests that spawn one.
pub fn run_with_args<I, T>(registry: Registry, about: About, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_args_for(about, args);
    let name = about.name;
    if cli.list_plugins {
        for name in registry.names() {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    if cli.opensergo.opensergo_check {
        let Some(path) = &cli.opensergo.opensergo_rules else {
            eprintln!("{name}: --opensergo-check needs --opensergo-rules");
            return ExitCode::from(2);
        };
        return match opensergo::check_file(path) {
            Ok(listing) => {
                print!("{listing}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{name}: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Check { file }) = &cli.command {
        return crate::check::run(&registry, file.as_deref(), name);
    }

    // Everything on stderr lands in the gateway's error log.
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = match log_filter(cli.log.as_deref(), rust_log.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(SafeFields)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // The gateway copies stderr into its error log: colour only on a terminal.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.event_format(JsonLines).init(),
    }

    install_panic_hook();

    let config = match cli.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("APISIX_LISTEN_ADDRESS").is_none() && cli.listen == DEFAULT_LISTEN_ADDRESS {
        info!("APISIX_LISTEN_ADDRESS is not set and --listen not given; using {DEFAULT_LISTEN_ADDRESS}");
    }

    // Per core, this runtime only waits for the stop and serves the metrics endpoint; the
    // serving threads get their own (and the signals a thread of their own, `signals`).
    let mut runtime = match cli.runtime {
        ThreadModel::WorkStealing => tokio::runtime::Builder::new_multi_thread(),
        ThreadModel::PerCore => tokio::runtime::Builder::new_current_thread(),
    };
    runtime.enable_all();
    if let Some(n) = cli.workers {
        runtime.worker_threads(usize::from(n));
    }
    let threads = cli.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    // Before the socket exists: a gateway that connects and at once stops the runner must find
    // the signals handled.
    let stop = match signals::watch(config.drain_timeout + signals::HARD_EXIT_MARGIN) {
        Ok(stop) => stop,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let listener = match Listener::bind(&config.listen) {
            Ok(l) => l,
            Err(e) => {
                error!("cannot listen on {}: {e}", config.listen.display());
                return ExitCode::FAILURE;
            }
        };
        info!(
            path = %config.listen.display(),
            protocol = %config.protocol,
            allow_peers = %config.allow_peers,
            metrics = %config.metrics_listen.as_ref().map_or("off".to_owned(), |a| a.to_string()),
            plugins = ?registry.names(),
            "listening"
        );
        let registry = cli.opensergo.provide(registry);
        let runner = Runner::new(config, registry);
        let signalled = async move {
            match stop.await {
                Ok(name) => info!("{name}: draining"),
                // The watcher never ends without a signal; should it, keep serving.
                Err(_) => std::future::pending().await,
            }
        };
        match cli.runtime {
            ThreadModel::WorkStealing => serve(listener, runner, signalled).await,
            ThreadModel::PerCore => {
                if let Err(e) = serve_per_core(listener, runner, threads, signalled).await {
                    error!("cannot start the serving threads: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        ExitCode::SUCCESS
    });
    // A prepare blocked in a plugin (a FIFO, a pathological conf) holds a blocking-pool thread
    // that no timeout can stop; dropping the runtime would wait for it. Its connection was
    // answered by now, so leave it behind: returning from main ends the process.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    code
}

/// Prints panics (a plugin's are answered SERVICE_UNAVAILABLE and the runner lives on) through
/// the log, at most one line per interval with a count: a plugin that panics on every request
/// must not flood the gateway's error log.
fn install_panic_hook() {
    static PANICS: std::sync::LazyLock<crate::limits::LimitLog> =
        std::sync::LazyLock::new(Default::default);
    std::panic::set_hook(Box::new(|info| {
        if let Some(hits) = PANICS.hit() {
            error!(hits, "panic: {info}");
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_log_filter_is_an_error_from_the_flag_and_from_rust_log() {
        assert!(log_filter(Some("info,=[{"), None).is_err());
        let err = log_filter(None, Some("info,=[{")).unwrap_err();
        assert!(err.contains("RUST_LOG"), "{err}");
        assert!(log_filter(None, Some("debug")).is_ok());
        assert!(log_filter(None, Some("")).is_ok());
        assert!(log_filter(None, None).is_ok());
    }

    #[test]
    fn flags_build_a_config() {
        let cli = Cli::try_parse_from([
            "ext-plugin-runner",
            "--listen",
            "unix:/tmp/x.sock",
            "--conf-expire",
            "10",
            "--protocol",
            "capnp",
        ])
        .unwrap();
        let c = cli.config().unwrap();
        assert_eq!(c.listen, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.conf_expire, Duration::from_secs(10));
        assert_eq!(
            c.protocol,
            ProtocolSetting::Fixed(crate::codec::Protocol::Capnp)
        );
    }

    /// Per-core measured the shorter two-CPU tail, level elsewhere (BENCHMARKS.md): the default.
    #[test]
    fn the_thread_model_is_per_core_unless_asked() {
        let plain = Cli::try_parse_from(["ext-plugin-runner"]).unwrap();
        assert_eq!(plain.runtime, ThreadModel::PerCore);
        let asked =
            Cli::try_parse_from(["ext-plugin-runner", "--runtime", "work-stealing"]).unwrap();
        assert_eq!(asked.runtime, ThreadModel::WorkStealing);
    }

    #[test]
    fn bad_values_are_refused_clearly() {
        let cli = Cli::try_parse_from(["ext-plugin-runner", "--listen", "/tmp/x.sock"]).unwrap();
        assert!(cli.config().unwrap_err().contains("unix:"));
        assert!(Cli::try_parse_from(["ext-plugin-runner", "--protocol", "morse"]).is_err());
        let fb = Cli::try_parse_from(["ext-plugin-runner", "--protocol", "flatbuffers"]).unwrap();
        assert_eq!(
            fb.protocol,
            ProtocolSetting::Fixed(crate::codec::Protocol::FlatBuffers)
        );
        let auto = Cli::try_parse_from(["ext-plugin-runner"]).unwrap();
        assert_eq!(auto.protocol, ProtocolSetting::Auto);
        assert!(Cli::try_parse_from(["ext-plugin-runner", "--conf-expire", "0"]).is_err());
        for limit in ["--max-frame", "--idle-timeout-secs", "--stall-timeout-ms"] {
            assert!(Cli::try_parse_from(["ext-plugin-runner", limit, "0"]).is_err());
        }
        assert!(Cli::try_parse_from(["ext-plugin-runner", "--max-frame", "16777216"]).is_err());
    }

    #[test]
    fn opensergo_flags_describe_the_sources_and_none_means_none() {
        let plain = Cli::try_parse_from(["ext-plugin-runner"]).unwrap();
        assert!(
            !plain.opensergo.sources().any(),
            "no flags, no OpenSergo source"
        );
        let cli = Cli::try_parse_from([
            "ext-plugin-runner",
            "--opensergo-rules",
            "/etc/rules.yaml",
            "--opensergo-bootstrap-config",
            r#"{"endpoint": "cp:10246"}"#,
            "--opensergo-app",
            "foo-app",
        ])
        .unwrap();
        let s = cli.opensergo.sources();
        assert!(s.any());
        assert_eq!(s.rules_file, Some(PathBuf::from("/etc/rules.yaml")));
        assert_eq!(s.defaults.app.as_deref(), Some("foo-app"));
        assert_eq!(s.defaults.namespace, None);
    }

    #[test]
    fn limit_flags_reach_the_config_and_default_to_it() {
        let cli = Cli::try_parse_from([
            "ext-plugin-runner",
            "--max-frame",
            "4096",
            "--idle-timeout-secs",
            "30",
            "--stall-timeout-ms",
            "250",
        ])
        .unwrap();
        let c = cli.config().unwrap();
        assert_eq!(c.max_frame, 4096);
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.stall_timeout, Duration::from_millis(250));
        let budgets = Cli::try_parse_from([
            "ext-plugin-runner",
            "--conf-cache-bytes=1000",
            "--max-conf-bytes=2000",
            "--prepare-timeout-ms=3000",
            "--max-prepares-in-flight=4",
            "--extra-info-budget=5000",
            "--max-buffered-bytes=6000",
            "--frame-timeout-ms=7000",
        ])
        .unwrap()
        .config()
        .unwrap();
        assert_eq!(
            (
                budgets.conf_cache_bytes,
                budgets.max_conf_bytes,
                budgets.prepare_timeout,
                budgets.max_prepares_in_flight,
                budgets.extra_info_budget,
                budgets.max_buffered_bytes,
                budgets.frame_timeout
            ),
            (
                1000,
                2000,
                Duration::from_secs(3),
                4,
                5000,
                6000,
                Duration::from_secs(7)
            )
        );
        let d = Cli::try_parse_from(["ext-plugin-runner"])
            .unwrap()
            .config()
            .unwrap();
        let default = Config::default();
        assert_eq!(
            (d.max_frame, d.idle_timeout, d.stall_timeout),
            (
                default.max_frame,
                default.idle_timeout,
                default.stall_timeout
            )
        );
        assert_eq!(
            (d.prepare_timeout, d.extra_info_budget, d.max_buffered_bytes),
            (
                default.prepare_timeout,
                default.extra_info_budget,
                default.max_buffered_bytes
            )
        );
    }

    #[test]
    fn state_retention_flags_reach_the_config_and_default_to_it() {
        let cli = Cli::try_parse_from([
            "ext-plugin-runner",
            "--state-capacity",
            "10",
            "--state-idle-secs",
            "5",
        ])
        .unwrap();
        let c = cli.config().unwrap();
        assert_eq!(
            c.state_retention,
            Retention {
                capacity: 10,
                idle: Duration::from_secs(5)
            }
        );
        let d = Cli::try_parse_from(["ext-plugin-runner"]).unwrap();
        assert_eq!(
            d.config().unwrap().state_retention,
            Config::default().state_retention
        );
    }

    #[test]
    fn metrics_flags_reach_the_config() {
        let cli = Cli::try_parse_from([
            "ext-plugin-runner",
            "--metrics-listen",
            "127.0.0.1:9092",
            "--metrics-max-routes",
            "5",
        ])
        .unwrap();
        let c = cli.config().unwrap();
        assert_eq!(
            c.metrics_listen,
            Some(crate::metrics::MetricsAddress::Tcp(
                "127.0.0.1:9092".parse().unwrap()
            ))
        );
        assert_eq!(c.metrics_max_routes, 5);
        let off = Cli::try_parse_from(["ext-plugin-runner"]).unwrap();
        assert_eq!(off.config().unwrap().metrics_listen, None);
        let bad = Cli::try_parse_from(["ext-plugin-runner", "--metrics-listen", "localhost:1"]);
        let err = bad.unwrap().config().unwrap_err();
        assert!(err.contains("--metrics-listen"), "{err}");
        assert!(Cli::try_parse_from(["ext-plugin-runner", "--metrics-max-routes", "0"]).is_err());
    }

    #[test]
    fn peer_flags_reach_the_config() {
        let d = Cli::try_parse_from(["ext-plugin-runner"]).unwrap();
        let c = d.config().unwrap();
        assert_eq!(c.allow_peers, crate::peers::AllowPeers::default());
        assert_eq!(c.max_connections_per_uid, c.max_connections / 2);
        let cli = Cli::try_parse_from([
            "ext-plugin-runner",
            "--allow-peers",
            "uid:1001,gid:7",
            "--max-connections-per-uid",
            "3",
        ])
        .unwrap();
        let c = cli.config().unwrap();
        assert_eq!(c.allow_peers.to_string(), "uid:1001,gid:7");
        assert_eq!(c.max_connections_per_uid, 3);
        assert!(Cli::try_parse_from(["ext-plugin-runner", "--allow-peers", "nobody"]).is_err());
    }

    #[test]
    fn the_conf_expiry_is_range_checked_before_anything_listens() {
        for bad in ["0", "18446744073709551615", "1e9", "ten"] {
            let err = Cli::try_parse_from(["ext-plugin-runner", "--conf-expire", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("APISIX_CONF_EXPIRE_TIME"), "{bad}: {err}");
        }
        let max = MAX_CONF_EXPIRE_SECS.to_string();
        let c = Cli::try_parse_from(["ext-plugin-runner", "--conf-expire", &max]).unwrap();
        assert!(c.config().unwrap().conf_ttl() > Duration::from_secs(MAX_CONF_EXPIRE_SECS));
    }

    #[test]
    fn the_log_format_is_text_unless_json_is_asked() {
        let json = Cli::try_parse_from(["ext-plugin-runner", "--log-format", "json"]).unwrap();
        assert_eq!(json.log_format, LogFormat::Json);
        let default = Cli::try_parse_from(["ext-plugin-runner"]).unwrap();
        assert_eq!(default.log_format, LogFormat::Text);
        assert!(Cli::try_parse_from(["ext-plugin-runner", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn check_is_a_subcommand_with_an_optional_file() {
        for (args, file) in [
            (&["check", "-"][..], Some("-")),
            (&["check", "route.json"][..], Some("route.json")),
            (&["check"][..], None),
        ] {
            let cli = Cli::try_parse_from(
                std::iter::once("ext-plugin-runner").chain(args.iter().copied()),
            )
            .unwrap();
            match cli.command {
                Some(Command::Check { file: f }) => assert_eq!(f.as_deref(), file),
                None => panic!("{args:?}: no subcommand"),
            }
        }
        let serve = Cli::try_parse_from(["ext-plugin-runner"]).unwrap();
        assert!(serve.command.is_none());
    }
}
