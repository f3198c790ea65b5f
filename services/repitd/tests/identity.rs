//! The user service's first slice as a client meets it, on the real `repitd`: sign up, call with
//! the access token, rotate the refresh token, reuse detection, logins that reveal nothing,
//! logout and "log out everywhere"; invites redeemed through the bot, Telegram login, parent
//! links and their limit, expiry and use limits, the bot credential, and rate limits.

use std::path::Path;

use repit_proto::repit::user::v1 as pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;
use repit_tests::identity::bearer;
use repit_tests::{ChildServer, spawn_server};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use uuid::Uuid;

/// The bot credential the test servers are configured with.
const BOT: &str = "test-bot-credential-0123456789";

async fn serve() -> (ChildServer, UserServiceClient<Channel>) {
    serve_with(&[]).await
}

/// A user-service server with the bot credential, generous rate limits (unless `env` sets
/// others) and `env`.
async fn serve_with(env: &[(&str, &str)]) -> (ChildServer, UserServiceClient<Channel>) {
    let mut all = vec![
        ("REPIT_AUTH__BOT_CREDENTIAL", BOT),
        ("REPIT_AUTH__RATE_LIMIT_ADDRESS_BURST", "100000"),
        ("REPIT_AUTH__RATE_LIMIT_ACCOUNT_BURST", "1000"),
    ];
    for &(key, value) in env {
        all.retain(|&(k, _)| k != key);
        all.push((key, value));
    }
    let server = spawn_server(
        Path::new(env!("CARGO_BIN_EXE_repitd")),
        &["serve", "--target", "user"],
        &all,
    )
    .await;
    let channel = Channel::from_shared(server.url())
        .expect("valid url")
        .connect()
        .await
        .expect("connect");
    (server, UserServiceClient::new(channel))
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

fn telegram(id: i64, first_name: &str) -> pb::TelegramBotAssertion {
    pb::TelegramBotAssertion {
        bot_credential: BOT.into(),
        telegram_user_id: id,
        profile: Some(pb::TelegramProfile {
            username: format!("user{id}"),
            first_name: first_name.into(),
            last_name: String::new(),
            language_code: "ru".into(),
        }),
    }
}

/// A Telegram user id no other test run uses.
fn telegram_id() -> i64 {
    (Uuid::now_v7().as_u128() % 1_000_000_000_000) as i64 + 1
}

async fn invite(
    users: &mut UserServiceClient<Channel>,
    token: &str,
    request: pb::CreateInviteRequest,
) -> pb::CreateInviteResponse {
    users
        .create_invite(bearer(request, token))
        .await
        .expect("invite created")
        .into_inner()
}

async fn redeem(
    users: &mut UserServiceClient<Channel>,
    code: &str,
    assertion: pb::TelegramBotAssertion,
) -> Result<pb::RedeemInviteResponse, tonic::Status> {
    users
        .redeem_invite(pb::RedeemInviteRequest {
            request_id: Uuid::now_v7().to_string(),
            code: code.into(),
            redeemer: Some(pb::redeem_invite_request::Redeemer::Telegram(assertion)),
            client_name: "telegram bot".into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The violation type of a FAILED_PRECONDITION.
fn violation(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status
        .get_details_precondition_failure()
        .expect("PreconditionFailure")
        .violations[0]
        .r#type
        .clone()
}

/// The claims of an access token (its payload, not verified: the server checks signatures).
fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWS");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("json claims")
}

#[tokio::test]
async fn a_student_joins_by_invite_through_the_bot_and_logs_in_with_telegram() {
    let (server, mut users) = serve().await;
    let tutor = sign_up(
        &mut users,
        &format!("tutor-{}@example.com", Uuid::now_v7().simple()),
    )
    .await;
    let tutor_id = tutor.user.expect("user").user_id;
    let token = tutor.tokens.expect("tokens").access_token;

    let created = invite(
        &mut users,
        &token,
        pb::CreateInviteRequest {
            request_id: Uuid::now_v7().to_string(),
            role: pb::Role::Student as i32,
            max_uses: 2,
            note: "Masha".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(created.code.len(), 22);
    assert_eq!(
        created.deep_link,
        format!("https://t.me/RepitBot?start={}", created.code)
    );
    let created_invite = created.invite.expect("invite");
    assert_eq!(created_invite.tutor_id, tutor_id);
    assert_eq!(created_invite.status(), pb::InviteStatus::Active);

    // The bot previews, then redeems for a new Telegram user.
    let preview = users
        .preview_invite(pb::PreviewInviteRequest {
            code: created.code.clone(),
        })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.role(), pb::Role::Student);
    assert_eq!(preview.tutor_display_name, "Анна Петровна");
    assert_eq!(preview.note, "Masha");

    let masha = telegram_id();
    let joined = redeem(&mut users, &created.code, telegram(masha, "Маша"))
        .await
        .expect("redeemed");
    assert!(joined.account_created && joined.telegram_bound);
    let student = joined.user.expect("user");
    assert_eq!(student.display_name, "Маша");
    assert_eq!(student.telegram_user_id, masha);
    assert_eq!(student.time_zone, "Europe/Moscow", "the tutor's zone");
    assert_eq!(joined.granted_roles.len(), 1);
    assert_eq!(joined.granted_roles[0].role(), pb::Role::Student);
    assert_eq!(joined.granted_roles[0].tutor_id, tutor_id);
    assert!(joined.tokens.is_some());

    // A retried /start uses nothing: the second use is still there for someone else.
    let again = redeem(&mut users, &created.code, telegram(masha, "Маша"))
        .await
        .expect("redeemed again");
    assert!(!again.account_created && again.granted_roles.is_empty());
    assert_eq!(again.user.expect("user").user_id, student.user_id);
    redeem(&mut users, &created.code, telegram(telegram_id(), "Петя"))
        .await
        .expect("the second use");
    let used_up = redeem(&mut users, &created.code, telegram(telegram_id(), "Вася"))
        .await
        .expect_err("used up");
    assert_eq!(violation(&used_up), "INVITE_USED_UP");

    // The bot logs the student in; the token carries the student role in the tenancy.
    let login = users
        .login_with_telegram(pb::LoginWithTelegramRequest {
            telegram: Some(telegram(masha, "Маша")),
            client_name: "telegram bot".into(),
        })
        .await
        .expect("telegram login")
        .into_inner();
    let access = login.tokens.expect("tokens").access_token;
    let claims = claims(&access);
    assert_eq!(claims["sub"], student.user_id.as_str());
    assert_eq!(claims["amr"][0], "telegram");
    assert!(
        claims["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .any(|r| r["role"] == "student" && r["tutor_id"] == tutor_id.as_str()),
        "{claims}"
    );
    users
        .get_current_user(bearer(pb::GetCurrentUserRequest {}, &access))
        .await
        .expect("the token works");

    // Only the holder of the bot credential asserts a Telegram identity.
    let mut forged = telegram(masha, "Маша");
    forged.bot_credential = "not-the-bot-credential".into();
    let refused = users
        .login_with_telegram(pb::LoginWithTelegramRequest {
            telegram: Some(forged.clone()),
            client_name: String::new(),
        })
        .await
        .expect_err("wrong bot credential");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let info = refused.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("credential").map(String::as_str),
        Some("bot")
    );
    let refused = redeem(&mut users, &created.code, forged)
        .await
        .expect_err("wrong bot credential");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let stranger = users
        .login_with_telegram(pb::LoginWithTelegramRequest {
            telegram: Some(telegram(telegram_id(), "Кто-то")),
            client_name: String::new(),
        })
        .await
        .expect_err("no account");
    assert_eq!(stranger.code(), Code::Unauthenticated);
    let info = stranger.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        info.metadata.get("credential").map(String::as_str),
        Some("telegram_user")
    );

    // Expiry and revocation.
    let soon = invite(
        &mut users,
        &token,
        pb::CreateInviteRequest {
            role: pb::Role::Student as i32,
            expires_at: Some(repit_platform_timestamp(
                chrono::Utc::now() + chrono::TimeDelta::seconds(2),
            )),
            ..Default::default()
        },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let expired = redeem(&mut users, &soon.code, telegram(telegram_id(), "Оля"))
        .await
        .expect_err("expired");
    assert_eq!(violation(&expired), "INVITE_EXPIRED");
    let expired = users
        .preview_invite(pb::PreviewInviteRequest { code: soon.code })
        .await
        .expect_err("expired");
    assert_eq!(violation(&expired), "INVITE_EXPIRED");

    let revocable = invite(
        &mut users,
        &token,
        pb::CreateInviteRequest {
            role: pb::Role::Student as i32,
            ..Default::default()
        },
    )
    .await;
    users
        .revoke_invite(bearer(
            pb::RevokeInviteRequest {
                invite_id: revocable.invite.expect("invite").invite_id,
                expected_revision: None,
            },
            &token,
        ))
        .await
        .expect("revoked");
    let revoked = redeem(&mut users, &revocable.code, telegram(telegram_id(), "Оля"))
        .await
        .expect_err("revoked");
    assert_eq!(violation(&revoked), "INVITE_REVOKED");
    let unknown = users
        .preview_invite(pb::PreviewInviteRequest {
            code: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        })
        .await
        .expect_err("unknown code");
    assert_eq!(unknown.code(), Code::NotFound);

    // Invites are validated field by field.
    let bad = users
        .create_invite(bearer(
            pb::CreateInviteRequest {
                role: pb::Role::Student as i32,
                max_uses: 101,
                student_id: Uuid::now_v7().to_string(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect_err("invalid");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

fn repit_platform_timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

#[tokio::test]
async fn a_parent_invite_links_parents_and_a_third_parent_is_refused() {
    let (server, mut users) = serve().await;
    let tutor = sign_up(
        &mut users,
        &format!("tutor-{}@example.com", Uuid::now_v7().simple()),
    )
    .await;
    let token = tutor.tokens.expect("tokens").access_token;
    let students = invite(
        &mut users,
        &token,
        pb::CreateInviteRequest {
            role: pb::Role::Student as i32,
            ..Default::default()
        },
    )
    .await;
    let student = redeem(&mut users, &students.code, telegram(telegram_id(), "Маша"))
        .await
        .expect("student joined");
    let student_id = student.user.expect("user").user_id;
    let parents = invite(
        &mut users,
        &token,
        pb::CreateInviteRequest {
            role: pb::Role::Parent as i32,
            student_id: student_id.clone(),
            max_uses: 5,
            ..Default::default()
        },
    )
    .await;
    let mother_telegram = telegram_id();
    let mother = redeem(&mut users, &parents.code, telegram(mother_telegram, "Мама"))
        .await
        .expect("first parent");
    assert_eq!(mother.linked_student_id, student_id);
    let mother_id = mother.user.expect("user").user_id;
    let mother_token = mother.tokens.expect("tokens").access_token;
    assert_eq!(claims(&mother_token)["children"][0], student_id.as_str());
    redeem(&mut users, &parents.code, telegram(telegram_id(), "Папа"))
        .await
        .expect("second parent");
    let third = redeem(
        &mut users,
        &parents.code,
        telegram(telegram_id(), "Бабушка"),
    )
    .await
    .expect_err("a third parent");
    assert_eq!(violation(&third), "PARENT_LIMIT_REACHED");

    // The tutor sees the student with contact fields; the parent without; another tutor not.
    let seen = users
        .get_user(bearer(
            pb::GetUserRequest {
                user_id: student_id.clone(),
            },
            &token,
        ))
        .await
        .expect("visible to the tutor")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(seen.parent_ids.len(), 2);
    assert!(seen.parent_ids.contains(&mother_id));
    assert_ne!(seen.telegram_user_id, 0);
    let by_parent = users
        .get_user(bearer(
            pb::GetUserRequest {
                user_id: student_id.clone(),
            },
            &mother_token,
        ))
        .await
        .expect("visible to the parent")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(by_parent.telegram_user_id, 0, "contact fields are blanked");
    let stranger = sign_up(
        &mut users,
        &format!("other-{}@example.com", Uuid::now_v7().simple()),
    )
    .await
    .tokens
    .expect("tokens")
    .access_token;
    let hidden = users
        .get_user(bearer(
            pb::GetUserRequest {
                user_id: student_id.clone(),
            },
            &stranger,
        ))
        .await
        .expect_err("another tenancy");
    assert_eq!(hidden.code(), Code::NotFound);

    // The tutor unlinks a parent; linking again is possible, a third still is not.
    let unlinked = users
        .unlink_parent(bearer(
            pb::UnlinkParentRequest {
                student_id: student_id.clone(),
                parent_id: mother_id.clone(),
                expected_revision: None,
            },
            &token,
        ))
        .await
        .expect("unlinked")
        .into_inner()
        .student
        .expect("student");
    assert_eq!(unlinked.parent_ids.len(), 1);
    users
        .link_parent(bearer(
            pb::LinkParentRequest {
                student_id: student_id.clone(),
                parent_id: mother_id.clone(),
                expected_revision: None,
            },
            &token,
        ))
        .await
        .expect("linked again");

    // A role granted by the tutor shows up in the next access token.
    let refreshed = users
        .login_with_telegram(pb::LoginWithTelegramRequest {
            telegram: Some(telegram(mother_telegram, "Мама")),
            client_name: String::new(),
        })
        .await
        .expect("login")
        .into_inner();
    assert_eq!(
        refreshed.user.expect("user").child_ids,
        vec![student_id.clone()]
    );
    users
        .grant_role(bearer(
            pb::GrantRoleRequest {
                user_id: mother_id.clone(),
                grant: Some(pb::RoleGrant {
                    role: pb::Role::Student as i32,
                    tutor_id: tutor_id_of(&token),
                    ..Default::default()
                }),
                expected_revision: None,
            },
            &token,
        ))
        .await
        .expect("granted");
    let next = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: refreshed.tokens.expect("tokens").refresh_token,
        })
        .await
        .expect("refreshed")
        .into_inner()
        .tokens
        .expect("tokens");
    // A parent who starts tutoring adds the tutor role to the same account.
    let as_tutor = |token: &str| {
        bearer(
            pb::SignUpTutorRequest {
                credentials: Some(pb::sign_up_tutor_request::Credentials::CurrentUser(
                    pb::CurrentUser {},
                )),
                ..Default::default()
            },
            token,
        )
    };
    let tutoring = users
        .sign_up_tutor(as_tutor(&next.access_token))
        .await
        .expect("the parent becomes a tutor")
        .into_inner();
    assert!(tutoring.tokens.is_none());
    assert!(
        tutoring
            .user
            .expect("user")
            .roles
            .iter()
            .any(|g| g.role() == pb::Role::Tutor)
    );
    let twice = users
        .sign_up_tutor(as_tutor(&next.access_token))
        .await
        .expect_err("a tutor already");
    assert_eq!(twice.code(), Code::AlreadyExists);
    let roles = claims(&next.access_token)["roles"].clone();
    assert!(
        roles
            .as_array()
            .expect("roles")
            .iter()
            .any(|r| r["role"] == "student"),
        "{roles}"
    );
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

fn tutor_id_of(token: &str) -> String {
    claims(token)["sub"].as_str().expect("sub").to_owned()
}

#[tokio::test]
async fn logins_are_rate_limited_per_account_and_unknown_emails_count_like_known_ones() {
    let (server, mut users) = serve_with(&[("REPIT_AUTH__RATE_LIMIT_ACCOUNT_BURST", "3")]).await;
    let known = format!("known-{}@example.com", Uuid::now_v7().simple());
    sign_up(&mut users, &known).await;
    // Successful logins give their attempt back: only failures count.
    for _ in 0..5 {
        users
            .login_with_password(pb::LoginWithPasswordRequest {
                email: known.clone(),
                password: "correct horse battery".into(),
                client_name: String::new(),
            })
            .await
            .expect("logged in");
    }
    let unknown = format!("unknown-{}@example.com", Uuid::now_v7().simple());
    // The sign-up took one attempt of the known email's budget; one failed login takes the
    // same from the unknown one's.
    users
        .login_with_password(pb::LoginWithPasswordRequest {
            email: unknown.clone(),
            password: "wrong password!".into(),
            client_name: String::new(),
        })
        .await
        .expect_err("unknown");
    for email in [&known, &unknown] {
        let mut answers = Vec::new();
        for _ in 0..3 {
            let status = users
                .login_with_password(pb::LoginWithPasswordRequest {
                    email: email.clone(),
                    password: "wrong password!".into(),
                    client_name: String::new(),
                })
                .await
                .expect_err("refused");
            answers.push(status);
        }
        let codes: Vec<Code> = answers.iter().map(tonic::Status::code).collect();
        assert_eq!(
            codes,
            [
                Code::Unauthenticated,
                Code::Unauthenticated,
                Code::ResourceExhausted
            ],
            "{email}"
        );
        assert_eq!(answers[0].message(), "invalid email or password");
        let limited = &answers[2];
        assert_eq!(
            limited.get_details_error_info().expect("ErrorInfo").reason,
            "RATE_LIMITED"
        );
        assert!(limited.get_details_retry_info().is_some(), "RetryInfo");
    }
    // The bot's login is limited per Telegram id the same way.
    let id = telegram_id();
    for _ in 0..3 {
        users
            .login_with_telegram(pb::LoginWithTelegramRequest {
                telegram: Some(telegram(id, "x")),
                client_name: String::new(),
            })
            .await
            .expect_err("no account");
    }
    let limited = users
        .login_with_telegram(pb::LoginWithTelegramRequest {
            telegram: Some(telegram(id, "x")),
            client_name: String::new(),
        })
        .await
        .expect_err("limited");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn a_pending_student_is_claimed_by_a_targeted_invite_and_passwords_emails_and_keys_change() {
    let root = format!("root-{}@example.com", Uuid::now_v7().simple());
    let admins = format!("[\"{root}\"]");
    let (server, mut users) = serve_with(&[("REPIT_AUTH__PLATFORM_ADMIN_EMAILS", &admins)]).await;
    let email = format!("tutor-{}@example.com", Uuid::now_v7().simple());
    let tutor = sign_up(&mut users, &email).await;
    let tokens = tutor.tokens.expect("tokens");

    // A PENDING student, claimed through the bot by a targeted invite.
    let pending = users
        .create_user(bearer(
            pb::CreateUserRequest {
                request_id: Uuid::now_v7().to_string(),
                role: pb::Role::Student as i32,
                display_name: "Петя".into(),
                ..Default::default()
            },
            &tokens.access_token,
        ))
        .await
        .expect("created")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(pending.status(), pb::UserStatus::Pending);
    assert_eq!(pending.time_zone, "Europe/Moscow", "the tutor's zone");
    let targeted = invite(
        &mut users,
        &tokens.access_token,
        pb::CreateInviteRequest {
            role: pb::Role::Student as i32,
            target_user_id: pending.user_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let preview = users
        .preview_invite(pb::PreviewInviteRequest {
            code: targeted.code.clone(),
        })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.target_display_name, "Петя");
    let claimed = redeem(&mut users, &targeted.code, telegram(telegram_id(), "Пётр"))
        .await
        .expect("claimed");
    assert!(!claimed.account_created && claimed.telegram_bound);
    let user = claimed.user.expect("user");
    assert_eq!(user.user_id, pending.user_id);
    assert_eq!(user.status(), pb::UserStatus::Active);
    let browser = |code: &str, email: &str, password: &str| pb::RedeemInviteRequest {
        code: code.into(),
        redeemer: Some(pb::redeem_invite_request::Redeemer::NewAccount(
            pb::EmailPassword {
                email: email.into(),
                password: password.into(),
            },
        )),
        ..Default::default()
    };
    let hijack = users
        .redeem_invite(browser(
            &targeted.code,
            "thief@example.com",
            "a long enough password",
        ))
        .await
        .expect_err("the target is claimed");
    assert_eq!(violation(&hijack), "TARGET_ALREADY_CLAIMED");

    // A browser sign-up through an invite link; a retry must know the password.
    let open = invite(
        &mut users,
        &tokens.access_token,
        pb::CreateInviteRequest {
            role: pb::Role::Parent as i32,
            max_uses: 5,
            ..Default::default()
        },
    )
    .await;
    let parent_email = format!("parent-{}@example.com", Uuid::now_v7().simple());
    let joined = users
        .redeem_invite(browser(&open.code, &parent_email, "a long enough password"))
        .await
        .expect("joined from the browser")
        .into_inner();
    assert!(joined.account_created && joined.tokens.is_some());
    assert_eq!(joined.granted_roles[0].role(), pb::Role::Parent);
    users
        .redeem_invite(browser(&open.code, &parent_email, "a long enough password"))
        .await
        .expect("a retry by the same person");
    let guess = users
        .redeem_invite(browser(&open.code, &parent_email, "somebody else's guess"))
        .await
        .expect_err("a retry must know the password");
    assert_eq!(guess.code(), Code::AlreadyExists);

    // The tutor unbinds Telegram (e.g. a new phone): the bot's session ends, the id is free.
    let self_unbind = users
        .unbind_telegram(bearer(
            pb::UnbindTelegramRequest::default(),
            &claimed.tokens.clone().expect("tokens").access_token,
        ))
        .await
        .expect_err("telegram is the student's only way to log in");
    assert_eq!(violation(&self_unbind), "LAST_LOGIN_METHOD");
    let unbound = users
        .unbind_telegram(bearer(
            pb::UnbindTelegramRequest {
                user_id: user.user_id.clone(),
                expected_revision: None,
            },
            &tokens.access_token,
        ))
        .await
        .expect("unbound")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(unbound.telegram_user_id, 0);
    let ended = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: claimed.tokens.expect("tokens").refresh_token,
        })
        .await
        .expect_err("the bot's session ended");
    assert_eq!(ended.code(), Code::Unauthenticated);

    // A password change ends the other sessions and keeps this one.
    let other = users
        .login_with_password(pb::LoginWithPasswordRequest {
            email: email.clone(),
            password: "correct horse battery".into(),
            client_name: "phone".into(),
        })
        .await
        .expect("login")
        .into_inner()
        .tokens
        .expect("tokens");
    let wrong = users
        .change_password(bearer(
            pb::ChangePasswordRequest {
                current_password: "not the password".into(),
                new_password: "a brand new passphrase".into(),
            },
            &tokens.access_token,
        ))
        .await
        .expect_err("wrong current password");
    assert_eq!(wrong.code(), Code::PermissionDenied);
    users
        .change_password(bearer(
            pb::ChangePasswordRequest {
                current_password: "correct horse battery".into(),
                new_password: "a brand new passphrase".into(),
            },
            &tokens.access_token,
        ))
        .await
        .expect("password changed");
    let ended = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: other.refresh_token,
        })
        .await
        .expect_err("the other session ended");
    assert_eq!(ended.code(), Code::Unauthenticated);
    let kept = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .expect("this session stays")
        .into_inner()
        .tokens
        .expect("tokens");

    // A new login email replaces the old one.
    let new_email = format!("renamed-{}@example.com", Uuid::now_v7().simple());
    users
        .change_email(bearer(
            pb::ChangeEmailRequest {
                new_email: new_email.clone(),
                current_password: "a brand new passphrase".into(),
            },
            &kept.access_token,
        ))
        .await
        .expect("email changed");
    let login = |email: String| pb::LoginWithPasswordRequest {
        email,
        password: "a brand new passphrase".into(),
        client_name: String::new(),
    };
    users
        .login_with_password(login(new_email))
        .await
        .expect("the new email logs in");
    let old = users
        .login_with_password(login(email))
        .await
        .expect_err("the old email no longer does");
    assert_eq!(old.code(), Code::Unauthenticated);

    // A platform admin revokes the signing key: tokens it signed stop working at once.
    let admin = sign_up(&mut users, &root).await;
    let admin_tokens = admin.tokens.expect("tokens");
    assert!(
        admin
            .user
            .expect("user")
            .roles
            .iter()
            .any(|g| g.role() == pb::Role::Admin && g.school_id.is_empty())
    );
    let denied = users
        .rotate_signing_key(bearer(
            pb::RotateSigningKeyRequest::default(),
            &kept.access_token,
        ))
        .await
        .expect_err("not a platform admin");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let rotated = users
        .rotate_signing_key(bearer(
            pb::RotateSigningKeyRequest {
                revoke_previous: true,
                ..Default::default()
            },
            &admin_tokens.access_token,
        ))
        .await
        .expect("rotated")
        .into_inner();
    assert!(rotated.new_key.expect("key").signing);
    let stale = users
        .get_current_user(bearer(pb::GetCurrentUserRequest {}, &kept.access_token))
        .await
        .expect_err("signed with the revoked key");
    assert_eq!(stale.code(), Code::Unauthenticated);
    let fresh = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: kept.refresh_token,
        })
        .await
        .expect("refresh still works")
        .into_inner()
        .tokens
        .expect("tokens");
    users
        .get_current_user(bearer(pb::GetCurrentUserRequest {}, &fresh.access_token))
        .await
        .expect("signed with the new key");
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn a_tutor_signs_up_through_the_bot_once_per_telegram_id_and_only_with_its_credential() {
    let (server, mut users) = serve().await;
    let id = telegram_id();
    let sign_up = |assertion: pb::TelegramBotAssertion| pb::SignUpTutorRequest {
        request_id: Uuid::now_v7().to_string(),
        credentials: Some(pb::sign_up_tutor_request::Credentials::Telegram(assertion)),
        display_name: "Ирина".into(),
        time_zone: "Asia/Yekaterinburg".into(),
        client_name: "telegram bot".into(),
        ..Default::default()
    };
    let signed = users
        .sign_up_tutor(sign_up(telegram(id, "Ирина")))
        .await
        .expect("signed up through the bot")
        .into_inner();
    let tutor = signed.user.expect("user");
    assert_eq!(tutor.telegram_user_id, id);
    assert!(!tutor.has_password && tutor.email.is_empty());
    assert_eq!(
        claims(&signed.tokens.expect("tokens").access_token)["amr"][0],
        "telegram"
    );
    let again = users
        .sign_up_tutor(sign_up(telegram(id, "Ирина")))
        .await
        .expect_err("one account per telegram id");
    assert_eq!(again.code(), Code::AlreadyExists);
    let mut forged = telegram(telegram_id(), "Ирина");
    forged.bot_credential = "a guess at the bot credential".into();
    let refused = users
        .sign_up_tutor(sign_up(forged))
        .await
        .expect_err("not the bot");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let login = users
        .login_with_telegram(pb::LoginWithTelegramRequest {
            telegram: Some(telegram(id, "Ирина")),
            client_name: String::new(),
        })
        .await
        .expect("the bot logs the tutor in")
        .into_inner();
    assert_eq!(login.user.expect("user").user_id, tutor.user_id);
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn a_tutor_changes_a_pending_accounts_profile_until_its_owner_claims_it() {
    let (server, mut users) = serve_with(&[]).await;
    let tutor = sign_up(
        &mut users,
        &format!("tutor-{}@example.com", Uuid::now_v7().simple()),
    )
    .await
    .tokens
    .expect("tokens");
    let other = sign_up(
        &mut users,
        &format!("other-{}@example.com", Uuid::now_v7().simple()),
    )
    .await
    .tokens
    .expect("tokens");
    let pending = users
        .create_user(bearer(
            pb::CreateUserRequest {
                request_id: Uuid::now_v7().to_string(),
                role: pb::Role::Student as i32,
                display_name: "Петя".into(),
                ..Default::default()
            },
            &tutor.access_token,
        ))
        .await
        .expect("created")
        .into_inner()
        .user
        .expect("user");
    let rename = |name: &str, expected_revision: Option<u64>| pb::UpdateProfileRequest {
        user_id: pending.user_id.clone(),
        display_name: name.into(),
        time_zone: "Asia/Yekaterinburg".into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".into(), "time_zone".into()],
        }),
        expected_revision,
        ..Default::default()
    };

    // The tutor fixes the name and zone before the student ever logs in.
    let changed = users
        .update_profile(bearer(rename("Пётр Смирнов", None), &tutor.access_token))
        .await
        .expect("the tutor changes a PENDING account of their tenancy")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(
        (changed.display_name.as_str(), changed.time_zone.as_str()),
        ("Пётр Смирнов", "Asia/Yekaterinburg")
    );
    assert_eq!(changed.status(), pb::UserStatus::Pending);
    // A stale revision is refused; another tutor does not see the account.
    let stale = users
        .update_profile(bearer(
            rename("Петя", Some(pending.revision)),
            &tutor.access_token,
        ))
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    let hidden = users
        .update_profile(bearer(rename("Петя", None), &other.access_token))
        .await
        .expect_err("not theirs");
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");

    // Once the student claims the account it is theirs alone.
    let targeted = invite(
        &mut users,
        &tutor.access_token,
        pb::CreateInviteRequest {
            role: pb::Role::Student as i32,
            target_user_id: pending.user_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let claimed = redeem(&mut users, &targeted.code, telegram(telegram_id(), "Пётр"))
        .await
        .expect("claimed");
    let student_token = claimed.tokens.expect("tokens").access_token;
    let refused = users
        .update_profile(bearer(rename("Петя", None), &tutor.access_token))
        .await
        .expect_err("no longer PENDING");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let own = users
        .update_profile(bearer(rename("Петя", None), &student_token))
        .await
        .expect("the owner changes their own profile")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(own.display_name, "Петя");
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}
