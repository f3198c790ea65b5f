//! Access tokens: the user service signs them, every service verifies them (DESIGN.md, Identity).
//!
//! An access token is a short-lived (≤ 15 min) JWT signed with Ed25519 under a key id, so any
//! service can check it alone, with the public keys the user service publishes (`GetPublicKeys`),
//! and never calls back per request. Keys rotate: a verifier trusts a set of keys and gets a new
//! set when the user service rotates.
//!
//! - [`keys`]: [`SigningKey`] (private, user service only), [`VerifyingKey`] (DER and JWK forms)
//!   and [`KeySet`], the keys a verifier trusts.
//! - [`claims`]: the token's [`Claims`] and the [`Caller`] handlers read, with tenancy helpers.
//! - [`issuer`]: [`TokenIssuer`], which signs tokens and refuses lifetimes over 15 minutes.
//! - [`verifier`]: [`Verifier`], which checks tokens (EdDSA only, known kid, times, issuer,
//!   audience) and caches the ones it has verified, and [`TokenError`].
//! - [`layer`]: [`AuthLayer`], the tower layer that refuses unauthenticated calls and puts the
//!   [`Caller`] into request extensions, plus the [`caller`] and [`forbidden`] helpers.
//! - `jws` (private): the compact JWS form, cut down to the one algorithm we accept.

pub mod claims;
pub mod issuer;
mod jws;
pub mod keys;
pub mod layer;
pub mod verifier;

pub use claims::{Caller, Claims, Role, RoleClaim};
pub use issuer::{IssueError, IssuedToken, MAX_ACCESS_TOKEN_LIFETIME, Subject, TokenIssuer};
pub use keys::{KeyError, KeySet, SigningKey, VerifyingKey};
pub use layer::{AuthLayer, AuthService, bearer_token, caller, forbidden, unauthenticated};
pub use verifier::{CLOCK_LEEWAY, TokenError, Verifier};
