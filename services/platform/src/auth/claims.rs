//! What an access token says ([`Claims`], its JSON payload) and what a handler learns from it
//! ([`Caller`], put into the request's extensions by the auth layer).
//!
//! The claim set is the one `IssuedTokens` documents in user.proto: iss, aud, sub, sid, iat, nbf,
//! exp, jti, auth_time, amr, roles and children. Roles carry their scope (user.proto `RoleGrant`)
//! so that every service can check tenancy from the token alone, without a call to the user
//! service per request.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A role as it appears in the `roles` claim (user.proto `Role`, lowercase).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Tutor,
    Student,
    Parent,
    Admin,
    /// A role added to the contract after this build: it grants nothing here. Tolerated rather
    /// than refused so that a newer user service does not lock its users out of older services
    /// during a rolling upgrade. Never issued.
    #[serde(other)]
    Unrecognized,
}

/// One role held in one scope (user.proto `RoleGrant`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoleClaim {
    pub role: Role,
    /// STUDENT and PARENT: the tutor whose tenancy this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tutor_id: Option<String>,
    /// TUTOR: the school taught in (none for the tutor's own practice). ADMIN: the school
    /// administered; none means platform admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub school_id: Option<String>,
}

impl RoleClaim {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            tutor_id: None,
            school_id: None,
        }
    }

    pub fn with_tutor(mut self, tutor_id: impl Into<String>) -> Self {
        self.tutor_id = Some(tutor_id.into());
        self
    }

    pub fn with_school(mut self, school_id: impl Into<String>) -> Self {
        self.school_id = Some(school_id.into());
        self
    }

    // Protobuf has no "absent" string: an issuer converting a RoleGrant may hand over "".
    fn tutor(&self) -> Option<&str> {
        self.tutor_id.as_deref().filter(|id| !id.is_empty())
    }

    fn school(&self) -> Option<&str> {
        self.school_id.as_deref().filter(|id| !id.is_empty())
    }
}

/// The JSON payload of an access token. Times are unix seconds (RFC 7519 NumericDate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer: the user service's configured name.
    pub iss: String,
    /// The audience: every RepitBot service verifies for one audience ("repit").
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The session (refresh token family) the token belongs to.
    pub sid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Unique per token, for logs and audit.
    pub jti: String,
    /// When the session started (the login), unix seconds.
    pub auth_time: i64,
    /// How the session started ("pwd", "telegram"; user.proto `SignInMethod`).
    #[serde(default)]
    pub amr: Vec<String>,
    #[serde(default)]
    pub roles: Vec<RoleClaim>,
    /// A parent's students, as of issue time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// The account's IANA time zone as of issue time (the OpenID Connect `zoneinfo` claim), so
    /// every service can show times in the caller's zone without asking the user service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zoneinfo: String,
}

/// The authenticated caller of a request, as handlers see it:
/// `request.extensions().get::<Caller>()`, or [`super::caller`] which answers UNAUTHENTICATED
/// when there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub session_id: String,
    pub roles: Vec<RoleClaim>,
    /// A parent's students, as of issue time.
    pub children: Vec<String>,
    /// The caller's IANA time zone as of issue time (`zoneinfo`), if the token names one.
    pub time_zone: Option<String>,
    /// When the access token expires (without the verifier's clock leeway).
    pub expires_at: DateTime<Utc>,
}

impl Caller {
    /// The caller a verified token describes; `None` when `exp` is not a representable instant.
    pub fn from_claims(claims: &Claims) -> Option<Self> {
        Some(Self {
            user_id: claims.sub.clone(),
            session_id: claims.sid.clone(),
            roles: claims.roles.clone(),
            children: claims.children.clone(),
            time_zone: (!claims.zoneinfo.is_empty()).then(|| claims.zoneinfo.clone()),
            expires_at: DateTime::from_timestamp(claims.exp, 0)?,
        })
    }

