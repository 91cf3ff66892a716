//! Writes the seed corpora: `cargo run --manifest-path fuzz/Cargo.toml --example seed`.
//! Seeds are real messages encoded by the project's own codecs (see fuzz/checks/src/lib.rs), written
//! to fuzz/corpus/<target>/seed_<name>; the fuzzer's own finds land beside them.

use std::path::Path;

use ext_plugin_runner::codec::Protocol;
use ext_plugin_fuzz_checks::{codec_seeds, conf_call_seeds, conf_seeds, frame_seeds};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut sets = vec![
        ("frame", frame_seeds()),
        ("confs", conf_seeds()),
        ("conf_calls", conf_call_seeds()),
    ];
    for p in Protocol::ALL {
        sets.push((p.name(), codec_seeds(p)));
    }
    for (target, seeds) in sets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(format!("seed_{name}")), bytes)?;
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    Ok(())
}
