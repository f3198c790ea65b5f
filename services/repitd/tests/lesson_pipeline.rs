//! The event pipeline end to end, proven with the lesson service: command → event store →
//! (relay → JetStream →) projection → read model → query, with the real `repitd` binaries.
//!
//! - embedded: one `repitd serve` on SQLite, no NATS;
//! - distributed: the lesson service on the PostgreSQL event store, the relay, and the
//!   projections on JetStream + PostgreSQL, as three processes;
//! - a projections process killed with SIGKILL mid-stream and restarted leaves the read model
//!   exactly right;
//! - clients racing for one slot: exactly one booking wins.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use prost_types::Timestamp;
use repit_proto::repit::common::v1::{self as common, Date, TimeOfDay, Weekday};
use repit_proto::repit::lesson::v1 as pb;
use repit_proto::repit::lesson::v1::lesson_service_client::LessonServiceClient;
use repit_tests::identity::{self, SignedInChannel};
use repit_tests::{Backend, ChildServer, require, spawn_server};
use sqlx::Connection;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

fn repitd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_repitd"))
}

/// A lesson client of `lessons`, signed in as a new tutor of the user service at `users`,
/// and the tutor's id.
async fn signed_in(
    users: &ChildServer,
    lessons: &ChildServer,
) -> (LessonServiceClient<SignedInChannel>, String) {
    let tutor = identity::sign_up_tutor(identity::channel(&users.url()), "Anna Petrova").await;
    let client = LessonServiceClient::new(tutor.on(identity::channel(&lessons.url())));
    (client, tutor.user_id)
}

