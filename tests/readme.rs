//! The README tells the truth: every plugin conf it shows prepares, every flag it lists exists,
//! every plugin it names is built in.

use std::process::Command;

use ext_plugin_sdk::harness::Harness;

const README: &str = include_str!("../README.md");

#[test]
fn every_chain_entry_in_the_readme_prepares() {
    let harness = Harness::new(ext_plugin_catalogue::builtin());
    let mut seen = 0;
    for line in README.lines() {
        let line = line.trim().trim_end_matches(',');
        if !line.starts_with(r#"{"name": "#) {
            continue;
        }
        // Inside the single-quoted shell string each entry is exactly the JSON APISIX receives:
        // a name and the conf as a JSON string.
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("README entry is not JSON: {line}: {e}"));
        let name = entry["name"].as_str().unwrap();
        let conf = entry["value"].as_str().unwrap();
        harness
            .prepare("route#readme#ext-plugin-pre-req#1", &[(name, conf)])
            .unwrap_or_else(|e| panic!("README conf for {name} does not prepare: {e}"));
        seen += 1;
    }
    assert!(seen >= 3, "found only {seen} chain entries in the README");
}

#[test]
fn every_flag_in_the_readme_exists() {
    let help = Command::new(env!("CARGO_BIN_EXE_ext-plugin-runner"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flags: Vec<&str> = README
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| l[3..].split('`').next().unwrap())
        .collect();
    assert!(flags.len() >= 5, "flag table not found");
    for flag in flags {
        assert!(help.contains(flag), "README lists {flag}, --help does not");
    }
    // Subcommands sit in the same table, as `name [ARGS]`.
    let commands = help
        .split("Commands:")
        .nth(1)
        .expect("--help lists subcommands");
    let table = README
        .split("## Running it")
        .nth(1)
        .and_then(|s| s.split("\n#").next())
        .expect("a Running it section");
    let mut listed = 0;
    for row in table
        .lines()
        .filter(|l| l.starts_with("| `") && !l.starts_with("| `--"))
    {
        let name = row[3..].split([' ', '`']).next().unwrap();
        assert!(
            commands.lines().any(|l| l.trim_start().starts_with(name)),
            "README lists the subcommand {name}, --help does not"
        );
        listed += 1;
    }
    assert!(
        listed >= 1,
        "the check subcommand is missing from the flag table"
    );
}

#[test]
fn every_plugin_in_the_readme_is_built_in() {
    let names = ext_plugin_catalogue::builtin().names();
    let table = README
        .split("## Built-in plugins")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a built-in plugins section");
    let mut listed = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = row.split('|').nth(1).unwrap();
        for name in first_cell.split('`').skip(1).step_by(2) {
            assert!(
                names.contains(&name),
                "README names {name}, which is not built in"
            );
            listed.push(name);
        }
    }
    for name in names {
        assert!(
            listed.contains(&name),
            "{name} is built in but missing from the README"
        );
    }
}

/// The "Writing a plugin" section shows the example crates exactly as they are in `examples/`,
/// which `cargo test` builds and tests: the README's code compiles as written.
#[test]
fn the_plugin_quick_start_is_the_example_crate_verbatim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "examples/require-header/Cargo.toml",
        "examples/require-header/src/lib.rs",
        "examples/custom-runner/Cargo.toml",
        "examples/custom-runner/src/main.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let fence = if file.ends_with(".toml") {
            "toml"
        } else {
            "rust"
        };
        let block = format!("```{fence}\n{text}```\n");
        assert!(
            README.contains(&block),
            "README's quick start does not show {file} as it is"
        );
    }
}
