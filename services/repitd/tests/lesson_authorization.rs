//! The lesson service's authorization matrix: each caller role × each RPC of lesson.proto →
//! the answer the contract specifies ("Who may do what" and the NOT_FOUND rule of tenancy), on
//! the real embedded `repitd` with tokens issued by its real user service.
//!
//! Every mutating cell gets a fresh lesson and series of the owning tutor, so the cells do not
//! depend on each other's order.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{Datelike, TimeDelta, Utc};
use prost_types::{FieldMask, Timestamp};
use repit_proto::repit::common::v1::{self as common, Date, TimeOfDay, Weekday};
use repit_proto::repit::lesson::v1 as pb;
use repit_proto::repit::lesson::v1::lesson_service_client::LessonServiceClient;
use repit_tests::identity::{self, Account};
use repit_tests::{ChildServer, spawn_server};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use uuid::Uuid;

/// Sends the caller's token, or none for the anonymous caller.
#[derive(Clone)]
struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Client = LessonServiceClient<InterceptedService<Channel, Token>>;

fn client(channel: &Channel, account: Option<&Account>) -> Client {
    let token = account.map(|a| format!("Bearer {}", a.access_token).parse().expect("ascii"));
    LessonServiceClient::new(InterceptedService::new(channel.clone(), Token(token)))
}

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Anonymous,
    /// The tutor who teaches the fixture's lessons.
    OwnTutor,
    /// A tutor of another tenancy.
    OtherTutor,
}

const ROLES: [Role; 3] = [Role::Anonymous, Role::OwnTutor, Role::OtherTutor];

/// What the contract says a role gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Served (a business-rule refusal such as FAILED_PRECONDITION still counts: access was
    /// granted).
    Allowed,
    /// Served, and the fixture is not among the results (a list filtered by tenancy).
    Filtered,
    NotFound,
    Denied,
    Unauthenticated,
    Unimplemented,
}

/// The answer, classified.
fn classify(result: Result<bool, Status>) -> Expect {
    match result {
        Ok(true) => Expect::Allowed,
        Ok(false) => Expect::Filtered,
        Err(status) => match status.code() {
            Code::Unauthenticated => Expect::Unauthenticated,
            Code::PermissionDenied => Expect::Denied,
            Code::NotFound => Expect::NotFound,
            Code::Unimplemented => Expect::Unimplemented,
            Code::FailedPrecondition | Code::Aborted => Expect::Allowed,
            other => panic!("unexpected {other:?}: {status:?}"),
        },
    }
}

/// A lesson and a weekly series of the owning tutor with one student.
struct Fixture {
    tutor_id: String,
    lesson_id: String,
    series_id: String,
    series_lesson_id: String,
}

/// Days ahead for the next fixture, so fixtures never overlap.
static NEXT_DAY: AtomicI64 = AtomicI64::new(10);

