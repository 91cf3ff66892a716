//! `ext-plugin-replay`: generate, record and replay ext-plugin frame corpora, and measure a
//! runner against the echo floor. See `ext_plugin_runner::replay` and BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ext_plugin_replay::compare::compare;
use ext_plugin_replay::corpus::Corpus;
use ext_plugin_replay::drive::{self, Limit, Mode, Settings};
use ext_plugin_replay::echo::EchoServer;
use ext_plugin_replay::record::{record, Recording};
use ext_plugin_replay::scenario::Scenario;
use ext_plugin_replay::spawn::SpawnedRunner;
use ext_plugin_replay::{memory, placeholders, plan, ReplayError};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::Pair;

#[derive(Debug, Parser)]
#[command(name = "ext-plugin-replay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Turn a scenario file (JSON) into a corpus file.
    Generate {
        #[arg(long)]
        scenario: PathBuf,
        #[arg(long, default_value = "capnp", value_parser = parse_protocol)]
        protocol: Protocol,
        #[arg(long)]
        out: PathBuf,
    },
    /// Replay a corpus against a runner (or any socket) and check every reply.
    Replay {
        #[arg(long)]
        corpus: PathBuf,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        load: Load,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the echo floor: every frame is written back unchanged.
    Echo {
        #[arg(long)]
        listen: PathBuf,
        /// Stop after this long (e.g. `30s`); the default is to run until killed.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Proxy a gateway to a runner, recording every exchange into a corpus file.
    Record {
        /// The socket the gateway connects to.
        #[arg(long)]
        listen: PathBuf,
        /// The runner's socket.
        #[arg(long)]
        upstream: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Stop after this long; the default is to run until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Replay the same frames against a runner and the echo floor; print both and the ratio.
    Compare {
        /// A scenario file (the corpus is generated in memory) ...
        #[arg(long, conflicts_with = "corpus", required_unless_present = "corpus")]
        scenario: Option<PathBuf>,
        /// ... or a corpus file.
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(long, default_value = "capnp", value_parser = parse_protocol)]
        protocol: Protocol,
        #[command(flatten)]
        target: Target,
        /// Connection counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        connections: Vec<usize>,
        /// Pipelining depths to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        depth: Vec<usize>,
        /// Timed run length per target and setting.
        #[arg(long, value_parser = parse_duration, default_value = "3s")]
        duration: Duration,
        #[arg(long, value_parser = parse_duration, default_value = "1s")]
        warmup: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Spawn a runner; report its RSS with many prepared confs, then many idle connections.
    Memory {
        /// The ext-plugin-runner binary.
        #[arg(long)]
        runner: PathBuf,
        #[arg(long, default_value = "capnp", value_parser = parse_protocol)]
        protocol: Protocol,
        #[arg(long, default_value_t = 10_000)]
        confs: usize,
        #[arg(long, default_value_t = 1_000)]
        idle: usize,
        /// Prepare the first route's chain of this scenario instead of the realistic chain.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// An extra argument for the spawned runner (repeatable), e.g.
        /// `--runner-arg=--max-connections=20000` for more idle connections than its default.
        #[arg(long = "runner-arg", allow_hyphen_values = true)]
        runner_args: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

/// The runner under test: an existing socket, or a binary to spawn.
#[derive(Debug, Args)]
struct Target {
    /// The socket of a runner already listening.
    #[arg(long, conflicts_with = "runner", required_unless_present = "runner")]
    socket: Option<PathBuf>,
    /// An ext-plugin-runner binary to start on a temporary socket (stopped at the end).
    #[arg(long)]
    runner: Option<PathBuf>,
    /// An extra argument for the spawned runner (repeatable), e.g. `--runner-arg=--workers=2`.
    #[arg(long = "runner-arg", allow_hyphen_values = true)]
    runner_args: Vec<String>,
}

#[derive(Debug, Args)]
struct Load {
    #[arg(long, short = 'c', default_value_t = 1)]
    connections: usize,
    /// Calls in flight per connection (closed loop).
    #[arg(long, default_value_t = 1, conflicts_with = "rate")]
    depth: usize,
    /// Open loop at this many calls/s in all, latency measured from each call's intended start.
    #[arg(long)]
    rate: Option<f64>,
    /// Timed calls in all (after the warm-up).
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Timed run length, e.g. `10s`, `500ms` (the default is 5s unless --count is given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
}

impl Load {
    fn settings(&self) -> Settings {
        Settings {
            connections: self.connections,
            mode: match self.rate {
                Some(rate) => Mode::Open { rate },
                None => Mode::Closed { depth: self.depth },
            },
            limit: match (self.count, self.duration) {
                (Some(n), _) => Limit::Count(n),
                (None, d) => Limit::Duration(d.unwrap_or(Duration::from_secs(5))),
            },
            warmup: self.warmup,
        }
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::ALL
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| format!("unknown protocol `{s}`: expected capnp or flatbuffers"))
}

/// `1.5s`, `200ms`, `50us`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 10s, 500ms or 50us"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}`: use s, ms, us or m"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

fn load_corpus(path: &Path) -> Result<Corpus, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Corpus::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// A scenario file's text with its `${NAME}` placeholders filled from the environment.
fn read_scenario(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    placeholders::expand_env(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn load_scenario(path: &Path, protocol: Protocol) -> Result<Corpus, String> {
    let text = read_scenario(path)?;
    Scenario::parse(&text)
        .and_then(|s| s.generate(protocol))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The socket to drive, and the spawned runner that owns it (kept alive by the caller).
fn open_target(t: &Target) -> Result<(PathBuf, Option<SpawnedRunner>), String> {
    match (&t.socket, &t.runner) {
        (Some(s), _) => Ok((s.clone(), None)),
        (None, Some(bin)) => {
            let r = SpawnedRunner::start(bin, &t.runner_args).map_err(|e| e.to_string())?;
            Ok((r.socket().to_owned(), Some(r)))
        }
        (None, None) => Err("give --socket or --runner".into()),
    }
}

fn print<T: serde::Serialize + std::fmt::Display>(v: &T, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("reports serialize")
        );
    } else {
        println!("{v}");
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let err = |e: ReplayError| e.to_string();
    match cli.command {
        Command::Generate {
            scenario,
            protocol,
            out,
        } => {
            let corpus = load_scenario(&scenario, protocol)?;
            std::fs::write(&out, corpus.to_bytes())
                .map_err(|e| format!("{}: {e}", out.display()))?;
            eprintln!("wrote {}: {corpus}", out.display());
        }
        Command::Replay {
            corpus,
            target,
            load,
            json,
        } => {
            let corpus = load_corpus(&corpus)?;
            let (socket, _runner) = open_target(&target)?;
            let mut prep = std::os::unix::net::UnixStream::connect(&socket)
                .map_err(|e| format!("{}: {e}", socket.display()))?;
            let plan = plan::prepare(&corpus, &mut prep).map_err(|e| err(e.into()))?;
            drop(prep);
            let report = drive::run(&socket, "runner", &plan, &load.settings())
                .map_err(|e| err(e.into()))?;
            print(&report, json);
            if report.mismatch_total() + report.error_total() > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Echo { listen, duration } => {
            let server = EchoServer::start(&listen).map_err(|e| e.to_string())?;
            eprintln!("echo floor listening on {}", listen.display());
            match duration {
                Some(d) => std::thread::sleep(d),
                None => loop {
                    std::thread::park();
                },
            }
            drop(server);
        }
        Command::Record {
            listen,
            upstream,
            out,
            duration,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let recording = Recording::new(&out);
            rt.block_on(async {
                let _ = std::fs::remove_file(&listen);
                let listener = tokio::net::UnixListener::bind(&listen)
                    .map_err(|e| format!("{}: {e}", listen.display()))?;
                eprintln!(
                    "recording {} -> {} into {}",
                    listen.display(),
                    upstream.display(),
                    out.display()
                );
                let stop = async move {
                    match duration {
                        Some(d) => tokio::time::sleep(d).await,
                        None => {
                            let _ = tokio::signal::ctrl_c().await;
                        }
                    }
                };
                record(listener, upstream, recording.clone(), stop).await;
                let _ = std::fs::remove_file(&listen);
                Ok::<(), String>(())
            })?;
            eprintln!("recorded {} exchanges", recording.exchanges());
        }
        Command::Compare {
            scenario,
            corpus,
            protocol,
            target,
            connections,
            depth,
            duration,
            warmup,
            json,
        } => {
            let (label, corpus) = match (&scenario, &corpus) {
                (Some(s), _) => (s.display().to_string(), load_scenario(s, protocol)?),
                (None, Some(c)) => (c.display().to_string(), load_corpus(c)?),
                (None, None) => return Err("give --scenario or --corpus".into()),
            };
            let (socket, _runner) = open_target(&target)?;
            let mut settings = Vec::new();
            for &d in &depth {
                for &c in &connections {
                    settings.push(Settings {
                        connections: c,
                        mode: Mode::Closed { depth: d },
                        limit: Limit::Duration(duration),
                        warmup,
                    });
                }
            }
            let label = format!("{label} ({corpus})");
            let cmp = compare(&label, &corpus, &socket, &settings).map_err(err)?;
            print(&cmp, json);
            if cmp.failures() > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Memory {
            runner,
            protocol,
            confs,
            idle,
            scenario,
            runner_args,
            json,
        } => {
            // Each idle connection is a descriptor here and one in the runner (which inherits
            // the limit): thousands need more than the usual soft limit of 1024.
            memory::raise_fd_limit(idle + 256).map_err(|e| e.to_string())?;
            let chain = match &scenario {
                Some(path) => {
                    let text = read_scenario(path)?;
                    let s =
                        Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                    let route = s
                        .routes
                        .first()
                        .ok_or_else(|| format!("{}: the scenario has no route", path.display()))?;
                    Some(
                        route
                            .chain
                            .iter()
                            .map(|p| Pair::new(p.name.clone(), p.conf.to_string()))
                            .collect::<Vec<_>>(),
                    )
                }
                None => None,
            };
            let r = SpawnedRunner::start(&runner, &runner_args).map_err(|e| e.to_string())?;
            let m = memory::measure(&r, protocol, confs, idle, chain.as_deref())
                .map_err(|e| e.to_string())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m).expect("serializes"));
            } else {
                println!(
                    "runner RSS ({}): baseline {} KiB; with {} confs {} KiB ({:.1} MiB); \
                     then with {} idle connections {} KiB ({:.1} MiB)",
                    m.protocol,
                    m.baseline_kib,
                    m.confs,
                    m.with_confs_kib,
                    m.with_confs_kib as f64 / 1024.0,
                    m.idle_connections,
                    m.with_idle_connections_kib,
                    m.with_idle_connections_kib as f64 / 1024.0
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ext-plugin-replay: {e}");
            ExitCode::from(2)
        }
    }
}
