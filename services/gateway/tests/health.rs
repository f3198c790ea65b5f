//! Upstream health probes: an upstream whose gRPC health answers SERVING shows as serving before
//! any call went there, and one that is down shows as not serving, with the reason.

use std::time::Duration;

use repit_gateway::route::Health;
use repit_gateway::{RouteTable, UpstreamSpec};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

#[tokio::test]
async fn probes_find_a_serving_upstream_and_a_dead_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let serving = listener.local_addr().expect("address");
    let (_, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let spec = |name: &str, address: std::net::SocketAddr| UpstreamSpec {
        name: name.into(),
        url: format!("http://{address}"),
        services: vec![format!("repit.{name}.v1.Service")],
    };
    let table = RouteTable::new(
        [],
        [spec("up", serving), spec("down", dead)],
        [],
        Duration::from_secs(1),
    )
    .expect("table");
    let shutdown = CancellationToken::new();
    let tasks = table.spawn_health_checks(Duration::from_millis(100), &shutdown);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let up = table.upstream("up").expect("up").health();
        let down = table.upstream("down").expect("down").health();
        if up.health == Health::Serving && down.health == Health::NotServing {
            assert!(!down.last_error.is_empty());
            assert!(down.consecutive_failures >= 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "probes did not settle: {up:?} {down:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("probes stop at shutdown")
            .expect("no panic");
    }
}