fn ts(at: chrono::DateTime<Utc>) -> Option<Timestamp> {
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

fn proto_weekday(day: chrono::Weekday) -> Weekday {
    match day {
        chrono::Weekday::Mon => Weekday::Monday,
        chrono::Weekday::Tue => Weekday::Tuesday,
        chrono::Weekday::Wed => Weekday::Wednesday,
        chrono::Weekday::Thu => Weekday::Thursday,
        chrono::Weekday::Fri => Weekday::Friday,
        chrono::Weekday::Sat => Weekday::Saturday,
        chrono::Weekday::Sun => Weekday::Sunday,
    }
}

async fn fixture(owner: &mut Client, tutor_id: &str) -> Fixture {
    let day = NEXT_DAY.fetch_add(1, Ordering::Relaxed);
    let start = Utc::now() + TimeDelta::days(day);
    let student = Uuid::now_v7().to_string();
    let lesson = owner
        .schedule_lesson(pb::ScheduleLessonRequest {
            tutor_id: tutor_id.to_owned(),
            student_id: student.clone(),
            start_time: ts(start),
            duration: hour(),
            time_zone: "Europe/Moscow".into(),
            subject: "Algebra".into(),
            planned_topic: "Fractions".into(),
            ..Default::default()
        })
        .await
        .expect("the owner schedules")
        .into_inner()
        .lesson
        .expect("lesson");
    // A weekly series of two occurrences, a year plus three weeks per fixture ahead (no overlap).
    let series_start = (Utc::now() + TimeDelta::days(400 + 21 * day)).date_naive();
    let series = owner
        .create_series(pb::CreateSeriesRequest {
            tutor_id: tutor_id.to_owned(),
            student_id: student,
            subject: "Geometry".into(),
            duration: hour(),
            recurrence: Some(pb::Recurrence {
                slots: vec![pb::WeeklySlot {
                    weekday: proto_weekday(series_start.weekday()) as i32,
                    start_time: Some(TimeOfDay {
                        hours: 10,
                        minutes: 0,
                    }),
                }],
                interval_weeks: 1,
                time_zone: "Europe/Moscow".into(),
                start_date: date(series_start),
                end: Some(pb::recurrence::End::OccurrenceCount(2)),
            }),
            ..Default::default()
        })
        .await
        .expect("the owner creates a series")
        .into_inner();
    let fixture = Fixture {
        tutor_id: tutor_id.to_owned(),
        lesson_id: lesson.lesson_id,
        series_id: series.series.expect("series").series_id,
        series_lesson_id: series.lessons[0].lesson_id.clone(),
    };
    // Queries read the read models, which follow the commands within moments: wait until the
    // owner sees both, so a query cell measures access, not lag.
    for attempt in 0.. {
        let lesson = owner
            .get_lesson(pb::GetLessonRequest {
                lesson_id: fixture.lesson_id.clone(),
            })
            .await;
        let series = owner
            .get_series(pb::GetSeriesRequest {
                series_id: fixture.series_id.clone(),
            })
            .await;
        if lesson.is_ok() && series.is_ok() {
            break;
        }
        assert!(attempt < 200, "the read models never showed the fixture");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    fixture
}

/// Calls `rpc` about the fixture; `Ok(false)` when a list answered without the fixture.
async fn call(rpc: &str, client: &mut Client, fx: &Fixture) -> Result<bool, Status> {
    let tutor_scope = || {
        Some(pb::ScheduleScope {
            scope: Some(pb::schedule_scope::Scope::TutorId(fx.tutor_id.clone())),
        })
    };
    let calendar_owner = || {
        Some(pb::CalendarOwner {
            owner: Some(pb::calendar_owner::Owner::TutorId(fx.tutor_id.clone())),
        })
    };
    let now = Utc::now();
    let range = Some(common::TimeRange {
        start: ts(now),
        end: ts(now + TimeDelta::days(300)),
    });
    let today = date(now.date_naive());
    match rpc {
        "ScheduleLesson" => client
            .schedule_lesson(pb::ScheduleLessonRequest {
                tutor_id: fx.tutor_id.clone(),
                student_id: Uuid::now_v7().to_string(),
                start_time: ts(now + TimeDelta::days(NEXT_DAY.fetch_add(1, Ordering::Relaxed))),
                duration: hour(),
                time_zone: "Europe/Moscow".into(),
                subject: "Physics".into(),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "GetLesson" => client
            .get_lesson(pb::GetLessonRequest {
                lesson_id: fx.lesson_id.clone(),
            })
            .await
            .map(|_| true),
        "ListLessons" => client
            .list_lessons(pb::ListLessonsRequest::default())
            .await
            .map(|r| {
                r.into_inner()
                    .lessons
                    .iter()
                    .any(|l| l.lesson_id == fx.lesson_id)
            }),
        "UpdateLesson" => client
            .update_lesson(pb::UpdateLessonRequest {
                lesson_id: fx.lesson_id.clone(),
                subject: "Algebra II".into(),
                update_mask: Some(FieldMask {
                    paths: vec!["subject".into()],
                }),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "RescheduleLesson" => client
            .reschedule_lesson(pb::RescheduleLessonRequest {
                lesson_id: fx.lesson_id.clone(),
                new_start_time: ts(now + TimeDelta::days(NEXT_DAY.fetch_add(1, Ordering::Relaxed))),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "CancelLesson" => client
            .cancel_lesson(pb::CancelLessonRequest {
                lesson_id: fx.lesson_id.clone(),
                reason: "ill".into(),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "MarkAttendance" => client
            .mark_attendance(pb::MarkAttendanceRequest {
                lesson_id: fx.lesson_id.clone(),
                attendance: pb::Attendance::Attended as i32,
                ..Default::default()
            })
            .await
            .map(|_| true),
        "RecordLessonOutcome" => client
            .record_lesson_outcome(pb::RecordLessonOutcomeRequest {
                lesson_id: fx.lesson_id.clone(),
                topic: "Fractions".into(),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "ShiftPlannedTopics" => client
            .shift_planned_topics(pb::ShiftPlannedTopicsRequest {
                request_id: Uuid::now_v7().to_string(),
                lesson_id: fx.lesson_id.clone(),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "CreateSeries" => client
            .create_series(pb::CreateSeriesRequest {
                tutor_id: fx.tutor_id.clone(),
                student_id: Uuid::now_v7().to_string(),
                subject: "Chemistry".into(),
                duration: hour(),
                recurrence: Some(pb::Recurrence {
                    slots: vec![pb::WeeklySlot {
                        weekday: Weekday::Sunday as i32,
                        start_time: Some(TimeOfDay {
                            hours: 6,
                            minutes: NEXT_DAY.fetch_add(1, Ordering::Relaxed) as i32 % 60,
                        }),
                    }],
                    interval_weeks: 1,
                    time_zone: "Europe/Moscow".into(),
                    start_date: date((now + TimeDelta::days(800)).date_naive()),
                    end: Some(pb::recurrence::End::OccurrenceCount(1)),
                }),
                skip_conflicts: true,
                ..Default::default()
            })
            .await
            .map(|_| true),
        "GetSeries" => client
            .get_series(pb::GetSeriesRequest {
                series_id: fx.series_id.clone(),
            })
            .await
            .map(|_| true),
        "ListSeries" => client
            .list_series(pb::ListSeriesRequest::default())
            .await
            .map(|r| {
                r.into_inner()
                    .series
                    .iter()
                    .any(|s| s.series_id == fx.series_id)
            }),
        "UpdateSeries" => client
            .update_series(pb::UpdateSeriesRequest {
                series_id: fx.series_id.clone(),
                from_lesson_id: fx.series_lesson_id.clone(),
                subject: "Geometry II".into(),
                update_mask: Some(FieldMask {
                    paths: vec!["subject".into()],
                }),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "EndSeries" => client
            .end_series(pb::EndSeriesRequest {
                series_id: fx.series_id.clone(),
                reason: "summer".into(),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "GetDaySchedule" => client
            .get_day_schedule(pb::GetDayScheduleRequest {
                scope: tutor_scope(),
                date: today,
                time_zone: "Europe/Moscow".into(),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "GetWeekSchedule" => client
            .get_week_schedule(pb::GetWeekScheduleRequest {
                scope: tutor_scope(),
                date: today,
                time_zone: "Europe/Moscow".into(),
                ..Default::default()
            })
            .await
            .map(|_| true),
        "WatchSchedule" => {
            let mut stream = client
                .watch_schedule(pb::WatchScheduleRequest {
                    scope: tutor_scope(),
                    time_range: range,
                    time_zone: "Europe/Moscow".into(),
                    include_cancelled: false,
                })
                .await?
                .into_inner();
            stream.message().await.map(|first| first.is_some())
        }
        "ExportCalendar" => client
            .export_calendar(pb::ExportCalendarRequest {
                owner: calendar_owner(),
                time_range: range,
                ..Default::default()
            })
            .await
            .map(|_| true),
        "GetCalendarFeed" => client
            .get_calendar_feed(pb::GetCalendarFeedRequest {
                owner: calendar_owner(),
            })
            .await
            .map(|_| true),
        "RotateCalendarFeed" => client
            .rotate_calendar_feed(pb::RotateCalendarFeedRequest {
                owner: calendar_owner(),
            })
            .await
            .map(|_| true),
        other => panic!("no call written for {other}"),
    }
}

/// The contract, one row per RPC: (RPC, anonymous, own tutor, other tutor).
const MATRIX: [(&str, [Expect; 3]); 20] = {
    use Expect::*;
    [
        ("ScheduleLesson", [Unauthenticated, Allowed, NotFound]),
        ("GetLesson", [Unauthenticated, Allowed, NotFound]),
        ("ListLessons", [Unauthenticated, Allowed, Filtered]),
        ("UpdateLesson", [Unauthenticated, Allowed, NotFound]),
        ("RescheduleLesson", [Unauthenticated, Allowed, NotFound]),
        ("CancelLesson", [Unauthenticated, Allowed, NotFound]),
        ("MarkAttendance", [Unauthenticated, Allowed, NotFound]),
        ("RecordLessonOutcome", [Unauthenticated, Allowed, NotFound]),
        ("ShiftPlannedTopics", [Unauthenticated, Allowed, NotFound]),
        ("CreateSeries", [Unauthenticated, Allowed, NotFound]),
        ("GetSeries", [Unauthenticated, Allowed, NotFound]),
        ("ListSeries", [Unauthenticated, Allowed, Filtered]),
        ("UpdateSeries", [Unauthenticated, Allowed, NotFound]),
        ("EndSeries", [Unauthenticated, Allowed, NotFound]),
        ("GetDaySchedule", [Unauthenticated, Allowed, NotFound]),
        ("GetWeekSchedule", [Unauthenticated, Allowed, NotFound]),
        ("WatchSchedule", [Unauthenticated, Allowed, NotFound]),
        ("ExportCalendar", [Unauthenticated, Allowed, NotFound]),
        (
            "GetCalendarFeed",
            [Unauthenticated, Unimplemented, Unimplemented],
        ),
        (
            "RotateCalendarFeed",
            [Unauthenticated, Unimplemented, Unimplemented],
        ),
    ]
};

#[tokio::test]
async fn every_role_gets_what_the_contract_says_for_every_lesson_rpc() {
    let server: ChildServer =
        spawn_server(Path::new(env!("CARGO_BIN_EXE_repitd")), &["serve"], &[]).await;
    let channel = identity::channel(&server.url());
    let own = identity::sign_up_tutor(channel.clone(), "Anna Petrova").await;
    let other = identity::sign_up_tutor(channel.clone(), "Boris Ivanov").await;
    let mut owner = client(&channel, Some(&own));

    // Every RPC of the contract has a row.
    let contracts = repitd::contracts::ContractIndex::compiled().expect("the contracts");
    let contract = contracts
        .methods("repit.lesson.v1.LessonService")
        .expect("the lesson contract");
    for rpc in contract {
        assert!(
            MATRIX.iter().any(|(row, _)| *row == rpc.as_str()),
            "{rpc} has no row in the matrix"
        );
    }

    let mut mismatches = Vec::new();
    for (rpc, expected) in MATRIX {
        for (role, expect) in ROLES.iter().zip(expected) {
            let fx = fixture(&mut owner, &own.user_id).await;
            let mut caller = match role {
                Role::Anonymous => client(&channel, None),
                Role::OwnTutor => client(&channel, Some(&own)),
                Role::OtherTutor => client(&channel, Some(&other)),
            };
            let got = classify(call(rpc, &mut caller, &fx).await);
            if got != expect {
                mismatches.push(format!(
                    "{rpc} as {role:?}: expected {expect:?}, got {got:?}"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}