    /// Whether the caller holds `role` in any scope.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.iter().any(|grant| grant.role == role)
    }

    /// Whether the caller teaches (owns a tenancy, whose tutor id is their user id).
    pub fn is_tutor(&self) -> bool {
        self.has_role(Role::Tutor)
    }

    /// The tutor ids whose tenancy the caller belongs to: their own when a tutor, and each
    /// tutor they are a student or parent with. Without duplicates, in grant order.
    pub fn tutor_scope(&self) -> Vec<&str> {
        let mut scope: Vec<&str> = Vec::new();
        for grant in &self.roles {
            let tutor = match grant.role {
                Role::Tutor => Some(self.user_id.as_str()),
                Role::Student | Role::Parent => grant.tutor(),
                Role::Admin | Role::Unrecognized => None,
            };
            if let Some(tutor) = tutor
                && !scope.contains(&tutor)
            {
                scope.push(tutor);
            }
        }
        scope
    }

    /// Whether the caller belongs to `tutor_id`'s tenancy (as that tutor, a student or a parent).
    pub fn in_tenancy_of(&self, tutor_id: &str) -> bool {
        self.tutor_scope().contains(&tutor_id)
    }

    /// Whether the caller operates the installation (an admin grant without a school).
    pub fn is_platform_admin(&self) -> bool {
        self.roles
            .iter()
            .any(|grant| grant.role == Role::Admin && grant.school().is_none())
    }

    /// Whether the caller administers `school_id` (platform admins administer every school).
    pub fn administers_school(&self, school_id: &str) -> bool {
        self.is_platform_admin()
            || self
                .roles
                .iter()
                .any(|grant| grant.role == Role::Admin && grant.school() == Some(school_id))
    }

    /// The schools the caller administers (a platform admin's grant names none).
    pub fn administered_schools(&self) -> Vec<String> {
        self.roles
            .iter()
            .filter(|grant| grant.role == Role::Admin)
            .filter_map(RoleClaim::school)
            .map(str::to_owned)
            .collect()
    }

    /// Whether `student_id` is one of the caller's children (as of the token's issue).
    pub fn is_parent_of(&self, student_id: &str) -> bool {
        self.has_role(Role::Parent) && self.children.iter().any(|child| child == student_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: Vec<RoleClaim>) -> Caller {
        Caller {
            user_id: "u-1".into(),
            session_id: "s-1".into(),
            roles,
            children: vec!["kid-1".into()],
            time_zone: None,
            expires_at: DateTime::from_timestamp(1_800_000_000, 0).expect("instant"),
        }
    }

    #[test]
    fn roles_serialise_as_compact_lowercase_json() {
        let roles = vec![
            RoleClaim::new(Role::Tutor),
            RoleClaim::new(Role::Student).with_tutor("t-1"),
            RoleClaim::new(Role::Admin).with_school("sch-1"),
        ];
        assert_eq!(
            serde_json::to_string(&roles).expect("json"),
            r#"[{"role":"tutor"},{"role":"student","tutor_id":"t-1"},{"role":"admin","school_id":"sch-1"}]"#
        );
    }

    #[test]
    fn an_unknown_role_is_read_as_unrecognized_and_grants_nothing() {
        let roles: Vec<RoleClaim> =
            serde_json::from_str(r#"[{"role":"auditor","school_id":"s"}]"#).expect("json");
        assert_eq!(roles[0].role, Role::Unrecognized);
        let caller = caller(roles);
        assert!(!caller.is_tutor() && !caller.is_platform_admin());
        assert!(caller.tutor_scope().is_empty());
    }

    #[test]
    fn the_tutor_scope_holds_own_tenancy_and_the_tutors_of_student_and_parent_grants() {
        let caller = caller(vec![
            RoleClaim::new(Role::Tutor),
            RoleClaim::new(Role::Tutor).with_school("sch-1"),
            RoleClaim::new(Role::Parent).with_tutor("t-2"),
            RoleClaim::new(Role::Student).with_tutor("t-2"),
            RoleClaim::new(Role::Student).with_tutor(""),
        ]);
        assert!(caller.is_tutor());
        assert_eq!(caller.tutor_scope(), vec!["u-1", "t-2"]);
        assert!(caller.in_tenancy_of("t-2") && !caller.in_tenancy_of("t-3"));
        assert!(caller.is_parent_of("kid-1") && !caller.is_parent_of("kid-2"));
    }

    #[test]
    fn only_an_admin_grant_without_a_school_makes_a_platform_admin() {
        let school_admin = caller(vec![RoleClaim::new(Role::Admin).with_school("sch-1")]);
        assert!(!school_admin.is_platform_admin());
        assert!(school_admin.administers_school("sch-1"));
        assert!(!school_admin.administers_school("sch-2"));
        let platform = caller(vec![RoleClaim::new(Role::Admin).with_school("")]);
        assert!(platform.is_platform_admin() && platform.administers_school("sch-2"));
        assert!(!caller(vec![RoleClaim::new(Role::Student)]).is_platform_admin());
    }
}
