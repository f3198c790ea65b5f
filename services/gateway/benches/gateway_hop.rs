//! What a gateway hop adds to a call: a bare tonic echo server called directly, and the same
//! server called through the gateway's proxy, side by side in one run, with sequential unary
//! calls on loopback (one call in flight, so the figures are latencies, not queueing).
//!
//! `cargo bench -p repit-gateway --bench gateway_hop` prints the figures and writes them between
//! `<!-- gateway:begin -->` and `<!-- gateway:end -->` in BENCHMARKS.md. `-- --quick` runs a few
//! calls only (for checking the bench itself) and writes nothing.
//!
//! The echo is tonic-health's `Check`, mounted as `repit.bench.v1.Echo` so that it is not one of
//! the always-public health methods and the auth layer checks it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use repit_gateway::deadline::DeadlinePolicy;
use repit_gateway::{Edge, LoadMeter, Policy, ProxyLayer, RateLimiter, RouteTable, UpstreamSpec};
use repit_platform::auth::{
    AuthLayer, KeySet, Role, RoleClaim, SigningKey, Subject, TokenIssuer, Verifier,
};
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::Service;

const ECHO_SERVICE: &str = "repit.bench.v1.Echo";
const ECHO_PREFIX: &str = "/repit.bench.v1.Echo/";
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// tonic-health's service under another name.
#[derive(Clone)]
struct Echo<S>(S);

impl<S> tonic::server::NamedService for Echo<S> {
    const NAME: &'static str = ECHO_SERVICE;
}

fn renamed(uri: &http::Uri, from: &str, to: &str) -> http::Uri {
    let Some(method) = uri.path().strip_prefix(from) else {
        return uri.clone();
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(format!("{to}{method}").parse().expect("path"));
    http::Uri::from_parts(parts).expect("uri")
}

impl<S, B> Service<http::Request<B>> for Echo<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        *request.uri_mut() = renamed(request.uri(), ECHO_PREFIX, HEALTH_PREFIX);
        self.0.call(request)
    }
}

async fn listener() -> (SocketAddr, TcpIncoming) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    (
        address,
        TcpIncoming::from(listener).with_nodelay(Some(true)),
    )
}

async fn echo_server() -> SocketAddr {
    let (address, incoming) = listener().await;
    let (_, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(Echo(health))
            .serve_with_incoming(incoming),
    );
    address
}

fn table(echo: SocketAddr) -> Arc<RouteTable> {
    Arc::new(
        RouteTable::new(
            ["grpc.health.v1.Health".to_owned()],
            [UpstreamSpec {
                name: "echo".into(),
                url: format!("http://{echo}"),
                services: vec![ECHO_SERVICE.into()],
            }],
            [],
            Duration::from_secs(1),
        )
        .expect("route table"),
    )
}

/// Routes of the gateway process itself (its own health), which the proxy falls back to.
fn own_routes() -> Routes {
    let (_, health) = tonic_health::server::health_reporter();
    Routes::new(health)
}

/// The proxy alone: routing and forwarding, no policy layer.
async fn proxy_only(echo: SocketAddr) -> SocketAddr {
    let (address, incoming) = listener().await;
    tokio::spawn(
        Server::builder()
            .layer(ProxyLayer::new(table(echo)))
            .add_routes(own_routes())
            .serve_with_incoming(incoming),
    );
    address
}

/// The whole edge, as `repitd --target gateway` serves it.
async fn full_gateway(echo: SocketAddr, auth: Option<AuthLayer>) -> SocketAddr {
    let (address, incoming) = listener().await;
    let edge = Edge {
        table: table(echo),
        meter: Arc::new(LoadMeter::new(1024)),
        limiter: Some(Arc::new(RateLimiter::new(
            Policy {
                burst: 1_000_000,
                refill_tokens: 1_000_000,
                refill_period: Duration::from_secs(1),
            },
            100_000,
        ))),
        auth,
        verifier: None,
        deadlines: DeadlinePolicy {
            default: Duration::from_secs(30),
            max: Duration::from_secs(300),
        },
        cors_allowed_origins: vec!["http://app.example".into()],
    };
    tokio::spawn(
        Server::builder()
            .accept_http1(true)
            .layer(edge)
            .add_routes(own_routes())
            .serve_with_incoming(incoming),
    );
    address
}

