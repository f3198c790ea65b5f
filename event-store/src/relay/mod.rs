//! The relay: follows the store's `$all` and publishes every event, exactly once and in order, to
//! a NATS JetStream stream that feeds the projections (DESIGN.md, "Read path and fan-out").
//!
//! - [`envelope`]: the wire format (subject, headers, payload) shared with the consumer side.
//! - [`ensure_stream`]: creates the JetStream stream (`REPIT_EVENTS`, subjects `repit.events.>`,
//!   file storage, kept forever because rebuilds replay it from sequence 1).
//! - [`Relay`]: the publisher; [`Relay::run`] until a cancellation token fires, with its
//!   progress and lag in a [`RelayStatus`] behind [`Relay::status`].
//!
//! # Exactly once, in order
//!
//! There is no second write to keep consistent with the store: the JetStream stream itself records
//! how far the relay got. On start the relay reads the stream's last message and subscribes to
//! `$all` after the [`envelope::POSITION`] it carries (from the start when the stream is empty).
//!
//! Every publish carries `Nats-Expected-Last-Sequence`, the stream sequence the relay believes
//! is last, so JetStream refuses the message if anything else was stored since: a second relay
//! instance, or an older incarnation of this one whose publishes were still in flight. The relay
//! then stops with [`RelayError::Conflict`] instead of duplicating or reordering. `Nats-Msg-Id`
//! (the event id) is a second guard: JetStream drops a repeat within its duplicate window.
//!
//! The expected *sequence* is used rather than `Nats-Expected-Last-Msg-Id`: JetStream rebuilds the
//! last message id after a server restart (or a leader change) only when that message is younger
//! than the duplicate window, so after a quiet spell every expected-id publish would be refused and
//! the relay could never start again. The last sequence is part of the stream's state and always
//! survives.
//!
//! # Throughput
//!
//! Publishes are pipelined: up to [`RelayOptions::max_in_flight`] acknowledgements are awaited
//! in publish order while later events are already sent, so a burst costs about one round trip
//! per `max_in_flight` events, not per event. Because each publish expects the sequence of the
//! one before it, a refused publish makes every later one in the pipeline fail too: nothing
//! after a gap is ever stored.
//!
//! # Failures
//!
//! A NATS or store failure abandons the pipeline and starts over from the stream's last message
//! (what was stored stays stored, what was not is published again), after a backoff, a bounded
//! number of times in a row; then [`Relay::run`] returns the error for the caller to restart it.
//! A conflict or a foreign message at the end of the stream is returned at once: retrying
//! cannot help.

pub mod envelope;

use std::collections::VecDeque;
use std::fmt;
use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{
    Config as StreamConfig, LastRawMessageErrorKind, RetentionPolicy, StorageType, Stream,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::BoxError;
use crate::model::{
    AllFilter, EventId, Position, RecordedEvent, SubscribeFrom, SubscribeToAllOptions,
    SubscriptionItem,
};
use crate::store::EventStore;
use envelope::EnvelopeError;

/// How long JetStream remembers message ids to drop duplicates.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Failures in a row (without an event published in between) before [`Relay::run`] gives up.
const MAX_ATTEMPTS: u32 = 6;
/// The first retry delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often progress is logged.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// How far back from the stream's last sequence to look for a message that was not deleted.
const MAX_DELETED_TAIL: u64 = 1_000;

/// Where the relay publishes and how hard it pushes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOptions {
    /// The JetStream stream (default `REPIT_EVENTS`).
    pub stream_name: String,
    /// The subject prefix; the stream captures `<prefix>.>` (default `repit.events`).
    pub subject_prefix: String,
    /// Publishes whose acknowledgement may be outstanding at once (default 256). Keep it at or
    /// below the JetStream context's `max_ack_inflight` (5 000 by default): the context holds
    /// a permit per unacknowledged publish, and the relay awaits its acks only in order.
    pub max_in_flight: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            stream_name: "REPIT_EVENTS".to_owned(),
            subject_prefix: envelope::DEFAULT_SUBJECT_PREFIX.to_owned(),
            max_in_flight: 256,
        }
    }
}

