//! Generated protobuf, gRPC and proto3-JSON types of llmlb (`llmlb.v1`).
//!
//! Both planes depend on this crate; it depends on neither.
#![forbid(unsafe_code)]

/// Types of the `llmlb.v1` package.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("llmlb.v1");
    include!(concat!(env!("OUT_DIR"), "/llmlb.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/llmlb_descriptor.bin"));
