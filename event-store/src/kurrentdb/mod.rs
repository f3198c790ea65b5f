//! The distributed backend: KurrentDB (formerly EventStoreDB) through its official gRPC client,
//! the `kurrentdb` crate (cargo feature `kurrentdb`, on by default so every build compiles it).
//!
//! # Connecting
//!
//! [`KurrentDbEventStore::connect`] takes a KurrentDB connection string:
//!
//! ```text
//! esdb://127.0.0.1:2113?tls=false                 one insecure node (development, tests)
//! kurrentdb://admin:changeit@db.internal:2113     one node, TLS, default credentials
//! kurrentdb+discover://db.internal:2113?nodePreference=leader   a cluster found through DNS
//! ```
//!
//! The schemes `esdb`, `kurrentdb` and `kurrent` (each with `+discover`) are accepted; the port
//! defaults to 2113 and TLS is on unless `tls=false`. Other settings are query parameters of the
//! client: `tlsVerifyCert`, `tlsCaFile`, `nodePreference` (`leader`, `follower`, `random`,
//! `readOnlyReplica`), `maxDiscoverAttempts`, `discoveryInterval`, `gossipTimeout`,
//! `keepAliveInterval`, `keepAliveTimeout` and `defaultDeadline` (milliseconds), `connectionName`,
//! `userCertFile` and `userKeyFile` (client certificate authentication).
//! Credentials in the string are sent with every call and never printed. Connecting checks that
//! the server answers, so a wrong address fails at start-up with [`Error::Unavailable`].
//!
//! # How the model maps onto KurrentDB
//!
//! KurrentDB is the store the trait was modelled on, so most of it is one to one: expected
//! revisions are its stream states, [`Position`](crate::Position) is its (commit, prepare) pair,
//! soft delete and tombstone are its own, stream metadata is the `$metadata` event of its
//! `$$<stream>` stream, and catch-up subscriptions, filters and checkpoints are the server's.
//! The differences, and what this backend does about them:
//!
//! - **Content types**: KurrentDB keeps an "is JSON" flag. `Json` is sent as `application/json`
//!   with its bytes unchanged; `Protobuf` as `application/octet-stream`, read back as `Protobuf`.
//!   Metadata bytes are KurrentDB's custom metadata; the creation time is read from the server's
//!   100 ns ticks, to the microsecond.
//! - **Idempotent retries**: KurrentDB recognises a retry only at the expected revision (or, with
//!   `Any`, from a cache) and writes a batch that reuses a stored id elsewhere. Before appending,
//!   the store reads the ids of the stream's newest [`KurrentDbOptions::id_check_window`] events
//!   (at least the batch's size) and decides as the trait says: a retry returns the original
//!   result, any other overlap is [`Error::IdempotencyConflict`]. When the server refuses with a
//!   wrong expected version, the ids are read back again, because a retry racing its original
//!   (or a partial match) is reported that way. Ids older than the window are not checked, and
//!   ids of events hidden by metadata or a soft delete are not seen: the price of a store with no
//!   index on event ids. A wider window costs one larger read per append.
//! - **Tombstones** are an event (`$streamDeleted`) in KurrentDB. Stream reads and subscriptions
//!   turn it into [`Error::StreamDeleted`]; `$all` skips it, since the model's `$all` holds only
//!   appended events. Metadata of a tombstoned stream is refused before anything is written.
//! - **Soft delete** is KurrentDB's: it writes `$tb` into the stream's metadata, so the metadata
//!   revision moves and [`StreamMetadata::truncate_before`](crate::StreamMetadata) shows it; a
//!   soft-deleted stream is reported as absent (`NoStream`) in a wrong expected version.
//! - **`$all` filters** run partly on the server (one prefix list) and partly here (`filter`);
//!   backward reads from a position include that position, as in the model. `$all` records the
//!   model cannot name (a stream name over 255 bytes) are skipped with a warning.
//! - **Errors**: a wrong expected version carries the actual revision; a tombstoned stream is
//!   [`Error::StreamDeleted`]; the server's own size limit is [`Error::AppendTooLarge`]; access
//!   denied, an unreachable or overloaded server, a follower, a deadline are
//!   [`Error::Unavailable`] (an operator's problem, retryable once fixed).
//!
//! No append can be held open for the conformance suite's "transaction held open" check: the
//! server commits a batch atomically, so there is no window to hold.
//!
//! Layout: `convert` (every model ↔ client translation and the retry decision), `filter` (the
//! `$all` filter split), `read` (lazy paged reads), `subscribe` (catch-up subscriptions).

mod convert;
mod filter;
mod read;
mod subscribe;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use kurrentdb as kdb;

