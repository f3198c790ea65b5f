//! The lesson service's authorization matrix: each caller role × each RPC of lesson.proto →
//! the answer the contract specifies ("Who may do what" and the NOT_FOUND rule of tenancy), on
//! the real embedded `repitd` with tokens issued by its real user service.
//!
//! The callers are real accounts: two tutors signed up with email and password, a student, a
//! second student of the same tutor and a parent who joined by invite through the bot, a
//! platform admin (an email of `auth.platform_admin_emails`), and the admins of two schools —
//! the one the owning tutor founded, and the other tutor's — who joined by ADMIN invites. Every
//! cell gets a fresh lesson and series of the owning tutor with the student, so the cells do not
//! depend on each other's order.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{Datelike, DurationRound, TimeDelta, Utc};
use prost_types::{FieldMask, Timestamp};
use repit_proto::repit::common::v1::{self as common, Date, TimeOfDay, Weekday};
use repit_proto::repit::lesson::v1 as pb;
use repit_proto::repit::lesson::v1::lesson_service_client::LessonServiceClient;
use repit_proto::repit::user::v1 as user_pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;
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

fn client(channel: &Channel, access_token: Option<&str>) -> Client {
    let token = access_token.map(|t| format!("Bearer {t}").parse().expect("ascii"));
    LessonServiceClient::new(InterceptedService::new(channel.clone(), Token(token)))
}

const BOT: &str = "test-bot-credential-0123456789";
const ROOT: &str = "root-admin@example.test";

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Anonymous,
    /// The tutor who teaches the fixture's lessons.
    OwnTutor,
    /// A tutor of another tenancy.
    OtherTutor,
    /// The student the fixture's lessons are with.
    Student,
    /// Another student of the same tutor.
    OtherStudent,
    /// The student's parent.
    Parent,
    /// A platform admin.
    Admin,
    /// The admin of the school the owning tutor teaches in: answered as the platform admin.
    SchoolAdmin,
    /// The admin of another school: answered as the other tutor.
    OtherSchoolAdmin,
}

const ROLES: [Role; 9] = [
    Role::Anonymous,
    Role::OwnTutor,
    Role::OtherTutor,
    Role::Student,
    Role::OtherStudent,
    Role::Parent,
    Role::Admin,
    Role::SchoolAdmin,
    Role::OtherSchoolAdmin,
];

impl Role {
    /// The matrix column whose answers this role gets: a school admin acts for the school's
    /// tutors as a platform admin does for all, and is a stranger to the other tenancies.
    fn column(self) -> usize {
        match self {
            Role::SchoolAdmin => 6,
            Role::OtherSchoolAdmin => 2,
            other => ROLES.iter().position(|r| *r == other).unwrap_or(0),
        }
    }
}

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
    student_id: String,
    lesson_start: chrono::DateTime<Utc>,
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

