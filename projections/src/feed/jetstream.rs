//! The distributed feed: a JetStream pull consumer on the stream the relay fills.
//!
//! - Live ([`FeedSpec::replay`] false): a durable consumer named after the projection
//!   (`proj_<name>`), pointed at the first message after the projection's checkpoint each time
//!   the feed opens (found by binary search over the stream: positions grow with sequences).
//!   Acknowledgement is cumulative (`AckPolicy::All`): the runtime acks the last message of a
//!   batch once its rows and checkpoint are committed. Re-pointing on open matters: otherwise a
//!   process killed while holding delivered, unapplied messages would see them acknowledged by
//!   its successor's first ack and never applied.
//! - Replay (a rebuild): an ephemeral consumer from sequence 1 without acknowledgements, so the
//!   live projection's durable consumer is untouched. The server removes it 5 minutes after the
//!   reader goes away.
//!
//! Both filter on the server by subject ([`envelope::subject_filter`]), which may be coarser than
//! the projection's event type prefixes; the feed checks [`FeedSpec::wants`] on every event.
//! The feed still drops what is at or below [`FeedSpec::after`], so a redelivery is harmless.
//!
//! The live end (for [`Batch::caught_up`]) is known from the server's count of messages still
//! pending for the consumer, carried on every delivered message.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::{self, Context};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use repit_event_store::Position;
use repit_event_store::relay::{RelayOptions, ensure_stream, envelope};

use super::{Batch, Feed, FeedError, FeedSpec};

