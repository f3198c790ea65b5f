//! The gRPC adapter of the user service: proto in, application call, proto out.
//!
//! Every RPC is authorised here or in the application from the [`Caller`] the auth layer put
//! into the request. The public RPCs (see [`PUBLIC_METHODS`]) are rate limited per client address
//! and per account identifier (email, Telegram id) before any work, counting every attempt alike,
//! so the limit reveals nothing about accounts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pb::user_service_server::UserService;
use repit_platform::auth::{Caller, caller};
use repit_platform::paging;
use repit_platform::status::ERROR_DOMAIN;
use repit_proto::repit::common::v1::{Language, PageRequest, PageResponse};
use repit_proto::repit::user::v1 as pb;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt};

use crate::application::{
    AppError, InviteListing, NewInvite, Redeemer, SignUpCredentials, Tokens, UserApplication,
    UserListing,
};
use crate::queries::UserFilter;
use crate::rate_limit::RateLimiter;

/// How long verifiers may cache GetPublicKeys (and so how long a new key is published before it
/// signs).
pub const PUBLIC_KEYS_CACHE_FOR: Duration = Duration::from_secs(300);

/// The methods that need no access token (the contract's "public" RPCs). RedeemInvite is public
/// for the bot and browser sign-ups; with `current_user` it needs the token the auth layer still
/// verifies on public methods when one is sent.
pub const PUBLIC_METHODS: [&str; 8] = [
    "/repit.user.v1.UserService/SignUpTutor",
    "/repit.user.v1.UserService/LoginWithPassword",
    "/repit.user.v1.UserService/LoginWithTelegram",
    "/repit.user.v1.UserService/RefreshToken",
    "/repit.user.v1.UserService/Logout",
    "/repit.user.v1.UserService/GetPublicKeys",
    "/repit.user.v1.UserService/PreviewInvite",
    "/repit.user.v1.UserService/RedeemInvite",
];

/// Limits of the public RPCs: attempts per client address and per account identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub address_burst: u32,
    pub address_per_minute: u32,
    pub account_burst: u32,
    pub account_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            address_burst: 60,
            address_per_minute: 60,
            account_burst: 10,
            account_per_minute: 5,
        }
    }
}

#[derive(Debug)]
struct Limiters {
    address: RateLimiter,
    account: RateLimiter,
}

/// `repit.user.v1.UserService` over the application.
#[derive(Clone, Debug)]
pub struct UserGrpc {
    app: UserApplication,
    issuer: String,
    limiters: std::sync::Arc<Limiters>,
}

impl UserGrpc {
    pub fn new(app: UserApplication, issuer: impl Into<String>) -> Self {
        Self::with_rate_limits(app, issuer, RateLimits::default())
    }

    pub fn with_rate_limits(
        app: UserApplication,
        issuer: impl Into<String>,
        limits: RateLimits,
    ) -> Self {
        Self {
            app,
            issuer: issuer.into(),
            limiters: std::sync::Arc::new(Limiters {
                address: RateLimiter::new(limits.address_burst, limits.address_per_minute),
                account: RateLimiter::new(limits.account_burst, limits.account_per_minute),
            }),
        }
    }

    /// Takes an attempt from the client's address and, when given, from the account
    /// identifier's budget; RESOURCE_EXHAUSTED (RATE_LIMITED, RetryInfo) when either is spent.
    fn limit<T>(&self, request: &Request<T>, account: Option<String>) -> Result<(), Status> {
        let now = std::time::Instant::now();
        let address = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
        self.limiters
            .address
            .check(&address, now)
            .and_then(|()| match &account {
                Some(key) => self.limiters.account.check(key, now),
                None => Ok(()),
            })
            .map_err(|wait| status(AppError::RateLimited(wait)))
    }

    /// The tonic server to mount (behind the auth layer, which leaves [`PUBLIC_METHODS`] open).
    pub fn into_server(self) -> pb::user_service_server::UserServiceServer<Self> {
        pb::user_service_server::UserServiceServer::new(self)
    }
}

fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(repit_platform::time::timestamp(at))
}

fn issued(tokens: Tokens) -> pb::IssuedTokens {
    pb::IssuedTokens {
        access_token: tokens.access_token,
        access_token_expires_at: ts(tokens.access_token_expires_at),
        refresh_token: tokens.refresh_token,
        refresh_token_expires_at: ts(tokens.refresh_token_expires_at),
        session_id: tokens.session_id,
    }
}

fn info(reason: &str) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new())
}

