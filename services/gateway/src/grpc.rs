//! `repit.gateway.v1.GatewayService`: the gateway's own operational RPCs, answered from the
//! routing table, the load meter and the rate limiter of this instance.
//!
//! Mount it behind an [`repit_platform::auth::AuthLayer`] with [`PUBLIC_METHODS`] open:
//! everything but `GetRateLimitQuota` is for platform admins. Upstream health is passive: what
//! the calls forwarded by this instance saw (no probes yet), so `ListUpstreams` and
//! `WatchUpstreamHealth` report an upstream UNPROBED until a call went there.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use repit_platform::auth::{caller, forbidden};
use repit_platform::time::timestamp;
use repit_proto::repit::common::v1::{PageRequest, PageResponse};
use repit_proto::repit::gateway::v1 as pb;
use repit_proto::repit::gateway::v1::gateway_service_server::{
    GatewayService, GatewayServiceServer,
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::deadline::DeadlinePolicy;
use crate::rate_limit::{DEFAULT_POLICY, Quota, RateLimiter};
use crate::route::{Health, HealthChange, RouteTable, Upstream, service_of};
use crate::shed::LoadMeter;

/// Gateway methods callable without a token.
pub const PUBLIC_METHODS: [&str; 1] = ["/repit.gateway.v1.GatewayService/GetRateLimitQuota"];

/// The endpoint address shown for services served in this process.
pub const IN_PROCESS: &str = "in-process";

/// A watch with nothing to say sends a heartbeat this often (gateway.proto).
pub const HEARTBEAT: Duration = Duration::from_secs(30);

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// The gateway service over this instance's state.
#[derive(Clone, Debug)]
pub struct GatewayGrpc {
    table: Arc<RouteTable>,
    meter: Arc<LoadMeter>,
    limiter: Option<Arc<RateLimiter>>,
    deadlines: DeadlinePolicy,
    instance: String,
    started_at: DateTime<Utc>,
    shutdown: CancellationToken,
}

impl GatewayGrpc {
    pub fn new(
        table: Arc<RouteTable>,
        meter: Arc<LoadMeter>,
        limiter: Option<Arc<RateLimiter>>,
        deadlines: DeadlinePolicy,
        instance: impl Into<String>,
    ) -> Self {
        Self {
            table,
            meter,
            limiter,
            deadlines,
            instance: instance.into(),
            started_at: Utc::now(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Ends open watches with UNAVAILABLE when `shutdown` fires.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub fn into_server(self) -> GatewayServiceServer<Self> {
        GatewayServiceServer::new(self)
    }
}

fn require_admin<T>(request: &Request<T>) -> Result<(), Status> {
    if caller(request)?.is_platform_admin() {
        Ok(())
    } else {
        Err(forbidden("only a platform admin may inspect the gateway"))
    }
}

fn duration(value: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(value).ok()
}

/// One page of `items` (a tiny list: the offset is the page token).
fn page<T>(
    mut items: Vec<T>,
    request: Option<&PageRequest>,
) -> Result<(Vec<T>, PageResponse), Status> {
    let size = request
        .map(|p| usize::try_from(p.page_size).unwrap_or(0))
        .filter(|size| *size > 0)
        .unwrap_or(DEFAULT_PAGE)
        .min(MAX_PAGE);
    let offset = match request.map(|p| p.page_token.as_str()).unwrap_or_default() {
        "" => 0,
        token => token
            .parse::<usize>()
            .ok()
            .filter(|offset| *offset <= items.len())
            .ok_or_else(|| {
                Status::invalid_argument("page_token is not a token this gateway gave")
            })?,
    };
    let end = (offset + size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    items.truncate(end);
    let items = items.into_iter().skip(offset).collect();
    Ok((
        items,
        PageResponse {
            next_page_token: next,
        },
    ))
}

fn upstream_proto(upstream: &Upstream) -> pb::Upstream {
    let seen = upstream.health();
    let endpoint = pb::Endpoint {
        address: upstream.url().to_owned(),
        health: health(seen.health).into(),
        last_checked_at: seen.last_checked_at.map(timestamp),
        health_changed_at: Some(timestamp(seen.health_changed_at)),
        consecutive_failures: seen.consecutive_failures,
        last_error: seen.last_error,
        in_flight: upstream.in_flight(),
    };
    pb::Upstream {
        name: upstream.name().to_owned(),
        services: upstream.services().to_vec(),
        health: health(seen.health).into(),
        health_changed_at: Some(timestamp(seen.health_changed_at)),
        endpoints: vec![endpoint],
    }
}

fn health(health: Health) -> pb::UpstreamHealth {
    match health {
        Health::Unprobed => pb::UpstreamHealth::Unprobed,
        Health::Serving => pb::UpstreamHealth::Serving,
        Health::NotServing => pb::UpstreamHealth::NotServing,
    }
}

impl GatewayGrpc {
    fn route(&self, service: &str, upstream: &str) -> pb::Route {
        pb::Route {
            path_prefix: format!("/{service}/"),
            service: service.to_owned(),
            upstream: upstream.to_owned(),
            public_methods: self.table.public_methods_of(service),
            default_deadline: duration(self.deadlines.default),
            max_deadline: duration(self.deadlines.max),
            rate_limit_policy: if self.limiter.is_some() {
                DEFAULT_POLICY.to_owned()
            } else {
                String::new()
            },
            grpc_web: true,
        }
    }

    fn quota(&self, quota: &Quota) -> pb::RateLimitQuota {
        let now = Utc::now();
        pb::RateLimitQuota {
            policy: DEFAULT_POLICY.to_owned(),
            burst: quota.policy.burst,
            refill_tokens: quota.policy.refill_tokens,
            refill_period: duration(quota.policy.refill_period),
            remaining: quota.remaining,
            full_at: chrono::TimeDelta::from_std(quota.full_in)
                .ok()
                .map(|delta| timestamp(now + delta)),
            retry_after: duration(quota.retry_after),
        }
    }
}

#[tonic::async_trait]
impl GatewayService for GatewayGrpc {
    async fn list_routes(
        &self,
        request: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        require_admin(&request)?;
        let mut routes: Vec<pb::Route> = self
            .table
            .local()
            .iter()
            .map(|service| self.route(service, IN_PROCESS))
            .chain(
                self.table
                    .proxied()
                    .iter()
                    .map(|(service, upstream)| self.route(service, upstream.name())),
            )
            .collect();
        routes.sort_by(|a, b| a.path_prefix.cmp(&b.path_prefix));
        let (routes, page) = page(routes, request.get_ref().page.as_ref())?;
        Ok(Response::new(pb::ListRoutesResponse {
            routes,
            page: Some(page),
        }))
    }

    async fn list_upstreams(
        &self,
        request: Request<pb::ListUpstreamsRequest>,
    ) -> Result<Response<pb::ListUpstreamsResponse>, Status> {
        require_admin(&request)?;
        let names = &request.get_ref().names;
        if let Some(unknown) = names
            .iter()
            .find(|name| self.table.upstream(name).is_none())
        {
            return Err(Status::not_found(format!("no upstream is named {unknown}")));
        }
        let upstreams: Vec<pb::Upstream> = self
            .table
            .upstreams()
            .values()
            .filter(|upstream| names.is_empty() || names.iter().any(|n| n == upstream.name()))
            .map(|upstream| upstream_proto(upstream))
            .collect();
        let (upstreams, page) = page(upstreams, request.get_ref().page.as_ref())?;
        Ok(Response::new(pb::ListUpstreamsResponse {
            upstreams,
            page: Some(page),
            gateway_instance: self.instance.clone(),
        }))
    }

    async fn get_rate_limit_quota(
        &self,
        request: Request<pb::GetRateLimitQuotaRequest>,
    ) -> Result<Response<pb::GetRateLimitQuotaResponse>, Status> {
        let method = request.get_ref().method.as_str();
        if !method.is_empty() {
            if service_of(method).is_none() {
                return Err(Status::invalid_argument(
                    "method must be \"/package.Service/Method\"",
                ));
            }
            if !self.table.serves(method) {
                return Err(Status::not_found(format!("no route serves {method}")));
            }
        }
        // The rate-limit layer counted this call and left its quota here.
        let counted = request.extensions().get::<Quota>();
        let subject = match (counted, caller(&request)) {
            (Some(quota), _) => quota.subject.clone(),
            (None, Ok(caller)) => format!("user:{}", caller.user_id),
            (None, Err(_)) => String::new(),
        };
        Ok(Response::new(pb::GetRateLimitQuotaResponse {
            subject,
            quotas: counted.map(|quota| self.quota(quota)).into_iter().collect(),
            gateway_instance: self.instance.clone(),
        }))
    }

    async fn get_load_status(
        &self,
        request: Request<pb::GetLoadStatusRequest>,
    ) -> Result<Response<pb::GetLoadStatusResponse>, Status> {
        require_admin(&request)?;
        Ok(Response::new(pb::GetLoadStatusResponse {
            gateway_instance: self.instance.clone(),
            in_flight: self.meter.in_flight(),
            concurrency_limit: self.meter.limit(),
            shedding: self.meter.shedding(),
            shed_total: self.meter.shed_total(),
            shed_last_minute: self.meter.shed_last_minute(),
            started_at: Some(timestamp(self.started_at)),
        }))
    }

    type WatchUpstreamHealthStream = Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<pb::WatchUpstreamHealthResponse, Status>> + Send,
        >,
    >;

    async fn watch_upstream_health(
        &self,
        request: Request<pb::WatchUpstreamHealthRequest>,
    ) -> Result<Response<Self::WatchUpstreamHealthStream>, Status> {
        require_admin(&request)?;
        let names = request.into_inner().upstream_names;
        if let Some(unknown) = names
            .iter()
            .find(|name| self.table.upstream(name).is_none())
        {
            return Err(Status::not_found(format!("no upstream is named {unknown}")));
        }
        // Subscribed before the snapshot is taken, so no change falls between the two.
        let changes = self.table.watch();
        let (send, receive) = mpsc::channel(16);
        let watch = Watch {
            table: Arc::clone(&self.table),
            names,
            instance: self.instance.clone(),
            shutdown: self.shutdown.clone(),
            send,
        };
        tokio::spawn(watch.run(changes));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receive),
        )))
    }
}

/// One `WatchUpstreamHealth` stream: runs until the client goes away or shutdown.
struct Watch {
    table: Arc<RouteTable>,
    names: Vec<String>,
    instance: String,
    shutdown: CancellationToken,
    send: mpsc::Sender<Result<pb::WatchUpstreamHealthResponse, Status>>,
}

impl Watch {
    fn watched(&self, name: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|n| n == name)
    }

    fn snapshot(&self) -> pb::WatchUpstreamHealthResponse {
        let upstreams = self
            .table
            .upstreams()
            .values()
            .filter(|upstream| self.watched(upstream.name()))
            .map(|upstream| upstream_proto(upstream))
            .collect();
        pb::WatchUpstreamHealthResponse {
            event: Some(pb::watch_upstream_health_response::Event::Snapshot(
                pb::UpstreamHealthSnapshot {
                    upstreams,
                    taken_at: Some(timestamp(Utc::now())),
                    gateway_instance: self.instance.clone(),
                },
            )),
        }
    }

    fn changed(&self, change: &HealthChange) -> Option<pb::WatchUpstreamHealthResponse> {
        let upstream = self.table.upstream(&change.upstream)?;
        Some(pb::WatchUpstreamHealthResponse {
            event: Some(pb::watch_upstream_health_response::Event::Changed(
                pb::UpstreamHealthChanged {
                    upstream: Some(upstream_proto(upstream)),
                    endpoint_address: upstream.url().to_owned(),
                    previous_health: health(change.previous).into(),
                    health: health(change.health).into(),
                    changed_at: Some(timestamp(change.at)),
                },
            )),
        })
    }

    async fn run(self, mut changes: broadcast::Receiver<HealthChange>) {
        let mut next = Some(Ok(self.snapshot()));
        loop {
            if let Some(message) = next.take()
                && self.send.send(message).await.is_err()
            {
                return; // the client went away
            }
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    let _ = self
                        .send
                        .send(Err(Status::unavailable("the gateway is shutting down")))
                        .await;
                    return;
                }
                () = self.send.closed() => return,
                received = changes.recv() => {
                    next = match received {
                        Ok(change) if self.watched(&change.upstream) => self.changed(&change).map(Ok),
                        Ok(_) => None,
                        // Too far behind: start over from the current state.
                        Err(broadcast::error::RecvError::Lagged(_)) => Some(Ok(self.snapshot())),
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                }
                () = tokio::time::sleep(HEARTBEAT) => {
                    next = Some(Ok(pb::WatchUpstreamHealthResponse {
                        event: Some(pb::watch_upstream_health_response::Event::HeartbeatAt(
                            timestamp(Utc::now()),
                        )),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use repit_platform::auth::{Caller, Role, RoleClaim};
    use tokio_stream::StreamExt;

    use super::*;
    use crate::route::UpstreamSpec;

    fn admin<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(Caller {
            user_id: "admin".into(),
            session_id: "s".into(),
            roles: vec![RoleClaim::new(Role::Admin)],
            children: Vec::new(),
            time_zone: None,
            expires_at: Utc::now() + chrono::TimeDelta::minutes(5),
        });
        request
    }

    fn gateway() -> GatewayGrpc {
        let table = RouteTable::new(
            [GRPC_SERVICE_NAME.to_owned()],
            [UpstreamSpec {
                name: "lesson".into(),
                url: "http://127.0.0.1:9".into(),
                services: vec!["repit.lesson.v1.LessonService".into()],
            }],
            [],
            Duration::from_secs(1),
        )
        .expect("table");
        GatewayGrpc::new(
            Arc::new(table),
            Arc::new(LoadMeter::new(4)),
            None,
            DeadlinePolicy {
                default: Duration::from_secs(1),
                max: Duration::from_secs(2),
            },
            "test",
        )
    }

    const GRPC_SERVICE_NAME: &str = "repit.gateway.v1.GatewayService";

    #[tokio::test]
    async fn a_health_watch_starts_with_a_snapshot_then_sends_each_change() {
        use pb::watch_upstream_health_response::Event;
        let gateway = gateway();
        let mut watch = gateway
            .watch_upstream_health(admin(pb::WatchUpstreamHealthRequest::default()))
            .await
            .expect("watch")
            .into_inner();
        let Some(Ok(pb::WatchUpstreamHealthResponse {
            event: Some(Event::Snapshot(snapshot)),
        })) = watch.next().await
        else {
            panic!("a snapshot first");
        };
        assert_eq!(snapshot.upstreams[0].health(), pb::UpstreamHealth::Unprobed);
        let upstream = gateway.table.upstream("lesson").expect("upstream");
        upstream.record(Err("connection refused".into()));
        let Some(Ok(pb::WatchUpstreamHealthResponse {
            event: Some(Event::Changed(changed)),
        })) = watch.next().await
        else {
            panic!("a change next");
        };
        assert_eq!(changed.health(), pb::UpstreamHealth::NotServing);
        assert_eq!(changed.previous_health(), pb::UpstreamHealth::Unprobed);
        let endpoint = &changed.upstream.expect("upstream").endpoints[0];
        assert_eq!(endpoint.last_error, "connection refused");
        // A failure that changes nothing sends nothing; recovery does.
        upstream.record(Err("connection refused".into()));
        upstream.record(Ok(()));
        let Some(Ok(pb::WatchUpstreamHealthResponse {
            event: Some(Event::Changed(changed)),
        })) = watch.next().await
        else {
            panic!("the recovery");
        };
        assert_eq!(changed.health(), pb::UpstreamHealth::Serving);
    }

    #[tokio::test]
    async fn admin_rpcs_refuse_others_and_answer_admins() {
        let gateway = gateway();
        let anonymous = gateway
            .get_load_status(Request::new(pb::GetLoadStatusRequest {}))
            .await
            .expect_err("no caller");
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        let routes = gateway
            .list_routes(admin(pb::ListRoutesRequest::default()))
            .await
            .expect("routes")
            .into_inner()
            .routes;
        let upstreams: Vec<(&str, &str)> = routes
            .iter()
            .map(|r| (r.service.as_str(), r.upstream.as_str()))
            .collect();
        assert_eq!(
            upstreams,
            [
                ("repit.gateway.v1.GatewayService", IN_PROCESS),
                ("repit.lesson.v1.LessonService", "lesson")
            ]
        );
        let load = gateway
            .get_load_status(admin(pb::GetLoadStatusRequest {}))
            .await
            .expect("load")
            .into_inner();
        assert_eq!((load.in_flight, load.concurrency_limit), (0, 4));
        let missing = gateway
            .list_upstreams(admin(pb::ListUpstreamsRequest {
                names: vec!["billing".into()],
                ..Default::default()
            }))
            .await
            .expect_err("no such upstream");
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }

    #[test]
    fn pages_follow_their_tokens_to_the_end() {
        let request = PageRequest {
            page_size: 2,
            page_token: String::new(),
        };
        let (first, next) = page(vec![1, 2, 3], Some(&request)).expect("first");
        assert_eq!((first, next.next_page_token.as_str()), (vec![1, 2], "2"));
        let request = PageRequest {
            page_size: 2,
            page_token: "2".into(),
        };
        let (last, next) = page(vec![1, 2, 3], Some(&request)).expect("last");
        assert_eq!((last, next.next_page_token.as_str()), (vec![3], ""));
        let bad = PageRequest {
            page_size: 2,
            page_token: "x".into(),
        };
        assert!(page(vec![1], Some(&bad)).is_err());
    }
}
