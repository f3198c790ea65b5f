//! Verifying keys fetched from the user service, for a process that verifies tokens but does not
//! hold the signing-key ring: the gateway, and any service running in its own process.
//!
//! [`RemoteKeys`] calls `UserService/GetPublicKeys`, puts the answer in force with
//! [`Verifier::replace_keys`], and fetches again after the answer's `cache_for` (bounded to
//! [`MIN_REFRESH`]..[`MAX_REFRESH`]); a failed fetch is retried with backoff while the keys in
//! force stay. [`RemoteKeys::refresh_soon`] asks for an early fetch (a token with an unknown
//! `kid` after a rotation), at most once per [`MIN_REFRESH`], so forged kids cannot make it
//! hammer the user service.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use repit_platform::auth::{KeySet, Verifier, VerifyingKey};
use repit_proto::repit::user::v1 as pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Fetches no more often than this, whatever `cache_for` says.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Fetches at least this often, so a revoked key disappears within it.
pub const MAX_REFRESH: Duration = Duration::from_secs(300);
/// The longest wait between retries of a failed fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyFetchError {
    #[error("GetPublicKeys failed: {0}")]
    Call(#[from] tonic::Status),
    #[error("GetPublicKeys timed out")]
    Timeout,
    #[error("GetPublicKeys answered an unusable key {kid}: {reason}")]
    Key { kid: String, reason: String },
    #[error("GetPublicKeys answered issuer `{answered}`, this process expects `{expected}`")]
    Issuer { answered: String, expected: String },
}

/// Keeps a [`Verifier`]'s keys in step with the user service; see the module documentation.
#[derive(Clone, Debug)]
pub struct RemoteKeys {
    verifier: Arc<Verifier>,
    client: UserServiceClient<Channel>,
    nudge: Arc<Notify>,
}

fn instant(timestamp: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let timestamp = timestamp?;
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

/// The verifying keys of a `GetPublicKeys` answer (Ed25519 ones; others are skipped, since the
/// verifier accepts EdDSA only).
pub fn key_set(answer: &pb::GetPublicKeysResponse) -> Result<KeySet, KeyFetchError> {
    let mut keys = Vec::new();
    for key in &answer.keys {
        if key.algorithm() != pb::SigningAlgorithm::Ed25519 {
            continue;
        }
        let not_before = instant(key.not_before.as_ref()).unwrap_or(DateTime::UNIX_EPOCH);
        let verifying = VerifyingKey::from_spki_der(
            key.kid.clone(),
            &key.spki_der,
            not_before,
            instant(key.expires_at.as_ref()),
        )
        .map_err(|error| KeyFetchError::Key {
            kid: key.kid.clone(),
            reason: error.to_string(),
        })?;
        keys.push(verifying);
    }
    KeySet::new(keys).map_err(|error| KeyFetchError::Key {
        kid: String::new(),
        reason: error.to_string(),
    })
}

impl RemoteKeys {
    /// Keys for `verifier` from the user service behind `channel`.
    pub fn new(verifier: Arc<Verifier>, channel: Channel) -> Self {
        Self {
            verifier,
            client: UserServiceClient::new(channel),
            nudge: Arc::new(Notify::new()),
        }
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Fetches once and puts the keys in force; answers how long they may be cached.
    pub async fn fetch(&self) -> Result<Duration, KeyFetchError> {
        let mut client = self.client.clone();
        let answer = tokio::time::timeout(
            FETCH_TIMEOUT,
            client.get_public_keys(pb::GetPublicKeysRequest {}),
        )
        .await
        .map_err(|_| KeyFetchError::Timeout)??
        .into_inner();
        if !answer.issuer.is_empty() && answer.issuer != self.verifier.issuer() {
            return Err(KeyFetchError::Issuer {
                answered: answer.issuer,
                expected: self.verifier.issuer().to_owned(),
            });
        }
        let keys = key_set(&answer)?;
        let count = keys.len();
        self.verifier.replace_keys(keys);
        let cache_for = answer
            .cache_for
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(MAX_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH);
        tracing::debug!(keys = count, cache_for = ?cache_for, "verifying keys fetched");
        Ok(cache_for)
    }

    /// Asks the refresh loop for an early fetch (it waits at least [`MIN_REFRESH`] between two).
    pub fn refresh_soon(&self) {
        self.nudge.notify_one();
    }

    /// Fetches now and then for as long as `shutdown` is not cancelled.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(shutdown).await })
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let wait = match self.fetch().await {
                Ok(cache_for) => {
                    backoff = Duration::from_millis(250);
                    cache_for
                }
                Err(error) => {
                    tracing::warn!(error = %error, retry_in = ?backoff, "failed to fetch the verifying keys");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            let earliest = tokio::time::Instant::now() + MIN_REFRESH.min(wait);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.nudge.notified() => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(earliest) => {}
                    }
                }
            }
        }
    }
}

/// Asks [`RemoteKeys`] for an early fetch when the wrapped authentication refused a token
/// signed by a key it does not know (a rotation that happened since the last fetch). It only
/// looks at refusals (`grpc-status: 16` in the answer's headers), so accepted calls pay one
/// header clone; the refused call still fails, and the client's retry finds the new key.
#[derive(Clone, Debug)]
pub struct KeyRefreshLayer {
    keys: Option<RemoteKeys>,
}

impl KeyRefreshLayer {
    /// `None`: the keys are local (nothing to refresh), the layer passes calls through.
    pub fn new(keys: Option<RemoteKeys>) -> Self {
        Self { keys }
    }
}

impl<S> tower::Layer<S> for KeyRefreshLayer {
    type Service = KeyRefresh<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyRefresh {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// See [`KeyRefreshLayer`].
#[derive(Clone, Debug)]
pub struct KeyRefresh<S> {
    inner: S,
    keys: Option<RemoteKeys>,
}

/// The future of [`KeyRefresh`].
pub type KeyRefreshFuture<E> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>,
>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for KeyRefresh<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = KeyRefreshFuture<S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(keys) = self.keys.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let refused = response
                .headers()
                .get("grpc-status")
                .is_some_and(|status| status.as_bytes() == b"16");
            if refused && let Some(authorization) = authorization {
                let mut headers = http::HeaderMap::new();
                headers.insert(http::header::AUTHORIZATION, authorization);
                let unknown = repit_platform::auth::bearer_token(&headers)
                    .and_then(|token| keys.verifier().verify(token, Utc::now()))
                    .err()
                    == Some(repit_platform::auth::TokenError::UnknownKey);
                if unknown {
                    tracing::debug!("a token names an unknown key: fetching the keys early");
                    keys.refresh_soon();
                }
            }
            Ok(response)
        })
    }
}
