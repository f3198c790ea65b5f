//! The lesson service's aggregates, pure: no I/O, time and ids come in the commands.
//!
//! - [`lesson`]: one lesson from scheduling to attendance and outcome (`lesson-<id>`).
//! - [`schedule`]: one person's busy intervals (`tutor-schedule-<id>`, `student-schedule-<id>`),
//!   the consistency boundary that makes "no double booking" hold under concurrency.
//! - [`series`]: a recurring series' rule and occurrences (`series-<id>`).
//! - [`policy`]: the cancellation policy and how it judges a cancellation.
//! - [`recurrence`] and [`local_time`]: wall-clock rules, time zones and DST.
//!
//! Events are the protobuf messages of `repit/lesson/v1/events.proto`, so the stored schema is
//! the published one; `repit_platform::proto_events!` stores them under their full names.

pub mod lesson;
pub mod local_time;
pub mod policy;
pub mod recurrence;
pub mod schedule;
pub mod series;

pub use lesson::{LessonAggregate, LessonCommand, LessonError, LessonEvent};
pub use schedule::{
    Conflict, Party, ScheduleAggregate, ScheduleCommand, ScheduleError, ScheduleEvent,
};
pub use series::{SeriesAggregate, SeriesCommand, SeriesError, SeriesEvent};

/// Stream names of the lesson service's aggregates. Permanent: they are the stored data.
pub mod streams {
    use repit_event_store::StreamName;
    use repit_event_store::model::InvalidStreamName;
    use uuid::Uuid;

    /// `lesson-<id>`.
    pub fn lesson(id: Uuid) -> Result<StreamName, InvalidStreamName> {
        StreamName::parse(format!("lesson-{id}"))
    }
    /// `series-<id>`.
    pub fn series(id: Uuid) -> Result<StreamName, InvalidStreamName> {
        StreamName::parse(format!("series-{id}"))
    }
    /// `tutor-schedule-<id>`.
    pub fn tutor_schedule(id: Uuid) -> Result<StreamName, InvalidStreamName> {
        StreamName::parse(format!("tutor-schedule-{id}"))
    }
    /// `student-schedule-<id>`.
    pub fn student_schedule(id: Uuid) -> Result<StreamName, InvalidStreamName> {
        StreamName::parse(format!("student-schedule-{id}"))
    }
}
