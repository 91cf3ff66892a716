//! The runner process against a hostile local peer, a stuck plugin and a hostile conf (issue 11:
//! socket access #8, SIGTERM #9, log forging and flooding #13, conf expiry #17, drain count #19),
//! each over the real binary and its socket.
//!
//! Some tests need a runner with a plugin the built-in catalogue lacks (one whose prepare never
//! returns) or a peer of another user: this test binary plays them itself, re-run with
//! `--exact <role> --nocapture` and an environment variable naming the role (see [`child`]).
//! Timeouts here are hang guards for a loaded machine, never measurements.

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    call_left_waiting, connect_spawned, guarded, runner_command, wait_exit, Spawned, GUARD,
};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{ErrorCode, Method};
use ext_plugin_runner::testing::{request, temp_socket_path, FakeGateway, GatewayError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a runner may take to exit after SIGTERM here: the design target is 1 s
/// (docs/HARDENING.md has the measured figure); this bound only tells "exits" from "hangs".
const EXIT_BOUND: Duration = Duration::from_secs(5);

/// A runner whose stderr goes to a file the test reads.
struct Logged {
    child: Spawned,
    log: PathBuf,
}

/// The runner binary with `flags` on a fresh socket, and a gateway connection to it.
async fn started(flags: &[&str]) -> (PathBuf, Logged, FakeGateway) {
    let socket = temp_socket_path();
    let runner = Logged::spawn(&socket, flags);
    let gw = connect_spawned(&socket).await;
    (socket, runner, gw)
}

impl Logged {
    fn spawn(socket: &Path, flags: &[&str]) -> Logged {
        Logged::spawn_command(runner_command(socket), socket, flags)
    }

    fn spawn_command(mut command: Command, socket: &Path, flags: &[&str]) -> Logged {
        let log = socket.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let child = command.args(flags).stderr(file).spawn().unwrap();
        Logged {
            child: Spawned(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) -> Instant {
        kill(Pid::from_raw(self.child.0.id() as i32), Signal::SIGTERM).unwrap();
        Instant::now()
    }

    /// The exit status, or a failure naming `what` when the process outlives [`EXIT_BOUND`].
    fn exited(&mut self, what: &str) -> ExitStatus {
        wait_exit(&mut self.child.0, EXIT_BOUND)
            .unwrap_or_else(|| panic!("{what}: still running {EXIT_BOUND:?} after SIGTERM"))
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

// --- #17: the conf expiry ------------------------------------------------------------------

#[test]
fn an_out_of_range_conf_expiry_is_refused_before_listening() {
    let socket = temp_socket_path();
    let mut command = runner_command(&socket);
    command.env("APISIX_CONF_EXPIRE_TIME", "18446744073709551615");
    let mut runner = Logged::spawn_command(command, &socket, &[]);
    let status = wait_exit(&mut runner.child.0, GUARD).expect("the runner exits by itself");
    let log = runner.log();
    assert_eq!(status.code(), Some(2), "a usage error: {log}");
    assert!(log.contains("APISIX_CONF_EXPIRE_TIME"), "{log}");
    assert!(
        !log.contains("listening") && !log.contains("panic"),
        "{log}"
    );
    assert!(!socket.exists(), "nothing listened");
}

// --- #19: the drain count ------------------------------------------------------------------

/// `GET /metrics` over a Unix socket; the value of the sample `name` (no labels).
fn gauge(metrics: &Path, name: &str) -> Option<f64> {
    let mut s = std::os::unix::net::UnixStream::connect(metrics).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: runner\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Both thread models: per core, too, one line counts the connections open at the stop (here
/// the idle one the stop closes), not those that had ended, nor one line per thread.
#[tokio::test]
async fn the_drain_log_counts_only_the_connections_still_open() {
    for runtime in ["work-stealing", "per-core"] {
        drain_log_counts_only_the_connections_still_open(runtime).await;
    }
}

async fn drain_log_counts_only_the_connections_still_open(runtime: &str) {
    let socket = temp_socket_path();
    let metrics = socket.with_extension("metrics.sock");
    let flag = format!("unix:{}", metrics.display());
    let flags = [
        "--metrics-listen",
        &flag,
        "--runtime",
        runtime,
        "--workers",
        "2",
    ];
    let mut runner = Logged::spawn(&socket, &flags);
    let mut open = Vec::new();
    for i in 0..3 {
        let mut gw = connect_spawned(&socket).await;
        gw.prepare(&format!("route#{i}#ext-plugin-pre-req#1"), &[])
            .await
            .expect("served");
        open.push(gw);
    }
    open.truncate(1);
    // The runner has seen both closes once its own gauge says so.
    let deadline = Instant::now() + GUARD;
    while gauge(&metrics, "ext_plugin_runner_connections") != Some(1.0) {
        assert!(Instant::now() < deadline, "the runner never saw the closes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The gauge moves in the closing task's last step; leave it time to end.
    tokio::time::sleep(Duration::from_millis(100)).await;
    runner.sigterm();
    assert!(runner.exited("a drain of idle connections").success());
    let log = runner.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("drained; exiting"))
        .collect();
    assert_eq!(lines.len(), 1, "{runtime}: one drain line in {log}");
    assert!(
        lines[0].contains("connections=1"),
        "{runtime}: one was open: {}",
        lines[0]
    );
}

// --- #9: SIGTERM ---------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_answers_a_call_still_running_at_the_drain_deadline() {
    let (socket, mut runner, mut gw) = started(&[]).await;
    call_left_waiting(&mut gw).await;

    let signalled = runner.sigterm();
    let answer = guarded("the answer at the deadline", gw.read_frame()).await;
    let frame = answer
        .expect("a frame, not a broken connection")
        .expect("an error frame, not a bare end of stream");
    assert_eq!(
        gw.decode_error(&frame).unwrap(),
        ErrorCode::ServiceUnavailable
    );
    assert!(runner.exited("an abandoned call").success());
    eprintln!("exit {:?} after SIGTERM", signalled.elapsed());
    assert!(!socket.exists(), "the socket file is removed");
}

#[tokio::test]
async fn sigterm_exits_while_a_prepare_is_stuck_in_a_plugin() {
    let socket = temp_socket_path();
    let entered = socket.with_extension("entered");
    let mut runner = Logged::spawn_command(child_runner(&socket), &socket, &[]);
    let mut gw = connect_spawned(&socket).await;
    let conf = serde_json::json!({ "entered": entered }).to_string();
    let prepare = tokio::spawn(async move {
        let answer = gw
            .prepare("route#1#ext-plugin-pre-req#1", &[("stuck", &conf)])
            .await;
        (gw, answer)
    });
    reached(&entered, "the prepare").await;

    let signalled = runner.sigterm();
    let status = runner.exited("a runner with a prepare stuck in a plugin");
    let took = signalled.elapsed();
    let (_gw, answer) = guarded("the prepare's answer", prepare).await.unwrap();
    assert!(
        matches!(
            answer,
            Err(GatewayError::Runner(ErrorCode::ServiceUnavailable))
        ),
        "an error frame, not a bare end of stream: {answer:?}"
    );
    assert!(status.success(), "{status:?}: {}", runner.log());
    eprintln!("exit {took:?} after SIGTERM");
    let _ = std::fs::remove_file(&entered);
}

#[tokio::test]
async fn sigterm_exits_while_a_plugin_blocks_its_worker_thread() {
    let socket = temp_socket_path();
    let entered = socket.with_extension("entered");
    let mut runner = Logged::spawn_command(child_runner(&socket), &socket, &[]);
    let mut gw = connect_spawned(&socket).await;
    let conf = serde_json::json!({ "entered": entered }).to_string();
    let token = gw
        .prepare("route#1#ext-plugin-pre-req#1", &[("blocking", &conf)])
        .await
        .unwrap();
    let call = tokio::spawn(async move { gw.call(token, &request(Method::Get, "/")).await });
    reached(&entered, "the call").await;

    let signalled = runner.sigterm();
    let status = wait_exit(&mut runner.child.0, EXIT_BOUND)
        .unwrap_or_else(|| panic!("still running after SIGTERM: {}", runner.log()));
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}: {}", runner.log());
    // The blocked call cannot be answered (its task never runs again); the socket closes.
    assert!(guarded("the blocked call", call).await.unwrap().is_err());
    eprintln!("exit {took:?} after SIGTERM");
    let _ = std::fs::remove_file(&entered);
}

/// Waits until a test plugin has written `entered`: `what` reached the plugin.
async fn reached(entered: &Path, what: &str) {
    let deadline = Instant::now() + GUARD;
    while !entered.exists() {
        assert!(Instant::now() < deadline, "{what} never reached the plugin");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- #13: log lines ------------------------------------------------------------------------

#[tokio::test]
async fn peer_strings_cannot_forge_a_log_line() {
    let (_socket, mut runner, mut gw) = started(&[]).await;
    let refused = gw
        .prepare(
            "route#1\nFORGED key line\r\n#ext-plugin-pre-req#1",
            &[("no-such\nFORGED plugin line", "{}")],
        )
        .await;
    assert!(matches!(
        refused,
        Err(GatewayError::Runner(ErrorCode::BadRequest))
    ));
    runner.sigterm();
    runner.exited("a runner after a refused prepare");
    let log = runner.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("prepare_conf refused"))
        .unwrap_or_else(|| panic!("the refusal is logged: {log}"));
    assert!(
        refusal.contains("route#1\\nFORGED key line\\r\\n#ext"),
        "{refusal}"
    );
    assert!(
        log.lines().all(|l| !l.trim_start().starts_with("FORGED")),
        "a line the runner did not write: {log}"
    );
}

#[tokio::test]
async fn oversized_replies_are_logged_once_not_per_event() {
    const EVENTS: usize = 5;
    let (_socket, mut runner, mut gw) = started(&[]).await;
    let token = gw
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("debug-echo", r#"{"request_body": true}"#)],
        )
        .await
        .unwrap();
    // JSON escapes each control byte in six: a 3 MiB body echoes as 18 MiB, over the 16 MiB a
    // frame can carry.
    gw.req_body = Some(vec![1u8; 3 << 20].into());
    for _ in 0..EVENTS {
        let answer = guarded(
            "an oversized echo",
            gw.call(token, &request(Method::Post, "/")),
        )
        .await;
        assert!(
            matches!(
                answer,
                Err(GatewayError::Runner(ErrorCode::ServiceUnavailable))
            ),
            "{answer:?}"
        );
    }
    runner.sigterm();
    runner.exited("a runner after oversized replies");
    let log = runner.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("cannot be framed"))
        .count();
    assert_eq!(lines, 1, "{EVENTS} events, one line: {log}");
}

// --- #8: who may connect -------------------------------------------------------------------

fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// True when the runner closes `gw` without answering a prepare.
async fn refused(gw: &mut FakeGateway) -> bool {
    let answer = guarded("a prepare", gw.prepare("route#1#ext-plugin-pre-req#1", &[])).await;
    match answer {
        Ok(_) | Err(GatewayError::Runner(_)) => false,
        Err(_closed) => true,
    }
}

#[tokio::test]
async fn a_peer_the_rule_does_not_admit_is_closed_unanswered_and_logged_once() {
    let socket = temp_socket_path();
    let other = format!("uid:{}", own_uid().wrapping_add(1));
    let mut runner = Logged::spawn(&socket, &["--allow-peers", &other]);
    for _ in 0..10 {
        let mut gw = connect_spawned(&socket).await;
        assert!(refused(&mut gw).await, "uid {} is not {other}", own_uid());
    }
    runner.sigterm();
    runner.exited("a runner refusing peers");
    let log = runner.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a connection"))
        .collect();
    assert_eq!(lines.len(), 1, "10 refusals, one line: {log}");
    assert!(
        lines[0].contains(&format!("uid={}", own_uid())),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn the_default_rule_and_a_listed_uid_admit_the_runners_own_user() {
    for flags in [
        vec![],
        vec!["--allow-peers".to_owned(), format!("uid:{}", own_uid())],
    ] {
        let socket = temp_socket_path();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let _runner = Logged::spawn(&socket, &flags);
        let mut gw = connect_spawned(&socket).await;
        assert!(!refused(&mut gw).await, "{flags:?} admits its own user");
    }
}

#[tokio::test]
async fn connections_per_uid_are_capped() {
    let socket = temp_socket_path();
    let _runner = Logged::spawn(&socket, &["--max-connections-per-uid", "2"]);
    let mut first = connect_spawned(&socket).await;
    let mut second = connect_spawned(&socket).await;
    assert!(!refused(&mut first).await && !refused(&mut second).await);
    let mut third = connect_spawned(&socket).await;
    assert!(refused(&mut third).await, "a third connection of one uid");
    drop(first);
    // The slot comes back once the runner has seen the close.
    let deadline = Instant::now() + GUARD;
    loop {
        let mut again = connect_spawned(&socket).await;
        if !refused(&mut again).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Under APISIX the runner's parent spawns it and the workers, of another user, are children of
/// its grandparent. Here this test process is the runner's parent: a child of it running as
/// `nobody` is a gateway process; a grandchild (through `sh`) of the same user is not. Needs root
/// to run processes as another user.
#[tokio::test]
async fn gateway_processes_of_another_user_are_admitted_and_others_are_not() {
    if own_uid() != 0 {
        eprintln!("SKIPPED: running processes as another user needs root");
        return;
    }
    const NOBODY: u32 = 65534;
    let socket = temp_socket_path();
    let runner = Logged::spawn(&socket, &[]);
    drop(connect_spawned(&socket).await); // listening
    let peer = |through_sh: bool| {
        let mut command = child(Role::Peer);
        if through_sh {
            let exe = command.get_program().to_owned();
            let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
            command = Command::new("sh");
            command
                .arg("-c")
                .arg("\"$@\"; exit $?")
                .arg("sh")
                .arg(exe)
                .args(args)
                .env(ROLE, "peer");
        }
        use std::os::unix::process::CommandExt as _;
        let out = command
            .env(PEER_SOCKET, &socket)
            .uid(NOBODY)
            .gid(NOBODY)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // libtest's own "test role_peer ... " may share the line.
        text.lines()
            .find_map(|l| Some(l.split_once("PEER: ")?.1.trim().to_owned()))
            .unwrap_or_else(|| panic!("the peer reported nothing: {text}"))
    };
    assert_eq!(peer(false), "answered", "a child of the runner's parent");
    assert_eq!(peer(true), "closed", "a process outside the gateway's tree");
    let log = runner.log();
    assert!(log.contains(&format!("uid={NOBODY}")), "{log}");
}

// --- the roles this binary plays for the tests above ----------------------------------------

const ROLE: &str = "HOSTILE_PROCESS_ROLE";
const PEER_SOCKET: &str = "HOSTILE_PROCESS_PEER_SOCKET";

#[derive(Clone, Copy)]
enum Role {
    /// A runner with the built-ins and `stuck`.
    Runner,
    /// A gateway worker: connects, prepares, prints `PEER: answered` or `PEER: closed`.
    Peer,
}

/// This test binary, set to play `role`.
fn child(role: Role) -> Command {
    let (name, test) = match role {
        Role::Runner => ("runner", "role_runner"),
        Role::Peer => ("peer", "role_peer"),
    };
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, name)
        .stdin(Stdio::null());
    command
}

/// This test binary as a runner listening on `socket`.
fn child_runner(socket: &Path) -> Command {
    let mut command = child(Role::Runner);
    command
        .env(
            "APISIX_LISTEN_ADDRESS",
            format!("unix:{}", socket.display()),
        )
        .env("APISIX_CONF_EXPIRE_TIME", "3600")
        .stdout(Stdio::null());
    command
}

fn playing(role: &str) -> bool {
    std::env::var(ROLE).is_ok_and(|r| r == role)
}

/// Whose prepare writes the file `entered` names, then never returns.
struct Stuck;

#[derive(serde::Deserialize)]
struct StuckConf {
    entered: PathBuf,
}

impl ext_plugin_sdk::Plugin for Stuck {
    const NAME: &'static str = "stuck";
    type Conf = StuckConf;

    fn prepare(
        conf: StuckConf,
        _: &mut ext_plugin_sdk::PrepareEnv<'_>,
    ) -> Result<Self, ext_plugin_sdk::ConfError> {
        enter_and_hang(&conf.entered)
    }
}

/// Tells the test the plugin was reached, then blocks this thread for good.
fn enter_and_hang(entered: &Path) -> ! {
    std::fs::write(entered, b"").unwrap();
    loop {
        std::thread::park();
    }
}

/// Whose request filter writes the file `entered` names, then blocks its thread for good (a
/// synchronous loop in async code: the bug no timeout can interrupt).
struct Blocking(PathBuf);

impl ext_plugin_sdk::Plugin for Blocking {
    const NAME: &'static str = "blocking";
    type Conf = StuckConf;

    fn prepare(
        conf: StuckConf,
        _: &mut ext_plugin_sdk::PrepareEnv<'_>,
    ) -> Result<Self, ext_plugin_sdk::ConfError> {
        Ok(Blocking(conf.entered))
    }

    async fn request_filter(
        &self,
        _: &mut ext_plugin_sdk::RequestCall<'_>,
    ) -> Result<ext_plugin_sdk::Flow, ext_plugin_sdk::PluginError> {
        enter_and_hang(&self.0)
    }
}

#[test]
fn role_runner() {
    if !playing("runner") {
        return;
    }
    let registry = ext_plugin_catalogue::builtin()
        .with::<Stuck>()
        .with::<Blocking>();
    let about = ext_plugin_runner::cli::About::runner();
    // Two workers whatever the machine: one may be blocked by `blocking`, the other stops.
    let args = ["ext-plugin-runner", "--workers", "2"];
    let code = ext_plugin_runner::cli::run_with_args(registry, about, args);
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

#[test]
fn role_peer() {
    if !playing("peer") {
        return;
    }
    let socket = PathBuf::from(std::env::var_os(PEER_SOCKET).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answered = runtime.block_on(async {
        let mut gw = FakeGateway::connect(&socket, Protocol::Capnp)
            .await
            .unwrap();
        !refused(&mut gw).await
    });
    println!("PEER: {}", if answered { "answered" } else { "closed" });
    std::process::exit(0);
}
