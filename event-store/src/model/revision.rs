//! Optimistic concurrency: what a writer expects, what the store has, what an append returns.

use std::fmt;

use super::Position;

/// What a writer expects the stream to look like before its append (EventStoreDB's four cases).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream has no events: never written, or soft-deleted and not written since.
    NoStream,
    /// The stream has events.
    StreamExists,
    /// The stream's last event has exactly this revision.
    Exact(u64),
}

impl ExpectedRevision {
    /// Whether a stream in state `current` satisfies this expectation. Every backend decides
    /// with this function, so they cannot drift apart.
    pub const fn matches(self, current: CurrentRevision) -> bool {
        match (self, current) {
            (Self::Any, _)
            | (Self::NoStream, CurrentRevision::NoStream)
            | (Self::StreamExists, CurrentRevision::Current(_)) => true,
            (Self::Exact(expected), CurrentRevision::Current(actual)) => expected == actual,
            _ => false,
        }
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("stream exists"),
            Self::Exact(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// The state of a stream as the store saw it when it refused an append.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CurrentRevision {
    /// No events: never written, or soft-deleted and not written since.
    NoStream,
    /// The revision of the last event.
    Current(u64),
}

impl CurrentRevision {
    /// The expectation under which an append would succeed right now.
    pub const fn as_expected(self) -> ExpectedRevision {
        match self {
            Self::NoStream => ExpectedRevision::NoStream,
            Self::Current(revision) => ExpectedRevision::Exact(revision),
        }
    }
}

impl fmt::Display for CurrentRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStream => f.write_str("no stream"),
            Self::Current(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// The outcome of a successful append (or of a recognised retry of one).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AppendResult {
    /// The revision of the last event written: pass it as [`ExpectedRevision::Exact`] next time.
    pub next_expected_revision: u64,
    /// The `$all` position of the last event written.
    pub position: Position,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_match_the_states_eventstoredb_accepts() {
        use CurrentRevision::{Current, NoStream};
        use ExpectedRevision as E;
        let table = [
            (E::Any, NoStream, true),
            (E::Any, Current(3), true),
            (E::NoStream, NoStream, true),
            (E::NoStream, Current(0), false),
            (E::StreamExists, NoStream, false),
            (E::StreamExists, Current(0), true),
            (E::Exact(0), NoStream, false),
            (E::Exact(3), Current(3), true),
            (E::Exact(2), Current(3), false),
        ];
        for (expected, current, matches) in table {
            assert_eq!(
                expected.matches(current),
                matches,
                "{expected} vs {current}"
            );
        }
    }
}
