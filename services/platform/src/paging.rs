//! Pagination of the List RPCs (AIP-158, as `repit.common.v1.PageRequest` states it): page sizes
//! and keyset page tokens.
//!
//! A page token names the last row of the page in the list's order — its sort key and its id —
//! so the next page starts right after it however many rows were added or removed meanwhile
//! (no offsets, no server-side state). The token is opaque to clients: the key is base64url so
//! any text (a display name) fits, and the id must be a canonical UUID.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

/// The page size of a request with none.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// The largest page; larger requests are lowered to it.
pub const MAX_PAGE_SIZE: i64 = 500;

/// The page size to serve for a requested one (0 or less: the default).
pub fn page_size(requested: i32) -> i64 {
    match requested {
        n if n <= 0 => DEFAULT_PAGE_SIZE,
        n => i64::from(n).min(MAX_PAGE_SIZE),
    }
}

/// The token of the page that starts after the row with sort key `key` and id `id`.
pub fn page_token(key: &str, id: &str) -> String {
    format!("{}.{id}", URL_SAFE_NO_PAD.encode(key))
}

/// The (sort key, id) a [`page_token`] names; `None` for anything else.
pub fn parse_page_token(token: &str) -> Option<(String, String)> {
    let (key, id) = token.split_once('.')?;
    let key = String::from_utf8(URL_SAFE_NO_PAD.decode(key).ok()?).ok()?;
    let parsed = Uuid::parse_str(id).ok()?;
    (parsed.hyphenated().to_string() == id).then(|| (key, id.to_owned()))
}

/// [`page_token`] for an integer sort key (a time in microseconds).
pub fn int_page_token(key: i64, id: &str) -> String {
    page_token(&key.to_string(), id)
}

/// [`parse_page_token`] for an integer sort key.
pub fn parse_int_page_token(token: &str) -> Option<(i64, String)> {
    let (key, id) = parse_page_token(token)?;
    Some((key.parse().ok()?, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0190f5c2-0000-7000-8000-000000000002";

    #[test]
    fn a_token_names_the_key_and_id_it_was_made_of() {
        for key in ["", "Anna", "Мария Иванова", "a.b\0c"] {
            assert_eq!(
                parse_page_token(&page_token(key, ID)),
                Some((key.to_owned(), ID.to_owned()))
            );
        }
        assert_eq!(
            parse_int_page_token(&int_page_token(-17, ID)),
            Some((-17, ID.to_owned()))
        );
    }

    #[test]
    fn anything_else_is_not_a_token() {
        for token in [
            "",
            "x",
            "QQ",
            "QQ.not-a-uuid",
            "!!.0190f5c2-0000-7000-8000-000000000002",
            "QQ.0190F5C2-0000-7000-8000-000000000002",
        ] {
            assert_eq!(parse_page_token(token), None, "{token}");
        }
        assert_eq!(parse_int_page_token(&page_token("Anna", ID)), None);
    }

    #[test]
    fn page_sizes_default_and_are_capped() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(-3), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(10_000), MAX_PAGE_SIZE);
    }
}
