//! The keys a process verifies access tokens with, kept current (ADR 10).
//!
//! One [`Verifier`] per process serves every service mounted in it. Its keys come from:
//! - the user service's key ring, when the user service runs in this process: re-read from the
//!   event store every [`LOCAL_RELOAD`], so a rotation made by another replica is picked up;
//! - otherwise the user service's `GetPublicKeys` at `auth.user_service_url`, fetched again after
//!   the `cache_for` it answers (bounded), and every [`RETRY`] until the first answer.
//!
//! A rotation publishes the new key `cache_for` before it signs (RotateSigningKey's
//! activation delay), so every verifier holds it before the first token it signs arrives. A
//! rotation with `revoke_previous` activates the new key at once: a token naming a key id the
//! set lacks wakes the follower early, at most once per [`EARLY_FETCH_SPACING`] (forged key ids
//! cannot make it hammer the user service), so such a process catches up within seconds; a
//! revoked key keeps verifying until the next fetch (at most `cache_for`) in other processes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use repit_platform::Config;
use repit_platform::auth::{KeySet, Verifier, VerifyingKey};
use repit_proto::repit::user::v1 as user_pb;
use repit_user::keys::KeyRing;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often a local key ring is re-read.
pub const LOCAL_RELOAD: Duration = Duration::from_secs(30);
/// How soon a failed fetch is retried.
pub const RETRY: Duration = Duration::from_secs(2);
/// The least time between two fetches or re-reads caused by unknown key ids.
pub const EARLY_FETCH_SPACING: Duration = Duration::from_secs(5);
/// Bounds on how long a fetched key set is kept before asking again.
const MIN_REFRESH: Duration = Duration::from_secs(5);
const MAX_REFRESH: Duration = Duration::from_secs(3600);

/// The process's verifier, with a background task keeping its keys current until `shutdown`.
pub async fn verifier(
    config: &Config,
    local: Option<&KeyRing>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Verifier>> {
    let (issuer, audience) = (config.auth.issuer.clone(), config.auth.audience.clone());
    if let Some(ring) = local {
        let keys = ring
            .key_set(Utc::now())
            .await
            .context("failed to read the verifying keys")?;
        let verifier = Arc::new(Verifier::new(issuer, audience, keys));
        let early = nudges(&verifier);
        tokio::spawn(follow_ring(
            ring.clone(),
            verifier.clone(),
            early,
            shutdown.clone(),
        ));
        return Ok(verifier);
    }
    let url = config.auth.user_service_url.clone();
    if url.is_empty() {
        anyhow::bail!(
            "this process serves authenticated services without the user service: set \
             auth.user_service_url (REPIT_AUTH__USER_SERVICE_URL) to where GetPublicKeys answers"
        );
    }
    let empty = KeySet::new(Vec::new()).context("an empty key set")?;
    let verifier = Arc::new(Verifier::new(issuer, audience, empty));
    // One fetch before serving, so a process started after the user service verifies its first
    // request; if the user service is not up yet, the follower keeps trying.
    let mut known = None;
    let wait = refresh(&url, &verifier, &mut known).await;
    let early = nudges(&verifier);
    tokio::spawn(follow_remote(
        url,
        verifier.clone(),
        early,
        known,
        wait,
        shutdown.clone(),
    ));
    Ok(verifier)
}

/// A signal the verifier raises when a token names a key id it lacks.
fn nudges(verifier: &Verifier) -> Arc<Notify> {
    let nudge = Arc::new(Notify::new());
    let raise = Arc::clone(&nudge);
    verifier.on_unknown_key(move || raise.notify_one());
    nudge
}

/// Waits `wait`, or less when nudged — but never less than [`EARLY_FETCH_SPACING`] after the
/// last fetch (a nudge during that time is kept and acted on when it is over). `false` on
/// shutdown.
async fn next_turn(
    wait: Duration,
    last: tokio::time::Instant,
    nudge: &Notify,
    shutdown: &CancellationToken,
) -> bool {
    let nudged = async {
        tokio::time::sleep_until(last + EARLY_FETCH_SPACING).await;
        nudge.notified().await;
    };
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
        () = nudged => true,
    }
}

async fn follow_ring(
    ring: KeyRing,
    verifier: Arc<Verifier>,
    nudge: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut revision = ring.revision();
    let mut last = tokio::time::Instant::now();
    loop {
        if !next_turn(LOCAL_RELOAD, last, &nudge, &shutdown).await {
            return;
        }
        last = tokio::time::Instant::now();
        if let Err(error) = ring.reload().await {
            tracing::warn!(%error, "failed to re-read the signing-key ring");
            continue;
        }
        // Replacing the key set empties the verified-token cache: only do it on a change.
        if ring.revision() == revision {
            continue;
        }
        revision = ring.revision();
        match ring.key_set(Utc::now()).await {
            Ok(keys) => {
                tracing::info!(
                    keys = keys.len(),
                    "verifying keys updated from the key ring"
                );
                verifier.replace_keys(keys);
            }
            Err(error) => tracing::warn!(%error, "the signing-key ring holds an unusable key"),
        }
    }
}

async fn follow_remote(
    url: String,
    verifier: Arc<Verifier>,
    nudge: Arc<Notify>,
    mut known: Option<Vec<user_pb::PublicKey>>,
    mut wait: Duration,
    shutdown: CancellationToken,
) {
    let mut last = tokio::time::Instant::now();
    while next_turn(wait, last, &nudge, &shutdown).await {
        last = tokio::time::Instant::now();
        wait = refresh(&url, &verifier, &mut known).await;
    }
}

/// Fetches the published keys and installs them when they changed; answers how long to wait
/// before the next fetch.
async fn refresh(
    url: &str,
    verifier: &Verifier,
    known: &mut Option<Vec<user_pb::PublicKey>>,
) -> Duration {
    let answer = match fetch(url).await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), %url, "failed to fetch the verifying keys");
            return RETRY;
        }
    };
    let cache_for = answer
        .cache_for
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(MIN_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH);
    if known.as_ref() == Some(&answer.keys) {
        return cache_for;
    }
    match key_set(&answer.keys) {
        Ok(keys) => {
            tracing::info!(keys = keys.len(), %url, "verifying keys fetched");
            verifier.replace_keys(keys);
            *known = Some(answer.keys);
            cache_for
        }
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), %url, "the user service published an unusable key");
            RETRY
        }
    }
}

async fn fetch(url: &str) -> anyhow::Result<user_pb::GetPublicKeysResponse> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .context("auth.user_service_url is not a URL")?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await?;
    let mut client = user_pb::user_service_client::UserServiceClient::new(channel);
    Ok(client
        .get_public_keys(user_pb::GetPublicKeysRequest {})
        .await?
        .into_inner())
}

/// The key set a `GetPublicKeys` answer describes.
pub fn key_set(keys: &[user_pb::PublicKey]) -> anyhow::Result<KeySet> {
    let instant = |t: Option<&prost_types::Timestamp>| -> Option<DateTime<Utc>> {
        t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
    };
    let keys = keys
        .iter()
        .map(|key| {
            let not_before = instant(key.not_before.as_ref())
                .with_context(|| format!("key {} has no not_before", key.kid))?;
            VerifyingKey::from_spki_der(
                key.kid.clone(),
                &key.spki_der,
                not_before,
                instant(key.expires_at.as_ref()),
            )
            .with_context(|| format!("key {} does not parse", key.kid))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    KeySet::new(keys).context("the published key set")
}
