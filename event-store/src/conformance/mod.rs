//! The conformance suite: EventStoreDB's semantics as executable checks, run against every
//! backend (cargo feature `conformance`).
//!
//! Each property is a public async function taking a [`StoreFactory`]; [`conformance_tests!`](crate::conformance_tests)
//! expands to one `#[tokio::test]` per property, so a backend's test file is:
//!
//! ```text
//! repit_event_store::conformance_tests!(MyFactory::new());
//! ```
//!
//! and [`run_all`] runs them one after another (for ad-hoc runs against a live server).
//!
//! Tests are written to share a database with other tests and other runs: each works in streams
//! under its own random prefix and filters `$all` by it, never assuming `$all` holds only its own
//! events, so they also run against one long-lived KurrentDB server. A failure panics with what
//! was expected; every wait is bounded.
//!
//! - `append`: revision rules, concurrent appends, atomic batches, idempotent retries, names.
//! - `read`: stream and `$all` reads, round trips, `$all` order, no skipped events.
//! - `subscribe`: catch-up subscriptions, resuming, slow consumers, checkpoints.
//! - `lifecycle`: soft delete, tombstone, metadata, reopening, a killed writer process.

mod append;
mod lifecycle;
mod read;
mod subscribe;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::oneshot;
use uuid::Uuid;

pub use append::*;
pub use lifecycle::*;
pub use read::*;
pub use subscribe::*;

use crate::error::Result;
use crate::model::{
    AllFilter, AppendResult, EventId, NewEvent, ReadAllOptions, ReadStreamOptions, RecordedEvent,
    StreamName, SubscriptionItem,
};
use crate::store::{EventStore, Subscription};

/// Makes stores for the suite. A "database" is whatever one store lives in (a SQLite file, a
/// PostgreSQL schema, a KurrentDB server); the suite opens it twice to check durability and
/// names it to a child process in the crash test.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// The backend under test.
    type Store: EventStore + 'static;
    /// A handle on one database; dropping one made by [`StoreFactory::create`] may delete it.
    type Database: Send + Sync + 'static;

    /// A new, empty database (or, for a shared server, a handle on it).
    async fn create(&self) -> Result<Self::Database>;

    /// Opens a store on `database`. Opening again after dropping a store must find everything
    /// the first one acknowledged.
    async fn open(&self, database: &Self::Database) -> Result<Self::Store>;

    /// A string from which [`StoreFactory::attach`] finds the same database in another process.
    fn locator(&self, database: &Self::Database) -> String;

    /// The database named by a [`StoreFactory::locator`], without taking ownership of it.
    fn attach(&self, locator: &str) -> Self::Database;

    /// Starts an append on `store` whose transaction stays open until [`HeldAppend::commit`],
    /// having claimed whatever an append claims (a position, a sequence value, the write lock),
    /// so the suite can check that readers skip nothing while it is open. `None` if the backend
    /// cannot (KurrentDB commits atomically on the server).
    async fn hold_append(
        &self,
        store: &Self::Store,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> Result<Option<HeldAppend>> {
        let _ = (store, stream, events);
        Ok(None)
    }
}

/// An append whose transaction is being held open (see [`StoreFactory::hold_append`]).
pub struct HeldAppend {
    release: oneshot::Sender<()>,
    outcome: BoxFuture<'static, Result<AppendResult>>,
}

impl HeldAppend {
    /// Wraps a backend's held append: firing `release` lets it commit, and `outcome` resolves
    /// to its result.
    pub fn new(
        release: oneshot::Sender<()>,
        outcome: impl Future<Output = Result<AppendResult>> + Send + 'static,
    ) -> Self {
        Self {
            release,
            outcome: outcome.boxed(),
        }
    }

    /// Lets the append commit and waits for its result.
    pub async fn commit(self) -> Result<AppendResult> {
        // If the backend already gave up waiting, the outcome says so.
        let _ = self.release.send(());
        self.outcome.await
    }
}

impl fmt::Debug for HeldAppend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldAppend").finish_non_exhaustive()
    }
}

/// The longest any one conformance test may run.
pub const TEST_TIME_LIMIT: Duration = Duration::from_secs(120);

/// The longest the suite waits for any single step (a read, the next subscription item).
const STEP: Duration = Duration::from_secs(15);

/// Runs a conformance test, failing it if it exceeds [`TEST_TIME_LIMIT`].
pub async fn within_time_limit(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIME_LIMIT, test)
        .await
        .expect("the conformance test exceeded its time limit");
}

