//! See fuzz/checks/src/conf_calls.rs for what this target checks; docs/HARDENING.md for how to run it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ext_plugin_fuzz_checks::conf_calls(data));
