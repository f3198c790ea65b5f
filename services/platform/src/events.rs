//! Events stored as the published protobuf messages (DESIGN.md: "Events are protobuf messages in
//! `proto/repit/<service>/v1/events.proto`; the event type is the full message name").
//!
//! [`proto_events!`](crate::proto_events) declares a service's event enum over those messages and
//! its [`EventCodec`](repit_event_store::EventCodec), so every service stores events the same way.
//! The macro expands in the service crate, which depends on `prost`, `repit-proto` and
//! `repit-event-store` itself.

/// Declares an event enum over protobuf messages of one package and its `EventCodec`: each
/// variant is stored as `<package>.<Message>`, and an unknown type is a decode error (a stream
/// must never be folded without one of its events).
///
/// ```ignore
/// repit_platform::proto_events! {
///     /// What happens to a lesson.
///     LessonEvent, LessonCodec, "repit.lesson.v1", repit_proto::repit::lesson::v1 {
///         Scheduled(LessonScheduled),
///         Cancelled(LessonCancelled),
///     }
/// }
/// ```
#[macro_export]
macro_rules! proto_events {
    ($(#[$meta:meta])* $name:ident, $codec:ident, $package:literal, $module:path {
        $($variant:ident($message:ident)),+ $(,)?
    }) => {
        // One alias per module that declares events (one `proto_events!` per aggregate file).
        use $module as proto_events_package;

        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $name {
            $(
                #[doc = concat!("`", $package, ".", stringify!($message), "`.")]
                $variant(proto_events_package::$message),
            )+
        }

        impl $name {
            /// The stored event type: the full protobuf message name.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => concat!($package, ".", stringify!($message)),)+
                }
            }
        }

        #[doc = concat!("Encodes and decodes [`", stringify!($name), "`] as protobuf.")]
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $codec;

        impl repit_event_store::EventCodec<$name> for $codec {
            fn encode(
                &self,
                event: &$name,
            ) -> Result<
                repit_event_store::aggregate::EncodedEvent,
                repit_event_store::aggregate::CodecError,
            > {
                let data = match event {
                    $($name::$variant(message) => prost::Message::encode_to_vec(message),)+
                };
                Ok(repit_event_store::aggregate::EncodedEvent {
                    event_type: event.event_type().to_owned(),
                    content_type: repit_event_store::ContentType::Protobuf,
                    data: data.into(),
                })
            }

            fn decode(
                &self,
                event: &repit_event_store::RecordedEvent,
            ) -> Result<$name, repit_event_store::aggregate::CodecError> {
                let bad = |e: prost::DecodeError| {
                    repit_event_store::aggregate::CodecError::with_source(
                        format!("failed to decode {}", event.event_type),
                        e,
                    )
                };
                match event.event_type.as_str() {
                    $(
                        concat!($package, ".", stringify!($message)) => Ok($name::$variant(
                            <proto_events_package::$message as prost::Message>::decode(
                                event.data.clone(),
                            )
                            .map_err(bad)?,
                        )),
                    )+
                    other => Err(repit_event_store::aggregate::CodecError::new(format!(
                        "unknown event type {other}"
                    ))),
                }
            }
        }
    };
}
