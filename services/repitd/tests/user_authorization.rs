//! The user service's authorization matrix on the real `repitd`: every RPC of the contract,
//! called by each kind of caller — anonymous, tutor, student, parent, school admin, platform
//! admin — answers as user.proto says. A row names the status code each caller gets (the auth
//! layer refuses anonymous callers of a protected method before any handler).

use std::path::Path;

use repit_proto::repit::user::v1 as pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;
use repit_tests::{ChildServer, spawn_server};
use tonic::transport::Channel;
use tonic::{Code, Request};
use uuid::Uuid;

const BOT: &str = "test-bot-credential-0123456789";
const ROOT: &str = "root-admin@example.com";

/// The callers, in column order.
const CALLERS: [&str; 6] = [
    "anonymous",
    "tutor",
    "student",
    "parent",
    "school admin",
    "platform admin",
];

const OK: Code = Code::Ok;
const UNAUTH: Code = Code::Unauthenticated;
const DENIED: Code = Code::PermissionDenied;
const HIDDEN: Code = Code::NotFound;
const RULE: Code = Code::FailedPrecondition;
const EXISTS: Code = Code::AlreadyExists;

/// Every RPC of `UserService` × [`CALLERS`]. The order of rows matters where a row changes what
/// later rows see (noted); within a row callers go left to right.
const MATRIX: [(&str, [Code; 6]); 34] = [
    // Public: a fresh email signs up whoever calls.
    ("SignUpTutor", [OK, OK, OK, OK, OK, OK]),
    // Public: bad credentials answer alike for everyone.
    ("LoginWithPassword", [UNAUTH; 6]),
    ("LoginWithTelegram", [UNAUTH; 6]),
    ("RefreshToken", [UNAUTH; 6]),
    ("Logout", [OK; 6]),
    ("GetPublicKeys", [OK; 6]),
    ("PreviewInvite", [OK; 6]),
    // current_user redeems another tutor's multi-use student invite.
    ("RedeemInvite", [UNAUTH, OK, OK, OK, OK, OK]),
    ("LogoutEverywhere", [UNAUTH, OK, OK, OK, OK, OK]),
    ("ListSessions", [UNAUTH, OK, OK, OK, OK, OK]),
    // Someone else's (or no) session.
    (
        "RevokeSession",
        [UNAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN],
    ),
    // Only once for the platform admin: a second rotation would be ROTATION_IN_PROGRESS.
    (
        "RotateSigningKey",
        [UNAUTH, DENIED, DENIED, DENIED, DENIED, OK],
    ),
    // A STUDENT invite into the caller's own tenancy (the platform admin signed up as a tutor).
    ("CreateInvite", [UNAUTH, OK, DENIED, DENIED, DENIED, OK]),
    // Student and parent joined through the bot: Telegram is bound already.
    (
        "CreateTelegramBindingInvite",
        [UNAUTH, OK, RULE, RULE, OK, OK],
    ),
    // Students and parents manage no invites.
    ("ListInvites", [UNAUTH, OK, DENIED, DENIED, OK, OK]),
    // The tutor's invite: the student and parent of the tenancy see it, the school admin does not.
    ("RevokeInvite", [UNAUTH, OK, DENIED, DENIED, HIDDEN, OK]),
    // The second student's binding: their tutor unbinds it, so the platform admin finds none.
    ("UnbindTelegram", [UNAUTH, OK, HIDDEN, HIDDEN, HIDDEN, RULE]),
    ("CreateUser", [UNAUTH, OK, DENIED, DENIED, DENIED, OK]),
    ("GetCurrentUser", [UNAUTH, OK, OK, OK, OK, OK]),
    // The student: themselves, their tutor, their parent; not the school admin (another school).
    ("GetUser", [UNAUTH, OK, OK, OK, HIDDEN, OK]),
    ("BatchGetUsers", [UNAUTH, OK, OK, OK, HIDDEN, OK]),
    ("ListUsers", [UNAUTH, OK, DENIED, DENIED, OK, OK]),
    ("UpdateProfile", [UNAUTH, OK, OK, OK, OK, OK]),
    // No current password: fine for accounts without one (student, parent), denied otherwise.
    (
        "ChangePassword",
        [UNAUTH, DENIED, RULE, RULE, DENIED, DENIED],
    ),
    ("ChangeEmail", [UNAUTH, DENIED, OK, OK, DENIED, DENIED]),
    // A second student of the tutor; the platform admin deactivates them last.
    (
        "DeactivateUser",
        [UNAUTH, DENIED, HIDDEN, HIDDEN, HIDDEN, OK],
    ),
    (
        "ReactivateUser",
        [UNAUTH, DENIED, HIDDEN, HIDDEN, HIDDEN, OK],
    ),
    // PARENT in the tutor's tenancy to the second student; the platform admin finds it held.
    ("GrantRole", [UNAUTH, OK, HIDDEN, HIDDEN, HIDDEN, EXISTS]),
    ("RevokeRole", [UNAUTH, OK, HIDDEN, HIDDEN, HIDDEN, HIDDEN]),
    // The parent and the student, linked already by the invite.
    (
        "LinkParent",
        [UNAUTH, EXISTS, DENIED, DENIED, HIDDEN, EXISTS],
    ),
    // Last but schools: the tutor unlinks first, so the parent is no longer visible to the
    // student, the parent (whose token still names the child) may not, and the platform admin
    // finds no link.
    ("UnlinkParent", [UNAUTH, OK, HIDDEN, DENIED, HIDDEN, HIDDEN]),
    // Tutors and platform admins create schools.
    ("CreateSchool", [UNAUTH, OK, DENIED, DENIED, DENIED, OK]),
    // The school admin's school: hidden from everyone but its members and platform admins.
    ("GetSchool", [UNAUTH, HIDDEN, HIDDEN, HIDDEN, OK, OK]),
    ("UpdateSchool", [UNAUTH, HIDDEN, HIDDEN, HIDDEN, OK, OK]),
];

