//! The servers `scripts/test` promises are really there and really what they claim to be: a
//! PostgreSQL that speaks the wire protocol and a NATS server with JetStream enabled.

use std::time::Duration;

use repit_tests::{Backend, require};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `host:port` of a `scheme://[user[:password]@]host:port[/path]` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

async fn connect(url: &str) -> TcpStream {
    let addr = host_port(url);
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
        .await
        .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
}

#[tokio::test]
async fn the_postgres_server_speaks_the_postgres_protocol() {
    let Some(url) = require(Backend::Postgres) else {
        return;
    };
    let mut stream = connect(&url).await;
    // SSLRequest: length 8, code 80877103. A PostgreSQL server answers with one byte, S or N.
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("send SSLRequest");
    let mut answer = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .expect("PostgreSQL answered in time")
        .expect("read the SSLRequest answer");
    assert!(
        matches!(answer[0], b'S' | b'N'),
        "not a PostgreSQL server: {answer:?}"
    );
}

#[tokio::test]
async fn the_nats_server_has_jetstream() {
    let Some(url) = require(Backend::Nats) else {
        return;
    };
    let mut stream = connect(&url).await;
    let mut info = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut info))
        .await
        .expect("NATS greeted in time")
        .expect("read the INFO line");
    let info = String::from_utf8_lossy(&info[..read]);
    assert!(info.starts_with("INFO "), "not a NATS server: {info}");
    assert!(
        info.contains("\"jetstream\":true"),
        "JetStream is not enabled: {info}"
    );
}

#[test]
fn urls_are_reduced_to_host_and_port() {
    assert_eq!(
        host_port("postgres://postgres@127.0.0.1:5432/repit_test"),
        "127.0.0.1:5432"
    );
    assert_eq!(host_port("nats://127.0.0.1:4222"), "127.0.0.1:4222");
    assert_eq!(
        host_port("postgres://u:p@db:5433/x?sslmode=disable"),
        "db:5433"
    );
}
