//! `repit.gateway.v1.GatewayService`: the gateway's own operational RPCs, answered from the
//! routing table, the load meter and the rate limiter of this instance.
//!
//! Mount it behind an [`repit_platform::auth::AuthLayer`] with [`PUBLIC_METHODS`] open:
//! everything but `GetRateLimitQuota` is for platform admins. `WatchUpstreamHealth` answers
//! UNIMPLEMENTED: upstream health here is passive (seen from forwarded calls), and a stream of
//! changes needs active probing first.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use repit_platform::auth::{caller, forbidden};
use repit_platform::status::not_implemented;
use repit_platform::time::timestamp;
use repit_proto::repit::common::v1::{PageRequest, PageResponse};
use repit_proto::repit::gateway::v1 as pb;
use repit_proto::repit::gateway::v1::gateway_service_server::{
    GatewayService, GatewayServiceServer,
};
use tonic::{Request, Response, Status};

use crate::deadline::DeadlinePolicy;
use crate::rate_limit::{DEFAULT_POLICY, Quota, RateLimiter};
use crate::route::{Health, RouteTable, service_of};
use crate::shed::LoadMeter;

/// Gateway methods callable without a token.
pub const PUBLIC_METHODS: [&str; 1] = ["/repit.gateway.v1.GatewayService/GetRateLimitQuota"];

/// The endpoint address shown for services served in this process.
pub const IN_PROCESS: &str = "in-process";

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
        }
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
            .map(|upstream| {
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
            })
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
        _request: Request<pb::WatchUpstreamHealthRequest>,
    ) -> Result<Response<Self::WatchUpstreamHealthStream>, Status> {
        Err(not_implemented(
            "repit.gateway.v1.GatewayService/WatchUpstreamHealth",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
