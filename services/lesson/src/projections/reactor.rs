//! Gives back the schedule slots of cancelled lessons.

use async_trait::async_trait;
use prost::Message;
use repit_event_store::{EventCodec, RecordedEvent};
use repit_platform::RequestContext;
use repit_projections::{ApplyError, Projection, ProjectionTx, TableDef};
use repit_proto::repit::common::v1::EventMetadata;

use crate::application::LessonApplication;
use crate::domain::LessonEvent;
use crate::domain::lesson::LessonCodec;
use crate::error::AppError;
use repit_platform::time::from_timestamp;

/// On `LessonCancelled`, releases the lesson's slots in the tutor's and the student's schedule.
/// The command does the same at once; this makes it certain even if the process died between
/// the two appends, and the derived event ids make the second attempt a recognised retry.
#[derive(Clone, Debug)]
pub struct SlotReleaseReactor {
    application: LessonApplication,
}

impl SlotReleaseReactor {
    /// A reactor sending its commands through `application`.
    pub fn new(application: LessonApplication) -> Self {
        Self { application }
    }
}

#[async_trait]
impl Projection for SlotReleaseReactor {
    fn name(&self) -> &'static str {
        "lesson.slot-release"
    }

    fn event_types(&self) -> Vec<String> {
        vec!["repit.lesson.v1.LessonCancelled".to_owned()]
    }

    fn tables(&self) -> &'static [TableDef] {
        &[]
    }

    async fn apply(&self, _tx: &mut ProjectionTx, event: &RecordedEvent) -> Result<(), ApplyError> {
        let LessonEvent::Cancelled(cancelled) = LessonCodec
            .decode(event)
            .map_err(|e| ApplyError::Poison(format!("{e:#}")))?
        else {
            return Ok(());
        };
        let at = from_timestamp(cancelled.occurred_at.as_ref());
        // The release is caused by the cancellation and belongs to the same request.
        let source = EventMetadata::decode(event.metadata.clone()).unwrap_or_default();
        let context = RequestContext {
            correlation_id: source.correlation_id,
            causation_id: event.id.to_string(),
            actor_user_id: String::new(),
            traceparent: source.traceparent,
        };
        let release = self.application.release_cancelled(
            &cancelled.lesson_id,
            &cancelled.tutor_id,
            &cancelled.student_id,
            at,
        );
        match context.scope(release).await {
            Ok(()) => Ok(()),
            Err(AppError::Unavailable(e) | AppError::Aborted(e)) => Err(ApplyError::Transient(e)),
            Err(other) => Err(ApplyError::Poison(other.to_string())),
        }
    }
}
