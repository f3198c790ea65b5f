//! Token signing keys: Ed25519 key pairs named by a key id (`kid`) with a validity window.
//!
//! The user service alone holds [`SigningKey`]s (it persists them as PKCS#8 DER); every other
//! service sees only [`VerifyingKey`]s, published by `GetPublicKeys` as DER SubjectPublicKeyInfo
//! and as a JSON Web Key (user.proto `PublicKey`). A [`KeySet`] is what a verifier trusts at one
//! moment: during a rotation it holds both the old and the new key, which is how tokens signed by
//! either keep verifying.

use std::fmt;

use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use zeroize::Zeroizing;

/// The longest key id accepted: kids travel in every token header.
pub const MAX_KID_LEN: usize = 64;

/// The DER SubjectPublicKeyInfo of an Ed25519 key is this fixed prefix (RFC 8410: SEQUENCE,
/// AlgorithmIdentifier id-Ed25519, BIT STRING) followed by the 32 key bytes, so encoding needs no
/// ASN.1 machinery and cannot fail.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key id is 1 to 64 characters of A-Z, a-z, 0-9, '-', '_' and '.'")]
    Kid,
    #[error("not a pkcs#8 ed25519 private key")]
    PrivateKey,
    #[error("not an ed25519 public key")]
    PublicKey,
    #[error("a key cannot expire before it becomes valid")]
    Window,
    #[error("two keys of one key set share a key id")]
    DuplicateKid,
    #[error("the private key could not be encoded")]
    Encode,
}

/// Key ids go into JSON headers, protobuf fields and logs; a small alphabet keeps them inert
/// everywhere (no quoting, no control characters, no look-alike Unicode).
fn check_kid(kid: String) -> Result<String, KeyError> {
    let ok = !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(kid) } else { Err(KeyError::Kid) }
}

/// An Ed25519 private key that signs access tokens, with its key id and the instant from which
/// tokens it signs are valid. The secret is zeroed when dropped and never printed.
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
    not_before: DateTime<Utc>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("not_before", &self.not_before)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(kid: impl Into<String>, not_before: DateTime<Utc>) -> Result<Self, KeyError> {
        let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        Ok(Self {
            kid: check_kid(kid.into())?,
            key,
            not_before,
        })
    }

    /// A key persisted with [`SigningKey::to_pkcs8_der`] (PKCS#8 v1 or v2, RFC 8410).
    pub fn from_pkcs8_der(
        kid: impl Into<String>,
        der: &[u8],
        not_before: DateTime<Utc>,
    ) -> Result<Self, KeyError> {
        let key =
            ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|_| KeyError::PrivateKey)?;
        Ok(Self {
            kid: check_kid(kid.into())?,
            key,
            not_before,
        })
    }

    /// The private key as PKCS#8 DER, for the user service to persist (encrypted at rest);
    /// zeroed when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let document = self.key.to_pkcs8_der().map_err(|_| KeyError::Encode)?;
        Ok(Zeroizing::new(document.as_bytes().to_vec()))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Tokens signed by this key are valid only if issued at or after this instant.
    pub fn not_before(&self) -> DateTime<Utc> {
        self.not_before
    }

    /// The public half, as verifiers get it (no expiry: it is set when the key is retired).
    pub fn verifying(&self) -> VerifyingKey {
        VerifyingKey {
            kid: self.kid.clone(),
            key: self.key.verifying_key(),
            not_before: self.not_before,
            expires_at: None,
        }
    }

    /// The 64-byte Ed25519 signature of `message` (deterministic, RFC 8032).
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(message).to_bytes()
    }
}

/// An Ed25519 public key that verifies access tokens, with its key id and validity window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    kid: String,
    // Parsed once: a dalek key holds the decompressed point, so verifying does not redo it.
    key: ed25519_dalek::VerifyingKey,
    not_before: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

