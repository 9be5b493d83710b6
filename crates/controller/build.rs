//! Compiles the fabric API (proto/fabric.proto) with protox, so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["proto/fabric.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto/fabric.proto");
    Ok(())
}
