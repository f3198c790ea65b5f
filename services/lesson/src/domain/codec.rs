//! Stores the lesson service's events as protobuf under their full message names.

/// Declares an event enum over protobuf messages of `repit.lesson.v1` and its [`EventCodec`]:
/// each variant is stored as `repit.lesson.v1.<Message>`, and an unknown type is an error (a
/// stream must never be folded without one of its events).
///
/// [`EventCodec`]: repit_event_store::EventCodec
macro_rules! lesson_events {
    ($(#[$meta:meta])* $name:ident, $codec:ident { $($variant:ident($message:ident)),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $name {
            $(
                #[doc = concat!("`repit.lesson.v1.", stringify!($message), "`.")]
                $variant(repit_proto::repit::lesson::v1::$message),
            )+
        }

        impl $name {
            /// The stored event type: the full protobuf message name.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => concat!("repit.lesson.v1.", stringify!($message)),)+
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
            ) -> Result<repit_event_store::aggregate::EncodedEvent, repit_event_store::aggregate::CodecError> {
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
                        concat!("repit.lesson.v1.", stringify!($message)) => Ok($name::$variant(
                            <repit_proto::repit::lesson::v1::$message as prost::Message>::decode(
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

pub(crate) use lesson_events;
