//! The contracts of every RepitBot service, compiled: prost messages, tonic clients and servers,
//! and the encoded file descriptor set that gRPC reflection serves.
//!
//! The module tree mirrors the protobuf packages: `repit::lesson::v1` is package `repit.lesson.v1`.
//! The `.proto` sources live beside this crate in `repit/`; `build.rs` compiles them with protox.

/// Encoded `google.protobuf.FileDescriptorSet` of every RepitBot `.proto` (and the well-known types
/// they import), for gRPC reflection and for decoding events by their type name.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/repit_descriptor.bin"));

/// Generated code, one module per protobuf package.
// Generated code is not ours to lint: prost and tonic emit public items without Debug on every
// server type and use `pub` where `pub(crate)` would do.
#[allow(
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
pub mod repit {
    macro_rules! packages {
        ($($service:ident => $package:literal),* $(,)?) => {
            $(
                pub mod $service {
                    pub mod v1 {
                        tonic::include_proto!($package);
                    }
                }
            )*
        };
    }

    packages! {
        common => "repit.common.v1",
        user => "repit.user.v1",
        student => "repit.student.v1",
        tutor => "repit.tutor.v1",
        lesson => "repit.lesson.v1",
        homework => "repit.homework.v1",
        payment => "repit.payment.v1",
        material => "repit.material.v1",
        notification => "repit.notification.v1",
        analytics => "repit.analytics.v1",
        gateway => "repit.gateway.v1",
    }
}
