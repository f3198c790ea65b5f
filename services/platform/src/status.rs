//! Errors as gRPC statuses, following AIP-193 (see `proto/repit/common/v1/errors.proto`).
//!
//! Every status we produce carries a `google.rpc.ErrorInfo` with domain [`ERROR_DOMAIN`] and a
//! reason from `repit.common.v1.ErrorReason`, so clients branch on the reason, not on the message.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `google.rpc.ErrorInfo.domain` of every RepitBot error.
pub const ERROR_DOMAIN: &str = "repit.app";

/// UNIMPLEMENTED for an RPC that is in the contract but not built yet, naming the RPC.
///
/// `method` is the full gRPC path without the leading slash: `repit.lesson.v1.LessonService/GetLesson`.
pub fn not_implemented(method: &str) -> Status {
    with_reason(
        Code::Unimplemented,
        format!("{method} is not implemented yet"),
        "NOT_IMPLEMENTED",
        [("method", method)],
    )
}

/// UNIMPLEMENTED for a path that names no RPC of a service's contract.
pub fn unknown_method(method: &str) -> Status {
    with_reason(
        Code::Unimplemented,
        format!("{method} is not an rpc of this service"),
        "NOT_IMPLEMENTED",
        [("method", method)],
    )
}

/// A status with an `ErrorInfo` detail carrying `reason` and `metadata`.
pub fn with_reason<'a>(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_implemented_names_the_rpc_and_carries_the_reason() {
        let status = not_implemented("repit.lesson.v1.LessonService/GetLesson");
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(
            status
                .message()
                .contains("repit.lesson.v1.LessonService/GetLesson")
        );
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "NOT_IMPLEMENTED");
        assert_eq!(info.domain, ERROR_DOMAIN);
    }
}
