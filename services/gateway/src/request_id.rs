//! Tags every call at the edge: a well-formed `x-request-id` from the caller is kept, otherwise a
//! new one (UUIDv7) is set on the request, so the upstream and every event it appends carry the
//! same id; a valid W3C `traceparent` is forwarded unchanged, otherwise a new trace is started.
//! The id is echoed in the response headers, so a client can quote it in a bug report.
//!
//! The parsing rules are [`RequestContext::from_headers`]'s, and the context is made ambient for
//! in-process services, exactly as [`repit_platform::RequestContextLayer`] does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use repit_platform::RequestContext;
use repit_platform::request_context::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};
use tonic::body::Body;
use tower::{Layer, Service};

/// Sets request ids and trace context; see the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
}

/// The future of [`RequestId`].
pub type RequestIdFuture<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

/// A fresh `traceparent`: version 00, random trace and parent ids, sampled.
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let parent = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{parent}-01")
}

impl<S> Service<http::Request<Body>> for RequestId<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let mut context = RequestContext::from_headers(request.headers());
        if context.traceparent.is_empty() {
            context.traceparent = new_traceparent();
        }
        let headers = request.headers_mut();
        let id = http::HeaderValue::from_str(&context.correlation_id).ok();
        if let Some(id) = &id {
            headers.insert(REQUEST_ID_HEADER, id.clone());
        }
        if let Ok(traceparent) = http::HeaderValue::from_str(&context.traceparent) {
            headers.insert(TRACEPARENT_HEADER, traceparent);
        }
        let future = self.inner.call(request);
        Box::pin(context.scope(async move {
            let mut response = future.await?;
            if let Some(id) = id {
                response.headers_mut().insert(REQUEST_ID_HEADER, id);
            }
            Ok(response)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(request: &http::Request<Body>, name: &str) -> Option<String> {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn a_call_without_ids_gets_them_and_the_id_is_echoed() {
        let upstream = tower::service_fn(|request: http::Request<Body>| async move {
            let mut response = http::Response::new(Body::empty());
            let traceparent = seen(&request, TRACEPARENT_HEADER).unwrap_or_default();
            response
                .headers_mut()
                .insert("seen-traceparent", traceparent.parse().expect("ascii"));
            let ambient = RequestContext::current().map(|c| c.correlation_id);
            response.headers_mut().insert(
                "seen-ambient",
                ambient.unwrap_or_default().parse().expect("ascii"),
            );
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = RequestIdLayer.layer(upstream);
        let response = service
            .call(http::Request::new(Body::empty()))
            .await
            .expect("infallible");
        let id = response.headers().get(REQUEST_ID_HEADER).expect("echoed");
        assert_eq!(id.len(), 36);
        assert_eq!(response.headers().get("seen-ambient"), Some(id));
        let traceparent = response.headers().get("seen-traceparent").expect("set");
        let mut with_it = http::HeaderMap::new();
        with_it.insert(TRACEPARENT_HEADER, traceparent.clone());
        assert_eq!(
            RequestContext::from_headers(&with_it).traceparent,
            traceparent.to_str().expect("ascii")
        );
    }

    #[tokio::test]
    async fn the_callers_ids_are_kept() {
        let upstream = tower::service_fn(|request: http::Request<Body>| async move {
            let mut response = http::Response::new(Body::empty());
            if let Some(traceparent) = request.headers().get(TRACEPARENT_HEADER) {
                response
                    .headers_mut()
                    .insert("seen-traceparent", traceparent.clone());
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = RequestIdLayer.layer(upstream);
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let request = http::Request::builder()
            .header(REQUEST_ID_HEADER, "req-42")
            .header(TRACEPARENT_HEADER, traceparent)
            .body(Body::empty())
            .expect("request");
        let response = service.call(request).await.expect("infallible");
        assert_eq!(
            response
                .headers()
                .get(REQUEST_ID_HEADER)
                .map(|v| v.as_bytes()),
            Some(&b"req-42"[..])
        );
        assert_eq!(
            response
                .headers()
                .get("seen-traceparent")
                .map(|v| v.as_bytes()),
            Some(traceparent.as_bytes())
        );
    }
}
