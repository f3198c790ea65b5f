//! The gRPC adapter of the user service: proto in, application call, proto out.
//!
//! Built: SignUpTutor (email and password), LoginWithPassword, RefreshToken, Logout,
//! LogoutEverywhere, GetPublicKeys, GetCurrentUser, UpdateProfile (one's own). Every other RPC answers UNIMPLEMENTED naming
//! itself until it is built (invites, Telegram, roles, parents, schools, sessions list, key
//! rotation).

use std::time::Duration;

use chrono::{DateTime, Utc};
use pb::user_service_server::UserService;
use repit_platform::auth::caller;
use repit_platform::status::{ERROR_DOMAIN, not_implemented};
use repit_proto::repit::common::v1::Language;
use repit_proto::repit::user::v1 as pb;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::application::{AppError, Tokens, UserApplication};

/// How long verifiers may cache GetPublicKeys (and so how long a new key is published before it
/// signs).
pub const PUBLIC_KEYS_CACHE_FOR: Duration = Duration::from_secs(300);

/// The methods that need no access token (the contract's "public" RPCs).
pub const PUBLIC_METHODS: [&str; 7] = [
    "/repit.user.v1.UserService/SignUpTutor",
    "/repit.user.v1.UserService/LoginWithPassword",
    "/repit.user.v1.UserService/LoginWithTelegram",
    "/repit.user.v1.UserService/RefreshToken",
    "/repit.user.v1.UserService/Logout",
    "/repit.user.v1.UserService/GetPublicKeys",
    "/repit.user.v1.UserService/PreviewInvite",
];

/// `repit.user.v1.UserService` over the application.
#[derive(Clone, Debug)]
pub struct UserGrpc {
    app: UserApplication,
    issuer: String,
}

impl UserGrpc {
    pub fn new(app: UserApplication, issuer: impl Into<String>) -> Self {
        Self {
            app,
            issuer: issuer.into(),
        }
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

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn sign_up_tutor(
        &self,
        request: Request<pb::SignUpTutorRequest>,
    ) -> Result<Response<pb::SignUpTutorResponse>, Status> {
        let r = request.into_inner();
        let mut f = Fields::default();
        let language = match r.language() {
            Language::Ru => Language::Ru,
            _ => Language::En,
        };
        let Some(pb::sign_up_tutor_request::Credentials::EmailPassword(credentials)) =
            r.credentials
        else {
            return Err(status(AppError::Invalid(vec![(
                "credentials".to_owned(),
                "email_password is the one way to sign up in this build (telegram and current_user come with the bot and invites)".to_owned(),
            )])));
        };
        f.email("credentials.email_password.email", &credentials.email);
        f.password("credentials.email_password.password", &credentials.password);
        f.text("display_name", &r.display_name, 1, 100);
        f.zone("time_zone", &r.time_zone);
        f.text("client_name", &r.client_name, 0, 100);
        if !r.request_id.is_empty() && uuid::Uuid::parse_str(&r.request_id).is_err() {
            f.bad("request_id", "must be a UUID");
        }
        f.finish().map_err(status)?;
        let (user, revision, tokens) = self
            .app
            .sign_up_tutor(
                &r.request_id,
                &credentials.email,
                credentials.password,
                r.display_name,
                r.time_zone,
                language,
                r.client_name,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SignUpTutorResponse {
            user: Some(user),
            tokens: Some(issued(tokens)),
            revision,
        }))
    }

    async fn login_with_password(
        &self,
        request: Request<pb::LoginWithPasswordRequest>,
    ) -> Result<Response<pb::LoginWithPasswordResponse>, Status> {
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
        Ok(Response::new(pb::LoginWithPasswordResponse {
            tokens: Some(issued(tokens)),
            user: Some(user),
        }))
    }

    async fn login_with_telegram(
        &self,
        _request: Request<pb::LoginWithTelegramRequest>,
    ) -> Result<Response<pb::LoginWithTelegramResponse>, Status> {
        Err(not_implemented(
            "repit.user.v1.UserService/LoginWithTelegram",
        ))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
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
        _request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/ListSessions"))
    }

    async fn revoke_session(
        &self,
        _request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/RevokeSession"))
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
        _request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        Err(not_implemented(
            "repit.user.v1.UserService/RotateSigningKey",
        ))
    }

