//! The statuses the gateway answers itself, each with the `ErrorInfo` reason of
//! `repit/common/v1/errors.proto` and, where waiting helps, a `RetryInfo`.

use std::collections::HashMap;
use std::time::Duration;

use repit_platform::status::ERROR_DOMAIN;
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

fn status(
    code: Code,
    message: String,
    reason: &str,
    metadata: &[(&str, &str)],
    retry_after: Option<Duration>,
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    if let Some(delay) = retry_after {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(code, message, details)
}

/// RESOURCE_EXHAUSTED (RATE_LIMITED): the caller spent its quota; retry after `retry_after`.
pub fn rate_limited(subject: &str, retry_after: Duration) -> Status {
    status(
        Code::ResourceExhausted,
        format!(
            "rate limit exceeded, retry in {} ms",
            retry_after.as_millis().max(1)
        ),
        "RATE_LIMITED",
        &[("subject", subject)],
        Some(retry_after),
    )
}

/// RESOURCE_EXHAUSTED (OVERLOADED): too many calls in flight; refused at once, not queued.
pub fn overloaded() -> Status {
    status(
        Code::ResourceExhausted,
        "the gateway is overloaded, retry shortly".to_owned(),
        "OVERLOADED",
        &[],
        Some(Duration::from_millis(100)),
    )
}

/// UNAVAILABLE (DEPENDENCY_UNAVAILABLE): the upstream serving the call cannot be reached.
pub fn upstream_unavailable(upstream: &str) -> Status {
    status(
        Code::Unavailable,
        format!("upstream {upstream} is unavailable"),
        "DEPENDENCY_UNAVAILABLE",
        &[("upstream", upstream)],
        Some(Duration::from_secs(1)),
    )
}

/// UNIMPLEMENTED (NOT_IMPLEMENTED): no route serves the path's service.
pub fn no_route(path: &str) -> Status {
    let method = path.strip_prefix('/').unwrap_or(path);
    status(
        Code::Unimplemented,
        format!("no route serves {method}"),
        "NOT_IMPLEMENTED",
        &[("method", method)],
        None,
    )
}

/// DEADLINE_EXCEEDED: the call's deadline (the caller's, or the gateway's default) passed.
pub fn deadline_exceeded(deadline: Duration) -> Status {
    Status::deadline_exceeded(format!("deadline of {} ms exceeded", deadline.as_millis()))
}

/// `status` as a trailers-only gRPC response.
pub(crate) fn response(status: &Status) -> http::Response<Body> {
    status.clone().into_http::<Body>()
}
