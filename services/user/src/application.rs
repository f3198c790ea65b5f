//! The user service's use cases: sign-up, login, refresh-token rotation, logout, the current
//! user, and the public keys — loading aggregates, deciding, appending.
//!
//! Login names are claimed in their own streams before the account is written, so two sign-ups
//! with one email cannot both succeed. A refresh token is `<session id>.<secret>`: the session id
//! finds its stream without a lookup table, and only the SHA-256 of the whole token is stored.
//! Passwords are hashed with argon2id on the blocking pool (tens of milliseconds of CPU).
//!
//! - `invites`: CreateInvite, CreateTelegramBindingInvite, PreviewInvite, RedeemInvite,
//!   RevokeInvite, LoginWithTelegram and the bot credential.
//! - `schools`: CreateSchool, GetSchool, UpdateSchool.
//! - `accounts`: CreateUser, GetUser, roles, parent links, password, email, sessions,
//!   deactivation, key rotation, and the visibility rules they share.
//! - `directory`: ListUsers, ListSessions and ListInvites — who may list which scope; the rows
//!   come from the `user.directory` read model (`crate::queries`).

mod accounts;
mod directory;
mod invites;
mod schools;

pub use accounts::Visibility;
pub use directory::{InviteListing, UserListing};
pub use invites::{NewInvite, Redeemed, Redeemer};

use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, TimeDelta, Utc};
use repit_event_store::aggregate::ExecuteOptions;
use repit_event_store::{EventStore, Repository, RepositoryError, StreamName};
use repit_platform::auth::claims::Role;
use repit_platform::auth::{Caller, RoleClaim, Subject, TokenIssuer, Verifier};
use repit_projections::ReadModelDb;
use repit_proto::repit::common::v1::Language;
use repit_proto::repit::user::v1 as pb;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::invite::InviteCodec;
use crate::domain::invite_code::{InviteCodeAggregate, InviteCodeCodec};
use crate::domain::login_name::LoginNameCodec;
use crate::domain::school::{SchoolAggregate, SchoolCodec};
use crate::domain::session::SessionCodec;
use crate::domain::user::{Register, UserCodec};
use crate::domain::{
    InviteAggregate, LoginNameAggregate, LoginNameCommand, LoginNameError, SessionAggregate,
    SessionCommand, UserAggregate, UserCommand, UserError,
};
use crate::keys::KeyRing;

/// Lifetimes of the tokens this service issues.
#[derive(Clone, Debug)]
pub struct UserSettings {
    /// The `iss` claim.
    pub issuer: String,
    /// The `aud` claim every service checks.
    pub audience: String,
    /// Access tokens (at most 15 minutes).
    pub access_token_lifetime: std::time::Duration,
    /// One refresh token (each rotation starts a new one).
    pub refresh_token_lifetime: TimeDelta,
    /// A session at the latest, refreshed or not.
    pub session_lifetime: TimeDelta,
    /// The bot's credential; `None`: no bot may assert a Telegram identity.
    pub bot_credential: Option<BotCredential>,
    /// The bot's Telegram username, for deep links.
    pub bot_username: String,
    /// Emails whose sign-up also makes a platform admin (normalised).
    pub platform_admin_emails: Vec<String>,
}

/// The Telegram bot's credential. Compared in constant time and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct BotCredential(String);

impl BotCredential {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// Whether `presented` is the credential, in time independent of where they differ (both
    /// are hashed first, so their lengths leak nothing either).
    pub fn matches(&self, presented: &str) -> bool {
        let a = Sha256::digest(self.0.as_bytes());
        let b = Sha256::digest(presented.as_bytes());
        let difference = a
            .iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(difference) == 0
    }
}

impl std::fmt::Debug for BotCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BotCredential(<redacted>)")
    }
}

impl Default for UserSettings {
    fn default() -> Self {
        Self {
            issuer: "repit".to_owned(),
            audience: "repit".to_owned(),
            access_token_lifetime: std::time::Duration::from_secs(15 * 60),
            refresh_token_lifetime: TimeDelta::days(30),
            session_lifetime: TimeDelta::days(90),
            bot_credential: None,
            bot_username: "RepitBot".to_owned(),
            platform_admin_emails: Vec::new(),
        }
    }
}

