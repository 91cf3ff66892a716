//! `ext-plugin-runner` with the built-in plugins; everything else is in [`ext_plugin_runner::cli`].

use std::process::ExitCode;

use ext_plugin_runner::cli::{self, About};

fn main() -> ExitCode {
    cli::run(ext_plugin_catalogue::builtin(), About::runner())
}