fn bearer<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    request
}

/// The accounts and resources the matrix calls against.
struct Fixture {
    tokens: [Option<String>; 6],
    tutor_id: String,
    student_id: String,
    parent_id: String,
    second_student_id: String,
    /// A multi-use STUDENT invite of another tutor.
    open_code: String,
    /// An invite of the tutor, for RevokeInvite.
    tutor_invite_id: String,
    /// The school the school admin administers (the tutor does not teach there).
    school_id: String,
}

async fn serve() -> (ChildServer, UserServiceClient<Channel>) {
    let admins = format!("[\"{ROOT}\"]");
    let server = spawn_server(
        Path::new(env!("CARGO_BIN_EXE_repitd")),
        &["serve", "--target", "user"],
        &[
            ("REPIT_AUTH__BOT_CREDENTIAL", BOT),
            ("REPIT_AUTH__PLATFORM_ADMIN_EMAILS", admins.as_str()),
            ("REPIT_AUTH__RATE_LIMIT_ADDRESS_BURST", "100000"),
            // Hundreds of calls in a second or two from one caller: the gateway's per-caller
            // limit (tested on its own) would answer some of them RESOURCE_EXHAUSTED.
            ("REPIT_GATEWAY__RATE_LIMIT__ENABLED", "false"),
            ("REPIT_AUTH__RATE_LIMIT_ACCOUNT_BURST", "1000"),
        ],
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
            display_name: "Tutor".into(),
            time_zone: "Europe/Moscow".into(),
            ..Default::default()
        })
        .await
        .expect("signed up")
        .into_inner()
}

fn telegram_id() -> i64 {
    (Uuid::now_v7().as_u128() % 1_000_000_000_000) as i64 + 1
}

async fn create_invite(
    users: &mut UserServiceClient<Channel>,
    token: &str,
    request: pb::CreateInviteRequest,
) -> pb::CreateInviteResponse {
    users
        .create_invite(bearer(request, Some(token)))
        .await
        .expect("invite")
        .into_inner()
}

async fn redeem_telegram(
    users: &mut UserServiceClient<Channel>,
    code: &str,
) -> pb::RedeemInviteResponse {
    users
        .redeem_invite(pb::RedeemInviteRequest {
            code: code.into(),
            redeemer: Some(pb::redeem_invite_request::Redeemer::Telegram(
                pb::TelegramBotAssertion {
                    bot_credential: BOT.into(),
                    telegram_user_id: telegram_id(),
                    profile: None,
                },
            )),
            ..Default::default()
        })
        .await
        .expect("redeemed")
        .into_inner()
}

