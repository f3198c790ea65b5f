//! The read models the lesson service queries, and its reactor.
//!
//! - [`LessonsProjection`] (`lesson.lessons`): tables `lessons` and `lesson_series`, one row per
//!   lesson and per series, folded with the aggregates' own `evolve` so a row is exactly what
//!   the command answered. The columns are the stable SQL interface for analysts (documented in
//!   docs/read-models.md); `resource` holds the full `repit.lesson.v1.Lesson` for the API.
//! - [`SchoolTutorsProjection`] (`lesson.school-tutors`): table `lesson_school_tutors`, which
//!   tutors teach in which school, from the user service's role grants: a school admin's
//!   tenancy.
//! - [`SlotReleaseReactor`] (`lesson.slot-release`): gives back the schedule slots of every
//!   cancelled lesson, with event ids derived from the lesson, so it is idempotent with the
//!   command that already did it.

mod lessons;
mod reactor;
mod school_tutors;

pub use lessons::{LESSONS_TABLE, LessonsProjection, SERIES_TABLE, state_column};
pub use reactor::SlotReleaseReactor;
pub use school_tutors::{SCHOOL_TUTORS_TABLE, SchoolTutorsProjection};
