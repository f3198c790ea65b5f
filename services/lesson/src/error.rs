//! The lesson service's errors and their one mapping to gRPC statuses (DESIGN.md, "Errors";
//! AIP-193 details as `proto/repit/common/v1/errors.proto` describes them).

use repit_event_store::{Error as StoreError, RepositoryError};
use repit_platform::status::ERROR_DOMAIN;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::{Conflict, LessonError, Party, ScheduleError, SeriesError};

/// Why a lesson command or query failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed request fields.
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    /// An unknown lesson or series.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The caller may see the lesson or series but not do this to it (PERMISSION_DENIED).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The lesson refused the command.
    #[error(transparent)]
    Lesson(LessonError),
    /// The series refused the command.
    #[error(transparent)]
    Series(SeriesError),
    /// Double booking.
    #[error("double booking")]
    DoubleBooked(Box<Conflict>),
    /// The client's expected revision did not hold, or writers kept conflicting.
    #[error("{0}")]
    Aborted(String),
    /// A limit on open resources (watches) is reached.
    #[error("{0}")]
    Exhausted(String),
    /// A part of the request this build cannot serve yet.
    #[error("{0}")]
    Unimplemented(String),
    /// The event store or the read models are unreachable.
    #[error("a dependency is unavailable")]
    Unavailable(String),
    /// A bug or corrupt data; the details go to the log, never to the caller.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// One invalid field.
    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        if repit_projections::is_unavailable(&error) {
            Self::Unavailable(error.to_string())
        } else {
            Self::Internal(error.to_string())
        }
    }
}

