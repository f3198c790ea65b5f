//! Opens what the selected targets need, from the configuration: the event store, the
//! read-model database and NATS JetStream. Nothing is opened that no target uses, so
//! `--target user` starts without a database.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use repit_event_store::{EventStore, PostgresEventStore, SqliteEventStore};
use repit_platform::Config;
use repit_projections::ReadModelDb;

/// The PostgreSQL schema the event store's tables live in (apart from the read models).
const POSTGRES_EVENT_SCHEMA: &str = "event_store";

fn ensure_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path)
        .with_context(|| format!("failed to create the data directory {}", path.display()))
}

/// Opens the event store named by `storage.event_store_url` (SQLite file by default).
pub async fn event_store(config: &Config) -> anyhow::Result<Arc<dyn EventStore>> {
    let url = config.storage.event_store();
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = Path::new(path.split('?').next().unwrap_or(path));
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            ensure_dir(parent)?;
        }
        let store = SqliteEventStore::open(path)
            .await
            .with_context(|| format!("failed to open the event store {}", path.display()))?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres") {
        let store = PostgresEventStore::open(&url, POSTGRES_EVENT_SCHEMA)
            .await
            .context("failed to open the PostgreSQL event store")?;
        return Ok(Arc::new(store));
    }
    // esdb:// or kurrentdb:// (the configuration check allows nothing else).
    let store = repit_event_store::KurrentDbEventStore::connect(&url)
        .await
        .context("failed to connect to KurrentDB")?;
    Ok(Arc::new(store))
}

/// Opens the read-model database (`storage.read_model_url`, SQLite file by default).
pub async fn read_models(config: &Config) -> anyhow::Result<ReadModelDb> {
    let url = config.storage.read_models();
    if url.starts_with("sqlite://") {
        ensure_dir(&config.storage.data_dir)?;
    }
    ReadModelDb::connect(&url)
        .await
        .context("failed to open the read-model database")
}

/// Connects to NATS and returns a JetStream context.
pub async fn jetstream(config: &Config) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .name("repitd")
        .connect(config.nats.url.as_str())
        .await
        .with_context(|| format!("failed to connect to NATS at {}", config.nats.url))?;
    Ok(async_nats::jetstream::new(client))
}