async fn fixture(users: &mut UserServiceClient<Channel>) -> Fixture {
    let unique = || Uuid::now_v7().simple().to_string();
    let tutor = sign_up(users, &format!("tutor-{}@example.com", unique())).await;
    let tutor_id = tutor.user.expect("user").user_id;
    let tutor_token = tutor.tokens.expect("tokens").access_token;
    let students = create_invite(
        users,
        &tutor_token,
        pb::CreateInviteRequest {
            role: pb::Role::Student as i32,
            max_uses: 2,
            ..Default::default()
        },
    )
    .await;
    let student = redeem_telegram(users, &students.code).await;
    let student_id = student.user.expect("user").user_id;
    let second = redeem_telegram(users, &students.code).await;
    let parents = create_invite(
        users,
        &tutor_token,
        pb::CreateInviteRequest {
            role: pb::Role::Parent as i32,
            student_id: student_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let parent = redeem_telegram(users, &parents.code).await;
    let root = sign_up(users, ROOT).await;
    let root_token = root.tokens.expect("tokens").access_token;
    // A school admin of a school the tutor does not teach in.
    let school_id = users
        .create_school(bearer(
            pb::CreateSchoolRequest {
                request_id: Uuid::now_v7().to_string(),
                name: "Lyceum".into(),
            },
            Some(&root_token),
        ))
        .await
        .expect("school created")
        .into_inner()
        .school
        .expect("school")
        .school_id;
    let admins = create_invite(
        users,
        &root_token,
        pb::CreateInviteRequest {
            role: pb::Role::Admin as i32,
            school_id: school_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let school_admin = users
        .redeem_invite(pb::RedeemInviteRequest {
            code: admins.code,
            redeemer: Some(pb::redeem_invite_request::Redeemer::NewAccount(
                pb::EmailPassword {
                    email: format!("school-admin-{}@example.com", unique()),
                    password: "correct horse battery".into(),
                },
            )),
            display_name: "School admin".into(),
            ..Default::default()
        })
        .await
        .expect("school admin joined")
        .into_inner();
    let other_tutor = sign_up(users, &format!("other-{}@example.com", unique())).await;
    let open = create_invite(
        users,
        &other_tutor.tokens.expect("tokens").access_token,
        pb::CreateInviteRequest {
            role: pb::Role::Student as i32,
            max_uses: 100,
            ..Default::default()
        },
    )
    .await;
    let tutor_invite = create_invite(
        users,
        &tutor_token,
        pb::CreateInviteRequest {
            role: pb::Role::Student as i32,
            ..Default::default()
        },
    )
    .await;
    Fixture {
        tokens: [
            None,
            Some(tutor_token),
            Some(student.tokens.expect("tokens").access_token),
            Some(parent.tokens.clone().expect("tokens").access_token),
            Some(school_admin.tokens.expect("tokens").access_token),
            Some(root_token),
        ],
        tutor_id,
        student_id,
        parent_id: parent.user.expect("user").user_id,
        second_student_id: second.user.expect("user").user_id,
        open_code: open.code,
        tutor_invite_id: tutor_invite.invite.expect("invite").invite_id,
        school_id,
    }
}

/// Calls `rpc` as the caller with `token`, answering the status code.
#[allow(clippy::too_many_lines)] // one arm per RPC of the contract
async fn call(
    users: &mut UserServiceClient<Channel>,
    rpc: &str,
    token: Option<&str>,
    fx: &Fixture,
) -> Code {
    fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
        match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }
    let id = || Uuid::now_v7().to_string();
    let student_grant = |tutor: &str| pb::RoleGrant {
        role: pb::Role::Parent as i32,
        tutor_id: tutor.to_owned(),
        ..Default::default()
    };
    match rpc {
        "SignUpTutor" => code(
            users
                .sign_up_tutor(bearer(
                    pb::SignUpTutorRequest {
                        credentials: Some(pb::sign_up_tutor_request::Credentials::EmailPassword(
                            pb::EmailPassword {
                                email: format!("new-{}@example.com", Uuid::now_v7().simple()),
                                password: "correct horse battery".into(),
                            },
                        )),
                        display_name: "New".into(),
                        time_zone: "UTC".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
        ),
        "LoginWithPassword" => code(
            users
                .login_with_password(bearer(
                    pb::LoginWithPasswordRequest {
                        email: "nobody@example.com".into(),
                        password: "not the password".into(),
                        client_name: String::new(),
                    },
                    token,
                ))
                .await,
        ),
        "LoginWithTelegram" => code(
            users
                .login_with_telegram(bearer(
                    pb::LoginWithTelegramRequest {
                        telegram: Some(pb::TelegramBotAssertion {
                            bot_credential: "not the bot".into(),
                            telegram_user_id: 1,
                            profile: None,
                        }),
                        client_name: String::new(),
                    },
                    token,
                ))
                .await,
        ),
        "RefreshToken" => code(
            users
                .refresh_token(bearer(
                    pb::RefreshTokenRequest {
                        refresh_token: "garbage".into(),
                    },
                    token,
                ))
                .await,
        ),
        "Logout" => code(
            users
                .logout(bearer(
                    pb::LogoutRequest {
                        refresh_token: "garbage".into(),
                    },
                    token,
                ))
                .await,
        ),
        "LogoutEverywhere" => code(
            users
                .logout_everywhere(bearer(pb::LogoutEverywhereRequest {}, token))
                .await,
        ),
        "ListSessions" => code(
            users
                .list_sessions(bearer(pb::ListSessionsRequest::default(), token))
                .await,
        ),
        "RevokeSession" => code(
            users
                .revoke_session(bearer(pb::RevokeSessionRequest { session_id: id() }, token))
                .await,
        ),
        "GetPublicKeys" => code(
            users
                .get_public_keys(bearer(pb::GetPublicKeysRequest {}, token))
                .await,
        ),
        "RotateSigningKey" => code(
            users
                .rotate_signing_key(bearer(pb::RotateSigningKeyRequest::default(), token))
                .await,
        ),
        "CreateInvite" => code(
            users
                .create_invite(bearer(
                    pb::CreateInviteRequest {
                        role: pb::Role::Student as i32,
                        ..Default::default()
                    },
                    token,
                ))
                .await,
        ),
        "CreateTelegramBindingInvite" => code(
            users
                .create_telegram_binding_invite(bearer(
                    pb::CreateTelegramBindingInviteRequest::default(),
                    token,
                ))
                .await,
        ),
        "ListInvites" => code(
            users
                .list_invites(bearer(pb::ListInvitesRequest::default(), token))
                .await,
        ),
        "RevokeInvite" => code(
            users
                .revoke_invite(bearer(
                    pb::RevokeInviteRequest {
                        invite_id: fx.tutor_invite_id.clone(),
                        expected_revision: None,
                    },
                    token,
                ))
                .await,
        ),
        "PreviewInvite" => code(
            users
                .preview_invite(bearer(
                    pb::PreviewInviteRequest {
                        code: fx.open_code.clone(),
                    },
                    token,
                ))
                .await,
        ),
        "RedeemInvite" => code(
            users
                .redeem_invite(bearer(
                    pb::RedeemInviteRequest {
                        code: fx.open_code.clone(),
                        redeemer: Some(pb::redeem_invite_request::Redeemer::CurrentUser(
                            pb::CurrentUser {},
                        )),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
        ),
        "UnbindTelegram" => code(
            users
                .unbind_telegram(bearer(
                    pb::UnbindTelegramRequest {
                        user_id: fx.second_student_id.clone(),
                        expected_revision: None,
                    },
                    token,
                ))
                .await,
        ),
        "CreateUser" => code(
            users
                .create_user(bearer(
                    pb::CreateUserRequest {
                        role: pb::Role::Student as i32,
                        display_name: "Pending".into(),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
        ),
        "GetCurrentUser" => code(
            users
                .get_current_user(bearer(pb::GetCurrentUserRequest {}, token))
                .await,
        ),
        "GetUser" => code(
            users
                .get_user(bearer(
                    pb::GetUserRequest {
                        user_id: fx.student_id.clone(),
                    },
                    token,
                ))
                .await,
        ),
        "BatchGetUsers" => code(
            users
                .batch_get_users(bearer(
                    pb::BatchGetUsersRequest {
                        user_ids: vec![fx.student_id.clone()],
                    },
                    token,
                ))
                .await,
        ),
        "ListUsers" => code(
            users
                .list_users(bearer(pb::ListUsersRequest::default(), token))
                .await,
        ),
        "UpdateProfile" => code(
            users
                .update_profile(bearer(
                    pb::UpdateProfileRequest {
                        display_name: "Renamed".into(),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["display_name".into()],
                        }),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
        ),
        "ChangePassword" => code(
            users
                .change_password(bearer(
                    pb::ChangePasswordRequest {
                        current_password: String::new(),
                        new_password: "another long password".into(),
                    },
                    token,
                ))
                .await,
        ),
        "ChangeEmail" => code(
            users
                .change_email(bearer(
                    pb::ChangeEmailRequest {
                        new_email: format!("changed-{}@example.com", Uuid::now_v7().simple()),
                        current_password: String::new(),
                    },
                    token,
                ))
                .await,
        ),
        "DeactivateUser" => code(
            users
                .deactivate_user(bearer(
                    pb::DeactivateUserRequest {
                        user_id: fx.second_student_id.clone(),
                        reason: "left".into(),
                        expected_revision: None,
                    },
                    token,
                ))
                .await,
        ),
        "ReactivateUser" => code(
            users
                .reactivate_user(bearer(
                    pb::ReactivateUserRequest {
                        user_id: fx.second_student_id.clone(),
                        expected_revision: None,
                    },
                    token,
                ))
                .await,
        ),
        "GrantRole" => code(
            users
                .grant_role(bearer(
                    pb::GrantRoleRequest {
                        user_id: fx.second_student_id.clone(),
                        grant: Some(student_grant(&fx.tutor_id)),
                        expected_revision: None,
                    },
                    token,
                ))
                .await,
        ),
        "RevokeRole" => code(
            users
                .revoke_role(bearer(
                    pb::RevokeRoleRequest {
                        user_id: fx.second_student_id.clone(),
                        grant: Some(student_grant(&fx.tutor_id)),
                        expected_revision: None,
                    },
                    token,
                ))
                .await,
        ),
        "LinkParent" => code(
            users
                .link_parent(bearer(
                    pb::LinkParentRequest {
                        student_id: fx.student_id.clone(),
                        parent_id: fx.parent_id.clone(),
                        expected_revision: None,
                    },
                    token,
                ))
                .await,
        ),
        "UnlinkParent" => code(
            users
                .unlink_parent(bearer(
                    pb::UnlinkParentRequest {
                        student_id: fx.student_id.clone(),
                        parent_id: fx.parent_id.clone(),
                        expected_revision: None,
                    },
                    token,
                ))
                .await,
        ),
        "CreateSchool" => code(
            users
                .create_school(bearer(
                    pb::CreateSchoolRequest {
                        request_id: String::new(),
                        name: "School".into(),
                    },
                    token,
                ))
                .await,
        ),
        "GetSchool" => code(
            users
                .get_school(bearer(
                    pb::GetSchoolRequest {
                        school_id: fx.school_id.clone(),
                    },
                    token,
                ))
                .await,
        ),
        "UpdateSchool" => code(
            users
                .update_school(bearer(
                    pb::UpdateSchoolRequest {
                        school_id: fx.school_id.clone(),
                        name: "Renamed".into(),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["name".into()],
                        }),
                        expected_revision: None,
                    },
                    token,
                ))
                .await,
        ),
        other => panic!("{other} is not in the matrix's call table"),
    }
}

#[tokio::test]
async fn every_user_rpc_answers_each_kind_of_caller_as_the_contract_says() {
    // The table covers the whole contract, each RPC once.
    let mut names: Vec<&str> = MATRIX.iter().map(|(rpc, _)| *rpc).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 34, "each of the 34 RPCs once");

    let (server, mut users) = serve().await;
    let fx = fixture(&mut users).await;
    let mut mismatches = Vec::new();
    for (rpc, expected) in MATRIX {
        for (column, want) in expected.iter().enumerate() {
            let got = call(&mut users, rpc, fx.tokens[column].as_deref(), &fx).await;
            if got != *want {
                mismatches.push(format!(
                    "{rpc} as {}: expected {want:?}, got {got:?}",
                    CALLERS[column]
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}
