//! Bodies stream through the gateway both ways, frame by frame: an upload reaches the upstream
//! while the client is still sending, and the upstream's answer reaches the client while the
//! call is still open. The upstream here echoes each request frame as soon as it arrives, and
//! the client sends its next frame only after the previous one came back, which only works if
//! the whole edge (every layer and the proxy) buffers nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use repit_gateway::deadline::DeadlinePolicy;
use repit_gateway::{Edge, LoadMeter, Policy, RateLimiter, RouteTable, UpstreamSpec};
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tower::{Service, ServiceExt};

async fn listener() -> (SocketAddr, TcpIncoming) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    (address, TcpIncoming::from(listener))
}

fn health_routes() -> Routes {
    let (_, health) = tonic_health::server::health_reporter();
    Routes::new(health)
}

/// An upstream that answers every call with the call's own request body, as it arrives.
async fn echo_upstream() -> SocketAddr {
    let (address, incoming) = listener().await;
    let echo = tower::service_fn(|request: http::Request<Body>| async move {
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(Body::new(request.into_body()))
            .expect("response");
        Ok::<_, Infallible>(response)
    });
    tokio::spawn(
        Server::builder()
            .layer(tower::layer::layer_fn(move |_routes| echo))
            .add_routes(health_routes())
            .serve_with_incoming(incoming),
    );
    address
}

async fn gateway(upstream: SocketAddr) -> SocketAddr {
    let (address, incoming) = listener().await;
    let table = RouteTable::new(
        ["grpc.health.v1.Health".to_owned()],
        [UpstreamSpec {
            name: "echo".into(),
            url: format!("http://{upstream}"),
            services: vec!["test.v1.Echo".into()],
        }],
        [],
        Duration::from_secs(1),
    )
    .expect("route table");
    let edge = Edge {
        table: Arc::new(table),
        meter: Arc::new(LoadMeter::new(8)),
        limiter: Some(Arc::new(RateLimiter::new(
            Policy {
                burst: 100,
                refill_tokens: 100,
                refill_period: Duration::from_secs(1),
            },
            1000,
        ))),
        auth: None,
        verifier: None,
        deadlines: DeadlinePolicy {
            default: Duration::from_secs(10),
            max: Duration::from_secs(10),
        },
        cors_allowed_origins: Vec::new(),
    };
    tokio::spawn(
        Server::builder()
            .accept_http1(true)
            .layer(edge)
            .add_routes(health_routes())
            .serve_with_incoming(incoming),
    );
    address
}

#[tokio::test]
async fn frames_flow_through_the_gateway_both_ways_while_the_call_is_open() {
    let upstream = echo_upstream().await;
    let gateway = gateway(upstream).await;
    let mut channel = Channel::from_shared(format!("http://{gateway}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");

    let (send, receive) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = tokio_stream::wrappers::ReceiverStream::new(receive)
        .map(|data| Ok::<_, Infallible>(http_body::Frame::data(data)));
    let request = http::Request::builder()
        .method("POST")
        .uri("/test.v1.Echo/Upload")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::new(StreamBody::new(frames)))
        .expect("request");
    channel.ready().await.expect("ready");
    let call = channel.call(request);
    send.send(Bytes::from_static(b"first")).await.expect("send");
    let mut response = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("answer started while the upload is open")
        .expect("answer")
        .into_body();
    for chunk in ["second", "third"] {
        let echoed = tokio::time::timeout(Duration::from_secs(5), response.frame())
            .await
            .expect("the previous chunk came back before the next was sent")
            .expect("a frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert!(!echoed.is_empty());
        send.send(Bytes::from(chunk)).await.expect("send");
    }
    drop(send);
    let mut rest = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), response.frame())
        .await
        .expect("the stream ends after the upload")
    {
        if let Ok(data) = frame.expect("ok").into_data() {
            rest.extend_from_slice(&data);
        }
    }
    assert!(rest.ends_with(b"third"), "{rest:?}");
}
