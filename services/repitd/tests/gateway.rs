//! The API gateway as a client meets it, on real `repitd` processes: a user+lesson process behind
//! a `--target gateway` process, called through the gateway with generated tonic clients and, for
//! the browser path, with hand-framed gRPC-web over HTTP/1.1.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use prost::Message;
use prost_types::Timestamp;
use repit_proto::repit::gateway::v1 as gateway_pb;
use repit_proto::repit::gateway::v1::gateway_service_client::GatewayServiceClient;
use repit_proto::repit::lesson::v1 as lesson_pb;
use repit_proto::repit::lesson::v1::lesson_service_client::LessonServiceClient;
use repit_proto::repit::tutor::v1 as tutor_pb;
use repit_proto::repit::tutor::v1::tutor_service_client::TutorServiceClient;
use repit_proto::repit::user::v1 as pb;
use repit_proto::repit::user::v1::user_service_client::UserServiceClient;
use repit_tests::identity::bearer;
use repit_tests::{ChildServer, spawn_server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use uuid::Uuid;

fn repitd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_repitd"))
}

/// The services behind the gateway: user and lesson in one process.
async fn backend() -> ChildServer {
    spawn_server(repitd(), &["serve", "--target", "user,lesson"], &[]).await
}

/// A gateway routing user and lesson to `backend`, with `settings` on top.
async fn gateway(backend: &ChildServer, settings: &[(&str, &str)]) -> ChildServer {
    let url = backend.url();
    let mut env = vec![
        ("REPIT_GATEWAY__UPSTREAMS__USER", url.as_str()),
        ("REPIT_GATEWAY__UPSTREAMS__LESSON", url.as_str()),
    ];
    env.extend_from_slice(settings);
    spawn_server(repitd(), &["serve", "--target", "gateway"], &env).await
}

async fn channel(server: &ChildServer) -> Channel {
    Channel::from_shared(server.url())
        .expect("valid url")
        .connect()
        .await
        .expect("connect")
}

/// Signs a new tutor up through `users`; answers the user id and the access token.
async fn sign_up(users: &mut UserServiceClient<Channel>) -> (String, String) {
    let signed = users
        .sign_up_tutor(pb::SignUpTutorRequest {
            request_id: Uuid::now_v7().to_string(),
            credentials: Some(pb::sign_up_tutor_request::Credentials::EmailPassword(
                pb::EmailPassword {
                    email: format!("gw-{}@example.com", Uuid::now_v7().simple()),
                    password: "correct horse battery".into(),
                },
            )),
            display_name: "Анна".into(),
            time_zone: "Europe/Moscow".into(),
            client_name: "test".into(),
            ..Default::default()
        })
        .await
        .expect("signed up through the gateway")
        .into_inner();
    let user = signed.user.expect("user").user_id;
    (user, signed.tokens.expect("tokens").access_token)
}

#[tokio::test]
async fn calls_through_the_gateway_reach_their_upstream_with_the_token_and_a_request_id() {
    let backend = backend().await;
    let gateway = gateway(&backend, &[]).await;
    let mut users = UserServiceClient::new(channel(&gateway).await);
    let (user_id, token) = sign_up(&mut users).await;

    let mut request = bearer(pb::GetCurrentUserRequest {}, &token);
    request
        .metadata_mut()
        .insert("x-request-id", "gateway-test-1".parse().expect("ascii"));
    let answer = users.get_current_user(request).await.expect("current user");
    assert_eq!(
        answer.metadata().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"gateway-test-1"[..])
    );
    assert!(answer.metadata().get("x-ratelimit-remaining").is_some());
    assert_eq!(answer.into_inner().user.expect("user").user_id, user_id);

    // A call without an id gets one; a protected call without a token stops at the edge.
    let refused = users
        .get_current_user(pb::GetCurrentUserRequest {})
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "TOKEN_INVALID"
    );
    assert_eq!(
        refused
            .metadata()
            .get("x-request-id")
            .map(|id| id.len())
            .unwrap_or_default(),
        36
    );
}

