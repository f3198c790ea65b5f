//! `repitd serve` as users meet it: the real binary on a free port, called with generated tonic
//! clients for health, reflection and a service whose RPCs are not built yet.

use std::collections::BTreeSet;
use std::path::Path;

use repit_proto::repit::homework::v1::GetAssignmentRequest;
use repit_proto::repit::homework::v1::homework_service_client::HomeworkServiceClient;
use repit_proto::repit::lesson::v1::GetLessonRequest;
use repit_proto::repit::lesson::v1::lesson_service_client::LessonServiceClient;
use repit_tests::{ChildServer, spawn_server};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

const ALL_SERVICES: [&str; 10] = [
    "repit.user.v1.UserService",
    "repit.student.v1.StudentService",
    "repit.tutor.v1.TutorService",
    "repit.lesson.v1.LessonService",
    "repit.homework.v1.HomeworkService",
    "repit.payment.v1.PaymentService",
    "repit.material.v1.MaterialService",
    "repit.notification.v1.NotificationService",
    "repit.analytics.v1.AnalyticsService",
    "repit.gateway.v1.GatewayService",
];

fn repitd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_repitd"))
}

async fn serve(target: &str) -> (ChildServer, Channel) {
    let server = spawn_server(repitd(), &["serve", "--target", target], &[]).await;
    let channel = Channel::from_shared(server.url())
        .expect("valid url")
        .connect()
        .await
        .expect("connect to repitd");
    (server, channel)
}

async fn health_of(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

async fn services_by_reflection_v1(channel: &Channel) -> BTreeSet<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a reflection reply")
        .expect("one message");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply: {other:?}"),
    }
}

async fn services_by_reflection_v1alpha(channel: &Channel) -> BTreeSet<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha answers")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a reflection reply")
        .expect("one message");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply: {other:?}"),
    }
}

#[tokio::test]
async fn target_all_serves_health_reflection_and_names_unbuilt_rpcs() {
    let (server, channel) = serve("all").await;

    assert_eq!(
        health_of(&channel, "").await.expect("overall health"),
        ServingStatus::Serving
    );
    for service in ALL_SERVICES {
        assert_eq!(
            health_of(&channel, service).await.expect(service),
            ServingStatus::Serving
        );
    }

    for listed in [
        services_by_reflection_v1(&channel).await,
        services_by_reflection_v1alpha(&channel).await,
    ] {
        for service in ALL_SERVICES {
            assert!(
                listed.contains(service),
                "{service} missing from {listed:?}"
            );
        }
        assert!(listed.contains("grpc.health.v1.Health"), "{listed:?}");
    }

    let status = HomeworkServiceClient::new(channel.clone())
        .get_assignment(GetAssignmentRequest {
            assignment_id: "0190f5c2-0000-7000-8000-000000000000".into(),
        })
        .await
        .expect_err("GetAssignment is not built yet");
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status
            .message()
            .contains("repit.homework.v1.HomeworkService/GetAssignment"),
        "{status:?}"
    );
    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "NOT_IMPLEMENTED");
    assert_eq!(info.domain, "repit.app");

    // The lesson service is built, and protected: without a token it is UNAUTHENTICATED, not
    // UNIMPLEMENTED.
    let status = LessonServiceClient::new(channel.clone())
        .get_lesson(GetLessonRequest {
            lesson_id: "0190f5c2-0000-7000-8000-000000000000".into(),
        })
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let (exit, logs) = server.terminate().await;
    assert!(exit.success(), "repitd exited with {exit}");
    assert!(
        logs.iter().any(|line| line.contains("\"stopped\"")),
        "{logs:?}"
    );
}

#[tokio::test]
async fn a_comma_list_mounts_only_the_named_targets() {
    let (server, channel) = serve("lesson,user").await;

    let listed = services_by_reflection_v1(&channel).await;
    assert!(listed.contains("repit.lesson.v1.LessonService"));
    assert!(listed.contains("repit.user.v1.UserService"));
    assert!(
        !listed.contains("repit.homework.v1.HomeworkService"),
        "{listed:?}"
    );

    assert_eq!(
        health_of(&channel, "repit.lesson.v1.LessonService")
            .await
            .expect("lesson health"),
        ServingStatus::Serving
    );
    let unknown = health_of(&channel, "repit.homework.v1.HomeworkService")
        .await
        .expect_err("homework is not mounted here");
    assert_eq!(unknown.code(), Code::NotFound);

    let status = HomeworkServiceClient::new(channel.clone())
        .get_assignment(GetAssignmentRequest::default())
        .await
        .expect_err("homework is not mounted here");
    assert_eq!(status.code(), Code::Unimplemented);

    let (exit, _) = server.terminate().await;
    assert!(exit.success(), "repitd exited with {exit}");
}