/// The name libtest knows a test by (`--exact` filter): its module path without the crate.
pub fn libtest_name(module_path: &str, test: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, path)) => format!("{path}::{test}"),
        None => test.to_owned(),
    }
}

/// Runs every property in turn. `crash_test_name` is the libtest name of a test that calls
/// [`a_process_killed_in_the_middle_of_an_append_leaves_all_of_the_batch_or_none`] (the child
/// process re-runs it); without one, that property is skipped.
pub async fn run_all<F: StoreFactory>(factory: &F, crash_test_name: Option<&str>) {
    revision_rules_follow_the_expected_revision(factory).await;
    only_one_of_concurrent_appends_with_the_same_expected_revision_wins(factory).await;
    a_batch_with_one_bad_event_writes_nothing(factory).await;
    a_retried_append_returns_the_original_result_and_writes_nothing(factory).await;
    a_partial_id_match_is_an_idempotency_conflict(factory).await;
    invalid_stream_names_are_rejected(factory).await;
    streams_read_forwards_and_backwards_with_limits(factory).await;
    all_reads_forwards_and_backwards_with_limits_and_filters(factory).await;
    an_event_round_trips_its_id_type_data_metadata_and_time(factory).await;
    all_is_ordered_by_completion_and_batches_are_contiguous(factory).await;
    no_event_is_skipped_with_eight_concurrent_writers_and_a_transaction_held_open(factory).await;
    a_stream_subscription_delivers_history_then_caught_up_then_live(factory).await;
    an_all_subscription_delivers_history_then_caught_up_then_live(factory).await;
    subscriptions_resume_exclusive_of_the_given_position(factory).await;
    a_dropped_subscription_resumes_without_losing_events(factory).await;
    a_slow_consumer_loses_nothing(factory).await;
    a_filtered_all_subscription_emits_checkpoints(factory).await;
    a_soft_deleted_stream_reads_empty_and_an_append_recreates_it(factory).await;
    a_tombstoned_stream_is_gone_for_good(factory).await;
    stream_metadata_has_its_own_expected_revision_and_limits_reads(factory).await;
    reopening_the_store_keeps_everything(factory).await;
    if let Some(test) = crash_test_name {
        a_process_killed_in_the_middle_of_an_append_leaves_all_of_the_batch_or_none(factory, test)
            .await;
    }
}

/// Expands to one `#[tokio::test]` per conformance property for the factory expression given
/// (evaluated once per test). The calling crate needs `tokio` with the `macros` and
/// `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__conformance_test!($factory; revision_rules_follow_the_expected_revision);
        $crate::__conformance_test!($factory; only_one_of_concurrent_appends_with_the_same_expected_revision_wins);
        $crate::__conformance_test!($factory; a_batch_with_one_bad_event_writes_nothing);
        $crate::__conformance_test!($factory; a_retried_append_returns_the_original_result_and_writes_nothing);
        $crate::__conformance_test!($factory; a_partial_id_match_is_an_idempotency_conflict);
        $crate::__conformance_test!($factory; invalid_stream_names_are_rejected);
        $crate::__conformance_test!($factory; streams_read_forwards_and_backwards_with_limits);
        $crate::__conformance_test!($factory; all_reads_forwards_and_backwards_with_limits_and_filters);
        $crate::__conformance_test!($factory; an_event_round_trips_its_id_type_data_metadata_and_time);
        $crate::__conformance_test!($factory; all_is_ordered_by_completion_and_batches_are_contiguous);
        $crate::__conformance_test!($factory; no_event_is_skipped_with_eight_concurrent_writers_and_a_transaction_held_open);
        $crate::__conformance_test!($factory; a_stream_subscription_delivers_history_then_caught_up_then_live);
        $crate::__conformance_test!($factory; an_all_subscription_delivers_history_then_caught_up_then_live);
        $crate::__conformance_test!($factory; subscriptions_resume_exclusive_of_the_given_position);
        $crate::__conformance_test!($factory; a_dropped_subscription_resumes_without_losing_events);
        $crate::__conformance_test!($factory; a_slow_consumer_loses_nothing);
        $crate::__conformance_test!($factory; a_filtered_all_subscription_emits_checkpoints);
        $crate::__conformance_test!($factory; a_soft_deleted_stream_reads_empty_and_an_append_recreates_it);
        $crate::__conformance_test!($factory; a_tombstoned_stream_is_gone_for_good);
        $crate::__conformance_test!($factory; stream_metadata_has_its_own_expected_revision_and_limits_reads);
        $crate::__conformance_test!($factory; reopening_the_store_keeps_everything);
        $crate::__conformance_test!($factory; crash a_process_killed_in_the_middle_of_an_append_leaves_all_of_the_batch_or_none);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($factory:expr; crash $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let factory = $factory;
            let test = $crate::conformance::libtest_name(module_path!(), stringify!($name));
            $crate::conformance::within_time_limit($crate::conformance::$name(&factory, &test))
                .await;
        }
    };
    ($factory:expr; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let factory = $factory;
            $crate::conformance::within_time_limit($crate::conformance::$name(&factory)).await;
        }
    };
}