/// Why a user command failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid request")]
    Invalid(Vec<(String, String)>),
    /// Login, refresh and token failures: one message for every cause, so nothing is revealed.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    AlreadyExists(&'static str),
    #[error("user not found")]
    NotFound,
    /// NOT_FOUND for something other than a user (the message names it).
    #[error("{0}")]
    Missing(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    /// A business rule: FAILED_PRECONDITION with the contract's violation type.
    #[error("{message}")]
    Rule {
        violation: &'static str,
        message: String,
    },
    /// UNAUTHENTICATED for a Telegram assertion: `credential` is "bot" or "telegram_user".
    #[error("{message}")]
    BadCredential {
        credential: &'static str,
        message: &'static str,
    },
    /// RESOURCE_EXHAUSTED: retry after the delay.
    #[error("too many attempts; retry later")]
    RateLimited(std::time::Duration),
    #[error("{0}")]
    Aborted(String),
    #[error("a dependency is unavailable")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl<E: std::error::Error> From<RepositoryError<E>> for AppError {
    fn from(error: RepositoryError<E>) -> Self {
        match error {
            RepositoryError::Conflict { .. } | RepositoryError::UnexpectedRevision { .. } => {
                Self::Aborted(error.to_string())
            }
            RepositoryError::Store(repit_event_store::Error::Unavailable(e)) => {
                Self::Unavailable(e.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl AppError {
    /// FAILED_PRECONDITION with `violation`.
    pub fn rule(violation: &'static str, message: impl Into<String>) -> Self {
        Self::Rule {
            violation,
            message: message.into(),
        }
    }

    /// PERMISSION_DENIED.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::PermissionDenied(message.into())
    }

    /// INVALID_ARGUMENT naming one field.
    pub fn invalid(field: &str, description: &str) -> Self {
        Self::Invalid(vec![(field.to_owned(), description.to_owned())])
    }
}

/// A user aggregate's refusal as an answer; `NotFound` stays a user not found.
impl From<UserError> for AppError {
    fn from(error: UserError) -> Self {
        match error {
            UserError::NotFound => Self::NotFound,
            UserError::AlreadyExists => Self::AlreadyExists("the account already exists"),
            UserError::RoleAlreadyHeld => Self::AlreadyExists("the user holds this grant already"),
            UserError::AlreadyLinked => Self::AlreadyExists("the parent is linked already"),
            UserError::RoleNotHeld => Self::Missing("the user does not hold this grant"),
            UserError::NotLinked => Self::Missing("the parent is not linked to the student"),
            other => match other.violation() {
                Some(violation) => Self::rule(violation, other.to_string()),
                None => Self::Internal(other.to_string()),
            },
        }
    }
}

/// A user command's outcome: domain refusals mapped by [`From<UserError>`].
fn user_result<T>(result: Result<T, RepositoryError<UserError>>) -> Result<T, AppError> {
    match result {
        Ok(value) => Ok(value),
        Err(RepositoryError::Domain(error)) => Err(error.into()),
        Err(other) => Err(other.into()),
    }
}

impl From<repit_event_store::model::InvalidStreamName> for AppError {
    fn from(error: repit_event_store::model::InvalidStreamName) -> Self {
        Self::Internal(error.to_string())
    }
}

/// How a tutor signs up.
#[derive(Clone, Debug)]
pub enum SignUpCredentials {
    EmailPassword {
        email: String,
        password: String,
    },
    /// The bot on behalf of a Telegram user.
    Telegram {
        bot_credential: String,
        telegram_user_id: i64,
        username: String,
    },
    /// The authenticated caller adds the tutor role to their account.
    CurrentUser(Caller),
}

fn unreachable_credentials<T>() -> Result<T, AppError> {
    Err(AppError::Internal(
        "current_user sign-up is handled before".to_owned(),
    ))
}

/// Tokens handed to a client.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub refresh_token_expires_at: DateTime<Utc>,
    pub session_id: String,
}

const BAD_LOGIN: &str = "invalid email or password";
const BAD_REFRESH: &str = "invalid refresh token";

/// The user service's use cases.
#[derive(Clone)]
pub struct UserApplication {
    users: Arc<Repository<UserAggregate, UserCodec>>,
    names: Arc<Repository<LoginNameAggregate, LoginNameCodec>>,
    sessions: Arc<Repository<SessionAggregate, SessionCodec>>,
    invites: Arc<Repository<InviteAggregate, InviteCodec>>,
    codes: Arc<Repository<InviteCodeAggregate, InviteCodeCodec>>,
    schools: Arc<Repository<SchoolAggregate, SchoolCodec>>,
    /// The `user.directory` read model the lists are answered from.
    read_models: ReadModelDb,
    keys: KeyRing,
    /// The verifier of this process, given new keys as soon as a rotation here changes them.
    verifier: Option<Arc<Verifier>>,
    issuer: TokenIssuer,
    settings: UserSettings,
    /// Verified against when an email is unknown, so an unknown account costs the same time.
    dummy_hash: Arc<String>,
}

impl std::fmt::Debug for UserApplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserApplication")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn stream(name: String) -> Result<StreamName, AppError> {
    Ok(StreamName::parse(name)?)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lowercased and trimmed, as login emails are compared.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn email_stream(email: &str) -> Result<StreamName, AppError> {
    stream(format!("login-email-{}", sha256_hex(email)))
}

fn user_stream(user_id: &str) -> Result<StreamName, AppError> {
    stream(format!("user-{user_id}"))
}

fn telegram_stream(telegram_user_id: i64) -> Result<StreamName, AppError> {
    stream(format!("login-telegram-{telegram_user_id}"))
}

fn invite_stream(invite_id: &str) -> Result<StreamName, AppError> {
    stream(format!("invite-{invite_id}"))
}

fn school_stream(school_id: &str) -> Result<StreamName, AppError> {
    stream(format!("school-{school_id}"))
}

fn invite_code_stream(code_sha256: &str) -> Result<StreamName, AppError> {
    stream(format!("invite-code-{code_sha256}"))
}

/// A deterministic id for what `request_id` (a client's retry key) creates, or a fresh one.
fn id_for(kind: &str, request_id: &str) -> String {
    if request_id.is_empty() {
        Uuid::now_v7()
    } else {
        Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("repit.user/{kind}/{request_id}").as_bytes(),
        )
    }
    .to_string()
}

fn session_stream(session_id: &str) -> Result<StreamName, AppError> {
    stream(format!("session-{session_id}"))
}

async fn hash_password(password: String) -> Result<String, AppError> {
    tokio::task::spawn_blocking(move || {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::generate(&mut rand_core::OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| AppError::Internal(format!("failed to hash a password: {e}")))
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        argon2::password_hash::PasswordHash::new(&hash).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// A fresh refresh token for `session_id`: the id, a dot, 32 random bytes (base64url).
fn new_refresh_token(session_id: &str) -> String {
    let mut secret = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    format!(
        "{session_id}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    )
}

/// The session id a refresh token names, if it is shaped like one of ours.
fn session_of(token: &str) -> Option<&str> {
    let (session, secret) = token.split_once('.')?;
    (Uuid::parse_str(session).is_ok() && secret.len() >= 43).then_some(session)
}

fn role_claims(user: &pb::User) -> Vec<RoleClaim> {
    user.roles
        .iter()
        .filter_map(|grant| {
            let role = match grant.role() {
                pb::Role::Tutor => Role::Tutor,
                pb::Role::Student => Role::Student,
                pb::Role::Parent => Role::Parent,
                pb::Role::Admin => Role::Admin,
                pb::Role::Unspecified => return None,
            };
            Some(RoleClaim {
                role,
                tutor_id: (!grant.tutor_id.is_empty()).then(|| grant.tutor_id.clone()),
                school_id: (!grant.school_id.is_empty()).then(|| grant.school_id.clone()),
            })
        })
        .collect()
}

impl UserApplication {
    /// The application over the event store and the read models, with the key ring that signs
    /// tokens.
    pub fn new(
        store: Arc<dyn EventStore>,
        read_models: ReadModelDb,
        keys: KeyRing,
        settings: UserSettings,
    ) -> Result<Self, AppError> {
        let issuer = TokenIssuer::new(
            settings.issuer.clone(),
            settings.audience.clone(),
            settings.access_token_lifetime,
        )
        .map_err(|e| AppError::Internal(e.to_string()))?;
        // A real argon2id hash of a random password: verifying against it costs what a real one
        // does.
        let dummy_hash = {
            use argon2::PasswordHasher;
            let salt = argon2::password_hash::SaltString::generate(&mut rand_core::OsRng);
            argon2::Argon2::default()
                .hash_password(Uuid::new_v4().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AppError::Internal(e.to_string()))?
        };
        Ok(Self {
            users: Arc::new(Repository::new(store.clone(), UserCodec)),
            names: Arc::new(Repository::new(store.clone(), LoginNameCodec)),
            sessions: Arc::new(Repository::new(store.clone(), SessionCodec)),
            invites: Arc::new(Repository::new(store.clone(), InviteCodec)),
            codes: Arc::new(Repository::new(store.clone(), InviteCodeCodec)),
            schools: Arc::new(Repository::new(store, SchoolCodec)),
            read_models,
            keys,
            verifier: None,
            issuer,
            settings,
            dummy_hash: Arc::new(dummy_hash),
        })
    }

    /// The key ring (GetPublicKeys, verifiers in this process).
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Gives `verifier` the new key set whenever a rotation through this application changes it
    /// (other replicas' rotations arrive through the process's key follower, which re-reads the
    /// ring).
    pub fn with_verifier(mut self, verifier: Arc<Verifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    async fn publish_keys(&self) -> Result<(), AppError> {
        if let Some(verifier) = &self.verifier {
            let keys = self
                .keys
                .key_set(Utc::now())
                .await
                .map_err(|e| AppError::Internal(e.to_string()))?;
            verifier.replace_keys(keys);
        }
        Ok(())
    }

    /// The bot username deep links name.
    pub fn bot_username(&self) -> &str {
        &self.settings.bot_username
    }

    /// Refuses an assertion whose bot credential is wrong (or when none is configured).
    pub fn check_bot(&self, presented: &str) -> Result<(), AppError> {
        match &self.settings.bot_credential {
            Some(credential) if credential.matches(presented) => Ok(()),
            _ => Err(AppError::BadCredential {
                credential: "bot",
                message: "invalid bot credential",
            }),
        }
    }

    /// SignUpTutor with email and password or a bot assertion: claims the login name, registers
    /// the account with the tutor role (and the platform admin role for a configured email),
    /// starts a session.
    #[allow(clippy::too_many_arguments)] // one per field of the request, parsed
    pub async fn sign_up_tutor(
        &self,
        request_id: &str,
        credentials: SignUpCredentials,
        display_name: String,
        time_zone: String,
        language: Language,
        client_name: String,
    ) -> Result<(pb::User, u64, Option<Tokens>), AppError> {
        let now = Utc::now();
        if let SignUpCredentials::CurrentUser(caller) = &credentials {
            // An existing account (e.g. a parent who starts tutoring) adds the tutor role.
            let command = UserCommand::GrantRole {
                grant: pb::RoleGrant {
                    role: pb::Role::Tutor as i32,
                    ..Default::default()
                },
                invite_id: String::new(),
                actor: caller.user_id.clone(),
                now,
            };
            let executed = match self
                .users
                .execute(&user_stream(&caller.user_id)?, &command)
                .await
            {
                Err(RepositoryError::Domain(UserError::RoleAlreadyHeld)) => {
                    return Err(AppError::AlreadyExists("the caller is a tutor already"));
                }
                other => user_result(other)?,
            };
            let revision = executed.revision.unwrap_or(0);
            let mut user = executed.state.user.ok_or(AppError::NotFound)?;
            user.revision = revision;
            return Ok((user, revision, None));
        }
        let user_id = id_for("sign-up", request_id);
        let mut grants = vec![pb::RoleGrant {
            role: pb::Role::Tutor as i32,
            ..Default::default()
        }];
        let (email, password_hash, telegram, method) = match credentials {
            SignUpCredentials::EmailPassword { email, password } => {
                let email = normalise_email(&email);
                let password_hash = hash_password(password).await?;
                let claim = LoginNameCommand::ClaimEmail {
                    email: email.clone(),
                    user_id: user_id.clone(),
                    now,
                };
                match self.names.execute(&email_stream(&email)?, &claim).await {
                    Ok(_) => {}
                    Err(RepositoryError::Domain(LoginNameError::Taken)) => {
                        return Err(AppError::AlreadyExists("the email already has an account"));
                    }
                    Err(other) => return Err(other.into()),
                }
                if self.settings.platform_admin_emails.contains(&email) {
                    grants.push(pb::RoleGrant {
                        role: pb::Role::Admin as i32,
                        ..Default::default()
                    });
                }
                (email, password_hash, None, pb::SignInMethod::Password)
            }
            SignUpCredentials::Telegram {
                bot_credential,
                telegram_user_id,
                username,
            } => {
                self.check_bot(&bot_credential)?;
                self.claim_telegram(telegram_user_id, &user_id, &user_id, now)
                    .await
                    .map_err(|e| match e {
                        AppError::Rule { .. } => {
                            AppError::AlreadyExists("the telegram id already has an account")
                        }
                        other => other,
                    })?;
                (
                    String::new(),
                    String::new(),
                    Some((telegram_user_id, username)),
                    pb::SignInMethod::Telegram,
                )
            }
            SignUpCredentials::CurrentUser(_) => unreachable_credentials()?,
        };
        let (telegram_user_id, telegram_username) = telegram.unwrap_or_default();
        let register = UserCommand::Register(Box::new(Register {
            user_id: user_id.clone(),
            method: pb::RegistrationMethod::SignUp,
            display_name,
            email,
            password_hash,
            telegram_user_id,
            telegram_username,
            time_zone,
            language,
            invite_id: String::new(),
            grants,
            actor: user_id.clone(),
            now,
        }));
        let (user, revision) = match self.users.execute(&user_stream(&user_id)?, &register).await {
            Ok(executed) => (executed.state, executed.revision),
            // A retried sign-up (same request id): the same account, with a fresh session.
            Err(RepositoryError::Domain(UserError::AlreadyExists)) => {
                let loaded = self.users.load(&user_stream(&user_id)?).await?;
                (loaded.state, loaded.revision)
            }
            Err(other) => return Err(other.into()),
        };
        let mut account = user.user.clone().ok_or(AppError::NotFound)?;
        account.revision = revision.unwrap_or(0);
        let tokens = self.start_session(&user, method, client_name, now).await?;
        Ok((account, revision.unwrap_or(0), Some(tokens)))
    }

    /// Claims the login name of a Telegram id for `user_id`; another holder is
    /// TELEGRAM_ALREADY_BOUND.
    async fn claim_telegram(
        &self,
        telegram_user_id: i64,
        user_id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let claim = LoginNameCommand::ClaimTelegram {
            telegram_user_id,
            user_id: user_id.to_owned(),
            actor: actor.to_owned(),
            now,
        };
        match self
            .names
            .execute(&telegram_stream(telegram_user_id)?, &claim)
            .await
        {
            Ok(_) => Ok(()),
            Err(RepositoryError::Domain(LoginNameError::Taken)) => Err(AppError::rule(
                "TELEGRAM_ALREADY_BOUND",
                "the telegram id belongs to another account",
            )),
            Err(other) => Err(other.into()),
        }
    }

    /// LoginWithPassword. Every failure answers the same, after the same amount of work.
    pub async fn login_with_password(
        &self,
        email: &str,
        password: String,
        client_name: String,
    ) -> Result<(pb::User, Tokens), AppError> {
        let now = Utc::now();
        let email = normalise_email(email);
        let holder = self.names.load(&email_stream(&email)?).await?.state.holder;
        let user = match &holder {
            Some(user_id) => Some(self.users.load(&user_stream(user_id)?).await?.state),
            None => None,
        };
        let hash = user
            .as_ref()
            .filter(|u| !u.password_hash.is_empty())
            .map_or_else(|| (*self.dummy_hash).clone(), |u| u.password_hash.clone());
        let matches = verify_password(password, hash).await;
        let Some(user) = user.filter(|u| matches && u.is_active()) else {
            return Err(AppError::Unauthenticated(BAD_LOGIN));
        };
        let tokens = self
            .start_session(&user, pb::SignInMethod::Password, client_name, now)
            .await?;
        let account = user.user.clone().ok_or(AppError::NotFound)?;
        Ok((account, tokens))
    }

    async fn start_session(
        &self,
        user: &UserAggregate,
        method: pb::SignInMethod,
        client_name: String,
        now: DateTime<Utc>,
    ) -> Result<Tokens, AppError> {
        let account = user.user.as_ref().ok_or(AppError::NotFound)?;
        let session_id = Uuid::now_v7().to_string();
        let refresh_token = new_refresh_token(&session_id);
        let refresh_expires = now + self.settings.refresh_token_lifetime;
        let command = SessionCommand::Start {
            session_id: session_id.clone(),
            user_id: account.user_id.clone(),
            sign_in_method: method,
            client_name,
            token_sha256: sha256_hex(&refresh_token),
            token_expires_at: refresh_expires,
            session_expires_at: now + self.settings.session_lifetime,
            now,
        };
        let options = ExecuteOptions {
            assume_new: true,
            ..ExecuteOptions::default()
        };
        self.sessions
            .execute_with(&session_stream(&session_id)?, &command, &options)
            .await?;
        self.access_token(
            account,
            &session_id,
            method,
            now,
            refresh_token,
            refresh_expires,
        )
        .await
    }

    async fn access_token(
        &self,
        account: &pb::User,
        session_id: &str,
        method: pb::SignInMethod,
        now: DateTime<Utc>,
        refresh_token: String,
        refresh_token_expires_at: DateTime<Utc>,
    ) -> Result<Tokens, AppError> {
        let key = self
            .keys
            .signing_key(now)
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?;
        let subject = Subject {
            user_id: account.user_id.clone(),
            session_id: session_id.to_owned(),
            roles: role_claims(account),
            children: account.child_ids.clone(),
            amr: vec![
                match method {
                    pb::SignInMethod::Telegram => "telegram",
                    _ => "pwd",
                }
                .to_owned(),
            ],
            auth_time: now,
            time_zone: account.time_zone.clone(),
        };
        let issued = self
            .issuer
            .issue(&key, &subject, now)
            .map_err(|e| AppError::Internal(e.to_string()))?;
        Ok(Tokens {
            access_token: issued.token,
            access_token_expires_at: issued.expires_at,
            refresh_token,
            refresh_token_expires_at,
            session_id: session_id.to_owned(),
        })
    }

    /// RefreshToken: rotate, or — for a token already rotated — end the family. Every refusal
    /// answers the same.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, AppError> {
        let now = Utc::now();
        let session_id = session_of(refresh_token).ok_or(AppError::Unauthenticated(BAD_REFRESH))?;
        let stream = session_stream(session_id)?;
        let session = self.sessions.load(&stream).await?.state;
        if session.session_id.is_empty() {
            return Err(AppError::Unauthenticated(BAD_REFRESH));
        }
        let user = self
            .users
            .load(&user_stream(&session.user_id)?)
            .await?
            .state;
        if !user.is_active() {
            return Err(AppError::Unauthenticated(BAD_REFRESH));
        }
        let next = new_refresh_token(session_id);
        let next_expires = now + self.settings.refresh_token_lifetime;
        let command = SessionCommand::Refresh {
            presented_sha256: sha256_hex(refresh_token),
            next_sha256: sha256_hex(&next),
            next_expires_at: next_expires,
            dead_before: user.sessions_cut_off(
                session_id,
                pb::SignInMethod::try_from(session.sign_in_method)
                    .unwrap_or(pb::SignInMethod::Password),
            ),
            now,
        };
        let executed = match self.sessions.execute(&stream, &command).await {
            Ok(executed) => executed,
            Err(RepositoryError::Domain(_)) => return Err(AppError::Unauthenticated(BAD_REFRESH)),
            Err(other) => return Err(other.into()),
        };
        if executed.state.ended.is_some() {
            // Reuse detected: the family was just revoked.
            tracing::warn!(session_id, "refresh token reuse: session revoked");
            return Err(AppError::Unauthenticated(BAD_REFRESH));
        }
        let account = user.user.as_ref().ok_or(AppError::NotFound)?;
        let method = pb::SignInMethod::try_from(executed.state.sign_in_method)
            .unwrap_or(pb::SignInMethod::Password);
        let expires = executed.state.token_expires_at.unwrap_or(next_expires);
        self.access_token(account, session_id, method, now, next, expires)
            .await
    }

    /// Logout: ends the token's session; OK whatever the token.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), AppError> {
        let Some(session_id) = session_of(refresh_token) else {
            return Ok(());
        };
        let stream = session_stream(session_id)?;
        let session = self.sessions.load(&stream).await?.state;
        // Only the holder of the current token may end the session this way.
        if session.session_id.is_empty() || session.current_sha256 != sha256_hex(refresh_token) {
            return Ok(());
        }
        let command = SessionCommand::End {
            reason: pb::SessionEndReason::Logout,
            actor: session.user_id.clone(),
            now: Utc::now(),
        };
        match self.sessions.execute(&stream, &command).await {
            Ok(_) | Err(RepositoryError::Domain(_)) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }

    /// LogoutEverywhere: every session of `user_id` started before now is over.
    pub async fn logout_everywhere(&self, user_id: &str) -> Result<u64, AppError> {
        let command = UserCommand::LogoutEverywhere {
            actor: user_id.to_owned(),
            now: Utc::now(),
        };
        match self.users.execute(&user_stream(user_id)?, &command).await {
            Ok(executed) => Ok(executed.revision.unwrap_or(0)),
            Err(RepositoryError::Domain(UserError::NotFound)) => Err(AppError::NotFound),
            Err(other) => Err(other.into()),
        }
    }

    /// UpdateProfile of the caller's own account (the fields that are `Some`).
    pub async fn update_profile(
        &self,
        caller: &Caller,
        user_id: &str,
        display_name: Option<String>,
        time_zone: Option<String>,
        language: Option<Language>,
        expected_revision: Option<u64>,
    ) -> Result<pb::User, AppError> {
        // Another account: only a PENDING one of a tenancy the caller manages, and only as it was
        // when checked (it may be claimed meanwhile, and then belongs to its owner).
        let expected_revision = if user_id == caller.user_id {
            expected_revision
        } else {
            let checked = self.check_edits_pending_account(caller, user_id).await?;
            match expected_revision {
                Some(expected) if expected != checked => {
                    return Err(AppError::Aborted(format!(
                        "the user is at revision {checked}, not {expected}"
                    )));
                }
                _ => Some(checked),
            }
        };
        let command = UserCommand::ChangeProfile {
            display_name,
            time_zone,
            language,
            actor: caller.user_id.clone(),
            now: Utc::now(),
        };
        let options = ExecuteOptions {
            expected_revision,
            ..ExecuteOptions::default()
        };
        match self
            .users
            .execute_with(&user_stream(user_id)?, &command, &options)
            .await
        {
            Ok(executed) => {
                let mut user = executed.state.user.ok_or(AppError::NotFound)?;
                user.revision = executed.revision.unwrap_or(0);
                Ok(user)
            }
            Err(RepositoryError::Domain(UserError::NotFound)) => Err(AppError::NotFound),
            Err(other) => Err(other.into()),
        }
    }

    /// The account of `user_id`.
    pub async fn user(&self, user_id: &str) -> Result<pb::User, AppError> {
        let loaded = self.users.load(&user_stream(user_id)?).await?;
        let mut user = loaded.state.user.ok_or(AppError::NotFound)?;
        user.revision = loaded.revision.unwrap_or(0);
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_token_names_its_session_and_nothing_else_parses() {
        let session = Uuid::now_v7().to_string();
        let token = new_refresh_token(&session);
        assert_eq!(session_of(&token), Some(session.as_str()));
        assert_eq!(session_of("garbage"), None);
        assert_eq!(session_of(&format!("{session}.short")), None);
    }

    #[test]
    fn emails_compare_trimmed_and_lowercased() {
        assert_eq!(normalise_email("  Anna@Example.COM "), "anna@example.com");
    }
}