/// The one mapping of the user service's errors to statuses (DESIGN.md, "Errors").
fn status(error: AppError) -> Status {
    match error {
        AppError::Invalid(violations) => {
            let message = violations
                .iter()
                .map(|(f, d)| format!("{f}: {d}"))
                .collect::<Vec<_>>()
                .join("; ");
            let mut details = info("INVALID_FIELD");
            details.set_bad_request(
                violations
                    .into_iter()
                    .map(|(f, d)| FieldViolation::new(f, d))
                    .collect::<Vec<_>>(),
            );
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        AppError::Unauthenticated(message) => {
            Status::with_error_details(Code::Unauthenticated, message, info("TOKEN_INVALID"))
        }
        AppError::AlreadyExists(message) => {
            Status::with_error_details(Code::AlreadyExists, message, info("ALREADY_EXISTS"))
        }
        AppError::NotFound => {
            Status::with_error_details(Code::NotFound, "user not found", info("NOT_FOUND"))
        }
        AppError::Missing(message) => {
            Status::with_error_details(Code::NotFound, message, info("NOT_FOUND"))
        }
        AppError::PermissionDenied(message) => {
            Status::with_error_details(Code::PermissionDenied, message, info("FORBIDDEN"))
        }
        AppError::Rule { violation, message } => {
            let mut details = info("RULE_VIOLATED");
            details.set_precondition_failure(vec![PreconditionViolation::new(
                violation,
                "",
                message.clone(),
            )]);
            Status::with_error_details(Code::FailedPrecondition, message, details)
        }
        AppError::BadCredential {
            credential,
            message,
        } => Status::with_error_details(
            Code::Unauthenticated,
            message,
            ErrorDetails::with_error_info(
                "TOKEN_INVALID",
                ERROR_DOMAIN,
                [("credential".to_owned(), credential.to_owned())]
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            ),
        ),
        AppError::RateLimited(wait) => {
            let mut details = info("RATE_LIMITED");
            details.set_retry_info(Some(wait.max(Duration::from_millis(1))));
            Status::with_error_details(
                Code::ResourceExhausted,
                "too many attempts; retry later",
                details,
            )
        }
        AppError::Aborted(message) => {
            Status::with_error_details(Code::Aborted, message, info("CONCURRENT_MODIFICATION"))
        }
        AppError::Unavailable(cause) => {
            tracing::warn!(%cause, "dependency unavailable");
            Status::with_error_details(
                Code::Unavailable,
                "a dependency is unavailable; retry",
                info("DEPENDENCY_UNAVAILABLE"),
            )
        }
        AppError::Internal(cause) => {
            tracing::error!(%cause, "internal error");
            Status::internal("internal error")
        }
    }
}

/// Collects every bad field of a request.
#[derive(Debug, Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn bad(&mut self, field: &str, description: &str) {
        self.0.push((field.to_owned(), description.to_owned()));
    }

    fn text(&mut self, field: &str, value: &str, min: usize, max: usize) {
        let chars = value.chars().count();
        if chars < min || chars > max {
            self.bad(field, &format!("must be {min} to {max} characters"));
        }
    }

    fn email(&mut self, field: &str, value: &str) {
        let email = crate::application::normalise_email(value);
        let valid = email.len() <= 254
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            })
            && !email.chars().any(char::is_whitespace);
        if !valid {
            self.bad(field, "must be an email address");
        }
    }

    fn password(&mut self, field: &str, value: &str) {
        let chars = value.chars().count();
        if !(10..=128).contains(&chars) {
            self.bad(field, "must be 10 to 128 characters");
        } else if COMMON_PASSWORDS.contains(&value.to_lowercase().as_str()) {
            self.bad(field, "is too common");
        }
    }

    fn zone(&mut self, field: &str, value: &str) {
        if value.parse::<chrono_tz::Tz>().is_err() {
            self.bad(field, "must be an IANA time zone such as Europe/Moscow");
        }
    }

    /// An optional id field in its canonical (lowercase, hyphenated) form, as ids are stored.
    fn canonical_id(&mut self, field: &str, value: &str) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        match uuid::Uuid::parse_str(value) {
            Ok(id) => Some(id.hyphenated().to_string()),
            Err(_) => {
                self.bad(field, "must be a UUID");
                None
            }
        }
    }

    /// The page size and where the page starts (the sort key and id `parse` reads from the
    /// page token).
    fn page_with<K>(
        &mut self,
        page: Option<&PageRequest>,
        parse: impl Fn(&str) -> Option<K>,
    ) -> (i64, Option<K>) {
        let size = paging::page_size(page.map_or(0, |p| p.page_size));
        let token = page.map_or("", |p| p.page_token.as_str());
        if token.is_empty() {
            return (size, None);
        }
        let after = parse(token);
        if after.is_none() {
            self.bad("page.page_token", "not a token this list gave");
        }
        (size, after)
    }

    /// [`Fields::page_with`] for lists ordered by a time and an id.
    fn page(&mut self, page: Option<&PageRequest>) -> (i64, Option<(i64, String)>) {
        self.page_with(page, paging::parse_int_page_token)
    }

    fn finish(self) -> Result<(), AppError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(AppError::Invalid(self.0))
        }
    }
}

/// The commonest passwords of at least 10 characters (from public breach lists): refused.
const COMMON_PASSWORDS: [&str; 12] = [
    "1234567890",
    "qwertyuiop",
    "0123456789",
    "1q2w3e4r5t",
    "password123",
    "1234567891",
    "qwerty1234",
    "iloveyou123",
    "password1234",
    "0987654321",
    "1111111111",
    "йцукенгшщз",
];