async fn fixture(owner: &mut Client, tutor_id: &str, student: &str) -> Fixture {
    let day = NEXT_DAY.fetch_add(1, Ordering::Relaxed);
    let start = Utc::now()
        .duration_trunc(TimeDelta::hours(1))
        .expect("whole hours")
        + TimeDelta::days(day);
    let student = student.to_owned();
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
            student_id: student.clone(),
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
        student_id: student,
        lesson_start: start,
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
            .list_lessons(pb::ListLessonsRequest {
                time_range: Some(common::TimeRange {
                    start: ts(fx.lesson_start),
                    end: ts(fx.lesson_start + TimeDelta::hours(1)),
                }),
                ..Default::default()
            })
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
        // A student's week: a tutor may name any student and sees only the lessons they teach.
        "GetWeekSchedule(student)" => client
            .get_week_schedule(pb::GetWeekScheduleRequest {
                scope: Some(pb::ScheduleScope {
                    scope: Some(pb::schedule_scope::Scope::StudentId(fx.student_id.clone())),
                }),
                date: date(fx.lesson_start.date_naive()),
                time_zone: "UTC".into(),
                ..Default::default()
            })
            .await
            .map(|r| {
                r.into_inner().days.iter().any(|day| {
                    day.entries.iter().any(|entry| {
                        entry
                            .lesson
                            .as_ref()
                            .is_some_and(|l| l.lesson_id == fx.lesson_id)
                    })
                })
            }),
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

/// The contract, one row per RPC (and one for a student-scoped view), one column per role:
/// anonymous, own tutor, other tutor, student, other student, parent, platform admin (the two
/// school admins take theirs from [`Role::column`]).
const MATRIX: [(&str, [Expect; 7]); 21] = {
    use Expect::*;
    const UNAUTH: Expect = Unauthenticated;
    const TODO: Expect = Unimplemented;
    [
        // Only tutors (for themselves) and platform admins schedule.
        (
            "ScheduleLesson",
            [UNAUTH, Allowed, NotFound, Denied, Denied, Denied, Allowed],
        ),
        (
            "CreateSeries",
            [UNAUTH, Allowed, NotFound, Denied, Denied, Denied, Allowed],
        ),
        // Reading: the tutor, the student, the parent and admins; nobody else learns it exists.
        (
            "GetLesson",
            [
                UNAUTH, Allowed, NotFound, Allowed, NotFound, Allowed, Allowed,
            ],
        ),
        (
            "ListLessons",
            [
                UNAUTH, Allowed, Filtered, Allowed, Filtered, Allowed, Allowed,
            ],
        ),
        (
            "GetSeries",
            [
                UNAUTH, Allowed, NotFound, Allowed, NotFound, Allowed, Allowed,
            ],
        ),
        (
            "ListSeries",
            [
                UNAUTH, Allowed, Filtered, Allowed, Filtered, Allowed, Allowed,
            ],
        ),
        // Changing: the tutor's side only; the student's side sees it but may not.
        (
            "UpdateLesson",
            [UNAUTH, Allowed, NotFound, Denied, NotFound, Denied, Allowed],
        ),
        (
            "RescheduleLesson",
            [UNAUTH, Allowed, NotFound, Denied, NotFound, Denied, Allowed],
        ),
        (
            "MarkAttendance",
            [UNAUTH, Allowed, NotFound, Denied, NotFound, Denied, Allowed],
        ),
        (
            "RecordLessonOutcome",
            [UNAUTH, Allowed, NotFound, Denied, NotFound, Denied, Allowed],
        ),
        (
            "ShiftPlannedTopics",
            [UNAUTH, Allowed, NotFound, Denied, NotFound, Denied, Allowed],
        ),
        (
            "UpdateSeries",
            [UNAUTH, Allowed, NotFound, Denied, NotFound, Denied, Allowed],
        ),
        (
            "EndSeries",
            [UNAUTH, Allowed, NotFound, Denied, NotFound, Denied, Allowed],
        ),
        // Cancelling: the student and the parent may too.
        (
            "CancelLesson",
            [
                UNAUTH, Allowed, NotFound, Allowed, NotFound, Allowed, Allowed,
            ],
        ),
        // A tutor's schedule: that tutor and admins.
        (
            "GetDaySchedule",
            [
                UNAUTH, Allowed, NotFound, NotFound, NotFound, NotFound, Allowed,
            ],
        ),
        (
            "GetWeekSchedule",
            [
                UNAUTH, Allowed, NotFound, NotFound, NotFound, NotFound, Allowed,
            ],
        ),
        (
            "WatchSchedule",
            [
                UNAUTH, Allowed, NotFound, NotFound, NotFound, NotFound, Allowed,
            ],
        ),
        (
            "ExportCalendar",
            [
                UNAUTH, Allowed, NotFound, NotFound, NotFound, NotFound, Allowed,
            ],
        ),
        // A student's week: another tutor gets an answer without this tutor's lessons.
        (
            "GetWeekSchedule(student)",
            [
                UNAUTH, Allowed, Filtered, Allowed, NotFound, Allowed, Allowed,
            ],
        ),
        (
            "GetCalendarFeed",
            [UNAUTH, TODO, TODO, TODO, TODO, TODO, TODO],
        ),
        (
            "RotateCalendarFeed",
            [UNAUTH, TODO, TODO, TODO, TODO, TODO, TODO],
        ),
    ]
};

/// Signs up with email and password; the access token and user id.
async fn sign_up(users: &mut UserServiceClient<Channel>, email: &str) -> (String, String) {
    let answer = users
        .sign_up_tutor(user_pb::SignUpTutorRequest {
            request_id: Uuid::now_v7().to_string(),
            credentials: Some(user_pb::sign_up_tutor_request::Credentials::EmailPassword(
                user_pb::EmailPassword {
                    email: email.into(),
                    password: "correct horse battery staple".into(),
                },
            )),
            display_name: "Tutor".into(),
            time_zone: "Europe/Moscow".into(),
            ..Default::default()
        })
        .await
        .expect("signed up")
        .into_inner();
    (
        answer.tokens.expect("tokens").access_token,
        answer.user.expect("user").user_id,
    )
}

/// `founder` founds a school (becoming its admin and one of its tutors) and invites an admin, who
/// joins through the bot: the new admin's access token.
async fn school_admin(
    users: &mut UserServiceClient<Channel>,
    channel: Channel,
    founder: &Account,
) -> String {
    let (school_id, founder_tokens) = identity::found_school(channel, founder, "School").await;
    let founder_token = founder_tokens.access_token;
    let (token, _) = join_as(
        users,
        &founder_token,
        user_pb::CreateInviteRequest {
            role: user_pb::Role::Admin as i32,
            school_id,
            ..Default::default()
        },
    )
    .await;
    token
}

/// The tutor invites (`role`, linked to `student_id` for a parent); the bot redeems the code for
/// a new Telegram user. The access token and user id of the new member.
async fn join(
    users: &mut UserServiceClient<Channel>,
    tutor_token: &str,
    role: user_pb::Role,
    student_id: &str,
) -> (String, String) {
    join_as(
        users,
        tutor_token,
        user_pb::CreateInviteRequest {
            role: role as i32,
            student_id: student_id.to_owned(),
            ..Default::default()
        },
    )
    .await
}

/// `invite` made with `tutor_token`, redeemed through the bot by a new Telegram user.
async fn join_as(
    users: &mut UserServiceClient<Channel>,
    tutor_token: &str,
    invite: user_pb::CreateInviteRequest,
) -> (String, String) {
    let mut invite = tonic::Request::new(user_pb::CreateInviteRequest {
        request_id: Uuid::now_v7().to_string(),
        ..invite
    });
    invite.metadata_mut().insert(
        "authorization",
        format!("Bearer {tutor_token}").parse().expect("ascii"),
    );
    let code = users
        .create_invite(invite)
        .await
        .expect("invite")
        .into_inner()
        .code;
    let joined = users
        .redeem_invite(user_pb::RedeemInviteRequest {
            request_id: Uuid::now_v7().to_string(),
            code,
            redeemer: Some(user_pb::redeem_invite_request::Redeemer::Telegram(
                user_pb::TelegramBotAssertion {
                    bot_credential: BOT.into(),
                    telegram_user_id: (Uuid::now_v7().as_u128() % 1_000_000_000_000) as i64 + 1,
                    profile: None,
                },
            )),
            display_name: "Member".into(),
            time_zone: "Europe/Moscow".into(),
            ..Default::default()
        })
        .await
        .expect("redeemed")
        .into_inner();
    (
        joined.tokens.expect("tokens").access_token,
        joined.user.expect("user").user_id,
    )
}

#[tokio::test]
async fn every_role_gets_what_the_contract_says_for_every_lesson_rpc() {
    let admins = format!("[\"{ROOT}\"]");
    let server: ChildServer = spawn_server(
        Path::new(env!("CARGO_BIN_EXE_repitd")),
        &["serve"],
        &[
            ("REPIT_AUTH__BOT_CREDENTIAL", BOT),
            ("REPIT_AUTH__PLATFORM_ADMIN_EMAILS", admins.as_str()),
            ("REPIT_AUTH__RATE_LIMIT_ADDRESS_BURST", "100000"),
            // Hundreds of calls in a second or two from one caller: the gateway's per-caller
            // limit (tested on its own) would answer some of them RESOURCE_EXHAUSTED.
            ("REPIT_GATEWAY__RATE_LIMIT__ENABLED", "false"),
        ],
    )
    .await;
    let channel = identity::channel(&server.url());
    let mut users = UserServiceClient::new(channel.clone());
    let own: Account = identity::sign_up_tutor(channel.clone(), "Anna Petrova").await;
    let other = identity::sign_up_tutor(channel.clone(), "Boris Ivanov").await;
    let (student_token, student_id) =
        join(&mut users, &own.access_token, user_pb::Role::Student, "").await;
    let (other_student_token, _) =
        join(&mut users, &own.access_token, user_pb::Role::Student, "").await;
    let (parent_token, _) = join(
        &mut users,
        &own.access_token,
        user_pb::Role::Parent,
        &student_id,
    )
    .await;
    let (admin_token, _) = sign_up(&mut users, ROOT).await;
    let school_admin_token = school_admin(&mut users, channel.clone(), &own).await;
    let other_school_admin_token = school_admin(&mut users, channel.clone(), &other).await;
    let token_of = |role: Role| match role {
        Role::Anonymous => None,
        Role::OwnTutor => Some(own.access_token.as_str()),
        Role::OtherTutor => Some(other.access_token.as_str()),
        Role::Student => Some(student_token.as_str()),
        Role::OtherStudent => Some(other_student_token.as_str()),
        Role::Parent => Some(parent_token.as_str()),
        Role::Admin => Some(admin_token.as_str()),
        Role::SchoolAdmin => Some(school_admin_token.as_str()),
        Role::OtherSchoolAdmin => Some(other_school_admin_token.as_str()),
    };
    let mut owner = client(&channel, Some(&own.access_token));

    // The school admin acts once the lesson service has projected the school's tutors.
    let started = std::time::Instant::now();
    let mut school_admin_client = client(&channel, Some(&school_admin_token));
    loop {
        let fx = fixture(&mut owner, &own.user_id, &student_id).await;
        if call("GetLesson", &mut school_admin_client, &fx)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the school's tutors never reached the lesson service"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

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
        for role in &ROLES {
            let expect = expected[role.column()];
            let fx = fixture(&mut owner, &own.user_id, &student_id).await;
            let mut caller = client(&channel, token_of(*role));
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
