//! ListUsers, ListSessions and ListInvites on the real `repitd`, answered from the
//! `user.directory` read model: scopes, filters, paging, the current session, cut-offs, and who
//! is refused. Run on the embedded defaults (SQLite) and, when PostgreSQL is configured, with the
//! event store and read models in a fresh PostgreSQL database — the tables analysts query.

use std::path::Path;
use std::time::{Duration, Instant};

use repit_proto::repit::common::v1::PageRequest;
use repit_proto::repit::user::v1 as pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;
use repit_tests::identity::{self, bearer};
use repit_tests::{Backend, require, spawn_server};
use sqlx::Connection;
use tonic::transport::Channel;
use tonic::{Code, Status};
use uuid::Uuid;

const BOT: &str = "test-bot-credential-0123456789";

fn page(size: i32, token: &str) -> Option<PageRequest> {
    Some(PageRequest {
        page_size: size,
        page_token: token.to_owned(),
    })
}

/// Asks `list` until `done` holds of its answer (the read model follows the commands within
/// moments), failing after 10 s.
async fn eventually<T, F, Fut>(what: &str, mut list: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
    T: std::fmt::Debug,
{
    let started = Instant::now();
    loop {
        let answer = list().await.expect(what);
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: the read model did not catch up within 10 s; last answer {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn invite(
    users: &mut UserServiceClient<Channel>,
    token: &str,
    role: pb::Role,
    student_id: &str,
    max_uses: i32,
) -> pb::CreateInviteResponse {
    users
        .create_invite(bearer(
            pb::CreateInviteRequest {
                request_id: Uuid::now_v7().to_string(),
                role: role as i32,
                student_id: student_id.to_owned(),
                max_uses,
                note: format!("{role:?}"),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("invited")
        .into_inner()
}

/// Redeems `code` through the bot as a new Telegram user named `name`: (user, access token).
async fn join(
    users: &mut UserServiceClient<Channel>,
    code: &str,
    name: &str,
    telegram_user_id: i64,
) -> (pb::User, String) {
    let joined = users
        .redeem_invite(pb::RedeemInviteRequest {
            request_id: Uuid::now_v7().to_string(),
            code: code.to_owned(),
            redeemer: Some(pb::redeem_invite_request::Redeemer::Telegram(
                pb::TelegramBotAssertion {
                    bot_credential: BOT.into(),
                    telegram_user_id,
                    profile: Some(pb::TelegramProfile {
                        username: format!("user{telegram_user_id}"),
                        ..Default::default()
                    }),
                },
            )),
            display_name: name.into(),
            time_zone: "Europe/Moscow".into(),
            ..Default::default()
        })
        .await
        .expect("redeemed")
        .into_inner();
    (
        joined.user.expect("user"),
        joined.tokens.expect("tokens").access_token,
    )
}

fn seconds_and_nanos(at: Option<&prost_types::Timestamp>) -> (i64, i32) {
    at.map_or((0, 0), |t| (t.seconds, t.nanos))
}

fn names(users: &[pb::User]) -> Vec<&str> {
    users.iter().map(|u| u.display_name.as_str()).collect()
}

async fn list_users(
    users: &UserServiceClient<Channel>,
    token: &str,
    request: pb::ListUsersRequest,
) -> Result<pb::ListUsersResponse, Status> {
    users
        .clone()
        .list_users(bearer(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn next_token(page: Option<&repit_proto::repit::common::v1::PageResponse>) -> &str {
    page.map_or("", |p| p.next_page_token.as_str())
}

async fn scenario(url: &str) {
    let channel = identity::channel(url);
    let mut users = UserServiceClient::new(channel.clone());
    let anna = identity::sign_up_tutor(channel.clone(), "Anna Petrova").await;
    let boris = identity::sign_up_tutor(channel.clone(), "Boris Ivanov").await;
    let token = anna.access_token.clone();
    let base_telegram = i64::try_from(Uuid::now_v7().as_u128() % 1_000_000_000).expect("small");

    // Anna's tenancy: two students by one invite (three uses), a parent of the first.
    let students = invite(&mut users, &token, pb::Role::Student, "", 3).await;
    let (maria, maria_token) = join(
        &mut users,
        &students.code,
        "Мария Иванова",
        base_telegram + 1,
    )
    .await;
    let (pyotr, pyotr_token) = join(&mut users, &students.code, "Pyotr", base_telegram + 2).await;
    let parents = invite(&mut users, &token, pb::Role::Parent, &maria.user_id, 1).await;
    let (olga, olga_token) = join(&mut users, &parents.code, "Ольга", base_telegram + 3).await;
    // An invite revoked before anyone used it.
    let revoked = invite(&mut users, &token, pb::Role::Student, "", 1).await;
    let revoked_id = revoked.invite.expect("invite").invite_id;
    users
        .revoke_invite(bearer(
            pb::RevokeInviteRequest {
                invite_id: revoked_id.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("revoked");

    // ListUsers: the tenancy, by display name (Latin before Cyrillic), contact fields shown.
    let all = eventually(
        "ListUsers",
        || list_users(&users, &token, pb::ListUsersRequest::default()),
        // The parent link lands on the student's row after the parent's account exists.
        |r| r.users.len() == 3 && r.users.iter().any(|u| !u.parent_ids.is_empty()),
    )
    .await;
    assert_eq!(names(&all.users), ["Pyotr", "Мария Иванова", "Ольга"]);
    assert_eq!(next_token(all.page.as_ref()), "");
    let listed_maria = &all.users[1];
    assert_eq!(listed_maria.user_id, maria.user_id);
    assert_eq!(listed_maria.telegram_user_id, base_telegram + 1);
    assert_eq!(listed_maria.parent_ids, std::slice::from_ref(&olga.user_id));

    // Paging: 2 + 1, the token carrying a Cyrillic name.
    let first = list_users(
        &users,
        &token,
        pb::ListUsersRequest {
            page: page(2, ""),
            ..Default::default()
        },
    )
    .await
    .expect("first page");
    assert_eq!(names(&first.users), ["Pyotr", "Мария Иванова"]);
    let second = list_users(
        &users,
        &token,
        pb::ListUsersRequest {
            page: page(2, next_token(first.page.as_ref())),
            ..Default::default()
        },
    )
    .await
    .expect("second page");
    assert_eq!(names(&second.users), ["Ольга"]);
    assert_eq!(next_token(second.page.as_ref()), "");

    // Filters: role, a case-insensitive Cyrillic query, a query matching the Telegram username,
    // and wildcards taken literally.
    for (role, query, expected) in [
        (pb::Role::Parent, "", vec!["Ольга"]),
        (pb::Role::Student, "", vec!["Pyotr", "Мария Иванова"]),
        (pb::Role::Tutor, "", vec![]),
        (pb::Role::Unspecified, "МАРИЯ", vec!["Мария Иванова"]),
        (pb::Role::Unspecified, "  иван ", vec!["Мария Иванова"]),
        (
            pb::Role::Unspecified,
            &format!("user{}", base_telegram + 2),
            vec!["Pyotr"],
        ),
        (pb::Role::Unspecified, "%", vec![]),
    ] {
        let answer = list_users(
            &users,
            &token,
            pb::ListUsersRequest {
                role: role as i32,
                query: query.to_owned(),
                ..Default::default()
            },
        )
        .await
        .expect("filtered");
        assert_eq!(names(&answer.users), expected, "{role:?} {query:?}");
    }

    // Boris sees none of it and may not name Anna's tenancy; students and parents list nothing.
    let boris_token = boris.access_token.clone();
    let his = list_users(&users, &boris_token, pb::ListUsersRequest::default())
        .await
        .expect("Boris's tenancy");
    assert!(his.users.is_empty(), "{his:?}");
    for (caller, request) in [
        (
            &boris_token,
            pb::ListUsersRequest {
                tutor_id: anna.user_id.clone(),
                ..Default::default()
            },
        ),
        (&maria_token, pb::ListUsersRequest::default()),
        (&olga_token, pb::ListUsersRequest::default()),
    ] {
        let refused = list_users(&users, caller, request)
            .await
            .expect_err("not theirs");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    // Bad input names its fields.
    let bad = list_users(
        &users,
        &token,
        pb::ListUsersRequest {
            tutor_id: "not-a-uuid".into(),
            page: page(0, "garbage"),
            role: 42,
            query: "x".repeat(101),
            ..Default::default()
        },
    )
    .await
    .expect_err("invalid");
    assert_eq!(bad.code(), Code::InvalidArgument);
    for field in ["tutor_id", "page.page_token", "role", "query"] {
        assert!(bad.message().contains(field), "{field}: {bad:?}");
    }

    // A deactivated account is listed only when asked for.
    users
        .deactivate_user(bearer(
            pb::DeactivateUserRequest {
                user_id: pyotr.user_id.clone(),
                reason: "moved away".into(),
                ..Default::default()
            },
            &pyotr_token,
        ))
        .await
        .expect("Pyotr leaves");
    let active = eventually(
        "ListUsers without the deactivated",
        || list_users(&users, &token, pb::ListUsersRequest::default()),
        |r| r.users.len() == 2,
    )
    .await;
    assert_eq!(names(&active.users), ["Мария Иванова", "Ольга"]);
    let with = list_users(
        &users,
        &token,
        pb::ListUsersRequest {
            include_deactivated: true,
            ..Default::default()
        },
    )
    .await
    .expect("with the deactivated");
    assert_eq!(with.users.len(), 3);

    // ListInvites: the active one by default (the parent's is used up, one is revoked), every
    // one with include_inactive, newest first, with uses counted.
    let client = users.clone();
    let list_invites = move |token: String, include_inactive: bool| {
        let mut users = client.clone();
        async move {
            users
                .list_invites(bearer(
                    pb::ListInvitesRequest {
                        include_inactive,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let everything = eventually(
        "ListInvites with inactive",
        || list_invites(token.clone(), true),
        |r| {
            r.invites.len() == 3
                && r.invites
                    .iter()
                    .any(|i| i.status() == pb::InviteStatus::Revoked)
        },
    )
    .await;
    let statuses: Vec<(pb::InviteStatus, i32)> = everything
        .invites
        .iter()
        .map(|i| (i.status(), i.use_count))
        .collect();
    assert_eq!(
        statuses,
        [
            (pb::InviteStatus::Revoked, 0),
            (pb::InviteStatus::UsedUp, 1),
            (pb::InviteStatus::Active, 2),
        ]
    );
    let active = list_invites(token.clone(), false).await.expect("active");
    assert_eq!(active.invites.len(), 1);
    assert_eq!(
        Some(&active.invites[0].invite_id),
        students.invite.as_ref().map(|i| &i.invite_id)
    );
    let none = list_invites(boris_token.clone(), true)
        .await
        .expect("Boris's");
    assert!(none.invites.is_empty(), "{none:?}");
    let refused = list_invites(maria_token.clone(), false)
        .await
        .expect_err("a student");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // A school: Anna creates it (admin and tutor of it); its listing holds her and her tenancy.
    let (school_id, refreshed) = identity::found_school(channel.clone(), &anna, "Лицей").await;
    let admin_token = refreshed.access_token.clone();
    let staff = eventually(
        "ListUsers of the school",
        || {
            list_users(
                &users,
                &admin_token,
                pb::ListUsersRequest {
                    school_id: school_id.clone(),
                    ..Default::default()
                },
            )
        },
        // Her admin and tutor grants in the school may reach the read model one batch apart.
        |r| r.users.len() == 3,
    )
    .await;
    assert_eq!(
        names(&staff.users),
        ["Anna Petrova", "Мария Иванова", "Ольга"]
    );
    let refused = list_users(
        &users,
        &boris_token,
        pb::ListUsersRequest {
            school_id: school_id.clone(),
            ..Default::default()
        },
    )
    .await
    .expect_err("not Boris's school");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // ListSessions: the sign-up's session (rotated by the refresh) and a second login, newest
    // first, the caller's own marked; logging out everywhere ends both.
    let second = users
        .login_with_password(pb::LoginWithPasswordRequest {
            email: anna.email.clone(),
            password: identity::PASSWORD.into(),
            client_name: "phone".into(),
        })
        .await
        .expect("logged in")
        .into_inner()
        .tokens
        .expect("tokens");
    let client = users.clone();
    let list_sessions = move |token: String, page: Option<PageRequest>| {
        let mut users = client.clone();
        async move {
            users
                .list_sessions(bearer(pb::ListSessionsRequest { page }, &token))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let sessions = eventually(
        "ListSessions",
        || list_sessions(admin_token.clone(), None),
        |r| r.sessions.len() == 2,
    )
    .await;
    let listed: Vec<(&str, &str, bool)> = sessions
        .sessions
        .iter()
        .map(|s| (s.session_id.as_str(), s.client_name.as_str(), s.current))
        .collect();
    assert_eq!(
        listed,
        [
            (second.session_id.as_str(), "phone", false),
            (refreshed.session_id.as_str(), "end-to-end test", true),
        ]
    );
    assert!(
        seconds_and_nanos(sessions.sessions[1].last_refreshed_at.as_ref())
            > seconds_and_nanos(sessions.sessions[1].started_at.as_ref()),
        "the refresh is recorded: {sessions:?}"
    );
    let one = list_sessions(admin_token.clone(), page(1, ""))
        .await
        .expect("one");
    assert_eq!(one.sessions.len(), 1);
    let rest = list_sessions(admin_token.clone(), page(1, next_token(one.page.as_ref())))
        .await
        .expect("the rest");
    assert_eq!(rest.sessions[0].session_id, refreshed.session_id);
    assert_eq!(next_token(rest.page.as_ref()), "");
    users
        .logout_everywhere(bearer(pb::LogoutEverywhereRequest {}, &second.access_token))
        .await
        .expect("logged out everywhere");
    eventually(
        "ListSessions after logging out everywhere",
        || list_sessions(admin_token.clone(), None),
        |r| r.sessions.is_empty(),
    )
    .await;
    let bad = list_sessions(admin_token.clone(), page(1, "nope"))
        .await
        .expect_err("a bad token");
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn lists_of_users_sessions_and_invites_follow_the_commands_on_the_embedded_defaults() {
    let dir = tempfile::tempdir().expect("a data directory");
    let data_dir = dir.path().to_str().expect("utf-8").to_owned();
    let server = spawn_server(
        Path::new(env!("CARGO_BIN_EXE_repitd")),
        &["serve"],
        &[
            ("REPIT_STORAGE__DATA_DIR", data_dir.as_str()),
            ("REPIT_AUTH__BOT_CREDENTIAL", BOT),
            ("REPIT_GATEWAY__RATE_LIMIT__ENABLED", "false"),
        ],
    )
    .await;
    scenario(&server.url()).await;
    let (exit, _) = server.terminate().await;
    assert!(exit.success());

    // What analysts find in the SQLite read models: no secret among the columns.
    let mut db =
        sqlx::SqliteConnection::connect(&format!("sqlite://{data_dir}/read-models.db?mode=ro"))
            .await
            .expect("the read-model file");
    for table in DIRECTORY_TABLES {
        let columns: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT name FROM pragma_table_info((SELECT name FROM sqlite_master
             WHERE type = 'table' AND name LIKE '{table}\\_g%' ESCAPE '\\'))"
        ))
        .fetch_all(&mut db)
        .await
        .expect("columns");
        assert_no_secret_columns(table, &columns);
    }
}

#[tokio::test]
async fn lists_of_users_sessions_and_invites_follow_the_commands_on_postgresql() {
    let Some(postgres) = require(Backend::Postgres) else {
        return;
    };
    let database = repit_tests::backends::fresh_postgres_database(&postgres).await;
    let server = spawn_server(
        Path::new(env!("CARGO_BIN_EXE_repitd")),
        &["serve"],
        &[
            ("REPIT_STORAGE__EVENT_STORE_URL", database.as_str()),
            ("REPIT_STORAGE__READ_MODEL_URL", database.as_str()),
            ("REPIT_AUTH__BOT_CREDENTIAL", BOT),
            ("REPIT_GATEWAY__RATE_LIMIT__ENABLED", "false"),
        ],
    )
    .await;
    scenario(&server.url()).await;
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
    let mut db = sqlx::PgConnection::connect(&database)
        .await
        .expect("the database");
    for table in DIRECTORY_TABLES {
        let columns: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_name LIKE '{table}\\_g%'"
        ))
        .fetch_all(&mut db)
        .await
        .expect("columns");
        assert_no_secret_columns(table, &columns);
    }
    // The analysts' view: grants and parent links as plain rows.
    let (parents,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM parent_links p JOIN user_roles r ON r.user_id = p.parent_id
         WHERE r.role = 'parent'",
    )
    .fetch_one(&mut db)
    .await
    .expect("parent links");
    assert_eq!(parents, 1);
}

/// The directory tables, as analysts find them.
const DIRECTORY_TABLES: [&str; 5] = [
    "users",
    "user_roles",
    "parent_links",
    "user_sessions",
    "invites",
];

/// No column of a directory table holds a hash or a secret.
fn assert_no_secret_columns(table: &str, columns: &[String]) {
    assert!(!columns.is_empty(), "{table} has columns");
    for column in columns {
        assert!(
            !["hash", "sha256", "password", "secret", "code"]
                .iter()
                .any(|word| column.contains(word)),
            "{table}.{column}"
        );
    }
}