type EchoClient = HealthClient<
    tower::util::MapRequest<
        Channel,
        fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>,
    >,
>;

fn to_echo(mut request: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    *request.uri_mut() = renamed(request.uri(), HEALTH_PREFIX, ECHO_PREFIX);
    request
}

async fn client(address: SocketAddr) -> EchoClient {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    let mapped = tower::ServiceBuilder::new()
        .map_request(to_echo as fn(_) -> _)
        .service(channel);
    HealthClient::new(mapped)
}

struct Target {
    label: &'static str,
    client: EchoClient,
    token: Option<String>,
    latencies_ns: Vec<u64>,
    errors: usize,
}

impl Target {
    async fn call(&mut self) -> Option<u64> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        if let Some(token) = &self.token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        let started = Instant::now();
        let answered = self.client.check(request).await;
        let elapsed = started.elapsed();
        match answered {
            Ok(_) => Some(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)),
            Err(status) => {
                if self.errors == 0 {
                    eprintln!("{}: {status:?}", self.label);
                }
                self.errors += 1;
                None
            }
        }
    }

    fn percentile_us(&mut self, p: f64) -> f64 {
        self.latencies_ns.sort_unstable();
        if self.latencies_ns.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_ns.len() - 1) as f64 * p).round() as usize;
        self.latencies_ns[index] as f64 / 1000.0
    }
}

fn token() -> (Arc<Verifier>, String) {
    let key = SigningKey::generate("bench-1", Utc::now() - TimeDelta::hours(1)).expect("key");
    let issuer = TokenIssuer::new("repit", "repit", Duration::from_secs(900)).expect("issuer");
    let subject = Subject {
        user_id: "0190f3a2-7c1e-7b3a-9d4e-000000000001".into(),
        session_id: "0190f3a2-7c1e-7b3a-9d4e-5f6a7b8c9d0e".into(),
        roles: vec![RoleClaim::new(Role::Tutor)],
        children: Vec::new(),
        amr: vec!["pwd".into()],
        time_zone: String::new(),
        auth_time: Utc::now(),
    };
    let token = issuer
        .issue(&key, &subject, Utc::now())
        .expect("token")
        .token;
    let keys = KeySet::new([key.verifying()]).expect("key set");
    (Arc::new(Verifier::new("repit", "repit", keys)), token)
}

/// Busy jiffies and all jiffies of the machine so far (/proc/stat).
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let values: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    let total: u64 = values.iter().sum();
    Some((total - idle, total))
}

/// How busy the machine was over `period` (other work on the shared cores skews latencies).
fn machine_busy(period: Duration) -> Option<f64> {
    let (busy0, total0) = machine_jiffies()?;
    std::thread::sleep(period);
    let (busy1, total1) = machine_jiffies()?;
    Some((busy1 - busy0) as f64 / (total1 - total0).max(1) as f64)
}

fn commit() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "an unknown commit".into();
    };
    let dirty = git(&["status", "--porcelain", "--", "services/gateway"])
        .is_some_and(|status| !status.is_empty());
    if dirty {
        format!("commit {head} plus uncommitted changes to services/gateway")
    } else {
        format!("commit {head}")
    }
}

