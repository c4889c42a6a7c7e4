//! Compiles `proto/` with protox, a pure Rust protobuf compiler: no system `protoc` needed.

use prost::Message;
use std::path::PathBuf;

/// Messages that carry share material or tokens: their `Debug` is written by hand in
/// `src/pb.rs` so that it never prints those fields.
const REDACTED: &[&str] = &[
    "sharevault.v1.BackupRequest",
    "sharevault.v1.FetchResponse",
    "sharevault.v1.StoreClientBackupShareRequest",
    "sharevault.v1.GetClientBackupShareResponse",
    "sharevault.v1.GetCustodianBackupShareResponse",
    "sharevault.v1.CreateTokenResponse",
    "sharevault.v1.RekeyRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["sharevault/v1/sharevault.proto"], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sharevault_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .skip_debug(REDACTED.iter().copied())
        .compile_fds(fds)?;
    Ok(())
}
