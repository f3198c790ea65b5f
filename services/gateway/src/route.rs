//! The routing table: which gRPC service is served in this process and which by an upstream, and
//! the health of each upstream as this instance sees it from the calls it forwards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The service a gRPC path names: `repit.lesson.v1.LessonService` for
/// `/repit.lesson.v1.LessonService/GetLesson`.
pub fn service_of(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

/// How to reach one upstream, from configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// The configuration name, e.g. `lesson`.
    pub name: String,
    /// `http://host:port`.
    pub url: String,
    /// The gRPC services it serves.
    pub services: Vec<String>,
}

/// Health as this instance sees it: unprobed until a probe or a call went there, then serving
/// or not after the last probe or attempt to reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Unprobed,
    Serving,
    NotServing,
}

/// What the proxy saw of one upstream.
#[derive(Clone, Debug)]
pub struct UpstreamHealth {
    pub health: Health,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub health_changed_at: DateTime<Utc>,
    pub consecutive_failures: u32,
    pub last_error: String,
}

/// One upstream: its lazily connected channel (reconnects by itself) and what calls saw.
#[derive(Debug)]
pub struct Upstream {
    spec: UpstreamSpec,
    channel: Channel,
    in_flight: AtomicU32,
    health: Mutex<UpstreamHealth>,
    changes: broadcast::Sender<HealthChange>,
}

/// An upstream's health took a new value (for `WatchUpstreamHealth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChange {
    pub upstream: String,
    pub previous: Health,
    pub health: Health,
    pub at: DateTime<Utc>,
}

/// Changes buffered per watcher; a watcher further behind gets a fresh snapshot instead.
const CHANGES_BUFFERED: usize = 64;

impl Upstream {
    fn open(
        spec: UpstreamSpec,
        connect_timeout: Duration,
        changes: broadcast::Sender<HealthChange>,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(spec.url.clone())?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            spec,
            channel,
            in_flight: AtomicU32::new(0),
            health: Mutex::new(UpstreamHealth {
                health: Health::Unprobed,
                last_checked_at: None,
                health_changed_at: Utc::now(),
                consecutive_failures: 0,
                last_error: String::new(),
            }),
            changes,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn url(&self) -> &str {
        &self.spec.url
    }

    pub fn services(&self) -> &[String] {
        &self.spec.services
    }

    /// A handle on the upstream's connection (cheap to clone).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> UpstreamHealth {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn enter(self: &Arc<Self>) -> UpstreamCall {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        UpstreamCall(Arc::clone(self))
    }

    pub(crate) fn record(&self, outcome: Result<(), String>) {
        let now = Utc::now();
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let next = match &outcome {
            Ok(()) => Health::Serving,
            Err(_) => Health::NotServing,
        };
        if health.health != next {
            // Nobody watching is no error.
            let _ = self.changes.send(HealthChange {
                upstream: self.spec.name.clone(),
                previous: health.health,
                health: next,
                at: now,
            });
            health.health = next;
            health.health_changed_at = now;
        }
        health.last_checked_at = Some(now);
        match outcome {
            Ok(()) => {
                health.consecutive_failures = 0;
                health.last_error.clear();
            }
            Err(error) => {
                health.consecutive_failures = health.consecutive_failures.saturating_add(1);
                health.last_error = error;
            }
        }
    }
}

/// A call to an upstream in progress; counted in `in_flight` until dropped.
#[derive(Debug)]
pub(crate) struct UpstreamCall(Arc<Upstream>);

impl Drop for UpstreamCall {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where each service is served: in this process (`local`) or by an upstream.
#[derive(Debug)]
pub struct RouteTable {
    local: BTreeSet<String>,
    upstreams: BTreeMap<String, Arc<Upstream>>,
    by_service: BTreeMap<String, Arc<Upstream>>,
    public_methods: BTreeSet<String>,
    changes: broadcast::Sender<HealthChange>,
}

impl RouteTable {
    /// A table for the services `local` to this process and the `upstreams`; a service served
    /// both here and by an upstream is served here (no hop). `public_methods` are full paths
    /// callable without a token (shown by `ListRoutes`).
    pub fn new(
        local: impl IntoIterator<Item = String>,
        upstreams: impl IntoIterator<Item = UpstreamSpec>,
        public_methods: impl IntoIterator<Item = String>,
        connect_timeout: Duration,
    ) -> Result<Self, tonic::transport::Error> {
        let local: BTreeSet<String> = local.into_iter().collect();
        let mut table = Self {
            local,
            upstreams: BTreeMap::new(),
            by_service: BTreeMap::new(),
            public_methods: public_methods.into_iter().collect(),
            changes: broadcast::channel(CHANGES_BUFFERED).0,
        };
        for spec in upstreams {
            let upstream = Arc::new(Upstream::open(
                spec,
                connect_timeout,
                table.changes.clone(),
            )?);
            for service in upstream.services() {
                if !table.local.contains(service) {
                    table
                        .by_service
                        .insert(service.clone(), Arc::clone(&upstream));
                }
            }
            table.upstreams.insert(upstream.name().to_owned(), upstream);
        }
        Ok(table)
    }

