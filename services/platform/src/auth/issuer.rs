//! Issuing access tokens (the user service's side).
//!
//! Access tokens are short-lived by construction: [`TokenIssuer::new`] refuses a lifetime over
//! [`MAX_ACCESS_TOKEN_LIFETIME`], because verifiers never call back to the user service, so a
//! token's lifetime bounds how long a revoked session or a removed role keeps working.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::claims::{Claims, RoleClaim};
use super::jws;
use super::keys::SigningKey;

/// The longest access token lifetime (issue 5: at most 15 minutes).
pub const MAX_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Why a token could not be issued, or an issuer not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("an access token lifetime is 1 second to 15 minutes")]
    Lifetime,
    #[error("the issuer and the audience must not be empty")]
    Names,
    #[error("a token needs a user id and a session id")]
    Subject,
    #[error("the signing key is not valid yet")]
    KeyNotYetValid,
    #[error("the claims could not be encoded")]
    Encode,
}

/// Who a token is for: what the user service knows about the session when it issues one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub user_id: String,
    pub session_id: String,
    pub roles: Vec<RoleClaim>,
    /// A parent's students.
    pub children: Vec<String>,
    /// How the session started ("pwd", "telegram").
    pub amr: Vec<String>,
    /// When the session started.
    pub auth_time: DateTime<Utc>,
    /// The account's IANA time zone (the `zoneinfo` claim); empty for none.
    pub time_zone: String,
}

/// A freshly signed access token and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWS, for `authorization: Bearer <token>`.
    pub token: String,
    pub claims: Claims,
    pub expires_at: DateTime<Utc>,
}

/// Signs access tokens for one issuer name and one audience.
#[derive(Clone, Debug)]
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    lifetime: Duration,
}

impl TokenIssuer {
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        lifetime: Duration,
    ) -> Result<Self, IssueError> {
        let (issuer, audience) = (issuer.into(), audience.into());
        if issuer.is_empty() || audience.is_empty() {
            return Err(IssueError::Names);
        }
        // Whole seconds: the time claims are whole seconds.
        if lifetime.as_secs() == 0 || lifetime > MAX_ACCESS_TOKEN_LIFETIME {
            return Err(IssueError::Lifetime);
        }
        Ok(Self {
            issuer,
            audience,
            lifetime,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A token for `subject` signed with `key`, valid from `now` for the issuer's lifetime.
    ///
    /// Refuses a key whose `not_before` is after `now`: verifiers would refuse the token.
    pub fn issue(
        &self,
        key: &SigningKey,
        subject: &Subject,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, IssueError> {
        if subject.user_id.is_empty() || subject.session_id.is_empty() {
            return Err(IssueError::Subject);
        }
        let iat = now.timestamp();
        // Verifiers compare iat (whole seconds) with the key's not_before, so compare the same way.
        if DateTime::from_timestamp(iat, 0).is_none_or(|issued| issued < key.not_before()) {
            return Err(IssueError::KeyNotYetValid);
        }
        let lifetime = i64::try_from(self.lifetime.as_secs()).map_err(|_| IssueError::Lifetime)?;
        let exp = iat + lifetime;
        let expires_at = DateTime::from_timestamp(exp, 0).ok_or(IssueError::Lifetime)?;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.user_id.clone(),
            sid: subject.session_id.clone(),
            iat,
            nbf: iat,
            exp,
            jti: uuid::Uuid::new_v4().to_string(),
            auth_time: subject.auth_time.timestamp(),
            amr: subject.amr.clone(),
            roles: subject.roles.clone(),
            children: subject.children.clone(),
            zoneinfo: subject.time_zone.clone(),
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| IssueError::Encode)?;
        let token = jws::sign(key, &payload).map_err(|_| IssueError::Encode)?;
        Ok(IssuedToken {
            token,
            claims,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::auth::claims::Role;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("instant")
    }

    fn subject() -> Subject {
        Subject {
            user_id: "u-1".into(),
            session_id: "s-1".into(),
            roles: vec![RoleClaim::new(Role::Tutor)],
            children: Vec::new(),
            amr: vec!["pwd".into()],
            auth_time: t0(),
            time_zone: String::new(),
        }
    }

    #[test]
    fn a_lifetime_over_fifteen_minutes_or_under_a_second_is_refused() {
        let minute = Duration::from_secs(60);
        assert!(TokenIssuer::new("repit", "repit", 15 * minute).is_ok());
        assert_eq!(
            TokenIssuer::new("repit", "repit", 15 * minute + Duration::from_secs(1)).err(),
            Some(IssueError::Lifetime)
        );
        assert_eq!(
            TokenIssuer::new("repit", "repit", Duration::from_millis(999)).err(),
            Some(IssueError::Lifetime)
        );
        assert_eq!(
            TokenIssuer::new("", "repit", minute).err(),
            Some(IssueError::Names)
        );
    }

    #[test]
    fn the_header_names_the_key_and_the_algorithm_and_the_claims_the_window() {
        let key = SigningKey::generate("k-2026", t0()).expect("key");
        let issuer = TokenIssuer::new("repit-user", "repit", Duration::from_secs(600)).expect("ok");
        let issued = issuer
            .issue(&key, &subject(), t0() + TimeDelta::milliseconds(1500))
            .expect("issued");
        let parts = jws::split(&issued.token).expect("compact jws");
        let header: serde_json::Value =
            serde_json::from_slice(&jws::decode(parts.header).expect("b64")).expect("json");
        assert_eq!(
            header,
            serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k-2026"})
        );
        let claims: Claims =
            serde_json::from_slice(&jws::decode(parts.payload).expect("b64")).expect("json");
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.iat, 1_800_000_001);
        assert_eq!((claims.nbf, claims.exp), (claims.iat, claims.iat + 600));
        assert_eq!(issued.expires_at.timestamp(), claims.exp);
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            ("repit-user", "repit")
        );
        assert_eq!(claims.jti.len(), 36);
    }

    #[test]
    fn a_key_that_is_not_valid_yet_does_not_sign() {
        let key = SigningKey::generate("k", t0() + TimeDelta::seconds(1)).expect("key");
        let issuer = TokenIssuer::new("repit-user", "repit", Duration::from_secs(60)).expect("ok");
        assert_eq!(
            issuer.issue(&key, &subject(), t0()).err(),
            Some(IssueError::KeyNotYetValid)
        );
        let no_session = Subject {
            session_id: String::new(),
            ..subject()
        };
        assert_eq!(
            issuer
                .issue(&key, &no_session, t0() + TimeDelta::seconds(1))
                .err(),
            Some(IssueError::Subject)
        );
    }
}
