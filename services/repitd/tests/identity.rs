//! The user service's first slice as a client meets it, on the real `repitd`: sign up, call with
//! the access token, rotate the refresh token, reuse detection, logins that reveal nothing,
//! logout and "log out everywhere".

use std::path::Path;

use repit_proto::repit::user::v1 as pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;
use repit_tests::{ChildServer, spawn_server};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use uuid::Uuid;

async fn serve() -> (ChildServer, UserServiceClient<Channel>) {
    let server = spawn_server(
        Path::new(env!("CARGO_BIN_EXE_repitd")),
        &["serve", "--target", "user"],
        &[],
    )
    .await;
    let channel = Channel::from_shared(server.url())
        .expect("valid url")
        .connect()
        .await
        .expect("connect");
    (server, UserServiceClient::new(channel))
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

async fn sign_up(users: &mut UserServiceClient<Channel>, email: &str) -> pb::SignUpTutorResponse {
    users
        .sign_up_tutor(pb::SignUpTutorRequest {
            request_id: Uuid::now_v7().to_string(),
            credentials: Some(pb::sign_up_tutor_request::Credentials::EmailPassword(
                pb::EmailPassword {
                    email: email.into(),
                    password: "correct horse battery".into(),
                },
            )),
            display_name: "Анна Петровна".into(),
            time_zone: "Europe/Moscow".into(),
            client_name: "test".into(),
            ..Default::default()
        })
        .await
        .expect("signed up")
        .into_inner()
}

#[tokio::test]
async fn a_tutor_signs_up_logs_in_and_refresh_tokens_rotate_with_reuse_detection() {
    let (server, mut users) = serve().await;
    let email = format!("anna-{}@example.com", Uuid::now_v7().simple());
    let signed = sign_up(&mut users, &email).await;
    let user = signed.user.expect("user");
    assert_eq!(user.roles[0].role(), pb::Role::Tutor);
    let tokens = signed.tokens.expect("tokens");

    // The access token authenticates a protected call.
    let me = users
        .get_current_user(bearer(pb::GetCurrentUserRequest {}, &tokens.access_token))
        .await
        .expect("current user")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(me.user_id, user.user_id);
    let anonymous = users
        .get_current_user(pb::GetCurrentUserRequest {})
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert_eq!(
        anonymous
            .get_details_error_info()
            .expect("ErrorInfo")
            .reason,
        "TOKEN_INVALID"
    );

    // Rotation: the new refresh token works, the old one is reuse and ends the family.
    let rotated = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .expect("refreshed")
        .into_inner()
        .tokens
        .expect("tokens");
    assert_ne!(rotated.refresh_token, tokens.refresh_token);
    assert_eq!(rotated.session_id, tokens.session_id);
    let reused = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .expect_err("reuse");
    assert_eq!(reused.code(), Code::Unauthenticated);
    let family_gone = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: rotated.refresh_token.clone(),
        })
        .await
        .expect_err("the whole family is revoked");
    assert_eq!(family_gone.code(), Code::Unauthenticated);
    assert_eq!(family_gone.message(), reused.message());

    // Logins reveal nothing: a wrong password and an unknown email answer alike.
    let wrong = users
        .login_with_password(pb::LoginWithPasswordRequest {
            email: email.clone(),
            password: "not the password".into(),
            client_name: String::new(),
        })
        .await
        .expect_err("wrong password");
    let unknown = users
        .login_with_password(pb::LoginWithPasswordRequest {
            email: format!("nobody-{}@example.com", Uuid::now_v7().simple()),
            password: "not the password".into(),
            client_name: String::new(),
        })
        .await
        .expect_err("unknown email");
    assert_eq!(
        (wrong.code(), wrong.message()),
        (unknown.code(), unknown.message())
    );
    assert_eq!(wrong.code(), Code::Unauthenticated);

    // A fresh login, then log out: its refresh token stops working.
    let login = users
        .login_with_password(pb::LoginWithPasswordRequest {
            email: email.to_uppercase(),
            password: "correct horse battery".into(),
            client_name: "phone".into(),
        })
        .await
        .expect("logged in")
        .into_inner()
        .tokens
        .expect("tokens");
    users
        .logout(pb::LogoutRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .expect("logged out");
    let after_logout = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: login.refresh_token,
        })
        .await
        .expect_err("ended session");
    assert_eq!(after_logout.code(), Code::Unauthenticated);

    // Log out everywhere ends sessions started before it.
    let second = users
        .login_with_password(pb::LoginWithPasswordRequest {
            email: email.clone(),
            password: "correct horse battery".into(),
            client_name: "laptop".into(),
        })
        .await
        .expect("logged in")
        .into_inner()
        .tokens
        .expect("tokens");
    users
        .logout_everywhere(bearer(pb::LogoutEverywhereRequest {}, &second.access_token))
        .await
        .expect("logged out everywhere");
    let dead = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: second.refresh_token,
        })
        .await
        .expect_err("session ended by log out everywhere");
    assert_eq!(dead.code(), Code::Unauthenticated);

    // The time zone and language every view uses are the user's to change.
    let fresh = users
        .login_with_password(pb::LoginWithPasswordRequest {
            email: email.clone(),
            password: "correct horse battery".into(),
            client_name: "tablet".into(),
        })
        .await
        .expect("logged in")
        .into_inner()
        .tokens
        .expect("tokens");
    let changed = users
        .update_profile(bearer(
            pb::UpdateProfileRequest {
                time_zone: "Asia/Vladivostok".into(),
                language: repit_proto::repit::common::v1::Language::En as i32,
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["time_zone".into(), "language".into()],
                }),
                ..Default::default()
            },
            &fresh.access_token,
        ))
        .await
        .expect("profile changed")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(changed.time_zone, "Asia/Vladivostok");
    assert_eq!(changed.display_name, "Анна Петровна");
    let bad_zone = users
        .update_profile(bearer(
            pb::UpdateProfileRequest {
                time_zone: "Moscow".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["time_zone".into()],
                }),
                ..Default::default()
            },
            &fresh.access_token,
        ))
        .await
        .expect_err("not an IANA zone");
    assert_eq!(bad_zone.code(), Code::InvalidArgument);

    // The public keys verify what was issued.
    let keys = users
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .expect("keys")
        .into_inner();
    assert_eq!(keys.keys.iter().filter(|k| k.signing).count(), 1);
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn an_email_has_one_account_and_bad_sign_ups_name_their_fields() {
    let (server, mut users) = serve().await;
    let email = format!("boris-{}@example.com", Uuid::now_v7().simple());
    sign_up(&mut users, &email).await;
    let again = users
        .sign_up_tutor(pb::SignUpTutorRequest {
            credentials: Some(pb::sign_up_tutor_request::Credentials::EmailPassword(
                pb::EmailPassword {
                    email: email.to_uppercase(),
                    password: "another long password".into(),
                },
            )),
            display_name: "Boris".into(),
            time_zone: "Europe/Moscow".into(),
            ..Default::default()
        })
        .await
        .expect_err("email taken");
    assert_eq!(again.code(), Code::AlreadyExists);

    let bad = users
        .sign_up_tutor(pb::SignUpTutorRequest {
            credentials: Some(pb::sign_up_tutor_request::Credentials::EmailPassword(
                pb::EmailPassword {
                    email: "not-an-email".into(),
                    password: "1234567890".into(),
                },
            )),
            display_name: String::new(),
            time_zone: "Mars/Base".into(),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields: Vec<String> = bad
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    for field in [
        "credentials.email_password.email",
        "credentials.email_password.password",
        "display_name",
        "time_zone",
    ] {
        assert!(
            fields.iter().any(|f| f == field),
            "{field} missing from {fields:?}"
        );
    }
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}
