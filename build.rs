//! Compiles every `.proto` file under `proto/` with protox (pure Rust, no
//! system `protoc`), generates prost messages and tonic services from the
//! descriptor set, proto3-JSON serde impls with pbjson, and keeps the
//! descriptor set for gRPC server reflection.

use std::path::{Path, PathBuf};

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    proto_files(Path::new("proto"), &mut files)?;
    files.sort();

    let descriptors = protox::compile(&files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("llmlb_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .skip_protoc_run()
        .compile_well_known_types(true)
        .file_descriptor_set_path(&descriptor_path)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_protos(&files, &[PathBuf::from("proto")])?;

    let descriptor_bytes = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .emit_fields()
        .build(&[".llmlb"])?;
    Ok(())
}