    /// The upstream serving `path`, if it is proxied.
    pub fn upstream_for(&self, path: &str) -> Option<&Arc<Upstream>> {
        self.by_service.get(service_of(path)?)
    }

    /// Whether some route (here or upstream) serves `path`'s service.
    pub fn serves(&self, path: &str) -> bool {
        service_of(path).is_some_and(|service| {
            self.local.contains(service) || self.by_service.contains_key(service)
        })
    }

    /// Services served in this process.
    pub fn local(&self) -> &BTreeSet<String> {
        &self.local
    }

    /// Proxied services and their upstreams, by service name.
    pub fn proxied(&self) -> &BTreeMap<String, Arc<Upstream>> {
        &self.by_service
    }

    /// Every upstream, by name.
    pub fn upstreams(&self) -> &BTreeMap<String, Arc<Upstream>> {
        &self.upstreams
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// Asks every upstream's `grpc.health.v1.Health/Check` (the whole server: `""`) every
    /// `interval`, so health is known before the first call and a recovered upstream shows as
    /// serving again; each probe waits at most `interval` or 5 s. The tasks end with `shutdown`.
    pub fn spawn_health_checks(
        &self,
        interval: Duration,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        self.upstreams
            .values()
            .map(|upstream| {
                let upstream = Arc::clone(upstream);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let mut client = HealthClient::new(upstream.channel());
                    let wait = interval.min(Duration::from_secs(5));
                    loop {
                        let probe = client.check(HealthCheckRequest {
                            service: String::new(),
                        });
                        let outcome = tokio::select! {
                            () = shutdown.cancelled() => return,
                            answered = tokio::time::timeout(wait, probe) => match answered {
                                Ok(Ok(answer)) if answer.get_ref().status() == ServingStatus::Serving => Ok(()),
                                Ok(Ok(answer)) => Err(format!("health check answered {:?}", answer.get_ref().status())),
                                Ok(Err(status)) => Err(format!("health check failed: {}", status.message())),
                                Err(_) => Err(format!("health check timed out after {wait:?}")),
                            },
                        };
                        upstream.record(outcome);
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(interval) => {}
                        }
                    }
                })
            })
            .collect()
    }

    /// Health changes of every upstream from now on.
    pub fn watch(&self) -> broadcast::Receiver<HealthChange> {
        self.changes.subscribe()
    }

    /// Method names of `service` callable without a token.
    pub fn public_methods_of(&self, service: &str) -> Vec<String> {
        let prefix = format!("/{service}/");
        self.public_methods
            .iter()
            .filter_map(|path| path.strip_prefix(&prefix))
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_the_first_path_segment_of_a_grpc_path() {
        assert_eq!(
            service_of("/repit.lesson.v1.LessonService/GetLesson"),
            Some("repit.lesson.v1.LessonService")
        );
        assert_eq!(service_of("/repit.lesson.v1.LessonService/"), None);
        assert_eq!(service_of("/"), None);
        assert_eq!(service_of("/a/b/c"), None);
        assert_eq!(service_of("no-slash"), None);
    }

    #[tokio::test]
    async fn a_local_service_wins_over_an_upstream_and_unknown_services_are_not_served() {
        let table = RouteTable::new(
            ["repit.user.v1.UserService".to_owned()],
            [
                UpstreamSpec {
                    name: "user".into(),
                    url: "http://127.0.0.1:1".into(),
                    services: vec!["repit.user.v1.UserService".into()],
                },
                UpstreamSpec {
                    name: "lesson".into(),
                    url: "http://127.0.0.1:2".into(),
                    services: vec!["repit.lesson.v1.LessonService".into()],
                },
            ],
            ["/repit.user.v1.UserService/LoginWithPassword".to_owned()],
            Duration::from_secs(1),
        )
        .expect("table");
        assert!(
            table
                .upstream_for("/repit.user.v1.UserService/GetUser")
                .is_none()
        );
        assert_eq!(
            table
                .upstream_for("/repit.lesson.v1.LessonService/GetLesson")
                .map(|u| u.name()),
            Some("lesson")
        );
        assert!(table.serves("/repit.user.v1.UserService/GetUser"));
        assert!(!table.serves("/repit.tutor.v1.TutorService/GetTutor"));
        assert_eq!(
            table.public_methods_of("repit.user.v1.UserService"),
            ["LoginWithPassword"]
        );
    }
}