/// Parses a user id field (a UUID); empty is `None`.
fn optional_id(f: &mut Fields, field: &str, value: &str) {
    f.canonical_id(field, value);
}

fn required_id(f: &mut Fields, field: &str, value: &str) {
    if value.is_empty() {
        f.bad(field, "required");
    } else {
        optional_id(f, field, value);
    }
}

/// A role grant's scope matches its role (user.proto RoleGrant).
fn grant_scope(f: &mut Fields, field: &str, grant: &pb::RoleGrant) {
    match grant.role() {
        pb::Role::Student | pb::Role::Parent => {
            required_id(f, &format!("{field}.tutor_id"), &grant.tutor_id);
            if !grant.school_id.is_empty() {
                f.bad(
                    &format!("{field}.school_id"),
                    "not allowed for STUDENT and PARENT",
                );
            }
        }
        pb::Role::Tutor | pb::Role::Admin => {
            if !grant.tutor_id.is_empty() {
                f.bad(
                    &format!("{field}.tutor_id"),
                    "not allowed for TUTOR and ADMIN",
                );
            }
            optional_id(f, &format!("{field}.school_id"), &grant.school_id);
        }
        pb::Role::Unspecified => f.bad(&format!("{field}.role"), "required"),
    }
}

fn telegram_assertion(f: &mut Fields, field: &str, assertion: &pb::TelegramBotAssertion) {
    if assertion.telegram_user_id <= 0 {
        f.bad(&format!("{field}.telegram_user_id"), "must be positive");
    }
    if assertion.bot_credential.len() > 1024 {
        f.bad(&format!("{field}.bot_credential"), "at most 1024 bytes");
    }
}

fn invite_response(
    invite: pb::Invite,
    code: Option<String>,
    app: &UserApplication,
) -> (pb::Invite, String, String, u64) {
    let revision = invite.revision;
    let (code, link) = match code {
        Some(code) => {
            let link = app.deep_link(&code);
            (code, link)
        }
        None => (String::new(), String::new()),
    };
    (invite, code, link, revision)
}

fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    caller(request).cloned()
}

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn sign_up_tutor(
        &self,
        request: Request<pb::SignUpTutorRequest>,
    ) -> Result<Response<pb::SignUpTutorResponse>, Status> {
        let account_key = match &request.get_ref().credentials {
            Some(pb::sign_up_tutor_request::Credentials::EmailPassword(c)) => Some(format!(
                "email:{}",
                crate::application::normalise_email(&c.email)
            )),
            Some(pb::sign_up_tutor_request::Credentials::Telegram(t)) => {
                Some(format!("tg:{}", t.telegram_user_id))
            }
            _ => None,
        };
        let current = request.extensions().get::<Caller>().cloned();
        if !matches!(
            request.get_ref().credentials,
            Some(pb::sign_up_tutor_request::Credentials::CurrentUser(_))
        ) {
            self.limit(&request, account_key)?;
        }
        let r = request.into_inner();
        let mut f = Fields::default();
        let language = match r.language() {
            Language::Ru => Language::Ru,
            _ => Language::En,
        };
        let credentials = match r.credentials {
            Some(pb::sign_up_tutor_request::Credentials::EmailPassword(c)) => {
                f.email("credentials.email_password.email", &c.email);
                f.password("credentials.email_password.password", &c.password);
                SignUpCredentials::EmailPassword {
                    email: c.email,
                    password: c.password,
                }
            }
            Some(pb::sign_up_tutor_request::Credentials::Telegram(t)) => {
                telegram_assertion(&mut f, "credentials.telegram", &t);
                SignUpCredentials::Telegram {
                    bot_credential: t.bot_credential,
                    telegram_user_id: t.telegram_user_id,
                    username: t.profile.map(|p| p.username).unwrap_or_default(),
                }
            }
            Some(pb::sign_up_tutor_request::Credentials::CurrentUser(_)) => {
                let Some(caller) = current else {
                    return Err(status(AppError::Unauthenticated("no access token")));
                };
                SignUpCredentials::CurrentUser(caller)
            }
            None => {
                f.bad("credentials", "required");
                SignUpCredentials::EmailPassword {
                    email: String::new(),
                    password: String::new(),
                }
            }
        };
        let new_account = !matches!(credentials, SignUpCredentials::CurrentUser(_));
        if new_account {
            f.text("display_name", &r.display_name, 1, 100);
            f.zone("time_zone", &r.time_zone);
        }
        f.text("client_name", &r.client_name, 0, 100);
        optional_id(&mut f, "request_id", &r.request_id);
        f.finish().map_err(status)?;
        let (user, revision, tokens) = self
            .app
            .sign_up_tutor(
                &r.request_id,
                credentials,
                r.display_name,
                r.time_zone,
                language,
                r.client_name,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SignUpTutorResponse {
            user: Some(user),
            tokens: tokens.map(issued),
            revision,
        }))
    }

    async fn login_with_password(
        &self,
        request: Request<pb::LoginWithPasswordRequest>,
    ) -> Result<Response<pb::LoginWithPasswordResponse>, Status> {
        let key = format!(
            "email:{}",
            crate::application::normalise_email(&request.get_ref().email)
        );
        self.limit(&request, Some(key.clone()))?;
        let r = request.into_inner();
        let mut f = Fields::default();
        if r.email.is_empty() || r.email.len() > 254 {
            f.bad("email", "1 to 254 characters");
        }
        if r.password.is_empty() || r.password.len() > 1024 {
            f.bad("password", "1 to 1024 bytes");
        }
        f.text("client_name", &r.client_name, 0, 100);
        f.finish().map_err(status)?;
        let (user, tokens) = self
            .app
            .login_with_password(&r.email, r.password, r.client_name)
            .await
            .map_err(status)?;
        self.limiters.account.refund(&key);
        Ok(Response::new(pb::LoginWithPasswordResponse {
            tokens: Some(issued(tokens)),
            user: Some(user),
        }))
    }

    async fn login_with_telegram(
        &self,
        request: Request<pb::LoginWithTelegramRequest>,
    ) -> Result<Response<pb::LoginWithTelegramResponse>, Status> {
        let key = request
            .get_ref()
            .telegram
            .as_ref()
            .map(|t| format!("tg:{}", t.telegram_user_id));
        self.limit(&request, key.clone())?;
        let r = request.into_inner();
        let mut f = Fields::default();
        let Some(telegram) = r.telegram else {
            return Err(status(AppError::invalid("telegram", "required")));
        };
        telegram_assertion(&mut f, "telegram", &telegram);
        f.text("client_name", &r.client_name, 0, 100);
        f.finish().map_err(status)?;
        let (user, tokens) = self
            .app
            .login_with_telegram(
                &telegram.bot_credential,
                telegram.telegram_user_id,
                r.client_name,
            )
            .await
            .map_err(status)?;
        if let Some(key) = key {
            self.limiters.account.refund(&key);
        }
        Ok(Response::new(pb::LoginWithTelegramResponse {
            tokens: Some(issued(tokens)),
            user: Some(user),
        }))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        let key = request
            .get_ref()
            .refresh_token
            .split_once('.')
            .map(|(session, _)| format!("session:{session}"));
        self.limit(&request, key)?;
        let r = request.into_inner();
        if r.refresh_token.is_empty() {
            return Err(status(AppError::Invalid(vec![(
                "refresh_token".to_owned(),
                "required".to_owned(),
            )])));
        }
        let tokens = self.app.refresh(&r.refresh_token).await.map_err(status)?;
        Ok(Response::new(pb::RefreshTokenResponse {
            tokens: Some(issued(tokens)),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.limit(&request, None)?;
        self.app
            .logout(&request.into_inner().refresh_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn logout_everywhere(
        &self,
        request: Request<pb::LogoutEverywhereRequest>,
    ) -> Result<Response<pb::LogoutEverywhereResponse>, Status> {
        let user_id = caller(&request)?.user_id.clone();
        let revision = self.app.logout_everywhere(&user_id).await.map_err(status)?;
        Ok(Response::new(pb::LogoutEverywhereResponse { revision }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        let (page_size, after) = f.page(r.page.as_ref());
        f.finish().map_err(status)?;
        let (sessions, next_page_token) = self
            .app
            .list_sessions(&caller, page_size, after)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions,
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "session_id", &r.session_id);
        f.finish().map_err(status)?;
        let revision = self
            .app
            .revoke_session(&caller, &r.session_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeSessionResponse { revision }))
    }

    async fn get_public_keys(
        &self,
        request: Request<pb::GetPublicKeysRequest>,
    ) -> Result<Response<pb::GetPublicKeysResponse>, Status> {
        let _ = request;
        let keys = self.app.keys().public_keys(Utc::now()).await;
        Ok(Response::new(pb::GetPublicKeysResponse {
            keys,
            issuer: self.issuer.clone(),
            cache_for: Some(prost_types::Duration {
                seconds: PUBLIC_KEYS_CACHE_FOR.as_secs() as i64,
                nanos: 0,
            }),
        }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        optional_id(&mut f, "request_id", &r.request_id);
        if r.algorithm() == pb::SigningAlgorithm::Es256 {
            f.bad("algorithm", "only ED25519 is supported");
        }
        let lifetime = self.app.access_token_lifetime();
        let duration = |d: &Option<prost_types::Duration>| {
            d.as_ref().map(|d| {
                chrono::TimeDelta::new(d.seconds, d.nanos.max(0) as u32).unwrap_or_default()
            })
        };
        let activation = if r.revoke_previous {
            chrono::TimeDelta::zero()
        } else {
            duration(&r.activation_delay).unwrap_or_else(|| {
                chrono::TimeDelta::from_std(PUBLIC_KEYS_CACHE_FOR).unwrap_or_default()
            })
        };
        let grace = duration(&r.previous_key_grace).unwrap_or(lifetime);
        if activation < chrono::TimeDelta::zero() {
            f.bad("activation_delay", "must not be negative");
        }
        if !r.revoke_previous && grace < lifetime {
            f.bad(
                "previous_key_grace",
                "must be at least the access token lifetime",
            );
        }
        f.finish().map_err(status)?;
        if !caller.is_platform_admin() {
            return Err(status(AppError::denied(
                "only a platform admin rotates signing keys",
            )));
        }
        let rotated = self
            .app
            .rotate_signing_key(&caller, activation, grace, r.revoke_previous)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RotateSigningKeyResponse {
            new_key: Some(rotated.new_key),
            previous_key: rotated.previous_key,
            revision: rotated.revision,
        }))
    }

    async fn create_invite(
        &self,
        request: Request<pb::CreateInviteRequest>,
    ) -> Result<Response<pb::CreateInviteResponse>, Status> {
        let caller = caller_of(&request)?;
        if !caller.is_tutor() && !caller.has_role(repit_platform::auth::Role::Admin) {
            return Err(status(AppError::denied(
                "students and parents cannot create invites",
            )));
        }
        let r = request.into_inner();
        let now = Utc::now();
        let mut f = Fields::default();
        let role = r.role();
        optional_id(&mut f, "request_id", &r.request_id);
        optional_id(&mut f, "tutor_id", &r.tutor_id);
        optional_id(&mut f, "school_id", &r.school_id);
        optional_id(&mut f, "target_user_id", &r.target_user_id);
        optional_id(&mut f, "student_id", &r.student_id);
        match role {
            pb::Role::Unspecified => f.bad("role", "required"),
            pb::Role::Student | pb::Role::Parent => {
                if !r.school_id.is_empty() {
                    f.bad("school_id", "not allowed for STUDENT and PARENT invites");
                }
            }
            pb::Role::Tutor | pb::Role::Admin => {
                if !r.tutor_id.is_empty() {
                    f.bad("tutor_id", "not allowed for TUTOR and ADMIN invites");
                }
                if role == pb::Role::Tutor && r.school_id.is_empty() {
                    f.bad("school_id", "required for TUTOR invites");
                }
            }
        }
        if !r.student_id.is_empty() && role != pb::Role::Parent {
            f.bad("student_id", "only on PARENT invites");
        }
        let expires_at = r
            .expires_at
            .as_ref()
            .map_or(now + chrono::TimeDelta::days(7), |t| {
                repit_platform::time::from_timestamp(Some(t))
            });
        if expires_at <= now {
            f.bad("expires_at", "must be in the future");
        } else if expires_at > now + chrono::TimeDelta::days(30) {
            f.bad("expires_at", "at most 30 days ahead");
        }
        let max_uses = if r.max_uses == 0 { 1 } else { r.max_uses };
        if !(1..=100).contains(&max_uses) {
            f.bad("max_uses", "must be 1 to 100");
        } else if max_uses > 1 && !r.target_user_id.is_empty() {
            f.bad("max_uses", "must be 1 for a targeted invite");
        }
        f.text("note", &r.note, 0, 200);
        f.finish().map_err(status)?;
        let (invite, code) = self
            .app
            .create_invite(
                &caller,
                NewInvite {
                    request_id: r.request_id,
                    role,
                    tutor_id: r.tutor_id,
                    school_id: r.school_id,
                    target_user_id: r.target_user_id,
                    student_id: r.student_id,
                    expires_at,
                    max_uses,
                    note: r.note,
                },
            )
            .await
            .map_err(status)?;
        let (invite, code, deep_link, revision) = invite_response(invite, code, &self.app);
        Ok(Response::new(pb::CreateInviteResponse {
            invite: Some(invite),
            code,
            deep_link,
            revision,
        }))
    }

    async fn create_telegram_binding_invite(
        &self,
        request: Request<pb::CreateTelegramBindingInviteRequest>,
    ) -> Result<Response<pb::CreateTelegramBindingInviteResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        optional_id(&mut f, "request_id", &r.request_id);
        f.finish().map_err(status)?;
        let (invite, code) = self
            .app
            .create_binding_invite(&caller, &r.request_id)
            .await
            .map_err(status)?;
        let (invite, code, deep_link, revision) = invite_response(invite, code, &self.app);
        Ok(Response::new(pb::CreateTelegramBindingInviteResponse {
            invite: Some(invite),
            code,
            deep_link,
            revision,
        }))
    }

    async fn list_invites(
        &self,
        request: Request<pb::ListInvitesRequest>,
    ) -> Result<Response<pb::ListInvitesResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        let (page_size, after) = f.page(r.page.as_ref());
        let listing = InviteListing {
            tutor_id: f.canonical_id("tutor_id", &r.tutor_id),
            school_id: f.canonical_id("school_id", &r.school_id),
            include_inactive: r.include_inactive,
            page_size,
            after,
        };
        f.finish().map_err(status)?;
        let (invites, next_page_token) = self
            .app
            .list_invites(&caller, &listing)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListInvitesResponse {
            invites,
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn revoke_invite(
        &self,
        request: Request<pb::RevokeInviteRequest>,
    ) -> Result<Response<pb::RevokeInviteResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "invite_id", &r.invite_id);
        f.finish().map_err(status)?;
        let invite = self
            .app
            .revoke_invite(&caller, &r.invite_id, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeInviteResponse {
            revision: invite.revision,
            invite: Some(invite),
        }))
    }

    async fn preview_invite(
        &self,
        request: Request<pb::PreviewInviteRequest>,
    ) -> Result<Response<pb::PreviewInviteResponse>, Status> {
        self.limit(&request, None)?;
        let r = request.into_inner();
        if r.code.is_empty() || r.code.len() > 64 {
            return Err(status(AppError::invalid("code", "1 to 64 characters")));
        }
        let preview = self.app.preview_invite(&r.code).await.map_err(status)?;
        Ok(Response::new(preview))
    }

    async fn redeem_invite(
        &self,
        request: Request<pb::RedeemInviteRequest>,
    ) -> Result<Response<pb::RedeemInviteResponse>, Status> {
        let key = match &request.get_ref().redeemer {
            Some(pb::redeem_invite_request::Redeemer::Telegram(t)) => {
                Some(format!("tg:{}", t.telegram_user_id))
            }
            Some(pb::redeem_invite_request::Redeemer::NewAccount(a)) => Some(format!(
                "email:{}",
                crate::application::normalise_email(&a.email)
            )),
            _ => None,
        };
        let current = request.extensions().get::<Caller>().cloned();
        let is_current_user = matches!(
            request.get_ref().redeemer,
            Some(pb::redeem_invite_request::Redeemer::CurrentUser(_))
        );
        if !is_current_user {
            self.limit(&request, key)?;
        }
        let token_error = caller(&request).err();
        let r = request.into_inner();
        let mut f = Fields::default();
        if r.code.is_empty() || r.code.len() > 64 {
            f.bad("code", "1 to 64 characters");
        }
        optional_id(&mut f, "request_id", &r.request_id);
        f.text("display_name", &r.display_name, 0, 100);
        if !r.time_zone.is_empty() {
            f.zone("time_zone", &r.time_zone);
        }
        f.text("client_name", &r.client_name, 0, 100);
        let language = r.language();
        let redeemer = match r.redeemer {
            Some(pb::redeem_invite_request::Redeemer::Telegram(t)) => {
                telegram_assertion(&mut f, "telegram", &t);
                f.finish().map_err(status)?;
                self.app.check_bot(&t.bot_credential).map_err(status)?;
                Redeemer::Telegram {
                    telegram_user_id: t.telegram_user_id,
                    profile: t.profile.unwrap_or_default(),
                }
            }
            Some(pb::redeem_invite_request::Redeemer::NewAccount(a)) => {
                f.email("new_account.email", &a.email);
                f.password("new_account.password", &a.password);
                f.finish().map_err(status)?;
                Redeemer::NewAccount {
                    email: a.email,
                    password: a.password,
                }
            }
            Some(pb::redeem_invite_request::Redeemer::CurrentUser(_)) => {
                f.finish().map_err(status)?;
                match current {
                    Some(caller) => Redeemer::CurrentUser(caller),
                    None => {
                        return Err(token_error.unwrap_or_else(|| {
                            status(AppError::Unauthenticated("no access token"))
                        }));
                    }
                }
            }
            None => {
                f.bad("redeemer", "one of telegram, new_account, current_user");
                return Err(status(AppError::Invalid(f.0)));
            }
        };
        let redeemed = self
            .app
            .redeem_invite(
                &r.code,
                redeemer,
                r.display_name,
                r.time_zone,
                language,
                r.client_name,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RedeemInviteResponse {
            revision: redeemed.revision,
            user: Some(redeemed.user),
            granted_roles: redeemed.granted_roles,
            account_created: redeemed.account_created,
            telegram_bound: redeemed.telegram_bound,
            linked_student_id: redeemed.linked_student_id,
            tokens: redeemed.tokens.map(issued),
        }))
    }

    async fn unbind_telegram(
        &self,
        request: Request<pb::UnbindTelegramRequest>,
    ) -> Result<Response<pb::UnbindTelegramResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        optional_id(&mut f, "user_id", &r.user_id);
        f.finish().map_err(status)?;
        let user_id = if r.user_id.is_empty() {
            caller.user_id.clone()
        } else {
            r.user_id
        };
        let user = self
            .app
            .unbind_telegram(&caller, &user_id, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UnbindTelegramResponse {
            revision: user.revision,
            user: Some(user),
        }))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        let role = r.role();
        let language = r.language();
        if !matches!(role, pb::Role::Student | pb::Role::Parent) {
            f.bad("role", "must be STUDENT or PARENT");
        }
        if role == pb::Role::Student && !r.student_id.is_empty() {
            f.bad("student_id", "only for PARENT");
        }
        optional_id(&mut f, "request_id", &r.request_id);
        optional_id(&mut f, "tutor_id", &r.tutor_id);
        optional_id(&mut f, "student_id", &r.student_id);
        f.text("display_name", &r.display_name, 1, 100);
        if !r.time_zone.is_empty() {
            f.zone("time_zone", &r.time_zone);
        }
        f.finish().map_err(status)?;
        let user = self
            .app
            .create_user(
                &caller,
                &r.request_id,
                role,
                &r.tutor_id,
                r.display_name,
                r.time_zone,
                language,
                &r.student_id,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateUserResponse {
            revision: user.revision,
            user: Some(user),
        }))
    }

    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
        let user_id = caller(&request)?.user_id.clone();
        let user = self.app.user(&user_id).await.map_err(status)?;
        Ok(Response::new(pb::GetCurrentUserResponse {
            user: Some(user),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "user_id", &r.user_id);
        f.finish().map_err(status)?;
        let user = self
            .app
            .get_user(&caller, &r.user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetUserResponse { user: Some(user) }))
    }

    async fn batch_get_users(
        &self,
        request: Request<pb::BatchGetUsersRequest>,
    ) -> Result<Response<pb::BatchGetUsersResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        if r.user_ids.is_empty() || r.user_ids.len() > 100 {
            f.bad("user_ids", "1 to 100 ids");
        }
        for (i, id) in r.user_ids.iter().enumerate() {
            required_id(&mut f, &format!("user_ids[{i}]"), id);
        }
        f.finish().map_err(status)?;
        match self.app.batch_get_users(&caller, &r.user_ids).await {
            Ok(users) => Ok(Response::new(pb::BatchGetUsersResponse { users })),
            Err(Ok(missing)) => Err(repit_platform::status::with_reason(
                Code::NotFound,
                "user not found",
                "NOT_FOUND",
                [("user_id", missing.as_str())],
            )),
            Err(Err(error)) => Err(status(error)),
        }
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        // Ordered by display name (a text key) then user id.
        let (page_size, after) = f.page_with(r.page.as_ref(), paging::parse_page_token);
        let role = match pb::Role::try_from(r.role) {
            Ok(pb::Role::Unspecified) => None,
            Ok(role) => Some(role),
            Err(_) => {
                f.bad("role", "not a Role");
                None
            }
        };
        f.text("query", &r.query, 0, 100);
        let listing = UserListing {
            tutor_id: f.canonical_id("tutor_id", &r.tutor_id),
            school_id: f.canonical_id("school_id", &r.school_id),
            filter: UserFilter {
                role,
                query: r.query.trim().to_lowercase(),
                include_deactivated: r.include_deactivated,
                page_size,
                after,
            },
        };
        f.finish().map_err(status)?;
        let (users, next_page_token) = self
            .app
            .list_users(&caller, &listing)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListUsersResponse {
            users,
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        let user_id = f
            .canonical_id("user_id", &r.user_id)
            .unwrap_or_else(|| caller.user_id.clone());
        let language = r.language();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            f.bad(
                "update_mask",
                "required; paths: display_name, time_zone, language",
            );
        }
        for path in &paths {
            if !["display_name", "time_zone", "language"].contains(&path.as_str()) {
                f.bad("update_mask", &format!("unknown path {path:?}"));
            }
        }
        let has = |p: &str| paths.iter().any(|x| x == p);
        if has("display_name") {
            f.text("display_name", &r.display_name, 1, 100);
        }
        if has("time_zone") {
            f.zone("time_zone", &r.time_zone);
        }
        if has("language") && language == Language::Unspecified {
            f.bad("language", "required when named in update_mask");
        }
        f.finish().map_err(status)?;
        let user = self
            .app
            .update_profile(
                &caller,
                &user_id,
                has("display_name").then_some(r.display_name),
                has("time_zone").then_some(r.time_zone),
                has("language").then_some(language),
                r.expected_revision,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateProfileResponse {
            revision: user.revision,
            user: Some(user),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = caller_of(&request)?;
        self.limit(&request, Some(format!("user:{}", caller.user_id)))?;
        let r = request.into_inner();
        let mut f = Fields::default();
        f.password("new_password", &r.new_password);
        if r.current_password.len() > 1024 {
            f.bad("current_password", "at most 1024 bytes");
        }
        f.finish().map_err(status)?;
        let revision = self
            .app
            .change_password(&caller, r.current_password, r.new_password)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ChangePasswordResponse { revision }))
    }

    async fn change_email(
        &self,
        request: Request<pb::ChangeEmailRequest>,
    ) -> Result<Response<pb::ChangeEmailResponse>, Status> {
        let caller = caller_of(&request)?;
        self.limit(&request, Some(format!("user:{}", caller.user_id)))?;
        let r = request.into_inner();
        let mut f = Fields::default();
        f.email("new_email", &r.new_email);
        if r.current_password.len() > 1024 {
            f.bad("current_password", "at most 1024 bytes");
        }
        f.finish().map_err(status)?;
        let user = self
            .app
            .change_email(&caller, &r.new_email, r.current_password)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ChangeEmailResponse {
            revision: user.revision,
            user: Some(user),
        }))
    }

    async fn deactivate_user(
        &self,
        request: Request<pb::DeactivateUserRequest>,
    ) -> Result<Response<pb::DeactivateUserResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        optional_id(&mut f, "user_id", &r.user_id);
        f.text("reason", &r.reason, 0, 500);
        f.finish().map_err(status)?;
        let user_id = if r.user_id.is_empty() {
            caller.user_id.clone()
        } else {
            r.user_id
        };
        let user = self
            .app
            .set_active(&caller, &user_id, false, r.reason, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeactivateUserResponse {
            revision: user.revision,
            user: Some(user),
        }))
    }

    async fn reactivate_user(
        &self,
        request: Request<pb::ReactivateUserRequest>,
    ) -> Result<Response<pb::ReactivateUserResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "user_id", &r.user_id);
        f.finish().map_err(status)?;
        let user = self
            .app
            .set_active(
                &caller,
                &r.user_id,
                true,
                String::new(),
                r.expected_revision,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReactivateUserResponse {
            revision: user.revision,
            user: Some(user),
        }))
    }

    async fn grant_role(
        &self,
        request: Request<pb::GrantRoleRequest>,
    ) -> Result<Response<pb::GrantRoleResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "user_id", &r.user_id);
        let grant = r.grant.unwrap_or_default();
        grant_scope(&mut f, "grant", &grant);
        f.finish().map_err(status)?;
        let user = self
            .app
            .set_role(&caller, &r.user_id, grant, true, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GrantRoleResponse {
            revision: user.revision,
            user: Some(user),
        }))
    }

    async fn revoke_role(
        &self,
        request: Request<pb::RevokeRoleRequest>,
    ) -> Result<Response<pb::RevokeRoleResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "user_id", &r.user_id);
        let grant = r.grant.unwrap_or_default();
        grant_scope(&mut f, "grant", &grant);
        f.finish().map_err(status)?;
        let user = self
            .app
            .set_role(&caller, &r.user_id, grant, false, r.expected_revision)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeRoleResponse {
            revision: user.revision,
            user: Some(user),
        }))
    }

    async fn link_parent(
        &self,
        request: Request<pb::LinkParentRequest>,
    ) -> Result<Response<pb::LinkParentResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "student_id", &r.student_id);
        required_id(&mut f, "parent_id", &r.parent_id);
        f.finish().map_err(status)?;
        let student = self
            .app
            .set_parent_link(
                &caller,
                &r.student_id,
                &r.parent_id,
                true,
                r.expected_revision,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LinkParentResponse {
            revision: student.revision,
            student: Some(student),
        }))
    }

    async fn unlink_parent(
        &self,
        request: Request<pb::UnlinkParentRequest>,
    ) -> Result<Response<pb::UnlinkParentResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "student_id", &r.student_id);
        required_id(&mut f, "parent_id", &r.parent_id);
        f.finish().map_err(status)?;
        let student = self
            .app
            .set_parent_link(
                &caller,
                &r.student_id,
                &r.parent_id,
                false,
                r.expected_revision,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UnlinkParentResponse {
            revision: student.revision,
            student: Some(student),
        }))
    }

    async fn create_school(
        &self,
        request: Request<pb::CreateSchoolRequest>,
    ) -> Result<Response<pb::CreateSchoolResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        optional_id(&mut f, "request_id", &r.request_id);
        f.text("name", r.name.trim(), 1, 200);
        f.finish().map_err(status)?;
        let school = self
            .app
            .create_school(&caller, &r.request_id, r.name.trim().to_owned())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateSchoolResponse {
            revision: school.revision,
            school: Some(school),
        }))
    }

    async fn get_school(
        &self,
        request: Request<pb::GetSchoolRequest>,
    ) -> Result<Response<pb::GetSchoolResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "school_id", &r.school_id);
        f.finish().map_err(status)?;
        let school = self
            .app
            .get_school(&caller, &r.school_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetSchoolResponse {
            school: Some(school),
        }))
    }

    async fn update_school(
        &self,
        request: Request<pb::UpdateSchoolRequest>,
    ) -> Result<Response<pb::UpdateSchoolResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let mut f = Fields::default();
        required_id(&mut f, "school_id", &r.school_id);
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            f.bad("update_mask", "required; paths: name");
        }
        for path in &paths {
            if path != "name" {
                f.bad("update_mask", &format!("unknown path {path:?}"));
            }
        }
        f.text("name", r.name.trim(), 1, 200);
        f.finish().map_err(status)?;
        let school = self
            .app
            .rename_school(
                &caller,
                &r.school_id,
                r.name.trim().to_owned(),
                r.expected_revision,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateSchoolResponse {
            revision: school.revision,
            school: Some(school),
        }))
    }
}
