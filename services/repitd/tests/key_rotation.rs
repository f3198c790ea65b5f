//! A signing key revoked on the user service: a lesson service in another process, which fetches
//! the verifying keys (`GetPublicKeys`, cached for 5 minutes), accepts tokens of the new key
//! within seconds, because a token naming an unknown key makes it fetch early.

use std::path::Path;
use std::time::{Duration, Instant};

use repit_proto::repit::lesson::v1 as lesson_pb;
use repit_proto::repit::lesson::v1::lesson_service_client::LessonServiceClient;
use repit_proto::repit::user::v1 as pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;
use repit_tests::identity;
use repit_tests::identity::bearer;
use repit_tests::spawn_server;
use tonic::Code;
use uuid::Uuid;

const ROOT: &str = "root-admin@example.test";

#[tokio::test]
async fn a_remote_verifier_catches_up_with_a_revoking_rotation_within_seconds() {
    let repitd = Path::new(env!("CARGO_BIN_EXE_repitd"));
    let dir = tempfile::tempdir().expect("a data directory");
    let data_dir = dir.path().to_str().expect("utf-8").to_owned();
    let admins = format!("[\"{ROOT}\"]");
    // Both processes on the same embedded files (SQLite allows several processes).
    let shared = [("REPIT_STORAGE__DATA_DIR", data_dir.as_str())];
    let mut user_env = shared.to_vec();
    user_env.push(("REPIT_AUTH__PLATFORM_ADMIN_EMAILS", admins.as_str()));
    let user = spawn_server(repitd, &["serve", "--target", "user"], &user_env).await;
    let user_url = user.url();
    let mut lesson_env = shared.to_vec();
    lesson_env.push(("REPIT_AUTH__USER_SERVICE_URL", user_url.as_str()));
    let lesson = spawn_server(repitd, &["serve", "--target", "lesson"], &lesson_env).await;

    let mut users = UserServiceClient::new(identity::channel(&user.url()));
    let tokens = identity::sign_up_tutor_as(identity::channel(&user.url()), "Root", ROOT).await;
    let mut lessons = LessonServiceClient::new(identity::channel(&lesson.url()));
    lessons
        .list_lessons(bearer(
            lesson_pb::ListLessonsRequest::default(),
            &tokens.access_token,
        ))
        .await
        .expect("the lesson process verifies the first key");

    users
        .rotate_signing_key(bearer(
            pb::RotateSigningKeyRequest {
                request_id: Uuid::now_v7().to_string(),
                revoke_previous: true,
                ..Default::default()
            },
            &tokens.access_token,
        ))
        .await
        .expect("a platform admin rotates");
    let fresh = users
        .refresh_token(pb::RefreshTokenRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .expect("refreshed")
        .into_inner()
        .tokens
        .expect("tokens");

    // The user service itself refuses the revoked key at once.
    let refused = users
        .get_current_user(bearer(pb::GetCurrentUserRequest {}, &tokens.access_token))
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The lesson process learns the new key long before its 5-minute cache would expire.
    let started = Instant::now();
    loop {
        match lessons
            .list_lessons(bearer(
                lesson_pb::ListLessonsRequest::default(),
                &fresh.access_token,
            ))
            .await
        {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the lesson process did not fetch the new key within 20 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!(
        "the remote verifier accepted the new key after {:?}",
        started.elapsed()
    );

    for server in [lesson, user] {
        let (exit, _) = server.terminate().await;
        assert!(exit.success());
    }
}
