//! Positions in `$all`.

use std::fmt;
use std::str::FromStr;

/// The place of an event in `$all`: opaque, totally ordered, comparable only within one store.
///
/// Two numbers, because that is what the distributed backends have: KurrentDB's
/// (commit, prepare) log positions, and PostgreSQL's (transaction id, sequence) pair, where
/// ordering by transaction id first is what lets readers avoid skipping a slow transaction.
/// SQLite uses its gap-free sequence number for both. Ordering is lexicographic: `commit` first.
///
/// It prints and parses as `C:<commit>/P:<prepare>` (EventStoreDB's notation), which is how it is
/// stored in checkpoints and NATS headers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    commit: u64,
    prepare: u64,
}

impl Position {
    /// A position from its two parts. Only backends mint positions; everyone else gets them from
    /// recorded events, append results, checkpoints or [`FromStr`].
    pub const fn new(commit: u64, prepare: u64) -> Self {
        Self { commit, prepare }
    }

    /// The first part: KurrentDB's commit position, PostgreSQL's transaction id.
    pub const fn commit(&self) -> u64 {
        self.commit
    }

    /// The second part: KurrentDB's prepare position, PostgreSQL's sequence number.
    pub const fn prepare(&self) -> u64 {
        self.prepare
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "C:{}/P:{}", self.commit, self.prepare)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({self})")
    }
}

/// A string that is not `C:<u64>/P:<u64>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}, expected C:<commit>/P:<prepare>")]
pub struct InvalidPosition(String);

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPosition(s.to_owned());
        let (commit, prepare) = s.split_once('/').ok_or_else(invalid)?;
        let commit = commit.strip_prefix("C:").ok_or_else(invalid)?;
        let prepare = prepare.strip_prefix("P:").ok_or_else(invalid)?;
        Ok(Self {
            commit: commit.parse().map_err(|_| invalid())?,
            prepare: prepare.parse().map_err(|_| invalid())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn positions_order_by_commit_then_prepare() {
        assert!(Position::new(1, 9) < Position::new(2, 0));
        assert!(Position::new(2, 0) < Position::new(2, 1));
    }

    #[test]
    fn malformed_positions_are_refused() {
        for bad in ["", "C:1", "C:1/P:", "1/2", "C:-1/P:2", "C:1/P:2/x"] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn a_position_round_trips_through_its_text(commit: u64, prepare: u64) {
            let position = Position::new(commit, prepare);
            prop_assert_eq!(position.to_string().parse::<Position>(), Ok(position));
        }

        #[test]
        fn text_order_agrees_with_pair_order(a: (u64, u64), b: (u64, u64)) {
            prop_assert_eq!(Position::new(a.0, a.1).cmp(&Position::new(b.0, b.1)), a.cmp(&b));
        }
    }
}
