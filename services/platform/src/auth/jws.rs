//! The JWS compact serialization (RFC 7515 §7.1) cut down to the one form RepitBot tokens take:
//! header `{"alg":"EdDSA","typ":"at+jwt","kid":…}`, a JSON payload, an Ed25519 signature.
//!
//! Why not a general JOSE library: the classic JWT attacks (`alg: none`, an HMAC "signature" keyed
//! with the public key, a header that names its own key) all come from a verifier that lets the
//! token choose how it is checked. Here there is exactly one way: the algorithm must be EdDSA and
//! the key comes from the verifier's key set by `kid`, so none of them has a code path to reach.
//! The output is standard JWS, pinned by the RFC 8037 example in `keys.rs`'s tests.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::keys::SigningKey;

/// The only JWS algorithm issued and accepted (RFC 8037).
pub(crate) const ALG: &str = "EdDSA";
/// The media type of an access token (RFC 9068), so a JWT made for something else by the same
/// key can never pass as an access token.
pub(crate) const TYP: &str = "at+jwt";

#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// A received header. Members we do not use (`jku`, `x5u`, `jwk`…) are ignored, never followed.
#[derive(Deserialize)]
pub(crate) struct Header {
    pub(crate) alg: String,
    #[serde(default)]
    pub(crate) typ: Option<String>,
    #[serde(default)]
    pub(crate) kid: Option<String>,
    /// Extensions the token says must be understood; we understand none.
    #[serde(default)]
    pub(crate) crit: Option<serde_json::Value>,
}

impl Header {
    /// `typ` is compared case-insensitively and may carry the "application/" prefix (RFC 7515
    /// §4.1.9).
    pub(crate) fn is_access_token(&self) -> bool {
        self.typ.as_deref().is_some_and(|typ| {
            let typ = typ
                .get(..12)
                .filter(|prefix| prefix.eq_ignore_ascii_case("application/"))
                .map_or(typ, |_| &typ[12..]);
            typ.eq_ignore_ascii_case(TYP)
        })
    }
}

/// `payload` signed by `key` as a compact JWS.
pub(crate) fn sign(key: &SigningKey, payload: &[u8]) -> Result<String, serde_json::Error> {
    let header = serde_json::to_vec(&HeaderOut {
        alg: ALG,
        typ: TYP,
        kid: key.kid(),
    })?;
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

/// The three parts of a compact JWS, still encoded; `None` unless there are exactly three.
pub(crate) struct Parts<'a> {
    pub(crate) header: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signature: &'a str,
    /// `header.payload`: what the signature covers.
    pub(crate) signing_input: &'a str,
}

pub(crate) fn split(token: &str) -> Option<Parts<'_>> {
    let (signing_input, signature) = token.rsplit_once('.')?;
    let (header, payload) = signing_input.split_once('.')?;
    if payload.contains('.') {
        return None;
    }
    Some(Parts {
        header,
        payload,
        signature,
        signing_input,
    })
}

/// Strict base64url without padding: the decoder refuses padding and non-zero trailing bits, so
/// each byte string has one encoding and an altered token is a different string.
pub(crate) fn decode(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(typ: Option<&str>) -> Header {
        Header {
            alg: ALG.into(),
            typ: typ.map(str::to_owned),
            kid: None,
            crit: None,
        }
    }

    #[test]
    fn the_access_token_type_is_matched_like_a_media_type() {
        assert!(header(Some("at+jwt")).is_access_token());
        assert!(header(Some("AT+JWT")).is_access_token());
        assert!(header(Some("application/at+jwt")).is_access_token());
        assert!(!header(Some("JWT")).is_access_token());
        assert!(!header(Some("application/")).is_access_token());
        assert!(!header(None).is_access_token());
    }

    #[test]
    fn a_compact_jws_has_exactly_three_parts() {
        let parts = split("a.b.c").expect("three parts");
        assert_eq!(
            (parts.header, parts.payload, parts.signature),
            ("a", "b", "c")
        );
        assert_eq!(parts.signing_input, "a.b");
        assert!(split("a.b").is_none());
        assert!(split("a.b.c.d").is_none());
        assert!(split("a.b.").is_some_and(|p| p.signature.is_empty()));
    }

    #[test]
    fn base64url_is_decoded_strictly() {
        assert_eq!(decode("QQ"), Some(b"A".to_vec()));
        assert_eq!(decode("QQ=="), None);
        assert_eq!(decode("QR"), None, "non-zero trailing bits");
        assert_eq!(decode("Q+"), None, "standard alphabet");
    }
}
