//! Compiles `schema/ext_plugin.capnp` into Rust at build time.
//!
//! The Cap'n Proto schema compiler runs in-process (embedded as WebAssembly by `capnpc-embedded`),
//! so a machine with only the Rust toolchain builds the crate; no `capnp` binary is needed.

fn main() {
    println!("cargo:rerun-if-changed=schema/ext_plugin.capnp");
    let request = capnpc_embedded::CompileCommand::new()
        .file("schema/ext_plugin.capnp")
        .src_prefix("schema")
        .compile()
        .expect("schema/ext_plugin.capnp does not compile");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    capnpc::codegen::CodeGenerationCommand::new()
        .output_directory(out_dir)
        .default_parent_module(vec!["proto".into()])
        .run(&request[..])
        .expect("generating Rust from schema/ext_plugin.capnp failed");
}
