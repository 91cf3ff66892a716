//! The workspace's `rust-version` is not below what the locked dependencies declare.
//!
//! No older toolchain can be installed to build with, so this reads the resolved graph instead:
//! `cargo metadata --locked` for this host, every package reachable from a workspace member by
//! normal or build edges (what `cargo build` compiles; dev-dependencies are left out), and each
//! one's declared `rust-version`. It cannot see our own code using a newer std API (clippy's
//! `incompatible_msrv` lint, on under `-D warnings`, does) or newer language features (nothing
//! here checks those), nor dependencies that declare no `rust-version`. See docs/building.md.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use serde_json::Value;

/// "1.89" or "1.88.0" as (major, minor, patch).
fn parse(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| {
        p.parse::<u64>()
            .unwrap_or_else(|_| panic!("rust-version {v:?} is not numeric"))
    });
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into()))
}

fn host() -> String {
    let out = cargo().arg("-vV").output().expect("cargo -vV runs");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("cargo -vV names the host")
}

#[test]
fn declared_rust_version_covers_every_dependency() {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
        ])
        .arg(host())
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");

    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let runner = members
        .iter()
        .find(|id| packages[*id]["name"] == "ext-plugin-runner")
        .expect("the runner is a workspace member");
    let declared = packages[runner]["rust_version"]
        .as_str()
        .expect("the workspace declares a rust-version");

    // Every member that declares one declares the workspace's.
    for id in &members {
        if let Some(v) = packages[id]["rust_version"].as_str() {
            assert_eq!(
                v, declared,
                "{} declares rust-version {v}",
                packages[id]["name"]
            );
        }
    }

    // Walk normal and build edges from the members.
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut stack = members.clone();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let built = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].as_str() != Some("dev"));
            if built {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }

    let mut needs: Vec<(_, String)> = seen
        .iter()
        .filter(|id| !members.contains(id))
        .filter_map(|id| {
            let p = packages[id];
            let v = p["rust_version"].as_str()?;
            let (name, version) = (p["name"].as_str()?, p["version"].as_str()?);
            Some((parse(v), format!("{name} {version} (rust-version {v})")))
        })
        .collect();
    needs.sort();
    let (_, who) = needs
        .last()
        .expect("some dependency declares a rust-version");
    let too_new: Vec<&str> = needs
        .iter()
        .filter(|(v, _)| *v > parse(declared))
        .map(|(_, who)| who.as_str())
        .collect();
    assert!(
        too_new.is_empty(),
        "Cargo.toml declares rust-version {declared}, but these locked dependencies need more: {}",
        too_new.join(", ")
    );
    eprintln!("rust-version {declared}; the most demanding dependency: {who}");
}
