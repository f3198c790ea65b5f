//! The conformance suite against a KurrentDB server named by `REPIT_KURRENTDB_URL`, and the
//! KurrentDB backend's behaviour without one.
//!
//! KurrentDB cannot be installed where CI runs, so without the variable each conformance test
//! prints a notice and returns (`repit_tests::require` never fails for KurrentDB). To run them,
//! see `deploy/kurrentdb.md`:
//!
//! ```text
//! REPIT_KURRENTDB_URL=esdb://127.0.0.1:2113?tls=false cargo nextest run -p repit-event-store --test kurrentdb
//! ```
//!
//! Every test shares the one server: the suite works under random stream prefixes and filters
//! `$all` by them, so tests and runs do not see each other's events.
#![cfg(feature = "kurrentdb")]

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use repit_event_store::conformance::StoreFactory;
use repit_event_store::{
    ContentType, Error, EventStore, ExpectedRevision, KurrentDbEventStore, NewEvent, Result,
    StreamName,
};
use uuid::Uuid;

/// A "database" is the server; a fresh store and a reopened one are new clients on it.
#[derive(Debug)]
struct KurrentDbFactory {
    url: String,
}

impl KurrentDbFactory {
    /// The factory for the configured server, or `None` (after a notice) when there is none.
    fn from_env() -> Option<Self> {
        repit_tests::require(repit_tests::Backend::KurrentDb).map(|url| Self { url })
    }
}

#[async_trait]
impl StoreFactory for KurrentDbFactory {
    type Store = KurrentDbEventStore;
    type Database = String;

    async fn create(&self) -> Result<String> {
        Ok(self.url.clone())
    }

    async fn open(&self, url: &String) -> Result<KurrentDbEventStore> {
        KurrentDbEventStore::connect(url).await
    }

    fn locator(&self, url: &String) -> String {
        url.clone()
    }

    fn attach(&self, locator: &str) -> String {
        locator.to_owned()
    }

    // `hold_append` stays `None`: the server commits each batch atomically, there is no
    // transaction to hold open.
}

mod conformance {
    // Without a server the factory expression returns from the test before it starts.
    repit_event_store::conformance_tests!(match super::KurrentDbFactory::from_env() {
        Some(factory) => factory,
        None => return,
    });
}

const LIMIT: Duration = Duration::from_secs(60);

/// A URL where nothing listens (port 1 is reserved and unused), with one discovery attempt.
const NOWHERE: &str = "esdb://127.0.0.1:1?tls=false&maxDiscoverAttempts=1&discoveryInterval=10";

#[tokio::test]
async fn a_server_that_does_not_answer_is_unavailable_at_connect() {
    let result = tokio::time::timeout(LIMIT, KurrentDbEventStore::connect(NOWHERE))
        .await
        .expect("connecting gave up in time");
    assert!(
        matches!(result, Err(Error::Unavailable(_))),
        "expected unavailable, got {result:?}"
    );
}

#[tokio::test]
async fn a_malformed_connection_string_is_unavailable_with_the_reason() {
    match KurrentDbEventStore::connect("postgres://127.0.0.1/events").await {
        Err(Error::Unavailable(source)) => {
            let reason = source.to_string();
            assert!(
                reason.contains("invalid kurrentdb connection string"),
                "{reason}"
            );
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn json_payloads_reach_the_server_byte_for_byte() {
    let Some(factory) = KurrentDbFactory::from_env() else {
        return;
    };
    tokio::time::timeout(LIMIT, async {
        let store = factory.open(&factory.url).await.expect("connect");
        let stream = StreamName::parse(format!("json-bytes-{}", Uuid::new_v4().simple()))
            .expect("valid stream name");
        // Whitespace, number spelling and key order survive; so does an empty JSON payload.
        let payloads = [" {\"b\" : 1,\n \"a\": 2.50 } ", "[1e3, -0]", ""];
        let events: Vec<NewEvent> = payloads
            .iter()
            .map(|p| NewEvent::json("t.Json", *p))
            .collect();
        store
            .append(&stream, ExpectedRevision::NoStream, events)
            .await
            .expect("append");
        let read: Vec<_> = store
            .read_stream(&stream, Default::default())
            .try_collect()
            .await
            .expect("read");
        let data: Vec<&[u8]> = read.iter().map(|e| e.data.as_ref()).collect();
        assert_eq!(data, payloads.map(str::as_bytes));
        assert!(read.iter().all(|e| e.content_type == ContentType::Json));
    })
    .await
    .expect("time limit");
}
