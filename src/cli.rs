//! The command line: flags override the environment the gateway sets; [`run`] is the whole
//! program.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use crate::codec::ProtocolSetting;
use crate::config::{
    parse_listen_address, Config, DEFAULT_CONF_EXPIRE_SECS, DEFAULT_LISTEN_ADDRESS,
};
use crate::frame::MAX_PAYLOAD;
use crate::log_format::{JsonLines, LogFormat};
use crate::metrics::{parse_metrics_address, DEFAULT_MAX_ROUTES};
use crate::server::{serve, serve_per_core, Listener, Runner};
use ext_plugin_catalogue::opensergo;
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
          value_parser = clap::value_parser!(u64).range(1..))]
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

    /// How the worker threads share connections: `work-stealing` (one runtime; an idle thread
    /// takes ready connections from a busy one) or `per-core` (one single-threaded runtime per
    /// worker; a connection stays on the thread that accepted it). BENCHMARKS.md compares them.
    #[arg(long, value_enum, default_value_t = ThreadModel::WorkStealing)]
    pub runtime: ThreadModel,

    /// Prepared chains kept at most.
    #[arg(long, default_value_t = Config::default().conf_cache_capacity)]
    pub conf_cache_capacity: usize,

    /// Connections served at once.
    #[arg(long, default_value_t = Config::default().max_connections)]
    pub max_connections: usize,

    /// Deadline of one call in milliseconds (plugins plus extra_info round trips).
    #[arg(long, default_value_t = Config::default().call_timeout.as_millis() as u64)]
    pub call_timeout_ms: u64,

    /// The largest frame payload accepted, in bytes (at most 16777215, the protocol's own
    /// limit); a larger one is answered BAD_REQUEST and its connection closed.
    #[arg(long, default_value_t = Config::default().max_frame as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_PAYLOAD as u64))]
    pub max_frame: u64,

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
            max_connections: self.max_connections,
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            // The parser capped it at MAX_PAYLOAD, which fits any usize.
            max_frame: self.max_frame as usize,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            stall_timeout: Duration::from_millis(self.stall_timeout_ms),
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
        let command = <Cli as clap::CommandFactory>::command()
            .name(about.name)
            .bin_name(about.name)
            .version(about.version)
            .about(about.description);
        let matches = command.get_matches();
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
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

/// Runs the runner as a gateway spawns it: parses the command line and environment, sets up
/// How the worker threads share connections (`--runtime`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ThreadModel {
    WorkStealing,
    PerCore,
}

/// logging to stderr, listens, and serves `registry`'s plugins until SIGTERM or SIGINT.
///
/// A runner with plugins of your own is one line: `fn main() -> ExitCode {
/// cli::run(ext_plugin_catalogue::builtin().with::<MyPlugin>(), ext_plugin_runner::about!()) }`.
pub fn run(registry: Registry, about: About) -> ExitCode {
    let cli = Cli::parse_for(about);
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

    // Per core, this runtime only waits for signals and serves the metrics endpoint; the
    // serving threads get their own.
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

    runtime.block_on(async move {
        let listener = match Listener::bind(&config.listen) {
            Ok(l) => l,
            Err(e) => {
                error!("cannot listen on {}: {e}", config.listen.display());
                return ExitCode::FAILURE;
            }
        };
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        info!(
            path = %config.listen.display(),
            protocol = %config.protocol,
            metrics = %config.metrics_listen.as_ref().map_or("off".to_owned(), |a| a.to_string()),
            plugins = ?registry.names(),
            "listening"
        );
        let registry = cli.opensergo.provide(registry);
        let runner = Runner::new(config, registry);
        let signalled = async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: draining"),
                _ = int.recv() => info!("SIGINT: draining"),
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
    })
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
