//! A runner binary serving the built-in plugins plus one of your own, with the runner's flags,
//! logging and signal handling; `--help` and `--version` describe this crate.

use std::process::ExitCode;

use require_header::RequireHeader;

fn main() -> ExitCode {
    let registry = ext_plugin_catalogue::builtin().with::<RequireHeader>();
    ext_plugin_runner::cli::run(registry, ext_plugin_runner::about!())
}
