//! A third-party client with no generated code — Python grpcio driven by server reflection —
//! discovers every service, checks health, signs a tutor up, and calls an RPC with the token.

use std::path::Path;

use repit_tests::{Backend, require, spawn_server};

#[tokio::test]
async fn python_grpcio_discovers_services_signs_up_and_calls_one_with_the_token() {
    let Some(python) = require(Backend::PythonGrpc) else {
        return;
    };
    let server = spawn_server(Path::new(env!("CARGO_BIN_EXE_repitd")), &["serve"], &[]).await;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients/python/reflect_call.py");

    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg("--sign-up")
        .arg(server.addr().to_string())
        .arg("repit.lesson.v1.LessonService/ScheduleLesson")
        .arg(
            r#"{"tutorId": "$USER_ID",
                "studentId": "0190f5c2-0000-7000-8000-000000000002",
                "startTime": "2030-01-07T15:00:00Z", "duration": "3600s",
                "timeZone": "Europe/Moscow", "subject": "Физика"}"#,
        )
        .output()
        .await
        .expect("run the python client");
    assert!(
        output.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the client prints one JSON object");
    let services = result["services"].as_array().expect("services listed");
    assert!(
        services
            .iter()
            .any(|s| s == "repit.payment.v1.PaymentService"),
        "{result}"
    );
    assert_eq!(result["health"], "SERVING");
    assert_eq!(result["sign_up"], "OK", "{result}");
    assert_eq!(result["call"]["code"], "OK", "{result}");
    let lesson = &result["call"]["response"]["lesson"];
    assert_eq!(lesson["subject"], "Физика", "{result}");
    assert_eq!(lesson["state"], "LESSON_STATE_SCHEDULED", "{result}");
    assert_eq!(lesson["endTime"], "2030-01-07T16:00:00Z", "{result}");

    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}
