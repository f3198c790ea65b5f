//! Stream names, parsed once at the edge so every backend receives a name it can store.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest stream name in bytes. KurrentDB accepts longer names, but PostgreSQL indexes and
/// SQLite pages stay small when names are bounded, and no RepitBot stream needs more.
pub const MAX_STREAM_NAME_LEN: usize = 255;

/// Why a stream name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidStreamName {
    /// The name is the empty string.
    #[error("stream name is empty")]
    Empty,
    /// The name is longer than [`MAX_STREAM_NAME_LEN`] bytes of UTF-8.
    #[error("stream name is {len} bytes long, the limit is {MAX_STREAM_NAME_LEN}")]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
    },
    /// The name contains a control character (newline, NUL, DEL, …).
    #[error("stream name contains a control character at byte {index}")]
    ControlCharacter {
        /// Byte offset of the first control character.
        index: usize,
    },
    /// A name starting with `$` was given where an application stream is required.
    #[error("stream names starting with `$` are reserved for system streams")]
    Reserved,
    /// A name not starting with `$` was given where a system stream is required.
    #[error("system stream names start with `$`")]
    NotSystem,
}

/// The name of a stream: non-empty, at most 255 bytes of UTF-8, no control characters.
///
/// Names starting with `$` belong to the store (`$all`, KurrentDB's `$$<stream>` metadata streams,
/// `$ce-<category>` projections): [`StreamName::parse`] refuses them and [`StreamName::system`]
/// builds them, so application code cannot write to a system stream by accident.
///
/// Cloning is cheap (a reference count), because every recorded event carries its stream name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

impl StreamName {
    /// Parses an application stream name such as `lesson-0191…`.
    pub fn parse(name: impl AsRef<str>) -> Result<Self, InvalidStreamName> {
        let name = name.as_ref();
        check_common(name)?;
        if name.starts_with('$') {
            return Err(InvalidStreamName::Reserved);
        }
        Ok(Self(Arc::from(name)))
    }

    /// Parses a system stream name, which starts with `$`. Only reads and subscriptions accept
    /// one; every write to a system stream is refused with [`InvalidStreamName::Reserved`].
    pub fn system(name: impl AsRef<str>) -> Result<Self, InvalidStreamName> {
        let name = name.as_ref();
        check_common(name)?;
        if !name.starts_with('$') {
            return Err(InvalidStreamName::NotSystem);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a system stream (its name starts with `$`).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// The category: the part before the first `-` (EventStoreDB's convention, so `lesson-42`
    /// belongs to `lesson`); the whole name when there is no `-`.
    pub fn category(&self) -> &str {
        self.0
            .split_once('-')
            .map_or(&self.0, |(category, _)| category)
    }

    /// The stream that holds this stream's metadata in EventStoreDB (`$$<name>`). Errors about
    /// metadata name it, so a caller can tell a metadata conflict from an append conflict.
    pub fn metadata_stream(&self) -> StreamName {
        // Built directly: the name is derived from a valid one, and the `$$` prefix may take it
        // two bytes past the length limit, which applies to names callers choose.
        Self(Arc::from(format!("$${}", self.0)))
    }
}

fn check_common(name: &str) -> Result<(), InvalidStreamName> {
    if name.is_empty() {
        return Err(InvalidStreamName::Empty);
    }
    if name.len() > MAX_STREAM_NAME_LEN {
        return Err(InvalidStreamName::TooLong { len: name.len() });
    }
    if let Some((index, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(InvalidStreamName::ControlCharacter { index });
    }
    Ok(())
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamName({:?})", &*self.0)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for StreamName {
    type Err = InvalidStreamName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for StreamName {
    type Error = InvalidStreamName;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl TryFrom<String> for StreamName {
    type Error = InvalidStreamName;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_application_name_is_accepted_up_to_255_bytes() {
        let name = "é".repeat(127) + "x"; // 255 bytes, 128 characters
        assert_eq!(name.len(), 255);
        assert!(StreamName::parse(&name).is_ok());
        assert_eq!(
            StreamName::parse(name + "x"),
            Err(InvalidStreamName::TooLong { len: 256 })
        );
    }

    #[test]
    fn empty_control_and_reserved_names_are_refused() {
        assert_eq!(StreamName::parse(""), Err(InvalidStreamName::Empty));
        assert_eq!(
            StreamName::parse("a\nb"),
            Err(InvalidStreamName::ControlCharacter { index: 1 })
        );
        assert_eq!(
            StreamName::parse("ab\u{7f}"),
            Err(InvalidStreamName::ControlCharacter { index: 2 })
        );
        assert_eq!(StreamName::parse("$all"), Err(InvalidStreamName::Reserved));
        assert_eq!(StreamName::system("all"), Err(InvalidStreamName::NotSystem));
        assert!(StreamName::system("$ce-lesson").is_ok_and(|s| s.is_system()));
    }

    #[test]
    fn the_category_is_the_part_before_the_first_dash() {
        let name = StreamName::parse("lesson-42-x").expect("valid name");
        assert_eq!(name.category(), "lesson");
        assert_eq!(
            StreamName::parse("tutors").expect("valid name").category(),
            "tutors"
        );
        assert_eq!(name.metadata_stream().as_str(), "$$lesson-42-x");
    }

    proptest! {
        #[test]
        fn parsing_accepts_exactly_the_valid_names(name in any::<String>()) {
            let valid = !name.is_empty()
                && name.len() <= MAX_STREAM_NAME_LEN
                && !name.chars().any(char::is_control)
                && !name.starts_with('$');
            let parsed = StreamName::parse(&name);
            prop_assert_eq!(parsed.is_ok(), valid);
            if let Ok(parsed) = parsed {
                prop_assert_eq!(parsed.as_str(), name.as_str());
                prop_assert_eq!(parsed.to_string().parse::<StreamName>(), Ok(parsed));
            }
        }
    }
}