// Helpers shared by the property modules.

/// A prefix no other test or run uses, so tests can share a database.
fn unique_prefix() -> String {
    let id = Uuid::new_v4().simple().to_string();
    format!("c{}-", &id[..12])
}

fn stream(prefix: &str, name: &str) -> StreamName {
    StreamName::parse(format!("{prefix}{name}")).expect("test stream names are valid")
}

/// A small JSON event carrying `n`, so tests can tell events apart.
fn numbered(n: usize) -> NewEvent {
    NewEvent::json("conformance.Numbered", format!(r#"{{"n":{n}}}"#))
}

fn numbered_batch(range: std::ops::Range<usize>) -> Vec<NewEvent> {
    range.map(numbered).collect()
}

async fn fresh<F: StoreFactory>(factory: &F) -> (F::Database, F::Store) {
    let database = factory.create().await.expect("failed to create a database");
    let store = factory
        .open(&database)
        .await
        .expect("failed to open a store");
    (database, store)
}

async fn read_stream_with<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamName,
    options: ReadStreamOptions,
) -> Result<Vec<RecordedEvent>> {
    tokio::time::timeout(STEP, store.read_stream(stream, options).try_collect())
        .await
        .expect("a stream read timed out")
}

async fn read_stream<S: EventStore + ?Sized>(store: &S, stream: &StreamName) -> Vec<RecordedEvent> {
    read_stream_with(store, stream, ReadStreamOptions::forwards())
        .await
        .unwrap_or_else(|e| panic!("failed to read {stream}: {e}"))
}

async fn read_all_with<S: EventStore + ?Sized>(
    store: &S,
    options: ReadAllOptions,
) -> Vec<RecordedEvent> {
    tokio::time::timeout(STEP, store.read_all(options).try_collect())
        .await
        .expect("a read of $all timed out")
        .expect("failed to read $all")
}

/// This test's events in `$all`, oldest first.
async fn ours<S: EventStore + ?Sized>(store: &S, prefix: &str) -> Vec<RecordedEvent> {
    let filter = AllFilter::default().stream_prefix(prefix);
    read_all_with(store, ReadAllOptions::forwards().filter(filter)).await
}

async fn next_item(subscription: &mut Subscription) -> SubscriptionItem {
    match tokio::time::timeout(STEP, subscription.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(error))) => panic!("the subscription failed: {error}"),
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("no subscription item within {STEP:?}"),
    }
}

/// The next event, skipping checkpoints; panics on `CaughtUp`.
async fn next_event(subscription: &mut Subscription) -> RecordedEvent {
    loop {
        match next_item(subscription).await {
            SubscriptionItem::Event(event) => return event,
            SubscriptionItem::Checkpoint(_) => {}
            SubscriptionItem::CaughtUp => panic!("expected an event, got caught up"),
        }
    }
}

/// The next event, skipping checkpoints and `CaughtUp`, for consumers that race the writers.
async fn next_event_in_any_phase(subscription: &mut Subscription) -> RecordedEvent {
    loop {
        if let SubscriptionItem::Event(event) = next_item(subscription).await {
            return event;
        }
    }
}

/// Waits for `CaughtUp`, skipping checkpoints; panics on an event.
async fn expect_caught_up(subscription: &mut Subscription) {
    loop {
        match next_item(subscription).await {
            SubscriptionItem::CaughtUp => return,
            SubscriptionItem::Checkpoint(_) => {}
            SubscriptionItem::Event(event) => {
                panic!(
                    "expected caught up, got event {} of {}",
                    event.revision, event.stream
                )
            }
        }
    }
}

fn ids(events: &[RecordedEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

fn new_ids(events: &[NewEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

fn revisions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

#[track_caller]
fn assert_strictly_increasing(events: &[RecordedEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "positions out of order: {} then {}",
            pair[0].position,
            pair[1].position
        );
    }
}
