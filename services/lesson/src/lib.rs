//! The lesson service: lessons, recurring series and schedules (PRODUCT.md §4).
//!
//! Reads top-down:
//! - [`domain`]: the aggregates (lesson, tutor/student schedule, series), pure, with their
//!   given/when/then tests; recurrence rules and time zones.
//! - [`application`]: loads, decides, appends; the booking protocol across schedule streams.
//! - [`grpc`]: the tonic adapter; [`convert`]: every proto → domain conversion.
//! - [`queries`]: answers from the read models; [`calendar`]: iCalendar rendering;
//!   [`watch`]: live schedule views following the read model.
//! - [`projections`]: the read models this service owns and its reactor.
//! - [`error`]: the one mapping of the service's errors to gRPC statuses.
//!
//! Not built yet (they answer UNIMPLEMENTED): GetCalendarFeed, RotateCalendarFeed (the feed URL
//! needs a public route on the gateway).

pub mod access;
pub mod application;
pub mod calendar;
pub mod convert;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod projections;
pub mod queries;
pub mod watch;

pub use application::{LessonApplication, LessonSettings};
pub use grpc::LessonGrpc;
pub use projections::{LessonsProjection, SchoolTutorsProjection, SlotReleaseReactor};

/// Fully qualified gRPC name of the service this crate implements.
pub const GRPC_SERVICE: &str = repit_proto::repit::lesson::v1::lesson_service_server::SERVICE_NAME;