impl From<repit_event_store::model::InvalidStreamName> for AppError {
    fn from(error: repit_event_store::model::InvalidStreamName) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(source) => Self::Unavailable(source.to_string()),
            StoreError::WrongExpectedVersion { .. } | StoreError::IdempotencyConflict { .. } => {
                Self::Aborted(error.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Maps a repository failure, turning the aggregate's own error with `domain`.
pub fn from_repository<E>(error: RepositoryError<E>, domain: impl FnOnce(E) -> AppError) -> AppError
where
    E: std::error::Error,
{
    match error {
        RepositoryError::Domain(e) => domain(e),
        RepositoryError::UnexpectedRevision {
            expected, actual, ..
        } => AppError::Aborted(format!(
            "expected revision {expected}, the resource is at {actual}; reload and retry"
        )),
        RepositoryError::Conflict { attempts, .. } => AppError::Aborted(format!(
            "concurrent changes kept winning after {attempts} attempts; retry"
        )),
        RepositoryError::Store(e) => e.into(),
        other @ (RepositoryError::Decode { .. } | RepositoryError::Encode { .. }) => {
            AppError::Internal(format!("{other:#}"))
        }
    }
}

impl From<RepositoryError<LessonError>> for AppError {
    fn from(error: RepositoryError<LessonError>) -> Self {
        from_repository(error, AppError::Lesson)
    }
}

impl From<RepositoryError<SeriesError>> for AppError {
    fn from(error: RepositoryError<SeriesError>) -> Self {
        from_repository(error, AppError::Series)
    }
}

impl From<RepositoryError<ScheduleError>> for AppError {
    fn from(error: RepositoryError<ScheduleError>) -> Self {
        from_repository(error, |ScheduleError::Conflict(c)| {
            AppError::DoubleBooked(c)
        })
    }
}

fn info(reason: &str, metadata: Vec<(&str, String)>) -> ErrorDetails {
    ErrorDetails::with_error_info(
        reason,
        ERROR_DOMAIN,
        metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<std::collections::HashMap<_, _>>(),
    )
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The tenancy rule on disclosure: the conflicting lesson's id is shown only to its own tutor.
fn conflict_status(conflict: &Conflict, requesting_tutor: &str) -> Status {
    let party = match conflict.party {
        Party::Tutor => "tutor",
        Party::Student => "student",
    };
    let own = conflict.party == Party::Tutor || conflict.tutor_id == requesting_tutor;
    let mut metadata = vec![
        ("rule", "no_double_booking".to_owned()),
        ("conflict_party", party.to_owned()),
        ("conflict_start", rfc3339(conflict.start)),
        ("conflict_end", rfc3339(conflict.end)),
    ];
    let subject = if own {
        metadata.push(("conflicting_lesson_id", conflict.lesson_id.clone()));
        format!("lessons/{}", conflict.lesson_id)
    } else {
        "students/busy".to_owned()
    };
    let mut details = info("RULE_VIOLATED", metadata);
    details.add_precondition_failure_violation(
        "DOUBLE_BOOKING",
        subject,
        format!(
            "the {party} already has a lesson from {} to {}",
            rfc3339(conflict.start),
            rfc3339(conflict.end)
        ),
    );
    Status::with_error_details(
        Code::FailedPrecondition,
        format!(
            "double booking: the {party} is busy from {} to {}",
            rfc3339(conflict.start),
            rfc3339(conflict.end)
        ),
        details,
    )
}

impl AppError {
    /// The gRPC status for a caller; `tutor_id` is the tutor the request acted for (conflict
    /// disclosure follows it).
    pub fn into_status(self, tutor_id: &str) -> Status {
        match self {
            Self::Invalid(violations) => {
                let message = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut details = info("INVALID_FIELD", vec![]);
                details.set_bad_request(violations);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Self::NotFound { kind, id } => Status::with_error_details(
                Code::NotFound,
                format!("{kind} {id} not found"),
                info(
                    "NOT_FOUND",
                    vec![(
                        match kind {
                            "series" => "series_id",
                            "tutor" => "tutor_id",
                            "student" => "student_id",
                            _ => "lesson_id",
                        },
                        id,
                    )],
                ),
            ),
            Self::Forbidden(message) => repit_platform::auth::forbidden(message),
            Self::Lesson(LessonError::NotFound) => Status::with_error_details(
                Code::NotFound,
                "lesson not found",
                info("NOT_FOUND", vec![]),
            ),
            Self::Series(SeriesError::NotFound) => Status::with_error_details(
                Code::NotFound,
                "series not found",
                info("NOT_FOUND", vec![]),
            ),
            Self::Lesson(LessonError::AlreadyExists) | Self::Series(SeriesError::AlreadyExists) => {
                Status::with_error_details(
                    Code::AlreadyExists,
                    "a resource with this request id already exists",
                    info("ALREADY_EXISTS", vec![]),
                )
            }
            Self::Lesson(error) => {
                let mut details = info("RULE_VIOLATED", vec![("rule", error.rule().to_owned())]);
                details.add_precondition_failure_violation(
                    error.rule().to_uppercase(),
                    "lesson",
                    error.to_string(),
                );
                Status::with_error_details(Code::FailedPrecondition, error.to_string(), details)
            }
            Self::Series(error) => Status::with_error_details(
                Code::FailedPrecondition,
                error.to_string(),
                info("RULE_VIOLATED", vec![("rule", "series_ended".to_owned())]),
            ),
            Self::DoubleBooked(conflict) => conflict_status(&conflict, tutor_id),
            Self::Aborted(message) => {
                let mut details = info("CONCURRENT_MODIFICATION", vec![]);
                details.set_retry_info(Some(std::time::Duration::from_millis(100)));
                Status::with_error_details(Code::Aborted, message, details)
            }
            Self::Exhausted(message) => {
                let mut details = info("OVERLOADED", vec![]);
                details.set_retry_info(Some(std::time::Duration::from_secs(5)));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Self::Unimplemented(message) => Status::with_error_details(
                Code::Unimplemented,
                message,
                info("NOT_IMPLEMENTED", vec![]),
            ),
            Self::Unavailable(cause) => {
                tracing::warn!(%cause, "dependency unavailable");
                let mut details = info("DEPENDENCY_UNAVAILABLE", vec![]);
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                Status::with_error_details(
                    Code::Unavailable,
                    "a dependency is unavailable; retry",
                    details,
                )
            }
            Self::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
