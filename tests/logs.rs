//! The runner binary's log (docs/operations.md): `--log-format json` writes one JSON object per
//! line, and every route whose chain is refused is named, however many other routes are refused
//! in the same interval.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};

use common::{connect_spawned, runner_command};
use ext_plugin_runner::testing::{temp_socket_path, FakeGateway};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn spawn(socket: &Path, extra: &[&str]) -> Child {
    runner_command(socket)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the runner")
}

async fn connect(path: &Path) -> FakeGateway {
    connect_spawned(path).await
}

/// Stops the runner with SIGTERM and returns what it wrote to stderr.
fn stop(child: Child) -> String {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn json_lines_name_every_refused_route() {
    let socket = temp_socket_path();
    let child = spawn(&socket, &["--log-format", "json", "--log", "info"]);
    let mut gw = connect(&socket).await;
    let bad = [("limit-count", r#"{"count": 0, "time_window": 60}"#)];
    // Two bad routes, the first one refused three times: within the interval each is named once.
    for key in [
        "route#1#ext-plugin-pre-req#1",
        "route#1#ext-plugin-pre-req#1",
        "route#2#ext-plugin-pre-req#1",
        "route#1#ext-plugin-pre-req#1",
    ] {
        assert!(gw.prepare(key, &bad).await.is_err());
    }
    drop(gw);
    let stderr = stop(child);

    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l}: {e}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line[field].is_string(), "no {field} in {line}");
        }
        assert!(line["fields"].is_object(), "no fields in {line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "listening" && l["level"] == "INFO"),
        "{stderr}"
    );
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .starts_with("prepare_conf refused")
        })
        .collect();
    let keys: Vec<&str> = refused
        .iter()
        .map(|l| l["fields"]["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "route#1#ext-plugin-pre-req#1",
            "route#2#ext-plugin-pre-req#1"
        ],
        "{stderr}"
    );
    for line in refused {
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["hits"], 1);
        let message = line["message"].as_str().unwrap();
        assert!(
            message.contains("chain entry 0 (`limit-count`)"),
            "plugin and reason: {message}"
        );
    }
}

#[tokio::test]
async fn the_default_log_is_text() {
    let socket = temp_socket_path();
    let child = spawn(&socket, &["--log", "info"]);
    drop(connect(&socket).await);
    let stderr = stop(child);
    let first = stderr.lines().next().expect("a log line");
    assert!(serde_json::from_str::<Value>(first).is_err(), "{first}");
    assert!(
        first.contains("INFO") && first.contains("listening"),
        "{first}"
    );
}