impl RelayOptions {
    /// The one subject filter of the JetStream stream: everything under the prefix.
    pub fn stream_subject(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The event store failed or the subscription ended; retried before it is returned.
    #[error("event store: {0}")]
    Store(#[from] crate::Error),
    /// A NATS or JetStream request failed; retried before it is returned.
    #[error("jetstream {operation} failed: {source}")]
    JetStream {
        /// What the relay was doing.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The JetStream stream exists but does not capture the relay's subjects.
    #[error("jetstream stream {stream} does not capture subjects {subject}")]
    StreamMismatch {
        /// The stream.
        stream: String,
        /// The subject filter it lacks.
        subject: String,
    },
    /// The event does not fit in a NATS message (the server's `max_payload`, 1 MiB by default,
    /// must exceed the store's largest append plus about 1 KiB of headers). Retrying cannot
    /// help: raise `max_payload`.
    #[error("event {id} does not fit in a nats message: {source}")]
    TooLarge {
        /// The event.
        id: EventId,
        /// The client's error, with the sizes.
        #[source]
        source: BoxError,
    },
    /// Something other than this relay wrote to the stream (most likely a second relay): JetStream
    /// refused a publish, or acknowledged it as a duplicate.
    #[error("another writer is publishing to jetstream stream {stream}: {reason}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What JetStream answered.
        reason: String,
    },
    /// The last message of the stream was not published by a relay, so there is no position to
    /// resume from.
    #[error("message {sequence} of jetstream stream {stream} is not a relayed event: {source}")]
    ForeignMessage {
        /// The stream.
        stream: String,
        /// The message's stream sequence.
        sequence: u64,
        /// What is missing or malformed.
        #[source]
        source: EnvelopeError,
    },
}

impl RelayError {
    /// Whether starting over from the stream's last message may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(_) | Self::JetStream { .. })
    }

    fn jetstream(operation: &'static str, source: impl Into<BoxError>) -> Self {
        Self::JetStream {
            operation,
            source: source.into(),
        }
    }
}

/// The relay's progress, published on a [`watch`] channel ([`Relay::status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStatus {
    /// Events this relay published (acknowledged by JetStream) since it was built.
    pub published: u64,
    /// The `$all` position of the last event in the JetStream stream, as far as the relay knows
    /// (the resume point before anything is published).
    pub position: Option<Position>,
    /// The stream sequence of that event.
    pub stream_sequence: u64,
    /// When the store wrote the last event this relay published.
    pub created: Option<DateTime<Utc>>,
    /// How long after the store wrote it that event was acknowledged by JetStream.
    pub lag: Option<Duration>,
    /// Every event that existed when the relay (re)started is published; what follows is live.
    pub caught_up: bool,
}

