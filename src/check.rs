//! `ext-plugin-runner check [FILE|-]`: validates chains offline, exactly as `prepare_conf` would,
//! and prints a verdict for every entry, for CI pipelines that deploy gateway configs.
//!
//! The input (a file, or stdin for `-` or no argument) is JSON of one of these shapes:
//!
//! * an ext-plugin `conf` list: `[{"name": "limit-count", "value": "{\"count\": 10, …}"}, …]`,
//!   checked as an `ext-plugin-pre-req` chain;
//! * one ext-plugin's conf: `{"conf": [...], "allow_degradation": true}`, likewise;
//! * a route (or service) object with `plugins`, as sent to or read from the Admin API: every
//!   `ext-plugin-*` entry of `plugins` is checked as the chain of that attachment; other plugins
//!   and other fields are ignored;
//! * a `plugins` object on its own: likewise.
//!
//! Each chain is prepared with the runner's registry, under the key a gateway would send
//! (`route#<id>#<attachment>#1`; `check` when the object has no `id`), so attachment-dependent
//! checks apply. An entry APISIX's own schema refuses (no `name`, a `value` that is not a
//! string, an empty `conf`) is refused here too, before any plugin sees it.
//!
//! Exit status: 0 when every chain prepares, 1 when any is refused, 2 when the input cannot be
//! read or is none of the shapes above. Nothing is listened on and nothing is logged: the
//! verdicts go to stdout.

use std::fmt::Write as _;
use std::io::Read;
use std::process::ExitCode;

use serde_json::Value;

use crate::model::{Pair, PrepareConfReq};
use ext_plugin_sdk::Registry;

/// What a check of one input found.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    /// The verdicts, as printed.
    pub text: String,
    pub chains: usize,
    pub refused: usize,
}

impl Report {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(u8::from(self.refused > 0))
    }
}

/// One chain of the input: where it came from and its entries, or why APISIX's schema would
/// refuse it.
struct ChainInput {
    key: String,
    entries: Result<Vec<(String, String)>, String>,
}

/// The default attachment of a bare conf list.
const PRE_REQ: &str = "ext-plugin-pre-req";

/// APISIX's limit on a chain entry's name.
const MAX_NAME: usize = 128;

/// Checks `input` (JSON text) with `registry`; `Err` is a usage error (not JSON, or no known
/// shape).
pub fn check(registry: &Registry, input: &str) -> Result<Report, String> {
    let json: Value =
        serde_json::from_str(input).map_err(|e| format!("the input is not JSON: {e}"))?;
    let chains = chains(&json)?;
    let mut report = Report {
        text: String::new(),
        chains: chains.len(),
        refused: 0,
    };
    if chains.is_empty() {
        report
            .text
            .push_str("no ext-plugin-* conf found; nothing to check\n");
    }
    for chain in chains {
        let _ = writeln!(report.text, "{}", chain.key);
        let entries = match chain.entries {
            Ok(entries) => entries,
            Err(reason) => {
                report.refused += 1;
                let _ = writeln!(report.text, "  => refused by APISIX's schema: {reason}");
                continue;
            }
        };
        let req = PrepareConfReq {
            key: chain.key.clone().into(),
            conf: entries
                .iter()
                .map(|(name, value)| Pair::new(name.clone(), value.clone()))
                .collect(),
        };
        for (i, verdict) in registry.check_entries(&req).iter().enumerate() {
            match verdict {
                Ok(()) => {
                    let _ = writeln!(report.text, "  ok       entry {i} (`{}`)", entries[i].0);
                }
                Err(e) => {
                    let _ = writeln!(report.text, "  refused  {e}");
                }
            }
        }
        // The chain's verdict is the runner's own, word for word.
        match registry.check(&req) {
            Ok(()) => report.text.push_str("  => prepared\n"),
            Err(e) => {
                report.refused += 1;
                let _ = writeln!(report.text, "  => prepare_conf refused: {e}");
            }
        }
    }
    let _ = writeln!(
        report.text,
        "{} chain(s) checked, {} refused",
        report.chains, report.refused
    );
    Ok(report)
}

