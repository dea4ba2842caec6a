//! Generates the tonic/prost code from sweep.proto with a vendored protoc (no system protoc).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=sweep.proto");
    tonic_prost_build::configure().compile_protos(&["sweep.proto"], &["."])?;
    Ok(())
}