/// The first stream sequence whose event lies after `after` (`$all` positions grow with stream
/// sequences, since the relay publishes in `$all` order), found by binary search with direct
/// reads: a handful of round trips, whatever the stream's length.
async fn first_sequence_after(
    stream: &mut jetstream::stream::Stream,
    after: Option<Position>,
) -> Result<u64, FeedError> {
    let state = stream.info().await.map_err(jetstream_error)?.state.clone();
    let Some(after) = after else {
        return Ok(state.first_sequence.max(1));
    };
    if state.messages == 0 {
        return Ok(state.last_sequence + 1);
    }
    let (mut low, mut high) = (state.first_sequence, state.last_sequence + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        let message = stream
            .get_raw_message(middle)
            .await
            .map_err(jetstream_error)?;
        let position = envelope::position(&message.headers).map_err(|e| FeedError::Malformed {
            sequence: middle,
            reason: e.to_string(),
        })?;
        if position > after {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(low)
}

/// How long the server waits for an acknowledgement before redelivering.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages delivered and not yet acknowledged; the runtime acks every batch, so this only bounds
/// a slow projection's backlog of deliveries.
const MAX_ACK_PENDING: i64 = 10_000;
/// How long an abandoned rebuild consumer outlives its reader.
const REPLAY_INACTIVE_THRESHOLD: Duration = Duration::from_secs(300);

/// Opens JetStream feeds on the relay's stream. Cheap to clone: one per projection.
#[derive(Clone, Debug)]
pub struct JetStreamSource {
    // Shared: the client context is large, and [`super::FeedSource`] holds a source inline.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    context: Context,
    options: RelayOptions,
}

impl JetStreamSource {
    /// Feeds on the stream and subjects named by `options` (the relay's).
    pub fn new(context: Context, options: RelayOptions) -> Self {
        Self {
            shared: Arc::new(Shared { context, options }),
        }
    }

    /// The relay options the feeds read with.
    pub fn options(&self) -> &RelayOptions {
        &self.shared.options
    }

    /// The durable consumer name of projection `name`: `proj_<name>`, with every character
    /// outside `[A-Za-z0-9_-]` replaced by `_`.
    pub fn consumer_name(name: &str) -> String {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("proj_{safe}")
    }

    /// Opens the feed `spec` asks for, creating the stream (if the relay has not yet) and the
    /// consumer.
    pub async fn open(&self, spec: &FeedSpec) -> Result<JetStreamFeed, FeedError> {
        let stream = ensure_stream(&self.shared.context, &self.shared.options)
            .await
            .map_err(jetstream_error)?;
        let mut config = pull::Config {
            deliver_policy: DeliverPolicy::All,
            ..pull::Config::default()
        };
        // One filter works on every server; several need NATS 2.10.
        match filter_subjects(&self.shared.options, spec).as_slice() {
            [one] => config.filter_subject = one.clone(),
            many => config.filter_subjects = many.to_vec(),
        }
        let (consumer, name) = if spec.replay {
            let config = pull::Config {
                ack_policy: AckPolicy::None,
                inactive_threshold: REPLAY_INACTIVE_THRESHOLD,
                description: Some(format!("rebuild of projection {}", spec.name)),
                ..config
            };
            let consumer = stream
                .create_consumer(config)
                .await
                .map_err(jetstream_error)?;
            let name = consumer.cached_info().name.clone();
            (consumer, name)
        } else {
            let name = Self::consumer_name(&spec.name);
            // The checkpoint in the read-model database is the truth, not the consumer's
            // acknowledgements: with cumulative acks, a process that died holding delivered but
            // unapplied messages would have them acknowledged by its successor's first ack. So
            // every open points the durable consumer at the first message after the checkpoint.
            let mut stream = stream;
            let start_sequence = first_sequence_after(&mut stream, spec.after).await?;
            let config = pull::Config {
                durable_name: Some(name.clone()),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
                ack_policy: AckPolicy::All,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                description: Some(format!("projection {}", spec.name)),
                ..config
            };
            match stream.delete_consumer(&name).await {
                Ok(_) => {}
                // Absent: the first open of this generation.
                Err(error) if error.to_string().contains("not found") => {}
                Err(error) => return Err(jetstream_error(error)),
            }
            let consumer: Consumer<pull::Config> = stream
                .create_consumer(config)
                .await
                .map_err(jetstream_error)?;
            (consumer, name)
        };
        let info = consumer.cached_info();
        let at_live_end = info.num_pending == 0 && info.num_ack_pending == 0;
        let messages = consumer.messages().await.map_err(jetstream_error)?;
        tracing::debug!(
            consumer = name,
            replay = spec.replay,
            pending = info.num_pending,
            "jetstream feed opened"
        );
        Ok(JetStreamFeed {
            spec: spec.clone(),
            after: if spec.replay { None } else { spec.after },
            consumer: name,
            acknowledged: !spec.replay,
            messages,
            held: None,
            at_live_end,
        })
    }
}

/// One projection's feed from a JetStream consumer. See the module documentation.
pub struct JetStreamFeed {
    spec: FeedSpec,
    /// Events at or below this position were applied already (a replay starts from nothing).
    after: Option<Position>,
    consumer: String,
    /// Whether the consumer expects acknowledgements (the live, durable one).
    acknowledged: bool,
    messages: pull::Stream,
    /// A malformed message that followed good ones: reported by the next call, after the good
    /// ones were applied.
    held: Option<jetstream::Message>,
    /// Nothing was pending when the feed opened: the first call reports the live end at once
    /// instead of waiting for a new event.
    at_live_end: bool,
}

impl fmt::Debug for JetStreamFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamFeed")
            .field("spec", &self.spec)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl JetStreamFeed {
    /// The next message: the held one, else the next from the server — waiting for it when
    /// `wait`, else only if it is already there (`None` when it is not).
    async fn next_message(&mut self, wait: bool) -> Result<Option<jetstream::Message>, FeedError> {
        if let Some(message) = self.held.take() {
            return Ok(Some(message));
        }
        loop {
            let item = if wait {
                self.messages.next().await
            } else {
                match self.messages.next().now_or_never() {
                    Some(item) => item,
                    None => return Ok(None),
                }
            };
            match item {
                None => return Err(FeedError::Closed),
                Some(Ok(message)) => return Ok(Some(message)),
                // The stream goes on pulling; a missed heartbeat only says the server was quiet
                // or slow for a while.
                Some(Err(error)) if error.kind() == MessagesErrorKind::MissingHeartbeat => {
                    tracing::warn!(consumer = self.consumer, %error, "jetstream feed heartbeat");
                }
                Some(Err(error)) => return Err(jetstream_error(error)),
            }
        }
    }
}

#[async_trait]
impl Feed for JetStreamFeed {
    async fn next_batch(&mut self, max: usize) -> Result<Batch, FeedError> {
        if std::mem::take(&mut self.at_live_end) {
            return Ok(Batch::new(Vec::new(), None).at_live_end(true));
        }
        let max = max.max(1);
        let mut events = Vec::new();
        let mut position = None;
        let mut last = None;
        let mut caught_up = false;
        let mut taken = 0;
        while taken < max {
            // Block for the first message only; then take what is ready, so one transaction
            // covers a burst and a quiet feed still delivers at once.
            let Some(message) = self.next_message(last.is_none()).await? else {
                break;
            };
            let (sequence, pending) = message
                .info()
                .map_or((0, None), |info| (info.stream_sequence, Some(info.pending)));
            let decoded = match &message.headers {
                Some(headers) => envelope::decode(headers, message.payload.clone())
                    .map_err(|error| error.to_string()),
                None => Err("no headers".to_owned()),
            };
            let event = match decoded {
                Ok(event) => event,
                Err(reason) if last.is_none() => {
                    return Err(FeedError::Malformed { sequence, reason });
                }
                Err(_) => {
                    self.held = Some(message);
                    break;
                }
            };
            taken += 1;
            caught_up = pending == Some(0);
            position = Some(event.position);
            let fresh = self.after.is_none_or(|after| event.position > after);
            if fresh && self.spec.wants(&event.event_type) {
                events.push(event);
            }
            last = Some(message);
        }
        let batch = match last {
            Some(last) if self.acknowledged => {
                // Cumulative: acknowledging the last message acknowledges the whole batch. The
                // double ack waits for the server's confirmation.
                let ack = async move { last.double_ack().await.map_err(jetstream_error) };
                Batch::with_ack(events, position, ack.boxed())
            }
            _ => Batch::new(events, position),
        };
        Ok(batch.at_live_end(caught_up))
    }
}

/// The subject filters for `spec`: one per service its prefixes name, or the whole stream.
fn filter_subjects(options: &RelayOptions, spec: &FeedSpec) -> Vec<String> {
    let everything = options.stream_subject();
    let mut subjects: Vec<String> = spec
        .event_type_prefixes
        .iter()
        .map(|p| envelope::subject_filter(&options.subject_prefix, p))
        .collect();
    // Overlapping filters are refused by the server, and `<prefix>.>` overlaps every other.
    if subjects.is_empty() || subjects.contains(&everything) {
        return vec![everything];
    }
    subjects.sort();
    subjects.dedup();
    subjects
}

fn jetstream_error(error: impl fmt::Display) -> FeedError {
    FeedError::JetStream(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prefixes: &[&str]) -> FeedSpec {
        FeedSpec {
            name: "lessons".to_owned(),
            event_type_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            after: None,
            replay: false,
        }
    }

    #[test]
    fn consumer_names_are_safe_nats_tokens() {
        assert_eq!(
            JetStreamSource::consumer_name("lessons_g3"),
            "proj_lessons_g3"
        );
        assert_eq!(
            JetStreamSource::consumer_name("tutor.calendar v2*>"),
            "proj_tutor_calendar_v2__"
        );
    }

    #[test]
    fn filters_are_deduplicated_and_never_overlap() {
        let options = RelayOptions::default();
        assert_eq!(filter_subjects(&options, &spec(&[])), ["repit.events.>"]);
        assert_eq!(
            filter_subjects(
                &options,
                &spec(&[
                    "repit.tutor.v1.",
                    "repit.lesson.v1.Lesson",
                    "repit.lesson.v1."
                ])
            ),
            ["repit.events.lesson.>", "repit.events.tutor.>"]
        );
        assert_eq!(
            filter_subjects(&options, &spec(&["repit.lesson.v1.", "Legacy"])),
            ["repit.events.>"]
        );
    }
}