#[tokio::test]
async fn a_server_stream_flows_through_the_gateway() {
    use lesson_pb::watch_schedule_response::Update;
    let backend = backend().await;
    let gateway = gateway(&backend, &[]).await;
    let channel = channel(&gateway).await;
    let (tutor, token) = sign_up(&mut UserServiceClient::new(channel.clone())).await;
    let mut lessons = LessonServiceClient::new(channel);
    let now = Utc::now();
    let mut watch = lessons
        .watch_schedule(bearer(
            lesson_pb::WatchScheduleRequest {
                scope: Some(lesson_pb::ScheduleScope {
                    scope: Some(lesson_pb::schedule_scope::Scope::TutorId(tutor)),
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
            },
            &token,
        ))
        .await
        .expect("watch opened through the gateway")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a message within 10s")
        .expect("ok")
        .and_then(|m| m.update);
    let Some(Update::Snapshot(snapshot)) = first else {
        panic!("the snapshot comes first, got {first:?}");
    };
    assert_eq!(snapshot.time_zone, "Asia/Tokyo");
}

#[tokio::test]
async fn an_unrouted_service_is_unimplemented_and_an_unreachable_upstream_unavailable() {
    let backend = backend().await;
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let unreachable = format!("http://{closed}");
    let gateway = gateway(
        &backend,
        &[("REPIT_GATEWAY__UPSTREAMS__PAYMENT", unreachable.as_str())],
    )
    .await;
    let channel = channel(&gateway).await;

    // No route for the tutor service: UNIMPLEMENTED, token or not.
    let mut tutors = TutorServiceClient::new(channel.clone());
    let status = tutors
        .get_tutor(tutor_pb::GetTutorRequest::default())
        .await
        .expect_err("no route");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("ErrorInfo").reason,
        "NOT_IMPLEMENTED"
    );

    // A route whose upstream is down: UNAVAILABLE with RetryInfo.
    let (_, token) = sign_up(&mut UserServiceClient::new(channel.clone())).await;
    let mut payments =
        repit_proto::repit::payment::v1::payment_service_client::PaymentServiceClient::new(channel);
    let status = payments
        .get_balance(bearer(
            repit_proto::repit::payment::v1::GetBalanceRequest::default(),
            &token,
        ))
        .await
        .expect_err("upstream down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().expect("ErrorInfo").reason,
        "DEPENDENCY_UNAVAILABLE"
    );
    assert!(status.get_details_retry_info().is_some());
}

#[tokio::test]
async fn the_per_user_rate_limit_answers_resource_exhausted_with_retry_info() {
    let backend = backend().await;
    let gateway = gateway(
        &backend,
        &[
            ("REPIT_GATEWAY__RATE_LIMIT__BURST", "3"),
            ("REPIT_GATEWAY__RATE_LIMIT__REFILL_TOKENS", "1"),
            ("REPIT_GATEWAY__RATE_LIMIT__REFILL_PERIOD", "1h"),
        ],
    )
    .await;
    let channel = channel(&gateway).await;
    let mut users = UserServiceClient::new(channel.clone());
    // Anonymous: one token of the client address's bucket.
    let (user_id, token) = sign_up(&mut users).await;

    // The user's own bucket: three calls, then refused.
    for remaining in ["2", "1", "0"] {
        let answer = users
            .get_current_user(bearer(pb::GetCurrentUserRequest {}, &token))
            .await
            .expect("within the quota");
        assert_eq!(
            answer
                .metadata()
                .get("x-ratelimit-remaining")
                .map(|v| v.to_str().expect("ascii")),
            Some(remaining)
        );
    }
    let refused = users
        .get_current_user(bearer(pb::GetCurrentUserRequest {}, &token))
        .await
        .expect_err("over the quota");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let info = refused.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "RATE_LIMITED");
    assert_eq!(
        info.metadata.get("subject").map(String::as_str),
        Some(format!("user:{user_id}").as_str())
    );
    let retry = refused.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("a delay");
    assert!(delay > Duration::from_secs(3000), "{delay:?}");

    // Other callers have their own buckets: the address still has two of its three.
    let mut gateway_rpcs = GatewayServiceClient::new(channel);
    let quota = gateway_rpcs
        .get_rate_limit_quota(gateway_pb::GetRateLimitQuotaRequest::default())
        .await
        .expect("anonymous quota")
        .into_inner();
    assert_eq!(quota.subject, "address:127.0.0.1");
    assert_eq!(quota.quotas.len(), 1);
    assert_eq!(quota.quotas[0].remaining, 1);
    assert_eq!(quota.quotas[0].burst, 3);

    // Admin RPCs are for platform admins only.
    let denied = gateway_rpcs
        .list_routes(bearer(gateway_pb::ListRoutesRequest::default(), &token))
        .await
        .expect_err("a tutor is no admin");
    assert!(
        matches!(
            denied.code(),
            Code::PermissionDenied | Code::ResourceExhausted
        ),
        "{denied:?}"
    );
}