/// Publishes the store's `$all` to JetStream. See the module documentation.
pub struct Relay {
    store: Arc<dyn EventStore>,
    context: Context,
    options: RelayOptions,
    status: watch::Sender<RelayStatus>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("store", &self.store)
            .field("options", &self.options)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// Creates the relay's JetStream stream if it does not exist, and checks that an existing one
/// captures the relay's subjects.
///
/// The stream keeps every message forever (limits retention without limits): a rebuilt
/// projection replays it from sequence 1, and the relay resumes from its last message.
pub async fn ensure_stream(
    context: &Context,
    options: &RelayOptions,
) -> Result<Stream, RelayError> {
    let subject = options.stream_subject();
    let config = StreamConfig {
        name: options.stream_name.clone(),
        subjects: vec![subject.clone()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        max_age: Duration::ZERO,
        max_consumers: -1,
        duplicate_window: DUPLICATE_WINDOW,
        description: Some("RepitBot events, relayed from the event store's $all".to_owned()),
        ..StreamConfig::default()
    };
    let mut stream = context
        .get_or_create_stream(config)
        .await
        .map_err(|error| RelayError::jetstream("get or create stream", error))?;
    let info = stream
        .info()
        .await
        .map_err(|error| RelayError::jetstream("stream info", error))?;
    if !info.config.subjects.contains(&subject) {
        return Err(RelayError::StreamMismatch {
            stream: options.stream_name.clone(),
            subject,
        });
    }
    Ok(stream)
}

impl Relay {
    /// A relay from `store` to the stream described by `options`. Nothing happens until
    /// [`Relay::run`].
    pub fn new(store: Arc<dyn EventStore>, context: Context, options: RelayOptions) -> Self {
        let (status, _) = watch::channel(RelayStatus::default());
        Self {
            store,
            context,
            options,
            status,
        }
    }

    /// The relay's progress; the receiver keeps the last status after the relay stopped.
    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.subscribe()
    }

    /// Relays until `shutdown` fires (then publishes nothing more, waits for the outstanding
    /// acknowledgements and returns `Ok`) or until an error that retrying did not cure.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let mut failures = 0;
        loop {
            let published_before = self.status.borrow().published;
            let error = match self.relay(&shutdown).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if !error.is_retryable() {
                tracing::error!(%error, stream = %self.options.stream_name, "relay stopped");
                return Err(error);
            }
            if self.status.borrow().published > published_before {
                failures = 0;
            }
            failures += 1;
            if failures >= MAX_ATTEMPTS {
                tracing::error!(
                    %error, failures, stream = %self.options.stream_name,
                    "relay stopped after repeated failures"
                );
                return Err(error);
            }
            let delay = FIRST_BACKOFF
                .saturating_mul(1 << (failures - 1))
                .min(MAX_BACKOFF);
            tracing::warn!(
                %error, failures, delay_ms = delay.as_millis(),
                "relay failed; resuming from the stream's last message"
            );
            // The wait also lets publishes still queued at the server settle before the relay
            // reads where the stream ends.
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt: resume from the stream's last message and publish until shutdown or error.
    async fn relay(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let stream = ensure_stream(&self.context, &self.options).await?;
        let resume = self.resume_point(&stream).await?;
        tracing::info!(
            stream = %self.options.stream_name,
            sequence = resume.sequence,
            position = ?resume.position,
            last_event = ?resume.event_id,
            "relay resuming"
        );
        self.status.send_modify(|status| {
            status.position = resume.position;
            status.stream_sequence = resume.sequence;
            status.caught_up = false;
        });

        let from = resume
            .position
            .map_or(SubscribeFrom::Start, SubscribeFrom::After);
        let options = SubscribeToAllOptions {
            from,
            ..SubscribeToAllOptions::from_start()
        }
        .filter(AllFilter::default().exclude_system());
        let mut subscription = self.store.subscribe_to_all(options);

        let mut pipeline = Pipeline {
            in_flight: VecDeque::new(),
            last_sequence: resume.sequence,
        };
        let max_in_flight = self.options.max_in_flight.max(1);
        let mut report =
            tokio::time::interval_at(Instant::now() + REPORT_INTERVAL, REPORT_INTERVAL);
        report.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reported = self.status.borrow().published;

        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    self.drain(&mut pipeline).await?;
                    tracing::info!(
                        stream = %self.options.stream_name,
                        published = self.status.borrow().published,
                        "relay stopped on shutdown"
                    );
                    return Ok(());
                }
                Some((flight, ack)) = next_ack(&mut pipeline.in_flight) => {
                    self.acknowledged(flight, ack)?;
                }
                item = subscription.next(), if pipeline.in_flight.len() < max_in_flight => {
                    match item {
                        Some(Ok(SubscriptionItem::Event(event))) => {
                            self.publish(&mut pipeline, &event).await?;
                        }
                        Some(Ok(SubscriptionItem::CaughtUp)) => {
                            self.drain(&mut pipeline).await?;
                            self.status.send_modify(|status| status.caught_up = true);
                            tracing::info!(
                                stream = %self.options.stream_name,
                                published = self.status.borrow().published,
                                "relay caught up with the event store"
                            );
                        }
                        // Only system events were passed over: nothing to publish.
                        Some(Ok(SubscriptionItem::Checkpoint(_))) => {}
                        Some(Err(error)) => return Err(error.into()),
                        None => {
                            return Err(crate::Error::unavailable("the $all subscription ended")
                                .into());
                        }
                    }
                }
                _ = report.tick() => {
                    let status = self.status.borrow().clone();
                    if status.published > reported {
                        tracing::info!(
                            published = status.published,
                            position = ?status.position,
                            lag_ms = status.lag.map(|lag| lag.as_millis()),
                            "relay progress"
                        );
                    } else {
                        tracing::debug!(published = status.published, "relay idle");
                    }
                    reported = status.published;
                }
            }
        }
    }

    /// Finds the position and sequence of the last relayed message.
    async fn resume_point(&self, stream: &Stream) -> Result<ResumePoint, RelayError> {
        let info = stream
            .get_info()
            .await
            .map_err(|error| RelayError::jetstream("stream info", error))?;
        let state = info.state;
        let mut resume = ResumePoint {
            sequence: state.last_sequence,
            position: None,
            event_id: None,
        };
        if state.messages == 0 {
            return Ok(resume);
        }
        // The last sequence normally holds a message; an operator may have deleted a few at the
        // end, in which case the newest survivor says where to resume (the deleted events are
        // then published again, after the sequence the stream reached).
        let lowest = state
            .first_sequence
            .max(state.last_sequence.saturating_sub(MAX_DELETED_TAIL));
        for sequence in (lowest..=state.last_sequence).rev() {
            let message = match stream.get_raw_message(sequence).await {
                Ok(message) => message,
                Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                Err(error) => return Err(RelayError::jetstream("get last message", error)),
            };
            let foreign = |source| RelayError::ForeignMessage {
                stream: self.options.stream_name.clone(),
                sequence,
                source,
            };
            resume.position = Some(envelope::position(&message.headers).map_err(foreign)?);
            resume.event_id = message
                .headers
                .get(envelope::NATS_MSG_ID)
                .and_then(|id| id.as_str().parse::<EventId>().ok());
            return Ok(resume);
        }
        Err(RelayError::jetstream(
            "get last message",
            format!(
                "no message between sequences {lowest} and {}",
                state.last_sequence
            ),
        ))
    }

    /// Sends one event; its acknowledgement joins the pipeline.
    async fn publish(
        &self,
        pipeline: &mut Pipeline,
        event: &RecordedEvent,
    ) -> Result<(), RelayError> {
        let (subject, mut headers, payload) = envelope::encode(&self.options.subject_prefix, event);
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
            pipeline.last_sequence.to_string().as_str(),
        );
        let ack: PublishAckFuture = self
            .context
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|error| match error.kind() {
                PublishErrorKind::MaxPayloadExceeded => RelayError::TooLarge {
                    id: event.id,
                    source: error.into(),
                },
                _ => self.publish_error(error),
            })?;
        pipeline.last_sequence += 1;
        pipeline.in_flight.push_back(InFlight {
            ack: ack.into_future(),
            id: event.id,
            position: event.position,
            created: event.created,
            sequence: pipeline.last_sequence,
        });
        Ok(())
    }

    /// Waits for every outstanding acknowledgement, in order.
    async fn drain(&self, pipeline: &mut Pipeline) -> Result<(), RelayError> {
        while let Some(mut flight) = pipeline.in_flight.pop_front() {
            let ack = (&mut flight.ack).await;
            self.acknowledged(flight, ack)?;
        }
        Ok(())
    }

    /// Records an acknowledged publish, or turns a refusal into the error that stops the attempt.
    fn acknowledged(
        &self,
        flight: InFlight,
        ack: Result<PublishAck, PublishError>,
    ) -> Result<(), RelayError> {
        let ack = ack.map_err(|error| self.publish_error(error))?;
        if ack.duplicate {
            return Err(self.conflict(format!(
                "event {} is already in the stream, at sequence {}",
                flight.id, ack.sequence
            )));
        }
        if ack.sequence != flight.sequence {
            return Err(self.conflict(format!(
                "event {} was stored at sequence {}, expected {}",
                flight.id, ack.sequence, flight.sequence
            )));
        }
        let lag = (Utc::now() - flight.created)
            .to_std()
            .unwrap_or(Duration::ZERO);
        self.status.send_modify(|status| {
            status.published += 1;
            status.position = Some(flight.position);
            status.stream_sequence = ack.sequence;
            status.created = Some(flight.created);
            status.lag = Some(lag);
        });
        Ok(())
    }

    fn publish_error(&self, error: PublishError) -> RelayError {
        match error.kind() {
            PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId => {
                self.conflict(error.to_string())
            }
            _ => RelayError::jetstream("publish", error),
        }
    }

    fn conflict(&self, reason: String) -> RelayError {
        tracing::error!(
            stream = %self.options.stream_name,
            %reason,
            "jetstream refused the relay's publish: is another relay running?"
        );
        RelayError::Conflict {
            stream: self.options.stream_name.clone(),
            reason,
        }
    }
}

