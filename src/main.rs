//! `ext-plugin-runner` with the built-in plugins; everything else is in [`ext_plugin_runner::cli`].

use std::process::ExitCode;

use ext_plugin_runner::Registry;

fn main() -> ExitCode {
    ext_plugin_runner::cli::run(Registry::builtin())
}
