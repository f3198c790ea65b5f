//! A school admin on the real `repitd`: joined by an ADMIN invite into a school, they see and
//! manage the lessons of the school's tutors — tutors who joined by a TUTOR invite, with or
//! without a practice of their own, included — list their tenancies, and see nothing of a tutor
//! outside the school (lesson.proto, "Who may do what"; user.proto, ListUsers).

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use prost_types::Timestamp;
use repit_proto::repit::lesson::v1 as pb;
use repit_proto::repit::lesson::v1::lesson_service_client::LessonServiceClient;
use repit_proto::repit::user::v1 as user_pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;
use repit_tests::identity::bearer;
use repit_tests::identity::{self, Account};
use repit_tests::spawn_server;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

/// A code for `role` in `school_id`, made by its admin.
async fn school_invite(
    users: &mut UserServiceClient<Channel>,
    admin_token: &str,
    role: user_pb::Role,
    school_id: &str,
) -> String {
    users
        .create_invite(bearer(
            user_pb::CreateInviteRequest {
                request_id: Uuid::now_v7().to_string(),
                role: role as i32,
                school_id: school_id.to_owned(),
                ..Default::default()
            },
            admin_token,
        ))
        .await
        .expect("invited")
        .into_inner()
        .code
}

/// Redeems `code` from a browser as a new account named `name`.
async fn join_as_new_account(
    users: &mut UserServiceClient<Channel>,
    code: &str,
    name: &str,
) -> user_pb::RedeemInviteResponse {
    users
        .redeem_invite(user_pb::RedeemInviteRequest {
            request_id: Uuid::now_v7().to_string(),
            code: code.to_owned(),
            redeemer: Some(user_pb::redeem_invite_request::Redeemer::NewAccount(
                user_pb::EmailPassword {
                    email: format!("{}-{}@example.test", name.to_lowercase(), Uuid::now_v7()),
                    password: identity::PASSWORD.into(),
                },
            )),
            display_name: name.into(),
            time_zone: "Europe/Moscow".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("{name} joins: {status:?}"))
        .into_inner()
}

fn lesson_request(tutor_id: &str, days_ahead: i64) -> pb::ScheduleLessonRequest {
    let start = Utc::now() + TimeDelta::days(days_ahead);
    pb::ScheduleLessonRequest {
        tutor_id: tutor_id.to_owned(),
        student_id: Uuid::now_v7().to_string(),
        start_time: Some(Timestamp {
            seconds: start.timestamp(),
            nanos: 0,
        }),
        duration: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        time_zone: "Europe/Moscow".into(),
        subject: "Chemistry".into(),
        ..Default::default()
    }
}

async fn schedule(
    lessons: &mut LessonServiceClient<Channel>,
    token: &str,
    request: pb::ScheduleLessonRequest,
) -> Result<pb::Lesson, tonic::Status> {
    lessons
        .schedule_lesson(bearer(request, token))
        .await
        .map(|r| r.into_inner().lesson.expect("lesson"))
}

#[tokio::test]
async fn a_school_admin_manages_the_lessons_of_the_schools_tutors_and_no_others() {
    let server = spawn_server(
        Path::new(env!("CARGO_BIN_EXE_repitd")),
        &["serve"],
        &[("REPIT_GATEWAY__RATE_LIMIT__ENABLED", "false")],
    )
    .await;
    let channel = identity::channel(&server.url());
    let mut users = UserServiceClient::new(channel.clone());
    let mut lessons = LessonServiceClient::new(channel.clone());

    // Anna founds the school; Boris joins it as a tutor; Vera becomes its admin only.
    let anna: Account = identity::sign_up_tutor(channel.clone(), "Anna Petrova").await;
    let (school_id, founder) = identity::found_school(channel.clone(), &anna, "Школа №1").await;
    let founder = founder.access_token;
    let boris = identity::sign_up_tutor(channel.clone(), "Boris Ivanov").await;
    let code = school_invite(&mut users, &founder, user_pb::Role::Tutor, &school_id).await;
    let boris_token = users
        .redeem_invite(bearer(
            user_pb::RedeemInviteRequest {
                request_id: Uuid::now_v7().to_string(),
                code,
                redeemer: Some(user_pb::redeem_invite_request::Redeemer::CurrentUser(
                    user_pb::CurrentUser {},
                )),
                ..Default::default()
            },
            &boris.access_token,
        ))
        .await
        .expect("Boris joins the school")
        .into_inner()
        .tokens
        .map_or(boris.access_token.clone(), |t| t.access_token);
    let code = school_invite(&mut users, &founder, user_pb::Role::Admin, &school_id).await;
    let vera = join_as_new_account(&mut users, &code, "Vera")
        .await
        .tokens
        .expect("tokens")
        .access_token;
    let carl = identity::sign_up_tutor(channel.clone(), "Carl Outsider").await;
    // Dasha joins the school as a new account: her only tutor grant is the school's.
    let code = school_invite(&mut users, &founder, user_pb::Role::Tutor, &school_id).await;
    let dasha = join_as_new_account(&mut users, &code, "Dasha").await;
    let dasha_id = dasha.user.expect("user").user_id;
    let dasha_token = dasha.tokens.expect("tokens").access_token;

    let borises = schedule(
        &mut lessons,
        &boris_token,
        lesson_request(&boris.user_id, 3),
    )
    .await
    .expect("Boris schedules");
    let carls = schedule(
        &mut lessons,
        &carl.access_token,
        lesson_request(&carl.user_id, 3),
    )
    .await
    .expect("Carl schedules");

    // Vera sees Boris's lesson once the read models have the school's tutors and the lesson.
    let started = Instant::now();
    loop {
        let listed = lessons
            .list_lessons(bearer(
                pb::ListLessonsRequest {
                    tutor_id: boris.user_id.clone(),
                    ..Default::default()
                },
                &vera,
            ))
            .await;
        match listed {
            Ok(answer) if !answer.get_ref().lessons.is_empty() => {
                let ids: Vec<&str> = answer
                    .get_ref()
                    .lessons
                    .iter()
                    .map(|l| l.lesson_id.as_str())
                    .collect();
                assert_eq!(ids, [borises.lesson_id.as_str()]);
                break;
            }
            // NOT_FOUND while the school's tutors are not projected yet; empty while the lesson
            // is not.
            Ok(_) => {}
            Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the admin never saw the school tutor's lesson"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Everything she may see: the school's tutors' lessons, Carl's not.
    let all = lessons
        .list_lessons(bearer(pb::ListLessonsRequest::default(), &vera))
        .await
        .expect("list")
        .into_inner();
    assert!(all.lessons.iter().all(|l| l.tutor_id != carl.user_id));
    let hidden = lessons
        .get_lesson(bearer(
            pb::GetLessonRequest {
                lesson_id: carls.lesson_id.clone(),
            },
            &vera,
        ))
        .await
        .expect_err("Carl's lesson is outside the school");
    assert_eq!(hidden.code(), Code::NotFound);

    // She schedules for the school's tutor (naming him: she teaches nobody herself), not for
    // Carl, and not without a tutor.
    let hers = schedule(&mut lessons, &vera, lesson_request(&boris.user_id, 5))
        .await
        .expect("the admin schedules for the school's tutor");
    assert_eq!(hers.tutor_id, boris.user_id);
    let refused = schedule(&mut lessons, &vera, lesson_request(&carl.user_id, 5))
        .await
        .expect_err("not the school's tutor");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let unnamed = schedule(&mut lessons, &vera, lesson_request("", 5))
        .await
        .expect_err("an admin names the tutor");
    assert_eq!(unnamed.code(), Code::InvalidArgument, "{unnamed:?}");

    // She cancels as the tutor's side would.
    let cancelled = lessons
        .cancel_lesson(bearer(
            pb::CancelLessonRequest {
                lesson_id: hers.lesson_id.clone(),
                reason: "room unavailable".into(),
                ..Default::default()
            },
            &vera,
        ))
        .await
        .expect("the admin cancels")
        .into_inner()
        .lesson
        .expect("lesson");
    assert_eq!(cancelled.state(), pb::LessonState::Cancelled);
    assert_eq!(
        cancelled.cancellation.expect("cancellation").cancelled_by(),
        pb::CancellingParty::Tutor
    );

    // Dasha, a tutor of the school only, is in Vera's administration like Boris: her lessons,
    // her tenancy's accounts and invites.
    let dashas = schedule(&mut lessons, &dasha_token, lesson_request(&dasha_id, 7))
        .await
        .expect("Dasha schedules");
    let started = Instant::now();
    while lessons
        .get_lesson(bearer(
            pb::GetLessonRequest {
                lesson_id: dashas.lesson_id.clone(),
            },
            &vera,
        ))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the admin never saw the invited tutor's lesson"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    users
        .list_users(bearer(
            user_pb::ListUsersRequest {
                tutor_id: dasha_id.clone(),
                ..Default::default()
            },
            &vera,
        ))
        .await
        .expect("the admin lists the invited tutor's tenancy");
    users
        .list_invites(bearer(
            user_pb::ListInvitesRequest {
                tutor_id: dasha_id.clone(),
                ..Default::default()
            },
            &vera,
        ))
        .await
        .expect("the admin lists the invited tutor's invites");
    let outside = users
        .list_users(bearer(
            user_pb::ListUsersRequest {
                tutor_id: carl.user_id.clone(),
                ..Default::default()
            },
            &vera,
        ))
        .await
        .expect_err("Carl's tenancy is outside the school");
    assert_eq!(outside.code(), Code::PermissionDenied);

    // The founder, admin and tutor at once, sees her school's tutor's lessons too.
    let founders = lessons
        .get_lesson(bearer(
            pb::GetLessonRequest {
                lesson_id: borises.lesson_id.clone(),
            },
            &founder,
        ))
        .await
        .expect("the founder sees the school tutor's lesson");
    assert_eq!(
        founders.into_inner().lesson.expect("lesson").tutor_id,
        boris.user_id
    );

    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}
