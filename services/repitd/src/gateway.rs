//! The gateway in `repitd` (ADR 13): builds the [`Edge`] from the `gateway` configuration section
//! and the targets, mounts `GatewayService`, and serves the tonic server through the edge.
//!
//! Whenever the gateway is a target (alone, or within `all`) the edge wraps the whole server:
//! calls to services mounted here are served in-process, calls to services with a configured
//! upstream are forwarded, and every other service is UNIMPLEMENTED. The edge authenticates only
//! when it forwards (in-process services authenticate themselves); the rate limiter then names
//! the caller from the token itself.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use repit_gateway::deadline::DeadlinePolicy;
use repit_gateway::{Edge, GatewayGrpc, LoadMeter, RateLimiter, RouteTable, UpstreamSpec};
use repit_platform::auth::{AuthLayer, Verifier};
use repit_platform::{Config, RequestContextLayer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tower::Layer;

use crate::targets::{Component, TargetSet};

/// The gateway of one process: its edge, and what its `GatewayService` needs.
#[derive(Debug)]
pub(crate) struct Gateway {
    edge: Edge,
    verifier: Arc<Verifier>,
    public: Vec<String>,
    instance: String,
    shutdown: CancellationToken,
}

/// `config` with `auth.user_service_url` defaulting to `gateway.upstreams.user`: a gateway in
/// front of the user service fetches the verifying keys from it without saying so twice.
pub(crate) fn with_user_service_url(config: &Config) -> std::borrow::Cow<'_, Config> {
    match config.gateway.upstreams.get("user") {
        Some(url) if config.auth.user_service_url.is_empty() => {
            let mut config = config.clone();
            config.auth.user_service_url = url.clone();
            std::borrow::Cow::Owned(config)
        }
        _ => std::borrow::Cow::Borrowed(config),
    }
}

/// Methods callable without a token, across every service the gateway can route.
fn public_methods() -> Vec<String> {
    repit_user::grpc::PUBLIC_METHODS
        .iter()
        .chain(repit_gateway::grpc::PUBLIC_METHODS.iter())
        .map(|method| (*method).to_owned())
        .collect()
}

impl Gateway {
    /// The gateway for `targets`, if it is one of them, with its background tasks (upstream
    /// health probes). `local` names every gRPC service this process serves; `verifier` is the
    /// process's one verifier (`verifying_keys`), which the edge authenticates with.
    pub(crate) async fn open(
        config: &Config,
        targets: &TargetSet,
        local: Vec<String>,
        verifier: Arc<Verifier>,
        instance: String,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(Self, Vec<JoinHandle<()>>)>> {
        if !targets.components().contains(&Component::Gateway) {
            return Ok(None);
        }
        let settings = &config.gateway;
        let upstreams = settings.upstreams.iter().map(|(name, url)| {
            let services = Component::ALL
                .into_iter()
                .filter(|component| component.name() == name)
                .map(|component| component.grpc_service().to_owned())
                .collect();
            UpstreamSpec {
                name: name.clone(),
                url: url.clone(),
                services,
            }
        });
        let public = public_methods();
        let table = Arc::new(
            RouteTable::new(local, upstreams, public.clone(), settings.connect_timeout)
                .context("failed to set up the gateway's upstreams")?,
        );

        let tasks = if settings.health_check_interval.is_zero() {
            Vec::new()
        } else {
            table.spawn_health_checks(settings.health_check_interval, shutdown)
        };

        let forwards = !table.proxied().is_empty();
        let auth =
            forwards.then(|| AuthLayer::new(Arc::clone(&verifier)).public(public.iter().cloned()));
        let limits = &settings.rate_limit;
        let limiter = limits.enabled.then(|| {
            Arc::new(RateLimiter::new(
                repit_gateway::Policy {
                    burst: limits.burst,
                    refill_tokens: limits.refill_tokens,
                    refill_period: limits.refill_period,
                },
                usize::try_from(limits.max_tracked_callers).unwrap_or(usize::MAX),
            ))
        });
        let edge = Edge {
            table,
            meter: Arc::new(LoadMeter::new(settings.concurrency_limit)),
            limiter,
            auth,
            verifier: (!forwards).then(|| Arc::clone(&verifier)),
            deadlines: DeadlinePolicy {
                default: settings.default_deadline,
                max: settings.max_deadline,
            },
            cors_allowed_origins: settings.cors_allowed_origins.clone(),
        };
        tracing::info!(
            routed = ?edge.table.proxied().keys().collect::<Vec<_>>(),
            edge_auth = forwards,
            "gateway ready"
        );
        Ok(Some((
            Self {
                edge,
                verifier,
                public,
                instance,
                shutdown: shutdown.clone(),
            },
            tasks,
        )))
    }

    /// Mounts `GatewayService` behind its own authentication (admin RPCs need a caller even
    /// in-process, where the edge does not authenticate).
    pub(crate) fn mount(&self, routes: Routes) -> Routes {
        let service = GatewayGrpc::new(
            Arc::clone(&self.edge.table),
            Arc::clone(&self.edge.meter),
            self.edge.limiter.clone(),
            self.edge.deadlines,
            self.instance.clone(),
        )
        .with_shutdown(self.shutdown.clone())
        .into_server();
        let auth = AuthLayer::new(Arc::clone(&self.verifier)).public(self.public.iter().cloned());
        routes.add_service(RequestContextLayer.layer(auth.layer(service)))
    }

    /// The edge to serve through.
    pub(crate) fn edge(&self) -> Edge {
        self.edge.clone()
    }
}

/// Serves `routes` until `signal`, through the gateway's edge when there is one (HTTP/1.1 is
/// then accepted too, for gRPC-web).
pub(crate) async fn serve(
    routes: Routes,
    edge: Option<Edge>,
    incoming: TcpIncoming,
    signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let routes = routes.prepare();
    match edge {
        Some(edge) => {
            Server::builder()
                .accept_http1(true)
                .layer(edge)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
        }
        None => {
            Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
        }
    }
    .context("gRPC server failed")
}

#[cfg(test)]
mod tests {
    use repit_platform::config::GATEWAY_UPSTREAM_NAMES;

    use super::*;

    #[test]
    fn the_configurable_upstreams_are_the_service_components_but_the_gateway() {
        let services: Vec<&str> = Component::ALL
            .into_iter()
            .filter(|component| *component != Component::Gateway)
            .map(Component::name)
            .collect();
        assert_eq!(GATEWAY_UPSTREAM_NAMES.to_vec(), services);
    }

    #[test]
    fn every_public_method_names_a_service_the_gateway_can_route() {
        for method in public_methods() {
            let service = repit_gateway::route::service_of(&method).expect("a gRPC path");
            assert!(
                Component::ALL
                    .into_iter()
                    .any(|component| component.grpc_service() == service),
                "{method}"
            );
        }
    }
}