/// Accepts connections and never answers: an upstream that hangs.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_at_once_and_a_hung_call_meets_its_deadline() {
    let backend = backend().await;
    let (hole, _hole_task) = black_hole().await;
    let hole = format!("http://{hole}");
    let gateway = gateway(
        &backend,
        &[
            ("REPIT_GATEWAY__UPSTREAMS__TUTOR", hole.as_str()),
            ("REPIT_GATEWAY__CONCURRENCY_LIMIT", "1"),
            ("REPIT_GATEWAY__DEFAULT_DEADLINE", "2s"),
            // The black hole accepts the connection and never completes the HTTP/2 handshake,
            // which counts as connecting: the deadline must come first.
            ("REPIT_GATEWAY__CONNECT_TIMEOUT", "20s"),
        ],
    )
    .await;
    let channel = channel(&gateway).await;
    let (_, token) = sign_up(&mut UserServiceClient::new(channel.clone())).await;

    let mut tutors = TutorServiceClient::new(channel.clone());
    let hung = {
        let token = token.clone();
        tokio::spawn(async move {
            tutors
                .get_tutor(bearer(tutor_pb::GetTutorRequest::default(), &token))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let shed = UserServiceClient::new(channel)
        .get_current_user(bearer(pb::GetCurrentUserRequest {}, &token))
        .await
        .expect_err("shed");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert_eq!(
        shed.get_details_error_info().expect("ErrorInfo").reason,
        "OVERLOADED"
    );

    let hung = tokio::time::timeout(Duration::from_secs(10), hung)
        .await
        .expect("the deadline ended the hung call")
        .expect("task")
        .expect_err("deadline");
    assert_eq!(hung.code(), Code::DeadlineExceeded, "{hung:?}");
}

/// One HTTP/1.1 exchange over a fresh connection: the response head (lowercased) and its body
/// (de-chunked).
async fn http1(addr: SocketAddr, head: &str, body: &[u8]) -> (String, Vec<u8>) {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{head}Host: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    socket.write_all(body).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
        .await
        .expect("answered within 10s")
        .expect("read");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&answer[..split]).to_lowercase();
    let mut body = answer[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut plain = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..line_end])
                    .expect("ascii")
                    .trim(),
                16,
            )
            .expect("hex size");
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            plain.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = plain;
    }
    (head, body)
}

/// The gRPC-web frames of a body: (flags, payload).
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while body.len() >= 5 {
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        frames.push((body[0], body[5..5 + length].to_vec()));
        body = &body[5 + length..];
    }
    frames
}