fn ts(at: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

fn hour() -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: 3600,
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

/// Polls `probe` until it returns Some, for the read model to catch up (bounded: 20 s).
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The scenario both modes run: a series, a reschedule, a cancellation, attendance and an
/// outcome, a refused double booking, then the schedule read back from the read models.
async fn scenario(lessons: &mut LessonServiceClient<SignedInChannel>, tutor: &str) {
    let tutor = tutor.to_owned();
    let student = Uuid::now_v7().to_string();
    let zone = "Europe/Berlin";
    // Next Monday, well in the future, so the policy sees plenty of notice.
    let today = Utc::now().date_naive();
    let monday = today + TimeDelta::days(7 - i64::from(today.weekday().num_days_from_monday()) + 7);

    let created = lessons
        .create_series(pb::CreateSeriesRequest {
            request_id: Uuid::now_v7().to_string(),
            tutor_id: tutor.clone(),
            student_id: student.clone(),
            subject: "Mathematics".into(),
            duration: hour(),
            recurrence: Some(pb::Recurrence {
                slots: vec![
                    pb::WeeklySlot {
                        weekday: Weekday::Monday as i32,
                        start_time: Some(TimeOfDay {
                            hours: 18,
                            minutes: 0,
                        }),
                    },
                    pb::WeeklySlot {
                        weekday: Weekday::Wednesday as i32,
                        start_time: Some(TimeOfDay {
                            hours: 17,
                            minutes: 30,
                        }),
                    },
                ],
                interval_weeks: 1,
                time_zone: zone.into(),
                start_date: date(monday),
                end: Some(pb::recurrence::End::OccurrenceCount(4)),
            }),
            ..Default::default()
        })
        .await
        .expect("series created")
        .into_inner();
    let series = created.series.expect("series");
    assert_eq!(created.lessons.len(), 4);
    assert_eq!(series.occurrence_count, 4);
    let ids: Vec<String> = created
        .lessons
        .iter()
        .map(|l| l.lesson_id.clone())
        .collect();

    // Reschedule the Wednesday occurrence by one hour; the original time is kept.
    let wednesday = &created.lessons[1];
    let original = wednesday.start_time.expect("start");
    let moved = lessons
        .reschedule_lesson(pb::RescheduleLessonRequest {
            lesson_id: wednesday.lesson_id.clone(),
            new_start_time: Some(Timestamp {
                seconds: original.seconds + 3600,
                nanos: 0,
            }),
            reason: "dentist".into(),
            ..Default::default()
        })
        .await
        .expect("rescheduled")
        .into_inner()
        .lesson
        .expect("lesson");
    assert_eq!(moved.original_start_time, Some(original));
    assert_eq!(
        moved.start_time.expect("start").seconds,
        original.seconds + 3600
    );

    // The student cancels the second Monday with plenty of notice: excused, free.
    let cancelled = lessons
        .cancel_lesson(pb::CancelLessonRequest {
            lesson_id: ids[2].clone(),
            cancelled_by: pb::CancellingParty::Student as i32,
            reason: "holiday".into(),
            ..Default::default()
        })
        .await
        .expect("cancelled")
        .into_inner();
    let cancellation = cancelled.cancellation.expect("cancellation");
    assert_eq!(cancellation.kind(), pb::CancellationKind::Excused);
    assert!(!cancellation.fee_applies);

    // A lesson that was held this morning: attendance, then the outcome.
    let held = lessons
        .schedule_lesson(pb::ScheduleLessonRequest {
            request_id: Uuid::now_v7().to_string(),
            tutor_id: tutor.clone(),
            student_id: student.clone(),
            start_time: ts(Utc::now() - TimeDelta::hours(3)),
            duration: hour(),
            time_zone: zone.into(),
            subject: "Mathematics".into(),
            planned_topic: "Quadratic equations".into(),
            ..Default::default()
        })
        .await
        .expect("past lesson recorded")
        .into_inner()
        .lesson
        .expect("lesson");
    lessons
        .mark_attendance(pb::MarkAttendanceRequest {
            lesson_id: held.lesson_id.clone(),
            attendance: pb::Attendance::Attended as i32,
            ..Default::default()
        })
        .await
        .expect("attendance marked");
    let outcome = lessons
        .record_lesson_outcome(pb::RecordLessonOutcomeRequest {
            lesson_id: held.lesson_id.clone(),
            skills: vec!["factoring".into()],
            mastery: pb::Mastery::Learned as i32,
            comment: "good work".into(),
            ..Default::default()
        })
        .await
        .expect("outcome recorded")
        .into_inner()
        .lesson
        .expect("lesson");
    assert_eq!(outcome.state(), pb::LessonState::Conducted);
    assert_eq!(
        outcome.outcome.expect("outcome").topic,
        "Quadratic equations"
    );

    // Booking over the first Monday is refused, naming the conflict.
    let first = &created.lessons[0];
    let refused = lessons
        .schedule_lesson(pb::ScheduleLessonRequest {
            request_id: Uuid::now_v7().to_string(),
            tutor_id: tutor.clone(),
            student_id: Uuid::now_v7().to_string(),
            start_time: Some(Timestamp {
                seconds: first.start_time.expect("start").seconds + 1800,
                nanos: 0,
            }),
            duration: hour(),
            time_zone: zone.into(),
            subject: "Physics".into(),
            ..Default::default()
        })
        .await
        .expect_err("double booking");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let info = refused.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "RULE_VIOLATED");
    assert_eq!(info.metadata["rule"], "no_double_booking");
    assert_eq!(info.metadata["conflicting_lesson_id"], first.lesson_id);

    // The week of the first occurrence, read back from the read model in the tutor's zone.
    let week = eventually("the week schedule to show the reschedule", || {
        let mut lessons = lessons.clone();
        let tutor = tutor.clone();
        async move {
            let week = lessons
                .get_week_schedule(pb::GetWeekScheduleRequest {
                    scope: Some(pb::ScheduleScope {
                        scope: Some(pb::schedule_scope::Scope::TutorId(tutor)),
                    }),
                    date: date(monday),
                    time_zone: "Europe/Berlin".into(),
                    include_cancelled: true,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            let entries: Vec<_> = week.days.iter().flat_map(|d| d.entries.clone()).collect();
            let moved = entries.iter().any(|e| {
                e.local_start_time
                    == Some(TimeOfDay {
                        hours: 18,
                        minutes: 30,
                    })
            });
            (entries.len() == 2 && moved).then_some(week)
        }
    })
    .await;
    assert_eq!(week.days.len(), 7);
    assert_eq!(
        week.days[0].entries[0].local_start_time,
        Some(TimeOfDay {
            hours: 18,
            minutes: 0
        })
    );
    assert_eq!(
        week.days[2].entries[0].local_start_time,
        Some(TimeOfDay {
            hours: 18,
            minutes: 30
        })
    );

    // Every lesson of the series, with the cancellation, and the held lesson's outcome.
    let listed = eventually("the cancellation to reach the read model", || {
        let mut lessons = lessons.clone();
        let series_id = series.series_id.clone();
        async move {
            let page = lessons
                .list_lessons(pb::ListLessonsRequest {
                    series_id,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            page.lessons
                .iter()
                .any(|l| l.state() == pb::LessonState::Cancelled)
                .then_some(page)
        }
    })
    .await;
    let states: Vec<_> = listed.lessons.iter().map(|l| l.state()).collect();
    assert_eq!(
        states,
        [
            pb::LessonState::Scheduled,
            pb::LessonState::Scheduled,
            pb::LessonState::Cancelled,
            pb::LessonState::Scheduled
        ]
    );
    let got = eventually("the outcome to reach the read model", || {
        let mut lessons = lessons.clone();
        let id = held.lesson_id.clone();
        async move {
            let lesson = lessons
                .get_lesson(pb::GetLessonRequest { lesson_id: id })
                .await
                .ok()?
                .into_inner()
                .lesson?;
            lesson.outcome.is_some().then_some(lesson)
        }
    })
    .await;
    assert_eq!(got.state(), pb::LessonState::Conducted);

    // The iCalendar export carries every lesson once, the cancelled one marked.
    let ics = lessons
        .export_calendar(pb::ExportCalendarRequest {
            owner: Some(pb::CalendarOwner {
                owner: Some(pb::calendar_owner::Owner::TutorId(tutor.clone())),
            }),
            include_cancelled: true,
            language: common::Language::En as i32,
            ..Default::default()
        })
        .await
        .expect("calendar")
        .into_inner();
    let text = String::from_utf8(ics.content).expect("utf-8");
    assert!(text.starts_with("BEGIN:VCALENDAR\r\n"), "{text}");
    assert_eq!(text.matches("BEGIN:VEVENT").count(), 5, "{text}");
    assert_eq!(text.matches("STATUS:CANCELLED").count(), 1, "{text}");
    assert!(
        text.contains(&format!("UID:{}@repit.app", ids[0])),
        "{text}"
    );
}

#[tokio::test]
async fn the_scenario_runs_embedded_on_sqlite_without_nats() {
    let server = spawn_server(repitd(), &["serve"], &[]).await;
    let (mut lessons, tutor) = signed_in(&server, &server).await;
    scenario(&mut lessons, &tutor).await;
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

struct Distributed {
    env: Vec<(String, String)>,
    /// The user service, alone: the lesson process fetches its verifying keys from it.
    user: ChildServer,
    lesson: ChildServer,
    relay: ChildServer,
    projections: Option<ChildServer>,
    database: String,
}

impl Distributed {
    async fn start() -> Option<Self> {
        let postgres = require(Backend::Postgres)?;
        let nats = require(Backend::Nats)?;
        let database = repit_tests::backends::fresh_postgres_database(&postgres).await;
        let unique = Uuid::now_v7().simple().to_string();
        let env: Vec<(String, String)> = vec![
            ("REPIT_STORAGE__EVENT_STORE_URL".into(), database.clone()),
            ("REPIT_STORAGE__READ_MODEL_URL".into(), database.clone()),
            ("REPIT_NATS__URL".into(), nats),
            ("REPIT_NATS__STREAM".into(), format!("E2E_{unique}")),
            ("REPIT_NATS__SUBJECT_PREFIX".into(), format!("e2e.{unique}")),
        ];
        let user = Self::spawn(&env, "user").await;
        let mut lesson_env = env.clone();
        lesson_env.push(("REPIT_AUTH__USER_SERVICE_URL".into(), user.url()));
        let lesson = Self::spawn(&lesson_env, "lesson").await;
        let relay = Self::spawn(&env, "relay").await;
        let projections = Self::spawn(&env, "projections").await;
        Some(Self {
            env,
            user,
            lesson,
            relay,
            projections: Some(projections),
            database,
        })
    }

    async fn spawn(env: &[(String, String)], target: &str) -> ChildServer {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        spawn_server(repitd(), &["serve", "--target", target], &env).await
    }

    async fn stop(self) {
        for server in [
            Some(self.lesson),
            Some(self.user),
            Some(self.relay),
            self.projections,
        ]
        .into_iter()
        .flatten()
        {
            let (exit, _) = server.terminate().await;
            assert!(exit.success(), "repitd exited with {exit}");
        }
    }
}

#[tokio::test]
async fn the_scenario_runs_distributed_on_postgres_and_jetstream() {
    let Some(mesh) = Distributed::start().await else {
        return;
    };
    let (mut lessons, tutor) = signed_in(&mesh.user, &mesh.lesson).await;
    scenario(&mut lessons, &tutor).await;

    // Every event carries the request's correlation id and trace context (DESIGN.md).
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = tonic::Request::new(pb::ScheduleLessonRequest {
        tutor_id: tutor.clone(),
        student_id: Uuid::now_v7().to_string(),
        start_time: ts(Utc::now() + TimeDelta::days(9)),
        duration: hour(),
        time_zone: "Europe/Berlin".into(),
        subject: "Biology".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "req-e2e-1".parse().expect("ascii"));
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    let lesson = lessons
        .schedule_lesson(request)
        .await
        .expect("scheduled")
        .into_inner()
        .lesson
        .expect("lesson");
    let mut conn = sqlx::PgConnection::connect(&mesh.database)
        .await
        .expect("connect");
    let (metadata,): (Vec<u8>,) = sqlx::query_as(
        "SELECT metadata FROM event_store.events WHERE stream = $1 AND revision = 0",
    )
    .bind(format!("lesson-{}", lesson.lesson_id))
    .fetch_one(&mut conn)
    .await
    .expect("the lesson's first event");
    let metadata = <repit_proto::repit::common::v1::EventMetadata as prost::Message>::decode(
        metadata.as_slice(),
    )
    .expect("event metadata");
    assert_eq!(metadata.correlation_id, "req-e2e-1");
    assert_eq!(metadata.traceparent, traceparent);
    mesh.stop().await;
}

/// Counts rows and compares every lesson's revision in the read model with its stream.
async fn lesson_rows(database: &str, tutor: &str) -> Vec<(String, i64)> {
    let mut conn = sqlx::PgConnection::connect(database)
        .await
        .expect("connect");
    sqlx::query_as::<_, (String, i64)>(
        "SELECT lesson_id, revision FROM lessons WHERE tutor_id = $1 ORDER BY lesson_id",
    )
    .bind(tutor)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default()
}

#[tokio::test]
async fn a_projections_process_killed_mid_stream_resumes_exactly() {
    let Some(mut mesh) = Distributed::start().await else {
        return;
    };
    let (mut lessons, tutor) = signed_in(&mesh.user, &mesh.lesson).await;
    let base = Utc::now() + TimeDelta::days(30);
    const LESSONS: usize = 300;
    let mut expected = Vec::new();
    for i in 0..LESSONS {
        let lesson = lessons
            .schedule_lesson(pb::ScheduleLessonRequest {
                request_id: Uuid::now_v7().to_string(),
                tutor_id: tutor.clone(),
                student_id: Uuid::now_v7().to_string(),
                start_time: ts(base + TimeDelta::hours(i as i64)),
                duration: hour(),
                time_zone: "Europe/Moscow".into(),
                subject: "Chemistry".into(),
                ..Default::default()
            })
            .await
            .expect("scheduled")
            .into_inner()
            .lesson
            .expect("lesson");
        // Every third lesson gets a second event, so revisions are not all 0.
        let revision = if i % 3 == 0 {
            lessons
                .update_lesson(pb::UpdateLessonRequest {
                    lesson_id: lesson.lesson_id.clone(),
                    planned_topic: format!("topic {i}"),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["planned_topic".into()],
                    }),
                    ..Default::default()
                })
                .await
                .expect("updated")
                .into_inner()
                .revision
        } else {
            lesson.revision
        };
        expected.push((lesson.lesson_id, revision as i64));
        if i == LESSONS / 3 {
            // Mid-stream: the projections process dies without a chance to clean up.
            if let Some(projections) = mesh.projections.take() {
                projections.kill().await;
            }
        }
        if i == 2 * LESSONS / 3 {
            mesh.projections = Some(Distributed::spawn(&mesh.env, "projections").await);
        }
    }
    expected.sort();
    let rows = eventually("the read model to catch up after the restart", || {
        let database = mesh.database.clone();
        let tutor = tutor.clone();
        let expected = expected.clone();
        async move {
            let rows = lesson_rows(&database, &tutor).await;
            (rows == expected).then_some(rows)
        }
    })
    .await;
    assert_eq!(rows.len(), LESSONS);

    // Nothing twice: the checkpoint counted each lesson event exactly once.
    let mut conn = sqlx::PgConnection::connect(&mesh.database)
        .await
        .expect("connect");
    let (applied,): (i64,) = sqlx::query_as(
        "SELECT c.events_applied FROM projection_checkpoints c
         JOIN projection_active a ON a.name = c.name AND a.generation = c.generation
         WHERE c.name = 'lesson.lessons'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("checkpoint row");
    let events: i64 = expected.iter().map(|(_, revision)| revision + 1).sum();
    // Each lesson also reserved two slots (schedule streams), which this projection counts too.
    assert_eq!(applied, events + 2 * LESSONS as i64, "events applied");
    mesh.stop().await;
}

#[tokio::test]
async fn of_clients_racing_for_one_slot_exactly_one_books_it() {
    let server = spawn_server(repitd(), &["serve"], &[]).await;
    let (lessons, tutor) = signed_in(&server, &server).await;
    let start = Utc::now() + TimeDelta::days(3);
    let attempts = (0..8).map(|_| {
        let mut lessons = lessons.clone();
        let tutor = tutor.clone();
        tokio::spawn(async move {
            lessons
                .schedule_lesson(pb::ScheduleLessonRequest {
                    request_id: Uuid::now_v7().to_string(),
                    tutor_id: tutor,
                    student_id: Uuid::now_v7().to_string(),
                    start_time: ts(start),
                    duration: hour(),
                    time_zone: "Asia/Yekaterinburg".into(),
                    subject: "English".into(),
                    ..Default::default()
                })
                .await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let mut booked = 0;
    for result in results {
        match result.expect("task") {
            Ok(_) => booked += 1,
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::FailedPrecondition | Code::Aborted),
                    "{status:?}"
                );
                if status.code() == Code::FailedPrecondition {
                    let info = status.get_details_error_info().expect("error info");
                    assert_eq!(info.metadata["rule"], "no_double_booking");
                }
            }
        }
    }
    assert_eq!(booked, 1, "exactly one booking wins");
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}

/// Runs `repitd projections …` against `env` and returns its stdout (failing on a bad exit).
async fn projections_cli(args: &[&str], env: &[(String, String)]) -> String {
    let output = tokio::process::Command::new(repitd())
        .arg("projections")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("REPIT_LOG__LEVEL", "warn")
        .output()
        .await
        .expect("run repitd projections");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "repitd projections {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn an_operator_rebuilds_a_read_model_while_the_service_keeps_answering() {
    let Some(mesh) = Distributed::start().await else {
        return;
    };
    let (mut lessons, tutor) = signed_in(&mesh.user, &mesh.lesson).await;
    let start = Utc::now() + TimeDelta::days(40);
    let mut ids = Vec::new();
    for i in 0..20 {
        let lesson = lessons
            .schedule_lesson(pb::ScheduleLessonRequest {
                tutor_id: tutor.clone(),
                student_id: Uuid::now_v7().to_string(),
                start_time: ts(start + TimeDelta::hours(i)),
                duration: hour(),
                time_zone: "Europe/Moscow".into(),
                subject: "Geography".into(),
                ..Default::default()
            })
            .await
            .expect("scheduled")
            .into_inner()
            .lesson
            .expect("lesson");
        ids.push((lesson.lesson_id, 0_i64));
    }
    ids.sort();
    eventually("the read model to have every lesson", || {
        let (database, tutor, ids) = (mesh.database.clone(), tutor.clone(), ids.clone());
        async move { (lesson_rows(&database, &tutor).await == ids).then_some(()) }
    })
    .await;

    let report = projections_cli(&["rebuild", "lesson.lessons"], &mesh.env).await;
    assert!(report.contains("generation 2 live"), "{report}");
    let status = projections_cli(&["status"], &mesh.env).await;
    let line = status
        .lines()
        .find(|l| l.starts_with("lesson.lessons"))
        .unwrap_or_else(|| panic!("no status line: {status}"));
    assert_eq!(line.split_whitespace().nth(1), Some("2"), "{status}");

    // The same rows under the same view, and the live projection follows the new generation.
    assert_eq!(lesson_rows(&mesh.database, &tutor).await, ids);
    let late = lessons
        .schedule_lesson(pb::ScheduleLessonRequest {
            tutor_id: tutor.clone(),
            student_id: Uuid::now_v7().to_string(),
            start_time: ts(start + TimeDelta::hours(30)),
            duration: hour(),
            time_zone: "Europe/Moscow".into(),
            subject: "Geography".into(),
            ..Default::default()
        })
        .await
        .expect("scheduled after the rebuild")
        .into_inner()
        .lesson
        .expect("lesson");
    let mut expected = ids.clone();
    expected.push((late.lesson_id, 0));
    expected.sort();
    eventually("the live projection to continue on generation 2", || {
        let (database, tutor, expected) = (mesh.database.clone(), tutor.clone(), expected.clone());
        async move { (lesson_rows(&database, &tutor).await == expected).then_some(()) }
    })
    .await;
    let parked = projections_cli(&["parked", "lesson.lessons"], &mesh.env).await;
    assert!(parked.contains("nothing parked"), "{parked}");
    mesh.stop().await;
}
