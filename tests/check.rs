//! `ext-plugin-runner check [FILE|-]` (docs/operations.md): chains checked offline exactly as
//! `prepare_conf` would, from either input shape, with the runner's own refusal messages and
//! exit status 0 / 1 / 2.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ext-plugin-runner");

/// Runs `check` on `input` through stdin (`-`) and through a file; both must agree.
fn check(input: &str) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["check", "-"])
        // Nothing the runner would listen on matters to check.
        .env("APISIX_LISTEN_ADDRESS", "unix:/nonexistent/dir/x.sock")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let piped = child.wait_with_output().unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), input).unwrap();
    let from_file = Command::new(BIN)
        .arg("check")
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), from_file.status.code());
    assert_eq!(piped.stdout, from_file.stdout, "stdin and file disagree");
    outcome(piped)
}

fn outcome(out: Output) -> (i32, String) {
    let text = String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap();
    (out.status.code().unwrap(), text)
}

const GOOD_LIST: &str = r#"[
  {"name": "ip-restriction", "value": "{\"whitelist\": [\"10.0.0.0/8\"]}"},
  {"name": "limit-count", "value": "{\"count\": 100, \"time_window\": 60}"},
  {"name": "request-id", "value": "{}"}
]"#;

#[test]
fn a_good_conf_list_prepares_and_exits_0() {
    let (code, out) = check(GOOD_LIST);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("route#check#ext-plugin-pre-req#1"), "{out}");
    assert!(out.contains("ok       entry 0 (`ip-restriction`)"), "{out}");
    assert!(out.contains("ok       entry 2 (`request-id`)"), "{out}");
    assert!(out.contains("=> prepared"), "{out}");
    assert!(out.contains("1 chain(s) checked, 0 refused"), "{out}");
}

#[test]
fn a_route_object_checks_every_ext_plugin_and_ignores_the_rest() {
    let route = r#"{
      "id": "42",
      "uri": "/api/*",
      "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}},
      "plugins": {
        "limit-count": {"count": 2, "time_window": 60, "rejected_code": 503},
        "ext-plugin-pre-req": {"conf": [
          {"name": "ip-restriction", "value": "{\"whitelist\": [\"10.0.0.0/8\"]}"}
        ], "allow_degradation": true},
        "ext-plugin-post-resp": {"conf": [
          {"name": "request-id", "value": "{\"include_in_response\": true}"},
          {"name": "limit-count", "value": "{\"count\": 0, \"time_window\": 60}"}
        ]}
      }
    }"#;
    let (code, out) = check(route);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("route#42#ext-plugin-pre-req#1\n"), "{out}");
    assert!(out.contains("route#42#ext-plugin-post-resp#1\n"), "{out}");
    assert!(
        !out.contains("route#42#limit-count"),
        "a native plugin was checked: {out}"
    );
    assert!(out.contains("ok       entry 0 (`request-id`)"), "{out}");
    // The runner's own log message, word for word.
    assert!(
        out.contains("=> prepare_conf refused: chain entry 1 (`limit-count`): "),
        "{out}"
    );
    assert!(out.contains("2 chain(s) checked, 1 refused"), "{out}");

    // The same plugins object on its own, and one ext-plugin's conf object.
    let plugins =
        r#"{"ext-plugin-post-req": {"conf": [{"name": "request-id", "value": "{}"}]}, "cors": {}}"#;
    let (code, out) = check(plugins);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("route#check#ext-plugin-post-req#1"), "{out}");
    let (code, out) =
        check(r#"{"conf": [{"name": "request-id", "value": "{}"}], "allow_degradation": false}"#);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn every_bad_entry_is_named_with_its_reason() {
    let list = r#"[
      {"name": "no-such-plugin", "value": "{}"},
      {"name": "limit-count", "value": "{\"count\": 10, \"time_window\": 60, \"cont\": 1}"},
      {"name": "limit-req", "value": "{\"rate\": -1, \"burst\": 0}"},
      {"name": "ip-restriction", "value": "not json"},
      {"name": "request-id", "value": "{}"}
    ]"#;
    let (code, out) = check(list);
    assert_eq!(code, 1, "{out}");
    // An unknown plugin, an unknown field, a value out of range, a conf that is not JSON.
    assert!(
        out.contains("refused  chain entry 0 (`no-such-plugin`): unknown plugin"),
        "{out}"
    );
    assert!(
        out.contains("refused  chain entry 1 (`limit-count`):") && out.contains("cont"),
        "{out}"
    );
    assert!(
        out.contains("refused  chain entry 2 (`limit-req`):") && out.contains("`rate`"),
        "{out}"
    );
    assert!(
        out.contains("refused  chain entry 3 (`ip-restriction`):"),
        "{out}"
    );
    assert!(out.contains("ok       entry 4 (`request-id`)"), "{out}");
    // The chain is refused at its first bad entry, as prepare_conf refuses it.
    assert!(
        out.contains("=> prepare_conf refused: chain entry 0 (`no-such-plugin`)"),
        "{out}"
    );
}

#[test]
fn entries_apisix_itself_would_refuse_are_refused() {
    for (input, reason) in [
        (
            r#"[{"name": "echo", "value": {"vars": []}}]"#,
            "`value` must be the plugin's JSON conf as a string",
        ),
        (r#"[{"value": "{}"}]"#, "entry 0: `name` must be a string"),
        (
            r#"[{"name": "echo"}]"#,
            "entry 0 (`echo`): `value` must be a string",
        ),
        ("[]", "`conf` must hold at least one entry"),
        (
            r#"{"plugins": {"ext-plugin-pre-req": {"conf": "echo"}}}"#,
            "`conf` must be a list",
        ),
        (
            r#"{"plugins": {"ext-plugin-pre-req": 1}}"#,
            "must be an object with `conf`",
        ),
    ] {
        let (code, out) = check(input);
        assert_eq!(code, 1, "{input}: {out}");
        assert!(
            out.contains("=> refused by APISIX's schema: "),
            "{input}: {out}"
        );
        assert!(out.contains(reason), "{input}: {out}");
    }
}

#[test]
fn nothing_to_check_is_fine_and_unusable_input_is_a_usage_error() {
    let (code, out) = check(r#"{"uri": "/", "plugins": {"limit-count": {"count": 1}}}"#);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no ext-plugin-* conf found"), "{out}");
    for input in ["not json", "\"a string\"", r#"{"plugins": []}"#] {
        let (code, out) = check(input);
        assert_eq!(code, 2, "{input}: {out}");
    }
    let missing = outcome(
        Command::new(BIN)
            .args(["check", "/nonexistent/route.json"])
            .output()
            .unwrap(),
    );
    assert_eq!(missing.0, 2, "{}", missing.1);
    assert!(
        missing.1.contains("cannot read /nonexistent/route.json"),
        "{}",
        missing.1
    );
}