use crate::error::{Error, Result};
use crate::limits::{Limits, check_append};
use crate::model::{
    AppendResult, EventId, ExpectedRevision, InvalidStreamName, NewEvent, ReadAllOptions,
    ReadStreamOptions, StreamMetadata, StreamName, SubscribeFrom, SubscribeToAllOptions,
    VersionedMetadata,
};
use crate::store::{EventStore, EventStream, Subscription};
use convert::{
    Failure, Retry, StreamView, append_result, event_data, failure, metadata_event,
    recognise_retry, reported_actual, stream_state,
};

/// How many of a stream's newest events an append checks for reused ids by default.
pub const DEFAULT_ID_CHECK_WINDOW: u64 = 1024;

/// A connection string that is not one the KurrentDB client accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid kurrentdb connection string: {0}")]
pub struct InvalidConnectionString(String);

/// How to connect to KurrentDB. Parse one from a connection string (see the module docs).
#[derive(Clone)]
pub struct KurrentDbOptions {
    settings: kdb::ClientSettings,
    /// Append limits, checked before anything is sent (KurrentDB's own default is also 1 MiB).
    pub limits: Limits,
    /// How many of a stream's newest events an append reads to recognise retries and reused ids
    /// (at least the batch's size is read).
    pub id_check_window: u64,
}

impl KurrentDbOptions {
    /// Options for the server named by `url`, with default limits and id check window.
    pub fn new(url: &str) -> Result<Self, InvalidConnectionString> {
        let settings = url
            .trim()
            .parse::<kdb::ClientSettings>()
            .map_err(|e| InvalidConnectionString(e.to_string()))?;
        Ok(Self {
            settings,
            limits: Limits::default(),
            id_check_window: DEFAULT_ID_CHECK_WINDOW,
        })
    }

    /// The client's settings parsed from the connection string.
    pub fn client_settings(&self) -> &kdb::ClientSettings {
        &self.settings
    }
}

impl FromStr for KurrentDbOptions {
    type Err = InvalidConnectionString;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Where the settings point, for logs and `Debug`: hosts and TLS, never credentials.
fn describe(settings: &kdb::ClientSettings) -> String {
    let hosts: Vec<String> = settings
        .hosts()
        .iter()
        .map(|endpoint| format!("{}:{}", endpoint.host, endpoint.port))
        .collect();
    format!(
        "{}{} (tls {})",
        if settings.is_dns_discovery_enabled() {
            "discover "
        } else {
            ""
        },
        hosts.join(","),
        if settings.is_secure_mode_enabled() {
            "on"
        } else {
            "off"
        }
    )
}

impl fmt::Debug for KurrentDbOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KurrentDbOptions")
            .field("server", &describe(&self.settings))
            .field("limits", &self.limits)
            .field("id_check_window", &self.id_check_window)
            .finish()
    }
}

/// The KurrentDB event store. Cheap to clone: clones share one client and its connections.
/// Reads and subscriptions hold their own handle on the client, so they keep working after the
/// store is dropped.
#[derive(Clone)]
pub struct KurrentDbEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: kdb::Client,
    server: String,
    limits: Limits,
    id_check_window: u64,
}

impl fmt::Debug for KurrentDbEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KurrentDbEventStore")
            .field("server", &self.inner.server)
            .field("limits", &self.inner.limits)
            .field("id_check_window", &self.inner.id_check_window)
            .finish_non_exhaustive()
    }
}

impl KurrentDbEventStore {
    /// Connects to the server named by `url` with default options. A malformed string or a
    /// server that does not answer is [`Error::Unavailable`].
    pub async fn connect(url: &str) -> Result<Self> {
        let options = KurrentDbOptions::new(url).map_err(Error::unavailable)?;
        Self::connect_with(options).await
    }

    /// Connects with `options`, checking that the server answers.
    pub async fn connect_with(options: KurrentDbOptions) -> Result<Self> {
        let server = describe(&options.settings);
        let client = kdb::Client::new(options.settings).map_err(|e| {
            Error::unavailable(format!("failed to create the kurrentdb client: {e}"))
        })?;
        let info = client
            .server_info()
            .await
            .map_err(|e| failure(e).into_error(None))?;
        tracing::debug!(%server, version = %info.version(), "connected to kurrentdb");
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                server,
                limits: options.limits,
                id_check_window: options.id_check_window,
            }),
        })
    }

    fn client(&self) -> &kdb::Client {
        &self.inner.client
    }

    /// Reads the stream's newest ids and decides whether `ids` were appended before.
    async fn look_up_ids(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        ids: &[EventId],
    ) -> Result<(Retry, StreamView)> {
        let batch = u64::try_from(ids.len()).unwrap_or(u64::MAX);
        let window = self.inner.id_check_window.max(batch);
        let (view, stored) = read::tail(self.client(), stream, window).await?;
        Ok((recognise_retry(ids, expected, &stored), view))
    }

    /// The error for a refused delete or tombstone.
    async fn delete_failure(
        &self,
        error: kdb::Error,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Error {
        match failure(error) {
            Failure::WrongExpectedVersion(server) => {
                match read::tail(self.client(), stream, 1).await {
                    Ok((view, _)) => Error::WrongExpectedVersion {
                        stream: stream.clone(),
                        expected,
                        actual: reported_actual(server, &view),
                    },
                    Err(error) => error,
                }
            }
            other => other.into_error(Some(stream)),
        }
    }
}

