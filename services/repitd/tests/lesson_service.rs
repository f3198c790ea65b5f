//! The lesson service's RPCs as a client meets them, on the real embedded `repitd`: "this and
//! following" series edits, ending a series, shifting planned topics, retries, and the errors
//! bad input gets.

use std::path::Path;
use std::time::Duration;

use chrono::{Datelike, TimeDelta, Utc};
use prost_types::{FieldMask, Timestamp};
use repit_proto::repit::common::v1::{Date, TimeOfDay, Weekday};
use repit_proto::repit::lesson::v1 as pb;
use repit_proto::repit::lesson::v1::lesson_service_client::LessonServiceClient;
use repit_tests::identity::{self, SignedInChannel};
use repit_tests::{ChildServer, spawn_server};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

/// The embedded server, and a lesson client signed in as a new tutor (with the tutor's id).
async fn serve() -> (ChildServer, LessonServiceClient<SignedInChannel>, String) {
    let server = spawn_server(Path::new(env!("CARGO_BIN_EXE_repitd")), &["serve"], &[]).await;
    let channel = identity::channel(&server.url());
    let tutor = identity::sign_up_tutor(channel.clone(), "Anna Petrova").await;
    let lessons = LessonServiceClient::new(tutor.on(channel));
    (server, lessons, tutor.user_id)
}

fn minutes(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: n * 60,
        nanos: 0,
    })
}

fn date(d: chrono::NaiveDate) -> Option<Date> {
    Some(Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    })
}

fn next_monday() -> chrono::NaiveDate {
    let today = Utc::now().date_naive();
    today + TimeDelta::days(7 - i64::from(today.weekday().num_days_from_monday()) + 7)
}

fn weekly(slots: &[(Weekday, i32)], count: i32, start: chrono::NaiveDate) -> pb::Recurrence {
    pb::Recurrence {
        slots: slots
            .iter()
            .map(|(weekday, hours)| pb::WeeklySlot {
                weekday: *weekday as i32,
                start_time: Some(TimeOfDay {
                    hours: *hours,
                    minutes: 0,
                }),
            })
            .collect(),
        interval_weeks: 1,
        time_zone: "Europe/Moscow".into(),
        start_date: date(start),
        end: Some(pb::recurrence::End::OccurrenceCount(count)),
    }
}

async fn create_series(
    lessons: &mut LessonServiceClient<SignedInChannel>,
    tutor: &str,
    student: &str,
    recurrence: pb::Recurrence,
) -> pb::CreateSeriesResponse {
    lessons
        .create_series(pb::CreateSeriesRequest {
            request_id: Uuid::now_v7().to_string(),
            tutor_id: tutor.into(),
            student_id: student.into(),
            subject: "Algebra".into(),
            duration: minutes(60),
            recurrence: Some(recurrence),
            ..Default::default()
        })
        .await
        .expect("series created")
        .into_inner()
}

