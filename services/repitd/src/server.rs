//! Assembles one tonic server: gRPC health, reflection (v1 and v1alpha), and the selected
//! components, listening on the configured address until the shutdown token fires; and starts
//! the selected workers (relay, projections) beside it on the same shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::any;
use repit_event_store::EventStore;
use repit_event_store::relay::Relay;
use repit_lesson::{LessonApplication, LessonSettings};
use repit_platform::auth::{AuthLayer, Verifier};
use repit_platform::{Config, RequestContextLayer, status};
use repit_projections::{FeedSource, ReadModelDb};
use repit_user::application::{BotCredential, UserApplication, UserSettings};
use repit_user::grpc::{RateLimits, UserGrpc};
use repit_user::keys::{KeyEncryptionKey, KeyRing};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::contracts::ContractIndex;
use crate::gateway::Gateway;
use crate::targets::{Component, TargetSet, Worker};
use crate::{backends, pipeline};

/// Services every `repitd` answers whatever its targets, listed by reflection beside them.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A server that is accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// The address actually bound (differs from the configured one when that used port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has stopped: after shutdown, once in-flight calls end or `grace`
    /// passes, whichever comes first. `Ok(false)` means the grace period ran out.
    pub async fn stopped(
        self,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> anyhow::Result<bool> {
        let mut task = self.task;
        tokio::select! {
            joined = &mut task => return joined.context("server task panicked")?.map(|()| true),
            () = shutdown.cancelled() => {}
        }
        // Workers stop at the same signal: the relay drains its acknowledgements, projections
        // finish the batch they are committing.
        let everything = async {
            let served = (&mut task).await;
            for worker in self.workers {
                let _ = worker.await;
            }
            served
        };
        match tokio::time::timeout(grace, everything).await {
            Ok(joined) => joined.context("server task panicked")?.map(|()| true),
            Err(_) => {
                task.abort();
                Ok(false)
            }
        }
    }
}

/// Binds the configured address and starts serving `targets` in the background.
pub async fn start(
    config: &Config,
    targets: &TargetSet,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningServer> {
    let contracts = ContractIndex::compiled()?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.server.listen))?;
    let local_addr = listener
        .local_addr()
        .context("failed to read the bound address")?;

    let services = Services::open(config, targets).await?;
    let mut workers = Vec::new();
    if let Some(worker) = services.start_relay(config, targets, &shutdown)? {
        workers.push(worker);
    }
    if let Some(worker) = services
        .start_projections(config, targets, &shutdown)
        .await?
    {
        workers.push(worker);
    }
    let verifier = if targets
        .components()
        .iter()
        .any(|c| matches!(c, Component::User | Component::Lesson | Component::Gateway))
    {
        let local = services.user.as_ref().map(UserApplication::keys);
        let config = crate::gateway::with_user_service_url(config);
        Some(crate::verifying_keys::verifier(&config, local, &shutdown).await?)
    } else {
        None
    };
    let gateway = open_gateway(
        config,
        targets,
        verifier.clone(),
        local_addr,
        &shutdown,
        &mut workers,
    )
    .await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let mut routes = Routes::new(health_service);
    routes = routes
        .add_service(reflection_v1(targets)?)
        .add_service(reflection_v1alpha(targets)?);
    for &component in targets.components() {
        routes = match (component, &services.lesson, &verifier) {
            (Component::Lesson, Some(lesson), Some(verifier)) => routes.add_service(
                repit_lesson::LessonGrpc::new(lesson.clone(), shutdown.clone())
                    .into_server(&AuthLayer::new(verifier.clone())),
            ),
            (Component::User, _, Some(verifier)) => match &services.user {
                Some(user) => mount_user(routes, config, user, verifier.clone()),
                None => mount_unimplemented(routes, component, &contracts)?,
            },
            (Component::Gateway, _, _) => match &gateway {
                Some(gateway) => gateway.mount(routes),
                None => mount_unimplemented(routes, component, &contracts)?,
            },
            _ => mount_unimplemented(routes, component, &contracts)?,
        };
    }
    mark_serving(&health, targets).await;

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        let targets = targets.clone();
        async move {
            shutdown.cancelled().await;
            // Tell load balancers first, so they stop sending before connections close.
            mark_not_serving(&health, &targets).await;
        }
    };
    let edge = gateway.as_ref().map(Gateway::edge);
    let task = tokio::spawn(crate::gateway::serve(routes, edge, incoming, signal));
    tracing::info!(address = %local_addr, targets = %targets, "listening");
    Ok(RunningServer {
        local_addr,
        task,
        workers,
    })
}

/// The backends and applications the selected targets use, opened once.
struct Services {
    store: Option<Arc<dyn EventStore>>,
    read_models: Option<ReadModelDb>,
    lesson: Option<LessonApplication>,
    user: Option<UserApplication>,
}

