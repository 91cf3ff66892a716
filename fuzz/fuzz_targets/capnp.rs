//! See fuzz/src/lib.rs for what this target checks; docs/HARDENING.md for how to run it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ext_plugin_fuzz_checks::codec(
    ext_plugin_runner::codec::Protocol::Capnp,
    data
));