#[tokio::test]
async fn browsers_call_the_gateways_own_grpc_web_after_a_cors_preflight() {
    let backend = backend().await;
    let gateway = gateway(
        &backend,
        &[(
            "REPIT_GATEWAY__CORS_ALLOWED_ORIGINS",
            "[\"http://app.example\"]",
        )],
    )
    .await;

    let (head, _) = http1(
        gateway.addr(),
        "OPTIONS /repit.user.v1.UserService/GetPublicKeys HTTP/1.1\r\n\
         Origin: http://app.example\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,authorization\r\n",
        b"",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    assert!(head.contains("access-control-allow-headers:"), "{head}");

    // A stranger's origin gets no CORS grant.
    let (head, _) = http1(
        gateway.addr(),
        "OPTIONS /repit.user.v1.UserService/GetPublicKeys HTTP/1.1\r\n\
         Origin: http://evil.example\r\n\
         Access-Control-Request-Method: POST\r\n",
        b"",
    )
    .await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");

    // GetPublicKeys (public, empty request) as gRPC-web: one empty message frame.
    let (head, body) = http1(
        gateway.addr(),
        "POST /repit.user.v1.UserService/GetPublicKeys HTTP/1.1\r\n\
         Origin: http://app.example\r\n\
         Content-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\n",
        &[0, 0, 0, 0, 0],
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/grpc-web+proto"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    assert!(head.contains("grpc-status-details-bin"), "exposed: {head}");
    let frames = frames(&body);
    let (flags, message) = &frames[0];
    assert_eq!(*flags, 0, "a message frame first");
    let keys = pb::GetPublicKeysResponse::decode(&message[..]).expect("a GetPublicKeysResponse");
    assert!(!keys.keys.is_empty());
    let (flags, trailers) = frames.last().expect("a trailer frame");
    assert_eq!(*flags, 0x80);
    let trailers = String::from_utf8_lossy(trailers).to_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}

#[tokio::test]
async fn with_target_all_the_same_edge_applies_in_process() {
    let server = spawn_server(
        repitd(),
        &["serve"],
        &[
            ("REPIT_GATEWAY__RATE_LIMIT__BURST", "2"),
            ("REPIT_GATEWAY__RATE_LIMIT__REFILL_PERIOD", "1h"),
        ],
    )
    .await;
    let mut users = UserServiceClient::new(channel(&server).await);
    for _ in 0..2 {
        let answer = users
            .get_public_keys(pb::GetPublicKeysRequest {})
            .await
            .expect("within the quota");
        assert_eq!(
            answer.metadata().get("x-request-id").map(|id| id.len()),
            Some(36)
        );
    }
    let refused = users
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .expect_err("over the quota");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "RATE_LIMITED"
    );
}

#[tokio::test]
async fn a_gateway_started_before_the_user_service_gets_its_keys_once_it_is_up() {
    // The user service's future address, free for now.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let upstream = format!("http://127.0.0.1:{port}");
    let gateway = spawn_server(
        repitd(),
        &["serve", "--target", "gateway"],
        &[("REPIT_GATEWAY__UPSTREAMS__USER", upstream.as_str())],
    )
    .await;
    let mut users = UserServiceClient::new(channel(&gateway).await);
    let down = users
        .get_public_keys(pb::GetPublicKeysRequest {})
        .await
        .expect_err("the user service is not up yet");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");

    let listen = format!("127.0.0.1:{port}");
    let _backend = spawn_server(
        repitd(),
        &["serve", "--target", "user"],
        &[("REPIT_SERVER__LISTEN", listen.as_str())],
    )
    .await;
    let (user_id, token) = sign_up(&mut users).await;
    // The gateway's key refresher retries with backoff; the token verifies once it has the keys.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match users
            .get_current_user(bearer(pb::GetCurrentUserRequest {}, &token))
            .await
        {
            Ok(answer) => {
                assert_eq!(answer.into_inner().user.expect("user").user_id, user_id);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the gateway never got the keys"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A real gRPC-web client (Connect-ES under Node, tests/clients/web) straight against the
/// gateway's own gRPC-web and CORS, no Envoy: sign-up, a call with the token, a refusal without
/// one, a lesson, a server stream and a preflight (the same script `browser_path.rs` runs
/// through Envoy).
#[tokio::test]
async fn a_real_grpc_web_client_works_straight_against_the_gateway() {
    const ORIGIN: &str = "https://app.repitbot.test";
    let Some(client) = repit_tests::require(repit_tests::Backend::WebClient) else {
        return;
    };
    let backend = backend().await;
    let origins = format!("[\"{ORIGIN}\"]");
    let gateway = gateway(
        &backend,
        &[("REPIT_GATEWAY__CORS_ALLOWED_ORIGINS", origins.as_str())],
    )
    .await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let descriptors = dir.path().join("repit_descriptor.bin");
    std::fs::write(&descriptors, repit_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .current_dir(&client)
            .arg("grpc_web_client.mjs")
            .arg(gateway.url())
            .arg(&descriptors)
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
    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
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
