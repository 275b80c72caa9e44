//! The voice-sidecar gRPC contract, generated from `proto/voice/v1/sidecar.proto`.
//!
//! Both sides live here: the `VoiceSidecar` server the sidecar implements and the `ToolHost` client it
//! calls, plus their counterparts for hosts written in Rust (the demo host, the load generator, tests).

pub mod voice {
    #[allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    pub mod v1 {
        tonic::include_proto!("voice.v1");
    }
}

pub use voice::v1;

/// Encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/voice_v1_descriptor.bin"));