fn writable(stream: &StreamName) -> Result<()> {
    if stream.is_system() {
        return Err(InvalidStreamName::Reserved.into());
    }
    Ok(())
}

fn conflict(stream: &StreamName, event_id: EventId) -> Error {
    Error::IdempotencyConflict {
        stream: stream.clone(),
        event_id,
    }
}

#[async_trait]
impl EventStore for KurrentDbEventStore {
    fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let events = check_append(stream, events, &self.inner.limits).await?;
        let size: usize = events.iter().map(NewEvent::size).sum();
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        // A tombstoned stream fails here, before anything is sent.
        match self.look_up_ids(stream, expected, &ids).await?.0 {
            Retry::Original(result) => return Ok(result),
            Retry::Conflict(event_id) => return Err(conflict(stream, event_id)),
            Retry::New => {}
        }
        let data = events
            .into_iter()
            .enumerate()
            .map(|(index, event)| event_data(index, event))
            .collect::<Result<Vec<_>>>()?;
        let options = kdb::AppendToStreamOptions::default().stream_state(stream_state(expected));
        let written = match self
            .client()
            .append_to_stream(stream.as_str(), &options, data)
            .await
        {
            Ok(written) => written,
            Err(error) => {
                return Err(match failure(error) {
                    Failure::WrongExpectedVersion(server) => {
                        let (retry, view) = self.look_up_ids(stream, expected, &ids).await?;
                        match retry {
                            Retry::Original(result) => return Ok(result),
                            Retry::Conflict(event_id) => conflict(stream, event_id),
                            Retry::New => Error::WrongExpectedVersion {
                                stream: stream.clone(),
                                expected,
                                actual: reported_actual(server, &view),
                            },
                        }
                    }
                    Failure::TooLarge(max) => Error::AppendTooLarge {
                        size,
                        max: max.unwrap_or(self.inner.limits.max_append_size),
                    },
                    other => other.into_error(Some(stream)),
                });
            }
        };
        match append_result(&written) {
            Some(result) => Ok(result),
            // The server recognised a retry that raced ours and answered without a position.
            None => Ok(AppendResult {
                next_expected_revision: written.next_expected_version,
                position: read::position_of(self.client(), stream, written.next_expected_version)
                    .await?,
            }),
        }
    }

    fn read_stream(&self, stream: &StreamName, options: ReadStreamOptions) -> EventStream {
        read::read_stream(self.client().clone(), stream.clone(), options)
    }

    fn read_all(&self, options: ReadAllOptions) -> EventStream {
        read::read_all(self.client().clone(), options)
    }

    fn subscribe_to_stream(&self, stream: &StreamName, from: SubscribeFrom<u64>) -> Subscription {
        subscribe::to_stream(self.client().clone(), stream.clone(), from)
    }

    fn subscribe_to_all(&self, options: SubscribeToAllOptions) -> Subscription {
        subscribe::to_all(self.client().clone(), options)
    }

    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedRevision) -> Result<()> {
        writable(stream)?;
        let options = kdb::DeleteStreamOptions::default().stream_state(stream_state(expected));
        match self.client().delete_stream(stream.as_str(), &options).await {
            Ok(_) => Ok(()),
            Err(error) => Err(self.delete_failure(error, stream, expected).await),
        }
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
    ) -> Result<()> {
        writable(stream)?;
        let options = kdb::TombstoneStreamOptions::default().stream_state(stream_state(expected));
        match self
            .client()
            .tombstone_stream(stream.as_str(), &options)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => Err(self.delete_failure(error, stream, expected).await),
        }
    }

    async fn get_stream_metadata(&self, stream: &StreamName) -> Result<Option<VersionedMetadata>> {
        let metadata_stream = stream.metadata_stream();
        let (state, last) = futures::join!(
            read::tail(self.client(), stream, 1),
            read::last_event(self.client(), &metadata_stream),
        );
        // A tombstoned stream has no metadata to show, whatever `$$<stream>` still holds.
        state?;
        match last {
            Ok(Some(event)) => Ok(Some(VersionedMetadata {
                revision: event.revision,
                metadata: StreamMetadata::from_json(&event.data)?,
            })),
            Ok(None) | Err(Failure::NotFound) => Ok(None),
            Err(other) => Err(other.into_error(Some(stream))),
        }
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamName,
        expected: ExpectedRevision,
        metadata: &StreamMetadata,
    ) -> Result<u64> {
        writable(stream)?;
        metadata.validate()?;
        let event = metadata_event(metadata)?;
        // Refuses a tombstoned stream before writing to its `$$` stream.
        read::tail(self.client(), stream, 1).await?;
        let metadata_stream = stream.metadata_stream();
        let options = kdb::AppendToStreamOptions::default().stream_state(stream_state(expected));
        match self
            .client()
            .append_to_stream(metadata_stream.as_str(), &options, event)
            .await
        {
            Ok(written) => Ok(written.next_expected_version),
            Err(error) => Err(match failure(error) {
                Failure::WrongExpectedVersion(server) => Error::WrongExpectedVersion {
                    stream: metadata_stream,
                    expected,
                    actual: server.unwrap_or(crate::model::CurrentRevision::NoStream),
                },
                other => other.into_error(Some(stream)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_of_every_scheme_parse() {
        for url in [
            "esdb://127.0.0.1:2113?tls=false",
            "kurrentdb://admin:changeit@db.internal:2113",
            "kurrent://db.internal?tls=false&nodePreference=leader",
            "esdb+discover://db.internal:2113",
            " kurrentdb://127.0.0.1:2113?tls=false\n",
        ] {
            assert!(KurrentDbOptions::new(url).is_ok(), "{url:?}");
        }
        let options: KurrentDbOptions = "esdb://127.0.0.1:2113?tls=false".parse().expect("valid");
        assert_eq!(options.limits, Limits::default());
        assert_eq!(options.id_check_window, DEFAULT_ID_CHECK_WINDOW);
        assert!(!options.client_settings().is_secure_mode_enabled());
        let port = KurrentDbOptions::new("kurrentdb://db.internal").expect("valid");
        assert_eq!(port.client_settings().hosts()[0].port, 2113);
    }

    #[test]
    fn malformed_connection_strings_are_refused() {
        for url in ["", "postgres://localhost/db", "esdb://", "not a url"] {
            assert!(KurrentDbOptions::new(url).is_err(), "{url:?}");
        }
    }

    #[test]
    fn options_print_the_server_but_never_the_credentials() {
        let options =
            KurrentDbOptions::new("kurrentdb://admin:s3cr3t@db.internal:2113").expect("valid");
        let shown = format!("{options:?}");
        assert!(shown.contains("db.internal:2113 (tls on)"), "{shown}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("admin"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn writes_to_system_streams_are_refused_before_anything_is_sent() {
        // Nothing listens on port 1: a request that reached the client would fail differently.
        let options = KurrentDbOptions::new("esdb://127.0.0.1:1?tls=false").expect("valid");
        let store = KurrentDbEventStore {
            inner: Arc::new(Inner {
                server: describe(&options.settings),
                client: kdb::Client::new(options.settings).expect("a lazy client"),
                limits: Limits::default(),
                id_check_window: DEFAULT_ID_CHECK_WINDOW,
            }),
        };
        let system = StreamName::system("$ce-lesson").expect("valid system name");
        let reserved = |result: Result<()>| {
            matches!(
                result,
                Err(Error::InvalidStreamName(InvalidStreamName::Reserved))
            )
        };
        assert!(reserved(
            store
                .append(
                    &system,
                    ExpectedRevision::Any,
                    vec![NewEvent::json("t", "{}")]
                )
                .await
                .map(drop)
        ));
        assert!(reserved(
            store.delete_stream(&system, ExpectedRevision::Any).await
        ));
        assert!(reserved(
            store.tombstone_stream(&system, ExpectedRevision::Any).await
        ));
        assert!(reserved(
            store
                .set_stream_metadata(&system, ExpectedRevision::Any, &StreamMetadata::default())
                .await
                .map(drop)
        ));
        let stream = StreamName::parse("lesson-1").expect("valid name");
        let bad = StreamMetadata {
            max_count: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            store
                .set_stream_metadata(&stream, ExpectedRevision::Any, &bad)
                .await,
            Err(Error::InvalidMetadata(_))
        ));
        assert!(matches!(
            store
                .append(&stream, ExpectedRevision::Any, Vec::new())
                .await,
            Err(Error::EmptyAppend)
        ));
    }
}