impl VerifyingKey {
    /// A key as published in `PublicKey.spki_der` (DER SubjectPublicKeyInfo, RFC 8410).
    pub fn from_spki_der(
        kid: impl Into<String>,
        der: &[u8],
        not_before: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Self, KeyError> {
        let key = ed25519_dalek::VerifyingKey::from_public_key_der(der)
            .map_err(|_| KeyError::PublicKey)?;
        Self::new(kid.into(), key, not_before, expires_at)
    }

    /// A key from its 32 raw bytes (the JWK `x` member, decoded).
    pub fn from_public_bytes(
        kid: impl Into<String>,
        bytes: &[u8],
        not_before: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Self, KeyError> {
        let bytes: &[u8; 32] = bytes.try_into().map_err(|_| KeyError::PublicKey)?;
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::PublicKey)?;
        Self::new(kid.into(), key, not_before, expires_at)
    }

    fn new(
        kid: String,
        key: ed25519_dalek::VerifyingKey,
        not_before: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Self, KeyError> {
        // A weak (small-order) key would let anyone forge signatures that verify under it.
        if key.is_weak() {
            return Err(KeyError::PublicKey);
        }
        if expires_at.is_some_and(|expires_at| expires_at < not_before) {
            return Err(KeyError::Window);
        }
        Ok(Self {
            kid: check_kid(kid)?,
            key,
            not_before,
            expires_at,
        })
    }

    /// The same key with the instant verifiers must stop accepting it (set on rotation to the
    /// retirement plus the grace).
    pub fn with_expires_at(self, expires_at: Option<DateTime<Utc>>) -> Result<Self, KeyError> {
        Self::new(self.kid, self.key, self.not_before, expires_at)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Tokens are valid only if issued (`iat`) at or after this instant.
    pub fn not_before(&self) -> DateTime<Utc> {
        self.not_before
    }

    /// From this instant on, tokens signed by this key are refused; `None` while the key signs.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// Whether tokens signed by this key may still be accepted at `now`.
    pub fn is_live_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|expires_at| now < expires_at)
    }

    /// The 32 raw public key bytes.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// DER SubjectPublicKeyInfo (RFC 8410), for `PublicKey.spki_der`.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut der = Vec::with_capacity(ED25519_SPKI_PREFIX.len() + 32);
        der.extend_from_slice(&ED25519_SPKI_PREFIX);
        der.extend_from_slice(self.key.as_bytes());
        der
    }

    /// The key as a JSON Web Key (RFC 7517, OKP per RFC 8037), for `PublicKey.jwk_json`.
    pub fn jwk_json(&self) -> String {
        use base64::Engine as _;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.key.as_bytes());
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": x,
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
        .to_string()
    }

    /// Whether `signature` is this key's signature of `message`. Strict verification (RFC 8032
    /// with canonical encodings only) so a token has exactly one valid signature.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.key.verify_strict(message, &signature).is_ok()
    }
}

/// The verifying keys a verifier trusts: every key a token may currently verify with (the
/// signing one, a scheduled one, retired ones in their grace). Key ids are unique within a set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    // A handful of keys at most: a linear scan beats hashing.
    keys: Vec<VerifyingKey>,
}

impl KeySet {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Result<Self, KeyError> {
        let mut set = Vec::new();
        for key in keys {
            if set.iter().any(|k: &VerifyingKey| k.kid == key.kid) {
                return Err(KeyError::DuplicateKid);
            }
            set.push(key);
        }
        Ok(Self { keys: set })
    }

    /// The key named `kid`, if the set holds it.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, VerifyingKey> {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys still live at `now` (what `GetPublicKeys` publishes).
    pub fn live_at(&self, now: DateTime<Utc>) -> Self {
        Self {
            keys: self
                .keys
                .iter()
                .filter(|k| k.is_live_at(now))
                .cloned()
                .collect(),
        }
    }
}

impl<'a> IntoIterator for &'a KeySet {
    type Item = &'a VerifyingKey;
    type IntoIter = std::slice::Iter<'a, VerifyingKey>;

    fn into_iter(self) -> Self::IntoIter {
        self.keys.iter()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use chrono::TimeDelta;
    use ed25519_dalek::pkcs8::EncodePublicKey;

    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid instant")
    }

    /// RFC 8037 appendix A.1: the example Ed25519 key.
    fn rfc8037_key() -> SigningKey {
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("base64");
        let secret: [u8; 32] = d.as_slice().try_into().expect("32 bytes");
        SigningKey {
            kid: "rfc8037".into(),
            key: ed25519_dalek::SigningKey::from_bytes(&secret),
            not_before: t0(),
        }
    }