impl Services {
    async fn open(config: &Config, targets: &TargetSet) -> anyhow::Result<Self> {
        let lesson_target = targets.components().contains(&Component::Lesson);
        let projections = targets.runs(Worker::Projections);
        let relay = relay_runs(config, targets);
        let user_target = targets.components().contains(&Component::User);
        let store = if lesson_target || user_target || projections || relay {
            Some(backends::event_store(config).await?)
        } else {
            None
        };
        let read_models = if lesson_target || user_target || projections {
            Some(backends::read_models(config).await?)
        } else {
            None
        };
        let lesson = match (&store, &read_models) {
            (Some(store), Some(db)) if lesson_target || projections => Some(
                LessonApplication::new(store.clone(), db.clone(), LessonSettings::default()),
            ),
            _ => None,
        };
        let storage = &config.storage;
        if (lesson_target || user_target)
            && !projections
            && storage.read_model_url.is_empty()
            && !storage.event_store_url.is_empty()
            && !storage.event_store_url.starts_with("sqlite:")
        {
            // The events are on a shared server, the read models in a file of this process that
            // no projections process fills: the lists and schedules would stay empty.
            tracing::warn!(
                "the services here answer queries from read models in a private SQLite file, \
                 while the events live in a shared store and no projections run in this process: \
                 set storage.read_model_url (REPIT_STORAGE__READ_MODEL_URL) to the projections' \
                 database"
            );
        }
        if let (true, Some(db), Some(store)) = (lesson_target || user_target, &read_models, &store)
        {
            // The tables the services query exist before their first query, even when the
            // projections run in another process that has not started yet.
            pipeline::runtime(
                config,
                db.clone(),
                FeedSource::Store(store.clone()),
                pipeline::queried_read_models(lesson_target, user_target),
            )
            .prepare()
            .await
            .context("failed to create the read models the services query")?;
        }
        let user = match (&store, &read_models, user_target) {
            (Some(store), Some(db), true) => {
                Some(open_user(config, store.clone(), db.clone()).await?)
            }
            _ => None,
        };
        Ok(Self {
            store,
            read_models,
            lesson,
            user,
        })
    }

