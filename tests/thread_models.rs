//! `--runtime per-core` (docs/operations.md#threads): the runner binary serving connections from
//! one single-threaded runtime per worker thread, sharing its prepared chains across them, and
//! draining on SIGTERM like the default runtime; admitting peers, and answering a call still
//! running at the drain deadline, as the default runtime does (tests/hostile_process.rs).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    call_left_waiting, closed, connect_spawned, error_code, guarded, runner_command, stop,
    wait_exit, Spawned, GUARD,
};
use ext_plugin_runner::codec::Protocol;
use ext_plugin_runner::model::{ErrorCode, Method};
use ext_plugin_runner::testing::{request, temp_socket_path, FakeGateway};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The names of the process' threads.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

fn spawn_per_core(path: &Path, workers: &str) -> Spawned {
    spawn_per_core_with(path, workers, &[])
}

fn spawn_per_core_with(path: &Path, workers: &str, flags: &[&str]) -> Spawned {
    let mut command = runner_command(path);
    command.args(["--runtime", "per-core", "--workers", workers]);
    Spawned(command.args(flags).spawn().expect("spawning the runner"))
}

#[tokio::test]
async fn per_core_serves_every_connection_with_shared_chains_and_drains_on_sigterm() {
    let path = temp_socket_path();
    let mut runner = spawn_per_core(&path, "2");
    let mut first = connect_spawned(&path).await;
    let token = first
        .prepare(
            "route#1#ext-plugin-pre-req#1",
            &[("ip-restriction", r#"{"blacklist": ["10.0.0.0/8"]}"#)],
        )
        .await
        .unwrap();
    // A thread takes its name once it runs, which may be a moment after the socket listens.
    let named = Instant::now();
    loop {
        let cores: Vec<String> = thread_names(runner.0.id())
            .into_iter()
            .filter(|n| n.starts_with("runner-core"))
            .collect();
        if cores == ["runner-core-0", "runner-core-1"] {
            break;
        }
        assert!(named.elapsed() < GUARD, "serving threads: {cores:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Eight connections, accepted by whichever thread: the chain prepared on the first is
    // served on all of them, twice each.
    let mut gateways = vec![first];
    for _ in 0..7 {
        gateways.push(FakeGateway::connect(&path, Protocol::Capnp).await.unwrap());
    }
    let mut blocked = request(Method::Get, "/");
    blocked.src_ip = Some("10.1.2.3".parse().unwrap());
    for _ in 0..2 {
        for gw in &mut gateways {
            assert_eq!(stop(gw.call(token, &blocked).await.unwrap()).status, 403);
        }
    }

    // The connections stay open and idle: shutdown closes them, and the runner exits.
    kill(Pid::from_raw(runner.0.id() as i32), Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = runner.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "no exit 5 s after SIGTERM with idle connections open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!path.exists(), "the socket file is removed");
    for gw in &mut gateways {
        assert!(
            gw.read_frame().await.unwrap().is_none(),
            "the runner closed the idle connection"
        );
    }
}

#[test]
fn an_unknown_runtime_is_refused_naming_the_choices() {
    let out = runner_command(&temp_socket_path())
        .args(["--runtime", "green-threads"])
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("work-stealing") && err.contains("per-core"),
        "{err}"
    );
}

/// The per-uid share is the runner's, not a thread's: two serving threads, a cap of 2, and a
/// third connection of the same user is closed unanswered whichever thread accepted it. A rule
/// that does not admit this user is enforced per core too.
#[tokio::test]
async fn per_core_admits_peers_by_the_runners_rules() {
    let path = temp_socket_path();
    let _runner = spawn_per_core_with(&path, "2", &["--max-connections-per-uid", "2"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut gw = connect_spawned(&path).await;
        gw.prepare(common::PRE, &[]).await.expect("admitted");
        held.push(gw);
    }
    let mut third = connect_spawned(&path).await;
    assert!(
        guarded("a prepare", third.prepare(common::PRE, &[]))
            .await
            .is_err(),
        "a third connection of one uid"
    );

    let path = temp_socket_path();
    let other = format!("uid:{}", nix::unistd::geteuid().as_raw().wrapping_add(1));
    let _runner = spawn_per_core_with(&path, "2", &["--allow-peers", &other]);
    for _ in 0..4 {
        let mut gw = connect_spawned(&path).await;
        assert!(
            guarded("a prepare", gw.prepare(common::PRE, &[]))
                .await
                .is_err(),
            "refused by {other}"
        );
    }
}

/// SIGTERM with a call waiting for an extra_info answer that never comes: past the drain
/// timeout the call is answered SERVICE_UNAVAILABLE (not a bare end of stream), the runner
/// exits, and the drain is logged once for the runner, not once per serving thread.
#[tokio::test]
async fn per_core_answers_a_call_running_at_the_drain_deadline_and_logs_one_drain() {
    let path = temp_socket_path();
    let log = path.with_extension("log");
    let mut command = runner_command(&path);
    command
        .args(["--runtime", "per-core", "--workers", "2"])
        .stderr(std::fs::File::create(&log).unwrap());
    let mut runner = Spawned(command.spawn().expect("spawning the runner"));
    let mut gw = connect_spawned(&path).await;
    call_left_waiting(&mut gw).await;

    kill(Pid::from_raw(runner.0.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(error_code(&mut gw).await, ErrorCode::ServiceUnavailable);
    assert!(closed(&mut gw).await, "then the connection closes");
    let status = wait_exit(&mut runner.0, Duration::from_secs(5)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let drains: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("drained; exiting") || l.contains("calls still running"))
        .collect();
    assert_eq!(drains.len(), 1, "one drain line for two threads: {text}");
    assert!(
        drains[0].contains("connections=1") && drains[0].contains("left=1"),
        "{}",
        drains[0]
    );
}