/// Where the stream ends, as found when an attempt starts.
#[derive(Debug)]
struct ResumePoint {
    sequence: u64,
    position: Option<Position>,
    event_id: Option<EventId>,
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// A publish awaiting its acknowledgement.
struct InFlight {
    ack: AckFuture,
    id: EventId,
    position: Position,
    created: DateTime<Utc>,
    /// The stream sequence it must be stored at.
    sequence: u64,
}

/// Publishes in flight, oldest first, and the sequence the newest one will be stored at.
struct Pipeline {
    in_flight: VecDeque<InFlight>,
    last_sequence: u64,
}

/// The oldest publish's acknowledgement; pending forever when nothing is in flight, so the
/// `select!` branch simply never fires. Cancel-safe: the acknowledgement future stays in the
/// queue and is polled again next time.
async fn next_ack(
    in_flight: &mut VecDeque<InFlight>,
) -> Option<(InFlight, Result<PublishAck, PublishError>)> {
    let Some(front) = in_flight.front_mut() else {
        return futures::future::pending().await;
    };
    let ack = (&mut front.ack).await;
    in_flight.pop_front().map(|flight| (flight, ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let options = RelayOptions::default();
        assert_eq!(options.stream_name, "REPIT_EVENTS");
        assert_eq!(options.stream_subject(), "repit.events.>");
        assert_eq!(options.max_in_flight, 256);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(RelayError::jetstream("publish", "timed out").is_retryable());
        assert!(RelayError::from(crate::Error::unavailable("down")).is_retryable());
        let conflict = RelayError::Conflict {
            stream: "S".to_owned(),
            reason: "wrong last sequence: 7".to_owned(),
        };
        assert!(!conflict.is_retryable());
    }
}
