//! Reads an HTTP/1.1 call's whole request body before anything answers it.
//!
//! Over HTTP/1.1 a server that answers before it has read the request body (a refusal: no token,
//! rate limited, shed) then closes the connection, while the client may still be writing that
//! body: the client sees `EPIPE` / a reset instead of the gRPC status (Connect-ES reports
//! INTERNAL). gRPC-web from a browser is unary or server-streaming, so its request body is one
//! small message that is complete before any answer can be useful; reading it first costs
//! nothing and makes every early answer arrive. HTTP/2 has per-stream resets and needs none of
//! this, so its bodies keep streaming. A body over [`MAX_HTTP1_BODY`] is refused with
//! RESOURCE_EXHAUSTED.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::errors;

/// The largest HTTP/1.1 request body read (4 MiB, tonic's default message limit).
pub const MAX_HTTP1_BODY: usize = 4 * 1024 * 1024;

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Http1BodyLayer;

impl<S> Layer<S> for Http1BodyLayer {
    type Service = Http1Body<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Http1Body { inner }
    }
}

/// See [`Http1BodyLayer`].
#[derive(Clone, Debug)]
pub struct Http1Body<S> {
    inner: S,
}

/// The future of [`Http1Body`].
pub type Http1BodyFuture<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Http1Body<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Http1BodyFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.version() >= http::Version::HTTP_2 {
            return Box::pin(self.inner.call(request));
        }
        // The ready service serves this call; a fresh clone waits for the next (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            match Limited::new(body, MAX_HTTP1_BODY).collect().await {
                Ok(collected) => {
                    let body = Body::new(Full::new(collected.to_bytes()));
                    inner.call(http::Request::from_parts(parts, body)).await
                }
                Err(error) => {
                    tracing::debug!(error = %error, "HTTP/1.1 request body refused");
                    Ok(errors::response(&tonic::Status::resource_exhausted(
                        format!("the request body was not read: {error}"),
                    )))
                }
            }
        })
    }
}
