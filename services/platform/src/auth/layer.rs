//! The tower layer every gRPC server mounts: it authenticates each call before any handler runs.
//!
//! A protected method without a valid `authorization: Bearer <token>` is answered right here with
//! UNAUTHENTICATED (reason TOKEN_INVALID), so no handler can forget the check. A valid token puts
//! its [`Caller`] into the request's extensions; what the caller may do (PERMISSION_DENIED, or
//! NOT_FOUND to hide existence) is the handler's decision, since only it knows the resource.
//!
//! Public methods (login, refresh, `GetPublicKeys`, health, reflection) pass without a token. If
//! they carry one it is still verified, and a valid one still yields a [`Caller`] (sign-up with
//! `current_user`), while an invalid one is remembered as a [`TokenError`] extension instead of
//! refusing the call: a client refreshing its expired token must reach `RefreshToken`.
//!
//! Mount it inside [`crate::RequestContextLayer`] so the verified user becomes the ambient
//! context's `actor_user_id`, which every event appended by the request records.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chrono::Utc;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::claims::Caller;
use super::verifier::{TokenError, Verifier};
use crate::request_context::RequestContext;
use crate::status::with_reason;

/// Services whose every method is public: probes and tooling must work without a token.
pub const ALWAYS_PUBLIC_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// UNAUTHENTICATED with ErrorInfo reason TOKEN_INVALID and the error's code as `cause`.
pub fn unauthenticated(error: TokenError) -> Status {
    with_reason(
        Code::Unauthenticated,
        error.to_string(),
        "TOKEN_INVALID",
        [("cause", error.code())],
    )
}

/// PERMISSION_DENIED with ErrorInfo reason FORBIDDEN: the caller may see the resource but not do
/// this to it (when it may not even see it, answer NOT_FOUND instead).
pub fn forbidden(message: impl Into<String>) -> Status {
    with_reason(Code::PermissionDenied, message, "FORBIDDEN", [])
}

/// The authenticated caller of a tonic request, or the UNAUTHENTICATED status to answer with.
///
/// Protected methods always have a caller (the layer refused the rest); public methods that take
/// an optional `current_user` use this to require one.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
    let extensions = request.extensions();
    extensions.get::<Caller>().ok_or_else(|| {
        unauthenticated(
            extensions
                .get::<TokenError>()
                .copied()
                .unwrap_or(TokenError::Missing),
        )
    })
}

/// The token of an `authorization: Bearer <token>` header (scheme case-insensitive, RFC 6750).
/// Another scheme counts as no token; two authorization headers are ambiguous and refused.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<&str, TokenError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key(http::header::AUTHORIZATION) {
            TokenError::Malformed
        } else {
            TokenError::Missing
        });
    };
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim_start_matches(' ');
            if token.is_empty() {
                Err(TokenError::Missing)
            } else {
                Ok(token)
            }
        }
        _ => Err(TokenError::Missing),
    }
}

/// Authenticates every call; see the module documentation.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
    public: Arc<HashSet<String>>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self {
            verifier,
            public: Arc::new(HashSet::new()),
        }
    }

    /// Adds methods that need no token, as full gRPC paths:
    /// `"/repit.user.v1.UserService/LoginWithPassword"`.
    pub fn public<I>(mut self, methods: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Arc::make_mut(&mut self.public).extend(methods.into_iter().map(Into::into));
        self
    }

    /// Whether the method at `path` needs no token.
    pub fn is_public(&self, path: &str) -> bool {
        is_public(&self.public, path)
    }
}

fn is_public(public: &HashSet<String>, path: &str) -> bool {
    public.contains(path)
        || ALWAYS_PUBLIC_SERVICES
            .iter()
            .any(|service| path.starts_with(service))
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: Arc::clone(&self.verifier),
            public: Arc::clone(&self.public),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    verifier: Arc<Verifier>,
    public: Arc<HashSet<String>>,
}

/// Mounted under the wrapped service's name.
impl<S: tonic::server::NamedService> tonic::server::NamedService for AuthService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, ResBody> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let public = is_public(&self.public, request.uri().path());
        let verified = bearer_token(request.headers())
            .and_then(|token| self.verifier.verify(token, Utc::now()));
        match verified {
            Ok(caller) => {
                let actor = caller.user_id.clone();
                request.extensions_mut().insert(caller);
                let future = self.inner.call(request);
                Box::pin(async move {
                    match RequestContext::current() {
                        Some(mut context) => {
                            context.actor_user_id = actor;
                            context.scope(future).await
                        }
                        None => future.await,
                    }
                })
            }
            Err(error) if public => {
                if error != TokenError::Missing {
                    request.extensions_mut().insert(error);
                }
                Box::pin(self.inner.call(request))
            }
            Err(error) => {
                tracing::debug!(
                    method = request.uri().path(),
                    cause = error.code(),
                    "call refused: no valid access token"
                );
                let response = unauthenticated(error).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&'static str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append(http::header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_other_schemes_are_no_token() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["BEARER abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&[])), Err(TokenError::Missing));
        assert_eq!(
            bearer_token(&headers(&["Bearer"])),
            Err(TokenError::Missing)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer "])),
            Err(TokenError::Missing)
        );
        assert_eq!(
            bearer_token(&headers(&["Basic abc"])),
            Err(TokenError::Missing)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn health_and_reflection_are_public_and_other_methods_only_when_listed() {
        let verifier = Arc::new(Verifier::new("i", "a", super::super::KeySet::default()));
        let layer =
            AuthLayer::new(verifier).public(["/repit.user.v1.UserService/LoginWithPassword"]);
        assert!(layer.is_public("/grpc.health.v1.Health/Check"));
        assert!(layer.is_public("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(layer.is_public("/repit.user.v1.UserService/LoginWithPassword"));
        assert!(!layer.is_public("/repit.user.v1.UserService/GetUser"));
        assert!(!layer.is_public("/repit.user.v1.UserService/LoginWithPasswordX"));
    }

    #[test]
    fn forbidden_is_permission_denied_with_reason_forbidden() {
        use tonic_types::StatusExt;
        let status = forbidden("only the tutor may cancel this lesson");
        assert_eq!(status.code(), Code::PermissionDenied);
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("FORBIDDEN", "repit.app")
        );
    }

    #[test]
    fn the_caller_helper_answers_unauthenticated_with_the_token_error_when_absent() {
        use tonic_types::StatusExt;
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(TokenError::Expired);
        let status = caller(&request).expect_err("no caller");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "access token expired");
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "TOKEN_INVALID");
        assert_eq!(
            info.metadata.get("cause").map(String::as_str),
            Some("expired")
        );
        let status = caller(&tonic::Request::new(())).expect_err("no caller");
        assert_eq!(status.message(), "no access token");
    }
}