fn write_section(section: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let begin = "<!-- gateway:begin -->";
    let end = "<!-- gateway:end -->";
    let block = format!("{begin}\n{section}{end}\n");
    let updated = match (current.find(begin), current.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!(
                "{}{block}{}",
                &current[..b],
                current[e + end.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{block}", current.trim_end()),
    };
    std::fs::write(&path, updated).expect("write BENCHMARKS.md");
    eprintln!("wrote {}", path.display());
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let busy = tokio::task::spawn_blocking(|| machine_busy(Duration::from_secs(1)))
        .await
        .ok()
        .flatten();
    let (warm_up, calls, rounds) = if quick {
        (100, 200, 2)
    } else {
        (1_000, 2_500, 8)
    };
    let echo = echo_server().await;
    let (verifier, token) = token();
    let auth = AuthLayer::new(verifier);
    let direct = client(echo).await;
    let proxied = client(proxy_only(echo).await).await;
    let gateway = client(full_gateway(echo, None).await).await;
    let gateway_auth = client(full_gateway(echo, Some(auth)).await).await;
    let direct_token = client(echo).await;
    let mut targets = vec![
        Target {
            label: "direct to the echo server",
            client: direct,
            token: None,
            latencies_ns: Vec::new(),
            errors: 0,
        },
        Target {
            label: "direct, with the token sent anyway",
            client: direct_token,
            token: Some(token.clone()),
            latencies_ns: Vec::new(),
            errors: 0,
        },
        Target {
            label: "through the proxy alone (routing, forwarding)",
            client: proxied,
            token: None,
            latencies_ns: Vec::new(),
            errors: 0,
        },
        Target {
            label: "through the gateway edge, auth off",
            client: gateway,
            token: None,
            latencies_ns: Vec::new(),
            errors: 0,
        },
        Target {
            label: "through the gateway edge, auth on",
            client: gateway_auth,
            token: Some(token),
            latencies_ns: Vec::new(),
            errors: 0,
        },
    ];
    for target in &mut targets {
        for _ in 0..warm_up {
            target.call().await;
        }
        assert_eq!(target.errors, 0, "{} answered errors", target.label);
    }
    // Interleave: each round runs every target in turn (starting with the next one), so drift on
    // the shared machine hits them alike.
    let n = targets.len();
    for round in 0..rounds {
        for i in (0..n).map(|i| (i + round) % n) {
            let target = &mut targets[i];
            for _ in 0..calls {
                if let Some(ns) = target.call().await {
                    target.latencies_ns.push(ns);
                }
            }
        }
    }
    let mut rows = Vec::new();
    for target in &mut targets {
        let p50 = target.percentile_us(0.50);
        let p99 = target.percentile_us(0.99);
        rows.push((
            target.label,
            p50,
            p99,
            target.latencies_ns.len(),
            target.errors,
        ));
    }
    let (base50, base99) = (rows[0].1, rows[0].2);
    let (token50, token99) = (rows[1].1, rows[1].2);
    let mut out = String::new();
    out.push_str("## Gateway hop\n\n");
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    out.push_str(&format!(
        "Measured {} on {cores} cores (nproc), {}, with `cargo bench -p repit-gateway --bench gateway_hop` (release profile; echo server, gateway and client in one process on 127.0.0.1, sharing the machine); the machine was {} busy in the second before the run (other work).\n\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        commit(),
        busy.map_or_else(|| "an unknown share".to_owned(), |b| format!("{:.0}%", b * 100.0)),
    ));
    out.push_str(&format!(
        "Sequential unary calls (one in flight) of tonic-health's `Check` mounted as `{ECHO_SERVICE}`, one HTTP/2 connection per target; {warm_up} warm-up calls per target, then {rounds} rounds of {calls} calls per target, the targets taking turns. The gateway edge is the full stack of `repitd --target gateway` (CORS, gRPC-web, request ids, route check, shedding, rate limit, deadline, proxy); \"auth on\" verifies a 15-minute Ed25519 token (from the verifier's cache after the first call).\n\n"
    ));
    out.push_str("| path | p50 | p99 | added p50 / p99 | ok / errors |\n|---|---|---|---|---|\n");
    for (i, (label, p50, p99, ok, errors)) in rows.iter().enumerate() {
        let (b50, b99) = if i == 4 || i == 1 {
            (token50, token99)
        } else {
            (base50, base99)
        };
        let added = if i <= 1 {
            "—".to_owned()
        } else {
            format!("{:+.0} µs / {:+.0} µs", p50 - b50, p99 - b99)
        };
        out.push_str(&format!(
            "| {label} | {p50:.0} µs | {p99:.0} µs | {added} | {ok} / {errors} |\n"
        ));
    }
    out.push_str(
        "\nAdded latency is against the direct call with the same headers (auth on: against the direct call carrying the same token). Target: at most 150 µs added at p50. A hop is a second HTTP/2 exchange on loopback (the gateway decodes nothing: it forwards frames), so most of it is the two extra socket round trips and task wake-ups, which on 2 shared cores dominate. Those wake-ups make the figures depend on the machine's load: on an idle machine the cores sleep deeper between calls and every figure is higher (here, a run on the machine 96% busy with other builds measured 38 µs direct and +40 / +48 µs added at p50), so compare rows of one run only.\n",
    );
    println!("{out}");
    if quick {
        eprintln!("--quick: BENCHMARKS.md left as it is");
    } else {
        write_section(&out);
    }
}