    #[test]
    fn signing_reproduces_the_rfc_8037_jws_example() {
        let key = rfc8037_key();
        let signing_input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let signature = URL_SAFE_NO_PAD.encode(key.sign(signing_input.as_bytes()));
        assert_eq!(
            signature,
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
        let verifying = key.verifying();
        let bytes: [u8; 64] = URL_SAFE_NO_PAD
            .decode(&signature)
            .expect("base64")
            .try_into()
            .expect("64 bytes");
        assert!(verifying.verifies(signing_input.as_bytes(), &bytes));
        assert!(!verifying.verifies(b"something else", &bytes));
    }

    #[test]
    fn the_jwk_is_the_rfc_8037_okp_form_with_kid_alg_and_use() {
        let jwk: serde_json::Value =
            serde_json::from_str(&rfc8037_key().verifying().jwk_json()).expect("json");
        assert_eq!(
            jwk,
            serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                "kid": "rfc8037",
                "alg": "EdDSA",
                "use": "sig",
            })
        );
    }

    #[test]
    fn spki_der_matches_the_asn1_encoder_and_reads_back() {
        let key = SigningKey::generate("k1", t0()).expect("key");
        let verifying = key.verifying();
        let expected = key
            .key
            .verifying_key()
            .to_public_key_der()
            .expect("der")
            .into_vec();
        assert_eq!(verifying.spki_der(), expected);
        let expires = t0() + TimeDelta::hours(1);
        let back = VerifyingKey::from_spki_der("k1", &expected, t0(), Some(expires)).expect("read");
        assert_eq!(back.public_key_bytes(), verifying.public_key_bytes());
        assert_eq!(back.expires_at(), Some(expires));
        assert_eq!(
            VerifyingKey::from_spki_der("k1", &expected[1..], t0(), None),
            Err(KeyError::PublicKey)
        );
    }

    #[test]
    fn a_private_key_survives_pkcs8_persistence() {
        let key = SigningKey::generate("k1", t0()).expect("key");
        let der = key.to_pkcs8_der().expect("der");
        let back = SigningKey::from_pkcs8_der("k1", &der, t0()).expect("read");
        assert_eq!(back.verifying(), key.verifying());
        assert!(matches!(
            SigningKey::from_pkcs8_der("k1", &der[..der.len() - 1], t0()),
            Err(KeyError::PrivateKey)
        ));
    }

    #[test]
    fn the_debug_form_of_a_signing_key_shows_no_secret() {
        let key = rfc8037_key();
        let shown = format!("{key:?}");
        assert!(shown.contains("rfc8037"));
        assert!(!shown.contains('['), "no byte arrays: {shown}");
    }

    #[test]
    fn key_ids_are_short_and_inert() {
        assert!(SigningKey::generate("2026-11-key_1.a", t0()).is_ok());
        for bad in ["", "a b", "k\"", "ключ", &"k".repeat(65)] {
            assert!(
                matches!(SigningKey::generate(bad, t0()), Err(KeyError::Kid)),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn weak_keys_and_inverted_windows_are_refused() {
        // The identity point: every signature with R = identity and s = 0 would verify.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            VerifyingKey::from_public_bytes("k", &identity, t0(), None),
            Err(KeyError::PublicKey)
        );
        let key = SigningKey::generate("k", t0()).expect("key").verifying();
        assert_eq!(
            key.with_expires_at(Some(t0() - TimeDelta::seconds(1))),
            Err(KeyError::Window)
        );
    }

    #[test]
    fn a_key_set_refuses_duplicate_kids_and_filters_retired_keys() {
        let a = SigningKey::generate("a", t0()).expect("key").verifying();
        let b = SigningKey::generate("b", t0()).expect("key").verifying();
        let b_retired = b
            .clone()
            .with_expires_at(Some(t0() + TimeDelta::minutes(20)))
            .expect("window");
        assert_eq!(KeySet::new([a.clone(), b.clone()]).map(|s| s.len()), Ok(2));
        assert_eq!(
            KeySet::new([a.clone(), a.clone()]),
            Err(KeyError::DuplicateKid)
        );
        let set = KeySet::new([a.clone(), b_retired]).expect("set");
        assert_eq!(set.live_at(t0()).len(), 2);
        let later = set.live_at(t0() + TimeDelta::minutes(20));
        assert_eq!(later.len(), 1);
        assert!(later.get("a").is_some() && later.get("b").is_none());
    }
}
