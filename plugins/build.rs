//! Compiles the OpenSergo protos (`proto/`) with protox, a pure-Rust protobuf compiler: building
//! the catalogue needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const FILES: [&str; 7] = [
        "opensergo/transport.proto",
        "opensergo/common.proto",
        "opensergo/fault_tolerance.proto",
        "opensergo/route_fallback.proto",
        "envoy/route.proto",
        "envoy/core.proto",
        "envoy/matcher.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(FILES, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
