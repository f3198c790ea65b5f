//! The event pipeline of one process: the projection runtime with every read model and reactor,
//! and the relay to JetStream (DESIGN.md, "Read path and fan-out").

use std::sync::Arc;

use repit_event_store::EventStore;
use repit_event_store::relay::RelayOptions;
use repit_lesson::LessonApplication;
use repit_platform::Config;
use repit_projections::feed::JetStreamSource;
use repit_projections::{FeedSource, Projection, ReadModelDb, Runtime, RuntimeOptions};

/// The relay's stream and subjects, from the configuration.
pub fn relay_options(config: &Config) -> RelayOptions {
    RelayOptions {
        stream_name: config.nats.stream.clone(),
        subject_prefix: config.nats.subject_prefix.clone(),
        ..RelayOptions::default()
    }
}

/// Every read model (and reactor) this build runs: the read models the services query, and the
/// reactors. Names are permanent (see `Projection::name`); a service's read models are added to
/// [`queried_read_models`], its reactors here.
pub fn projections(lesson: &LessonApplication) -> Vec<Arc<dyn Projection>> {
    let mut projections = queried_read_models(true, true);
    projections.push(Arc::new(repit_lesson::SlotReleaseReactor::new(
        lesson.clone(),
    )));
    projections
}

/// The read models the given services query, for creating their tables before the first query
/// when the projections run in another process.
pub fn queried_read_models(lesson: bool, user: bool) -> Vec<Arc<dyn Projection>> {
    let mut read_models: Vec<Arc<dyn Projection>> = Vec::new();
    if lesson {
        read_models.push(Arc::new(repit_lesson::LessonsProjection));
        read_models.push(Arc::new(repit_lesson::SchoolTutorsProjection));
    }
    if user {
        read_models.push(Arc::new(repit_user::DirectoryProjection));
    }
    read_models
}

/// Where projections read from: JetStream when configured, else the store itself.
pub async fn feed_source(
    config: &Config,
    store: &Arc<dyn EventStore>,
) -> anyhow::Result<FeedSource> {
    if config.projections.uses_jetstream(&config.nats) {
        let context = crate::backends::jetstream(config).await?;
        Ok(FeedSource::JetStream(JetStreamSource::new(
            context,
            relay_options(config),
        )))
    } else {
        Ok(FeedSource::Store(store.clone()))
    }
}

/// A runtime over `projections`.
pub fn runtime(
    config: &Config,
    db: ReadModelDb,
    source: FeedSource,
    projections: Vec<Arc<dyn Projection>>,
) -> Runtime {
    let options = RuntimeOptions {
        batch_size: config.projections.batch_size,
        ..RuntimeOptions::default()
    };
    projections
        .into_iter()
        .fold(Runtime::new(db, source).options(options), Runtime::with)
}