    async fn create_invite(
        &self,
        _request: Request<pb::CreateInviteRequest>,
    ) -> Result<Response<pb::CreateInviteResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/CreateInvite"))
    }

    async fn create_telegram_binding_invite(
        &self,
        _request: Request<pb::CreateTelegramBindingInviteRequest>,
    ) -> Result<Response<pb::CreateTelegramBindingInviteResponse>, Status> {
        Err(not_implemented(
            "repit.user.v1.UserService/CreateTelegramBindingInvite",
        ))
    }

    async fn list_invites(
        &self,
        _request: Request<pb::ListInvitesRequest>,
    ) -> Result<Response<pb::ListInvitesResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/ListInvites"))
    }

    async fn revoke_invite(
        &self,
        _request: Request<pb::RevokeInviteRequest>,
    ) -> Result<Response<pb::RevokeInviteResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/RevokeInvite"))
    }

    async fn preview_invite(
        &self,
        _request: Request<pb::PreviewInviteRequest>,
    ) -> Result<Response<pb::PreviewInviteResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/PreviewInvite"))
    }

    async fn redeem_invite(
        &self,
        _request: Request<pb::RedeemInviteRequest>,
    ) -> Result<Response<pb::RedeemInviteResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/RedeemInvite"))
    }

    async fn unbind_telegram(
        &self,
        _request: Request<pb::UnbindTelegramRequest>,
    ) -> Result<Response<pb::UnbindTelegramResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/UnbindTelegram"))
    }

    async fn create_user(
        &self,
        _request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/CreateUser"))
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
        _request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/GetUser"))
    }

    async fn batch_get_users(
        &self,
        _request: Request<pb::BatchGetUsersRequest>,
    ) -> Result<Response<pb::BatchGetUsersResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/BatchGetUsers"))
    }

    async fn list_users(
        &self,
        _request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/ListUsers"))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let caller_id = caller(&request)?.user_id.clone();
        let r = request.into_inner();
        if !r.user_id.is_empty() && r.user_id != caller_id {
            // Changing a PENDING account of one's tenancy comes with CreateUser.
            return Err(Status::with_error_details(
                Code::Unimplemented,
                "changing another user's profile is not implemented yet",
                info("NOT_IMPLEMENTED"),
            ));
        }
        let mut f = Fields::default();
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
                &caller_id,
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
        _request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/ChangePassword"))
    }

    async fn change_email(
        &self,
        _request: Request<pb::ChangeEmailRequest>,
    ) -> Result<Response<pb::ChangeEmailResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/ChangeEmail"))
    }

    async fn deactivate_user(
        &self,
        _request: Request<pb::DeactivateUserRequest>,
    ) -> Result<Response<pb::DeactivateUserResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/DeactivateUser"))
    }

    async fn reactivate_user(
        &self,
        _request: Request<pb::ReactivateUserRequest>,
    ) -> Result<Response<pb::ReactivateUserResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/ReactivateUser"))
    }

    async fn grant_role(
        &self,
        _request: Request<pb::GrantRoleRequest>,
    ) -> Result<Response<pb::GrantRoleResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/GrantRole"))
    }

    async fn revoke_role(
        &self,
        _request: Request<pb::RevokeRoleRequest>,
    ) -> Result<Response<pb::RevokeRoleResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/RevokeRole"))
    }

    async fn link_parent(
        &self,
        _request: Request<pb::LinkParentRequest>,
    ) -> Result<Response<pb::LinkParentResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/LinkParent"))
    }

    async fn unlink_parent(
        &self,
        _request: Request<pb::UnlinkParentRequest>,
    ) -> Result<Response<pb::UnlinkParentResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/UnlinkParent"))
    }

    async fn create_school(
        &self,
        _request: Request<pb::CreateSchoolRequest>,
    ) -> Result<Response<pb::CreateSchoolResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/CreateSchool"))
    }

    async fn get_school(
        &self,
        _request: Request<pb::GetSchoolRequest>,
    ) -> Result<Response<pb::GetSchoolResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/GetSchool"))
    }

    async fn update_school(
        &self,
        _request: Request<pb::UpdateSchoolRequest>,
    ) -> Result<Response<pb::UpdateSchoolResponse>, Status> {
        Err(not_implemented("repit.user.v1.UserService/UpdateSchool"))
    }
}