#[tokio::test]
async fn this_and_following_moves_the_rest_of_a_series_to_a_new_weekday() {
    let (server, mut lessons, tutor) = serve().await;
    let student = Uuid::now_v7().to_string();
    let created = create_series(
        &mut lessons,
        &tutor,
        &student,
        weekly(&[(Weekday::Monday, 16)], 4, next_monday()),
    )
    .await;
    let ids: Vec<_> = created
        .lessons
        .iter()
        .map(|l| l.lesson_id.clone())
        .collect();

    // The second occurrence is moved by hand: a later series edit keeps its time.
    let second = &created.lessons[1];
    let moved_to = second.start_time.expect("start").seconds + 2 * 3600;
    lessons
        .reschedule_lesson(pb::RescheduleLessonRequest {
            lesson_id: ids[1].clone(),
            new_start_time: Some(Timestamp {
                seconds: moved_to,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("moved by hand");

    // From the second occurrence on: Tuesdays at 17:00, 90 minutes, three occurrences.
    let changed = lessons
        .update_series(pb::UpdateSeriesRequest {
            series_id: created.series.as_ref().expect("series").series_id.clone(),
            from_lesson_id: ids[1].clone(),
            recurrence: Some(weekly(&[(Weekday::Tuesday, 17)], 3, next_monday())),
            duration: minutes(90),
            update_mask: Some(FieldMask {
                paths: vec!["recurrence".into(), "duration".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("series changed")
        .into_inner();
    let series = changed.series.expect("series");
    assert_eq!(
        series.recurrence.as_ref().expect("rule").slots[0].weekday(),
        Weekday::Tuesday
    );
    // The hand-moved occurrence kept its time and took the new duration; the other two
    // following Mondays moved to Tuesday 17:00 Moscow (14:00 UTC); nothing was added or removed.
    let by_id = |id: &str| {
        changed
            .affected_lessons
            .iter()
            .find(|l| l.lesson_id == id)
            .cloned()
            .expect("affected")
    };
    let kept = by_id(&ids[1]);
    assert_eq!(kept.start_time.expect("start").seconds, moved_to);
    assert_eq!(kept.duration, minutes(90));
    for id in &ids[2..] {
        let lesson = by_id(id);
        let start = chrono::DateTime::from_timestamp(lesson.start_time.expect("start").seconds, 0)
            .expect("instant");
        assert_eq!(start.weekday(), chrono::Weekday::Tue, "{lesson:?}");
        assert_eq!(
            start.time(),
            chrono::NaiveTime::from_hms_opt(14, 0, 0).expect("time")
        );
    }
    assert!(
        !changed
            .affected_lessons
            .iter()
            .any(|l| l.lesson_id == ids[0])
    );

    // Ending the series cancels what is left, free of charge.
    let ended = lessons
        .end_series(pb::EndSeriesRequest {
            series_id: series.series_id.clone(),
            reason: "summer break".into(),
            ..Default::default()
        })
        .await
        .expect("ended")
        .into_inner();
    assert_eq!(ended.cancelled_lesson_ids.len(), 4);
    assert_eq!(
        ended.series.expect("series").state(),
        pb::SeriesState::Ended
    );
    let again = lessons
        .end_series(pb::EndSeriesRequest {
            series_id: series.series_id,
            ..Default::default()
        })
        .await
        .expect_err("already ended");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn a_cancelled_lessons_topic_shifts_along_the_following_lessons() {
    let (server, mut lessons, tutor) = serve().await;
    let student = Uuid::now_v7().to_string();
    let created = create_series(
        &mut lessons,
        &tutor,
        &student,
        weekly(&[(Weekday::Wednesday, 15)], 4, next_monday()),
    )
    .await;
    let ids: Vec<_> = created
        .lessons
        .iter()
        .map(|l| l.lesson_id.clone())
        .collect();
    for (id, topic) in ids.iter().zip(["Fractions", "Decimals", ""]) {
        lessons
            .update_lesson(pb::UpdateLessonRequest {
                lesson_id: id.clone(),
                planned_topic: topic.into(),
                update_mask: Some(FieldMask {
                    paths: vec!["planned_topic".into()],
                }),
                ..Default::default()
            })
            .await
            .expect("topic planned");
    }
    lessons
        .cancel_lesson(pb::CancelLessonRequest {
            lesson_id: ids[0].clone(),
            reason: "ill".into(),
            ..Default::default()
        })
        .await
        .expect("cancelled");
    // The shift reads the following lessons from the read model: wait until it has them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let request = pb::ShiftPlannedTopicsRequest {
        request_id: Uuid::now_v7().to_string(),
        lesson_id: ids[0].clone(),
        ..Default::default()
    };
    let shifted = loop {
        let lesson = lessons
            .get_lesson(pb::GetLessonRequest {
                lesson_id: ids[1].clone(),
            })
            .await
            .map(|r| r.into_inner().lesson.expect("lesson"));
        if lesson.is_ok_and(|l| l.planned_topic == "Decimals") {
            break lessons
                .shift_planned_topics(request.clone())
                .await
                .expect("shifted")
                .into_inner();
        }
        assert!(tokio::time::Instant::now() < deadline, "read model lagging");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let chain: Vec<(&str, &str, &str)> = shifted
        .shifts
        .iter()
        .map(|s| {
            (
                s.lesson_id.as_str(),
                s.previous_planned_topic.as_str(),
                s.planned_topic.as_str(),
            )
        })
        .collect();
    assert_eq!(
        chain,
        [
            (ids[0].as_str(), "Fractions", ""),
            (ids[1].as_str(), "Decimals", "Fractions"),
            (ids[2].as_str(), "", "Decimals"),
        ]
    );
    assert_eq!(shifted.unplaced_topic, "");

    // A retry answers the same and shifts nothing twice.
    let retried = lessons
        .shift_planned_topics(request)
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried.shifts.len(), 3);
    assert_eq!(retried.shifts[1].planned_topic, "Fractions");
    // A new shift of the same lesson is refused.
    let refused = lessons
        .shift_planned_topics(pb::ShiftPlannedTopicsRequest {
            request_id: Uuid::now_v7().to_string(),
            lesson_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .expect_err("already shifted");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn bad_input_is_refused_with_every_bad_field_named_and_nothing_stored() {
    let (server, mut lessons, tutor) = serve().await;
    let refused = lessons
        .schedule_lesson(pb::ScheduleLessonRequest {
            request_id: "not-a-uuid".into(),
            tutor_id: "TUTOR".into(),
            student_id: String::new(),
            start_time: None,
            duration: minutes(3),
            time_zone: "Mars/Olympus".into(),
            subject: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("invalid");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let bad_request = refused
        .get_details_bad_request()
        .expect("BadRequest detail");
    let fields: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    for field in [
        "tutor_id",
        "student_id",
        "start_time",
        "duration",
        "time_zone",
        "subject",
        "request_id",
    ] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "INVALID_FIELD"
    );

    let listed = lessons
        .list_lessons(pb::ListLessonsRequest {
            tutor_id: tutor.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.lessons.is_empty());

    // A series rule that never ends, and one with too many occurrences.
    for (end, field) in [
        (None, "recurrence.end"),
        (
            Some(pb::recurrence::End::OccurrenceCount(400)),
            "recurrence.occurrence_count",
        ),
    ] {
        let mut rule = weekly(&[(Weekday::Monday, 10)], 1, next_monday());
        rule.end = end;
        let refused = lessons
            .create_series(pb::CreateSeriesRequest {
                tutor_id: tutor.clone(),
                student_id: Uuid::now_v7().to_string(),
                subject: "Art".into(),
                duration: minutes(45),
                recurrence: Some(rule),
                ..Default::default()
            })
            .await
            .expect_err("invalid rule");
        assert_eq!(refused.code(), Code::InvalidArgument);
        let violations = refused.get_details_bad_request().expect("BadRequest");
        assert!(
            violations.field_violations.iter().any(|v| v.field == field),
            "{field}: {violations:?}"
        );
    }

    // An expected revision that does not hold is ABORTED and changes nothing.
    let lesson = lessons
        .schedule_lesson(pb::ScheduleLessonRequest {
            tutor_id: tutor.clone(),
            student_id: Uuid::now_v7().to_string(),
            start_time: Some(Timestamp {
                seconds: (Utc::now() + TimeDelta::days(5)).timestamp(),
                nanos: 0,
            }),
            duration: minutes(45),
            time_zone: "Europe/Moscow".into(),
            subject: "Art".into(),
            ..Default::default()
        })
        .await
        .expect("scheduled")
        .into_inner()
        .lesson
        .expect("lesson");
    let aborted = lessons
        .cancel_lesson(pb::CancelLessonRequest {
            lesson_id: lesson.lesson_id.clone(),
            reason: "x".into(),
            expected_revision: Some(7),
            ..Default::default()
        })
        .await
        .expect_err("stale revision");
    assert_eq!(aborted.code(), Code::Aborted);
    let unknown = lessons
        .mark_attendance(pb::MarkAttendanceRequest {
            lesson_id: Uuid::now_v7().to_string(),
            attendance: pb::Attendance::Attended as i32,
            ..Default::default()
        })
        .await
        .expect_err("unknown lesson");
    assert_eq!(unknown.code(), Code::NotFound);
    let early = lessons
        .mark_attendance(pb::MarkAttendanceRequest {
            lesson_id: lesson.lesson_id.clone(),
            attendance: pb::Attendance::Attended as i32,
            ..Default::default()
        })
        .await
        .expect_err("not started");
    assert_eq!(early.code(), Code::FailedPrecondition);
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn a_retried_schedule_returns_the_first_answer() {
    let (server, mut lessons, tutor) = serve().await;
    let request = pb::ScheduleLessonRequest {
        request_id: Uuid::now_v7().to_string(),
        tutor_id: tutor,
        student_id: Uuid::now_v7().to_string(),
        start_time: Some(Timestamp {
            seconds: (Utc::now() + TimeDelta::days(2)).timestamp(),
            nanos: 0,
        }),
        duration: minutes(60),
        time_zone: "Europe/Moscow".into(),
        subject: "History".into(),
        ..Default::default()
    };
    let first = lessons
        .schedule_lesson(request.clone())
        .await
        .expect("first")
        .into_inner();
    let second = lessons
        .schedule_lesson(request)
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first.lesson, second.lesson);
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn a_schedule_watch_sends_a_snapshot_then_every_change_until_shutdown() {
    use pb::watch_schedule_response::Update;
    let (server, mut lessons, tutor) = serve().await;
    let now = Utc::now();
    let lesson_at = |days: i64| pb::ScheduleLessonRequest {
        request_id: Uuid::now_v7().to_string(),
        tutor_id: tutor.clone(),
        student_id: Uuid::now_v7().to_string(),
        start_time: Some(Timestamp {
            seconds: (now + TimeDelta::days(days)).timestamp(),
            nanos: 0,
        }),
        duration: minutes(60),
        time_zone: "Asia/Tokyo".into(),
        subject: "Japanese".into(),
        ..Default::default()
    };
    let before = lessons
        .schedule_lesson(lesson_at(1))
        .await
        .expect("scheduled")
        .into_inner()
        .lesson
        .expect("lesson");
    // Wait until the read model has it, so the snapshot must contain it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while lessons
        .get_lesson(pb::GetLessonRequest {
            lesson_id: before.lesson_id.clone(),
        })
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "read model lagging");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watch = lessons
        .watch_schedule(pb::WatchScheduleRequest {
            scope: Some(pb::ScheduleScope {
                scope: Some(pb::schedule_scope::Scope::TutorId(tutor.clone())),
            }),
            time_range: Some(repit_proto::repit::common::v1::TimeRange {
                start: Some(Timestamp {
                    seconds: now.timestamp(),
                    nanos: 0,
                }),
                end: Some(Timestamp {
                    seconds: (now + TimeDelta::days(7)).timestamp(),
                    nanos: 0,
                }),
            }),
            time_zone: "Asia/Tokyo".into(),
            include_cancelled: false,
        })
        .await
        .expect("watch opened")
        .into_inner();
    let Some(Update::Snapshot(snapshot)) =
        next(&mut watch).await.expect("ok").and_then(|m| m.update)
    else {
        panic!("the snapshot comes first")
    };
    assert_eq!(snapshot.time_zone, "Asia/Tokyo");
    assert_eq!(snapshot.entries.len(), 1);

    let added = lessons
        .schedule_lesson(lesson_at(2))
        .await
        .expect("scheduled")
        .into_inner()
        .lesson
        .expect("lesson");
    let Some(Update::Upserted(entry)) = next(&mut watch).await.expect("ok").and_then(|m| m.update)
    else {
        panic!("the new lesson is sent")
    };
    assert_eq!(entry.lesson.expect("lesson").lesson_id, added.lesson_id);

    lessons
        .cancel_lesson(pb::CancelLessonRequest {
            lesson_id: before.lesson_id.clone(),
            reason: "moved away".into(),
            ..Default::default()
        })
        .await
        .expect("cancelled");
    let Some(Update::RemovedLessonId(removed)) =
        next(&mut watch).await.expect("ok").and_then(|m| m.update)
    else {
        panic!("the cancelled lesson leaves the view")
    };
    assert_eq!(removed, before.lesson_id);

    // Shutdown ends the stream with UNAVAILABLE, so the client knows to reconnect.
    let stopping = tokio::spawn(server.terminate());
    let ended = next(&mut watch).await.expect_err("the stream ends");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    let (exit, _) = stopping.await.expect("terminated");
    assert!(exit.success());
}

async fn next(
    watch: &mut tonic::Streaming<pb::WatchScheduleResponse>,
) -> Result<Option<pb::WatchScheduleResponse>, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("a message in time")
}

#[tokio::test]
async fn a_view_without_scope_or_zone_shows_the_callers_own_schedule_in_their_profile_zone() {
    let (server, mut lessons, tutor) = serve().await;
    let start = Utc::now() + TimeDelta::days(5);
    let lesson = lessons
        .schedule_lesson(pb::ScheduleLessonRequest {
            tutor_id: tutor.clone(),
            student_id: Uuid::now_v7().to_string(),
            start_time: Some(Timestamp {
                seconds: start.timestamp(),
                nanos: 0,
            }),
            duration: minutes(60),
            time_zone: "Europe/Moscow".into(),
            subject: "Chemistry".into(),
            ..Default::default()
        })
        .await
        .expect("scheduled")
        .into_inner()
        .lesson
        .expect("lesson");
    // The tutor signed up in Europe/Moscow: the token says so, and the view uses it.
    // Moscow keeps UTC+3 all year.
    let moscow_date = (start + TimeDelta::hours(3)).date_naive();
    let mut entries = Vec::new();
    for _ in 0..200 {
        let day = lessons
            .get_day_schedule(pb::GetDayScheduleRequest {
                date: date(moscow_date),
                ..Default::default()
            })
            .await
            .expect("the caller's own day")
            .into_inner();
        assert_eq!(day.time_zone, "Europe/Moscow");
        entries = day.day.expect("a day").entries;
        if !entries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(entries.len(), 1, "the lesson shows in the read model");
    assert_eq!(
        entries[0].lesson.as_ref().expect("lesson").lesson_id,
        lesson.lesson_id
    );
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

#[tokio::test]
async fn the_nil_uuid_is_nobodys_tenancy() {
    let (server, mut lessons, _tutor) = serve().await;
    let refused = lessons
        .schedule_lesson(pb::ScheduleLessonRequest {
            tutor_id: Uuid::nil().to_string(),
            student_id: Uuid::now_v7().to_string(),
            start_time: Some(Timestamp {
                seconds: (Utc::now() + TimeDelta::days(3)).timestamp(),
                nanos: 0,
            }),
            duration: minutes(60),
            time_zone: "Europe/Moscow".into(),
            subject: "History".into(),
            ..Default::default()
        })
        .await
        .expect_err("another tenancy");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}