    fn start_relay(
        &self,
        config: &Config,
        targets: &TargetSet,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<JoinHandle<()>>> {
        if !relay_runs(config, targets) {
            return Ok(None);
        }
        if config.nats.url.is_empty() {
            anyhow::bail!("the relay needs nats.url (REPIT_NATS__URL)");
        }
        let store = self
            .store
            .clone()
            .context("the relay needs the event store")?;
        let config = config.clone();
        let shutdown = shutdown.clone();
        Ok(Some(tokio::spawn(async move {
            // The relay resumes from the last message in the stream, so restarting it after a
            // failure is always safe.
            while !shutdown.is_cancelled() {
                let result = async {
                    let context = backends::jetstream(&config).await?;
                    let relay =
                        Relay::new(store.clone(), context, pipeline::relay_options(&config));
                    relay
                        .run(shutdown.clone())
                        .await
                        .map_err(anyhow::Error::from)
                }
                .await;
                match result {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            "relay stopped, restarting in 1s"
                        );
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        })))
    }

    async fn start_projections(
        &self,
        config: &Config,
        targets: &TargetSet,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<JoinHandle<()>>> {
        if !targets.runs(Worker::Projections) {
            return Ok(None);
        }
        let (Some(store), Some(db), Some(lesson)) = (&self.store, &self.read_models, &self.lesson)
        else {
            anyhow::bail!("projections need the event store and the read-model database");
        };
        let source = pipeline::feed_source(config, store).await?;
        let runtime = pipeline::runtime(config, db.clone(), source, pipeline::projections(lesson));
        runtime
            .prepare()
            .await
            .context("failed to prepare the read models")?;
        tracing::info!(projections = ?runtime.names(), jetstream = config.projections.uses_jetstream(&config.nats), "projections starting");
        Ok(Some(tokio::spawn(runtime.run(shutdown.clone()))))
    }
}

/// The user service: its key-encryption key (a file, created on first start), the signing-key
/// ring in the event store (bootstrapped on first start), and the application.
async fn open_user(
    config: &Config,
    store: Arc<dyn EventStore>,
    read_models: ReadModelDb,
) -> anyhow::Result<UserApplication> {
    let path = config.auth.key_encryption_key_file(&config.storage);
    let kek = KeyEncryptionKey::load_or_create(&path)
        .with_context(|| format!("failed to load the key-encryption key {}", path.display()))?;
    let keys = KeyRing::open(store.clone(), kek, chrono::Utc::now())
        .await
        .context("failed to open the signing-key ring")?;
    let bot_credential = config
        .auth
        .bot_credential()
        .with_context(|| {
            format!(
                "failed to read the bot credential file {}",
                config.auth.bot_credential_file
            )
        })?
        .map(BotCredential::new);
    if bot_credential.is_none() {
        tracing::warn!("no auth.bot_credential configured: the Telegram bot cannot log users in");
    }
    let settings = UserSettings {
        issuer: config.auth.issuer.clone(),
        audience: config.auth.audience.clone(),
        bot_credential,
        bot_username: config.auth.bot_username.clone(),
        platform_admin_emails: config
            .auth
            .platform_admin_emails
            .iter()
            .map(|e| repit_user::application::normalise_email(e))
            .collect(),
        ..UserSettings::default()
    };
    UserApplication::new(store, read_models, keys, settings)
        .context("failed to start the user service")
}

/// Mounts the user service behind the auth layer (its public RPCs stay open) and the request
/// context layer, outermost, so the actor reaches the events it appends. The process's verifier
/// is handed to the service so that a rotation made here reaches it at once; other replicas'
/// rotations reach it through [`crate::verifying_keys`].
fn mount_user(
    routes: Routes,
    config: &Config,
    user: &UserApplication,
    verifier: Arc<Verifier>,
) -> Routes {
    use tower::Layer;
    let user = user.clone().with_verifier(Arc::clone(&verifier));
    let auth = AuthLayer::new(verifier).public(repit_user::grpc::PUBLIC_METHODS);
    let limits = RateLimits {
        address_burst: config.auth.rate_limit_address_burst,
        address_per_minute: config.auth.rate_limit_address_per_minute,
        account_burst: config.auth.rate_limit_account_burst,
        account_per_minute: config.auth.rate_limit_account_per_minute,
    };
    let service =
        UserGrpc::with_rate_limits(user, config.auth.issuer.clone(), limits).into_server();
    routes.add_service(RequestContextLayer.layer(auth.layer(service)))
}

/// The gateway when it is a target (its background tasks join the workers), over every gRPC
/// service this process serves.
async fn open_gateway(
    config: &Config,
    targets: &TargetSet,
    verifier: Option<Arc<Verifier>>,
    local_addr: SocketAddr,
    shutdown: &CancellationToken,
    workers: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Option<Gateway>> {
    let Some(verifier) = verifier else {
        return Ok(None);
    };
    let local = [HEALTH_SERVICE]
        .into_iter()
        .chain(REFLECTION_SERVICES)
        .chain(targets.components().iter().map(|c| c.grpc_service()))
        .map(str::to_owned)
        .collect();
    let instance = format!("repitd@{local_addr}");
    let opened = Gateway::open(config, targets, local, verifier, instance, shutdown).await?;
    Ok(opened.map(|(gateway, tasks)| {
        workers.extend(tasks);
        gateway
    }))
}

/// Whether the relay runs: named explicitly, or part of `all` with NATS configured.
fn relay_runs(config: &Config, targets: &TargetSet) -> bool {
    targets.runs(Worker::Relay) && (!targets.is_all() || !config.nats.url.is_empty())
}

/// Mounts a component this build does not implement yet: each RPC of its contract answers
/// UNIMPLEMENTED naming the RPC.
fn mount_unimplemented(
    routes: Routes,
    component: Component,
    contracts: &ContractIndex,
) -> anyhow::Result<Routes> {
    let service = component.grpc_service();
    let methods = contracts
        .methods(service)
        .with_context(|| format!("no contract declares {service}"))?
        .clone();
    let prefix = format!("/{service}/");
    let handler = move |uri: http::Uri| {
        let method = uri.path().strip_prefix('/').unwrap_or_default().to_owned();
        let known = uri
            .path()
            .strip_prefix(&prefix)
            .is_some_and(|name| methods.contains(name));
        async move {
            let status = if known {
                status::not_implemented(&method)
            } else {
                status::unknown_method(&method)
            };
            let (parts, ()) = status.into_http::<()>().into_parts();
            http::Response::from_parts(parts, Body::empty())
        }
    };
    let mut routes = routes;
    *routes.axum_router_mut() = std::mem::take(routes.axum_router_mut())
        .route(&format!("/{service}/{{*rpc}}"), any(handler));
    Ok(routes)
}

fn reflection_builder(targets: &TargetSet) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(repit_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .with_service_name(HEALTH_SERVICE);
    for name in REFLECTION_SERVICES {
        builder = builder.with_service_name(name);
    }
    for component in targets.components() {
        builder = builder.with_service_name(component.grpc_service());
    }
    builder
}

fn reflection_v1(
    targets: &TargetSet,
) -> anyhow::Result<
    tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1::server_reflection_server::ServerReflection,
    >,
> {
    reflection_builder(targets)
        .build_v1()
        .context("failed to build reflection v1")
}

fn reflection_v1alpha(
    targets: &TargetSet,
) -> anyhow::Result<
    tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflection,
    >,
> {
    reflection_builder(targets)
        .build_v1alpha()
        .context("failed to build reflection v1alpha")
}

async fn mark_serving(health: &HealthReporter, targets: &TargetSet) {
    set_status(health, targets, ServingStatus::Serving).await;
}

async fn mark_not_serving(health: &HealthReporter, targets: &TargetSet) {
    set_status(health, targets, ServingStatus::NotServing).await;
}

/// Sets the overall status ("") and that of every mounted service.
async fn set_status(health: &HealthReporter, targets: &TargetSet, status: ServingStatus) {
    health.set_service_status("", status).await;
    for component in targets.components() {
        health
            .set_service_status(component.grpc_service(), status)
            .await;
    }
}