/// The `check` subcommand: reads `path` (`-` or `None`: stdin), prints the report, and returns
/// the exit status.
pub fn run(registry: &Registry, path: Option<&str>, name: &str) -> ExitCode {
    let input = match path {
        None | Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map(|_| s)
        }
        Some(p) => std::fs::read_to_string(p),
    };
    let input = match input {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name} check: cannot read {}: {e}", path.unwrap_or("stdin"));
            return ExitCode::from(2);
        }
    };
    match check(registry, &input) {
        Ok(report) => {
            print!("{}", report.text);
            report.exit_code()
        }
        Err(e) => {
            eprintln!("{name} check: {e}");
            ExitCode::from(2)
        }
    }
}

fn chains(json: &Value) -> Result<Vec<ChainInput>, String> {
    let key = |id: &str, attachment: &str| format!("route#{id}#{attachment}#1");
    match json {
        Value::Array(_) => Ok(vec![ChainInput {
            key: key("check", PRE_REQ),
            entries: entries(json),
        }]),
        Value::Object(o) if o.contains_key("conf") => Ok(vec![ChainInput {
            key: key("check", PRE_REQ),
            entries: ext_plugin(json),
        }]),
        Value::Object(o) => {
            let (id, plugins) = match o.get("plugins") {
                Some(Value::Object(p)) => (object_id(o.get("id")), p),
                Some(_) => return Err("`plugins` must be an object".into()),
                None => ("check".to_owned(), o),
            };
            Ok(plugins
                .iter()
                .filter(|(name, _)| name.starts_with("ext-plugin-"))
                .map(|(name, conf)| ChainInput {
                    key: key(&id, name),
                    entries: ext_plugin(conf),
                })
                .collect())
        }
        _ => Err(
            "expected an ext-plugin conf list, an ext-plugin object with `conf`, a route \
                  object with `plugins`, or a plugins object"
                .into(),
        ),
    }
}

/// A route's id as its key shows it; `check` when it has none.
fn object_id(id: Option<&Value>) -> String {
    match id {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "check".into(),
    }
}

/// An `ext-plugin-*` plugin's conf: `{"conf": [...], ...}`; no `conf` is an empty chain.
fn ext_plugin(conf: &Value) -> Result<Vec<(String, String)>, String> {
    let Value::Object(o) = conf else {
        return Err("the ext-plugin conf must be an object with `conf`".into());
    };
    match o.get("conf") {
        None => Ok(Vec::new()),
        Some(list) => entries(list),
    }
}

/// A `conf` list as APISIX's schema has it: at least one `{name, value}`, both strings.
fn entries(list: &Value) -> Result<Vec<(String, String)>, String> {
    let Value::Array(items) = list else {
        return Err("`conf` must be a list of {\"name\", \"value\"} entries".into());
    };
    if items.is_empty() {
        return Err("`conf` must hold at least one entry".into());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let name = match item.get("name") {
                Some(Value::String(n)) if !n.is_empty() && n.len() <= MAX_NAME => n,
                Some(Value::String(_)) => {
                    return Err(format!(
                        "entry {i}: `name` must be 1 to {MAX_NAME} characters"
                    ))
                }
                _ => return Err(format!("entry {i}: `name` must be a string")),
            };
            match item.get("value") {
                Some(Value::String(v)) => Ok((name.clone(), v.clone())),
                Some(Value::Object(_)) => Err(format!(
                    "entry {i} (`{name}`): `value` must be the plugin's JSON conf as a string, \
                     e.g. \"{{\\\"count\\\": 10}}\", not an object"
                )),
                _ => Err(format!("entry {i} (`{name}`): `value` must be a string")),
            }
        })
        .collect()
}
