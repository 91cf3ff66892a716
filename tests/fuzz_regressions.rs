//! Fuzz findings as ordinary tests (docs/HARDENING.md).
//!
//! Every file under `tests/fixtures/fuzz/<target>/` is an input a fuzz target found (a crash,
//! or one worth keeping); it is replayed here through the very checks the target runs, which
//! live in the `fuzz/checks` crate. The seed corpora are checked too: they
//! must be real, accepted messages, or the fuzzer starts from noise.

use std::path::Path;

use ext_plugin_runner::codec::{detect, Protocol};
use ext_plugin_runner::model::{Pair, PrepareConfReq};

use ext_plugin_fuzz_checks as harness;

/// The inputs saved for `target`, by file name.
fn fixtures(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    // A target with no findings yet has no directory (git keeps no empty ones).
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.file_name().is_some_and(|n| n != "README.md"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("a fixture"))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn frame_findings_replay_cleanly() {
    for (name, input) in fixtures("frame") {
        eprintln!("frame/{name}");
        harness::frames(&input);
    }
}

#[test]
fn codec_findings_replay_cleanly() {
    for p in Protocol::ALL {
        for (name, input) in fixtures(p.name()) {
            eprintln!("{p}/{name}");
            harness::codec(p, &input);
        }
    }
}

#[test]
fn conf_findings_replay_cleanly() {
    for (name, input) in fixtures("confs") {
        eprintln!("confs/{name}");
        harness::confs(&input);
    }
}

/// Issue 11 #5: the audit's extreme limiter confs (and the fuzz target's other seeds) prepare
/// and run on extreme request values without a panic; a debug build panics on any overflow.
#[test]
fn conf_call_seeds_and_findings_run_cleanly() {
    for (name, input) in harness::conf_call_seeds()
        .into_iter()
        .chain(fixtures("conf_calls"))
    {
        eprintln!("conf_calls/{name}");
        harness::conf_calls(&input);
    }
}

#[test]
fn codec_seeds_are_real_messages_of_their_protocol() {
    for p in Protocol::ALL {
        let seeds = harness::codec_seeds(p);
        assert!(seeds.len() >= 15, "{p}: {} seeds", seeds.len());
        for (name, payload) in seeds {
            assert_eq!(detect(&payload), Some(p), "{p}/{name}");
            harness::codec(p, &payload);
        }
    }
    for (name, input) in harness::frame_seeds() {
        eprintln!("frame seed {name}");
        harness::frames(&input);
    }
}

#[test]
fn conf_seeds_are_chains_the_builtin_plugins_accept() {
    let registry = harness::registry();
    let seeds = harness::conf_seeds();
    for (name, input) in &seeds {
        // The same parsing the target does, so a refused seed says which entry and why.
        let conf = input
            .split(|&b| b == harness::ENTRY_SEP)
            .map(|entry| {
                let at = entry.iter().position(|&b| b == harness::NAME_SEP).unwrap();
                let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                Pair::new(text(&entry[..at]), text(&entry[at + 1..]))
            })
            .collect();
        let req = PrepareConfReq {
            key: "route#seed#ext-plugin-pre-req#1".into(),
            conf,
        };
        if let Err(e) = registry.check(&req) {
            panic!("seed {name} refused: {e}");
        }
        harness::confs(input);
    }
    // Every built-in plugin is seeded.
    for plugin in registry.names() {
        let named = seeds.iter().any(|(_, input)| {
            input
                .split(|&b| b == harness::ENTRY_SEP)
                .any(|e| e.starts_with(plugin.as_bytes()) && e.get(plugin.len()) == Some(&0))
        });
        assert!(named, "no seed for {plugin}");
    }
}

/// Issue 15: a frame malformed in a header decodes (decoding does not read headers); the first
/// read of the headers finds the damage, reads them as empty and marks the call malformed.
#[test]
fn a_broken_header_is_found_by_the_first_read_not_by_decoding() {
    for p in Protocol::ALL {
        let (_, payload) = harness::codec_seeds(p)
            .into_iter()
            .find(|(name, _)| name == "http_req_call_req_broken_header")
            .expect("the seed");
        let mut req = ext_plugin_runner::model::HttpReqCallReq::default();
        p.runner_codec()
            .decode_http_req_call_req(&bytes::Bytes::from(payload), &mut req)
            .expect("decoding reads no header");
        assert_eq!(req.malformed(), None, "{p}: nobody read the headers yet");
        assert_eq!(req.args.len(), 2, "{p}: the arguments are whole");
        assert_eq!(req.headers.len(), 0, "{p}: broken headers read as none");
        assert!(req.malformed().is_some(), "{p}");
    }
}

/// Found by the capnp target: 88 bytes whose header list claims millions of zero-sized
/// elements. Cap'n Proto encodes such a list in one pointer, and the library's default read
/// limit (64 MiB of words) let it through: each element became a decoded header, hundreds of
/// MiB per call. The decoders now bound their reads by the payload's size.
#[test]
fn a_list_of_empty_structs_cannot_amplify_a_small_payload() {
    let input =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "tests/fixtures/fuzz/capnp/resp-call-88-bytes-claiming-millions-of-empty-headers",
        ))
        .unwrap();
    let payload = bytes::Bytes::from(input);
    let runner = Protocol::Capnp.runner_codec();
    let mut out = ext_plugin_runner::model::HttpRespCallReq::default();
    match runner.decode_http_resp_call_req(&payload, &mut out) {
        Err(e) => assert!(e.to_string().contains("HTTPRespCallReq"), "{e}"),
        Ok(()) => assert!(
            out.headers.len() <= payload.len(),
            "{} headers decoded from {} bytes",
            out.headers.len(),
            payload.len()
        ),
    }
}
