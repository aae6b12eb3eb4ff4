//! One node's life: build the layers from the configuration, serve client transports
//! and the HTTP API on one listener, and shut down in order.
//!
//! Shutdown has one owner, [`run`]. The order: not ready (`/readyz` 503, new pushes
//! and new sessions refused) → let queues drain up to the deadline → close every
//! session (WebSocket clients get close 1001, polling clients the close packet at
//! their next poll; either way they reconnect elsewhere; WebSockets of other nodes'
//! sessions piped through this one end too) → stop accepting connections (idle ones
//! close) → wait briefly for in-flight requests → stop the bus (cluster mode: the registry
//! forgets this node's sockets and the node) → return.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Api};
use crate::auth::{ApiKeys, Authenticator};
use crate::bus::{Bus, ClusterObserver, LocalBus, RedisBus, RedisSettings};
use crate::codec::Codecs;
use crate::config::{default_advertise_addr, Config, ConfigError};
use crate::connection::CloseReason;
use crate::delivery::Tracker;
use crate::events::Events;
use crate::frontend::phoenix::{Phoenix, PhoenixCodec, PhoenixConfig};
use crate::frontend::pusher::{Pusher, PusherCodec, PusherConfig};
use crate::frontend::socketio::{Engine, EngineConfig, Gateway, SocketIo, SocketIoCodec};
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::presence::local::LocalPresence;
use crate::presence::Presences;
use crate::push_service::PushService;
use crate::registry::Registry;
use crate::transport::admission::Gate;
use crate::transport::forward::{AddressFuture, Directory, DirectoryError, Forwarder};
use crate::transport::listener;

/// Where Socket.IO clients connect (Engine.IO's path; also with a trailing slash).
const ENGINE_IO_PATH: &str = "/socket.io";
/// Phoenix's long-poll transport.
const PHOENIX_LONGPOLL_PATH: &str = "/socket/longpoll";

/// How long to wait for close frames and in-flight HTTP requests after the sessions
/// were closed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why the node could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("PUSHGATE_REDIS_URL: cannot set up the Redis bus")]
    Redis(#[source] crate::bus::BusError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("serving failed")]
    Serve(#[source] std::io::Error),
}

/// The layers that differ between a single node and a cluster.
struct Layers {
    hub: Arc<Hub>,
    bus: Arc<dyn Bus>,
    /// The Redis bus, in cluster mode.
    cluster: Option<Arc<RedisBus>>,
    /// Where presence is kept: in memory, or the cluster registry.
    presences: Arc<dyn Presences>,
    /// How requests of other nodes' sessions reach them, in cluster mode.
    forwarder: Option<Arc<Forwarder>>,
    /// Where connection state recovery keeps sessions and recent pushes, when on.
    recovery: Option<Arc<dyn crate::recovery::Store>>,
    /// The in-memory store, on a single node (told of the Pusher webhooks' rooms).
    local: Option<Arc<LocalPresence>>,
}

/// The Socket.IO endpoint of the gateway.
pub type SocketIoEngine = Engine<SocketIo<Gateway>>;

/// Runs a node on `listener` until `shutdown` resolves, then shuts down in order.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new());
    // What this node admits: every frontend's handshake, the API and the tracker ask.
    let limits = Limits::new(config.limits.clone(), metrics.clone());
    let gate = Arc::new(Gate::new(
        limits.clone(),
        config.allowed_origins.clone(),
        config.trusted_proxies.clone(),
        metrics.clone(),
    ));
    let tracker = Tracker::new(metrics.clone());
    tracker.limit_pending(limits.clone());
    // What happens on this node, for `GET /v1/events` (free while nobody reads).
    let events = Events::new(config.node_id.clone(), metrics.clone());
    tracker.report_events(events.clone());
    let started_at = crate::id::now_ms();
    // The frontends this node serves register their push codecs: the one place the
    // core learns which protocols exist.
    let mut codecs = Codecs::new();
    codecs.register(Arc::new(SocketIoCodec));
    codecs.register(Arc::new(PhoenixCodec));
    // Only with apps configured: its checks (Pusher's reserved event names) must not
    // refuse pushes on a node without Pusher clients.
    if !config.pusher_apps.is_empty() {
        codecs.register(Arc::new(PusherCodec));
    }
    // Cluster mode: the hub tells the Redis bus about interest and socket changes, and
    // presence lives in the registry. A single node keeps presence in memory.
    let listen = listener.local_addr().map_err(ServerError::Serve)?;
    // Pids of this node's sockets: made by the Socket.IO frontend, written by the
    // registry.
    let pids = Arc::new(crate::recovery::Pids::new());
    let Layers {
        hub,
        bus,
        cluster,
        presences,
        forwarder,
        local,
        recovery,
    } = match &config.redis_url {
        Some(url) => {
            let advertise = match &config.advertise_addr {
                Some(a) => a.authority(listen.port()),
                None => default_advertise_addr(listen, local_ip_toward(url).await)?,
            };
            tracing::info!(address = %advertise, "peers reach this node at its advertised address");
            let (observer, notes) = ClusterObserver::new();
            let hub = Arc::new(
                Hub::with_observer(codecs.clone(), metrics.clone(), observer)
                    .with_events(events.clone())
                    .with_max_rooms(config.limits.max_rooms),
            );
            let redis = RedisBus::connect(
                RedisSettings {
                    url: url.clone(),
                    prefix: config.redis_prefix.clone(),
                    registry_ttl: config.registry_ttl,
                    advertise: Some(advertise),
                },
                config.node_id.clone(),
                started_at,
                hub.clone(),
                tracker.clone(),
                metrics.clone(),
                notes,
            )
            .await
            .map_err(ServerError::Redis)?;
            let forwarder = Arc::new(Forwarder::new(
                config.node_id.clone(),
                Arc::new(RegistryDirectory(redis.registry().clone())),
                metrics.clone(),
            ));
            if let Some(settings) = config.recovery {
                redis.keep_sessions(settings, pids.clone());
            }
            Layers {
                hub,
                bus: redis.clone(),
                cluster: Some(redis.clone()),
                recovery: redis.recovery_store(),
                presences: redis,
                forwarder: Some(forwarder),
                local: None,
            }
        }
        None => {
            let presence = Arc::new(LocalPresence::new(metrics.clone()));
            let hub = Arc::new(
                Hub::with_observer(codecs.clone(), metrics.clone(), presence.clone())
                    .with_events(events.clone())
                    .with_max_rooms(config.limits.max_rooms),
            );
            let ring = config
                .recovery
                .map(|settings| Arc::new(crate::recovery::Ring::new(settings)));
            let mut bus = LocalBus::new(hub.clone());
            if let Some(ring) = &ring {
                bus = bus.with_recovery(ring.clone());
            }
            Layers {
                hub,
                bus: Arc::new(bus),
                recovery: ring.map(|r| r as Arc<dyn crate::recovery::Store>),
                cluster: None,
                presences: presence.clone(),
                local: Some(presence),
                forwarder: None,
            }
        }
    };
    if let Some(redis) = &cluster {
        redis.carry_events(events.clone());
    }
    let push = Arc::new(
        PushService::new(
            config.node_id.clone(),
            bus.clone(),
            codecs,
            tracker.clone(),
            metrics.clone(),
        )
        .with_events(events.clone())
        .with_recovery(recovery.is_some()),
    );
    let auth = Arc::new(Authenticator::with_rules(
        config.jwt_secret.as_deref(),
        config.token_rules.clone(),
    ));
    let draining = CancellationToken::new();

    let mut socketio = SocketIo::new(
        hub.clone(),
        tracker.clone(),
        config.node_id.clone(),
        config.namespaces.clone(),
        Gateway::new(auth.clone(), metrics.clone()),
        metrics.clone(),
    )
    .with_limits(limits.clone());
    if let Some(store) = &recovery {
        socketio = socketio.with_recovery(crate::frontend::socketio::Recovery {
            store: store.clone(),
            pids: pids.clone(),
        });
    }
    let engine = Engine::new(
        EngineConfig {
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            upgrade_timeout: config.upgrade_timeout,
            connect_timeout: Some(config.connect_timeout),
            max_payload: config.max_payload,
            queue_capacity: config.queue_capacity,
            queue_bytes: config.queue_bytes,
            forwarder: forwarder.clone(),
        },
        socketio,
        metrics.clone(),
    )
    .with_gate(gate.clone());
    let phoenix = Phoenix::new(
        PhoenixConfig {
            timeout: config.phoenix_timeout,
            max_payload: config.max_payload as usize,
            queue_capacity: config.queue_capacity,
            queue_bytes: config.queue_bytes,
            forwarder: forwarder.clone(),
        },
        hub.clone(),
        tracker.clone(),
        auth.clone(),
        presences.clone(),
        config.node_id.clone(),
        metrics.clone(),
    )
    .with_gate(gate.clone());
    let phoenix = match &recovery {
        Some(store) => phoenix.with_recovery(crate::recovery::Recovery {
            store: store.clone(),
            pids: pids.clone(),
        }),
        None => phoenix,
    };
    let pusher = (!config.pusher_apps.is_empty()).then(|| {
        Pusher::new(
            PusherConfig {
                apps: config.pusher_apps.clone(),
                activity_timeout: config.pusher_activity_timeout,
                pong_timeout: config.pusher_pong_timeout,
                max_connections: config.pusher_max_connections,
                max_channels: config.limits.max_rooms,
                max_payload: config.max_payload as usize,
                max_body_bytes: config.max_body_bytes,
                queue_capacity: config.queue_capacity,
                queue_bytes: config.queue_bytes,
            },
            hub.clone(),
            bus,
            push.clone(),
            presences.clone(),
            cluster.clone(),
            config.node_id.clone(),
            metrics.clone(),
        )
        .with_gate(gate.clone())
    });
    // Webhooks hear from whichever store decides occupancy and presence, before any
    // connection arrives.
    if let Some(watcher) = pusher.as_ref().and_then(Pusher::watcher) {
        match (&cluster, &local) {
            (Some(redis), _) => redis.registry().watch(watcher),
            (None, Some(local)) => local.watch(watcher),
            (None, None) => {}
        }
    }
    let api = Arc::new(Api {
        push,
        hub,
        tracker,
        metrics: metrics.clone(),
        events,
        keys: ApiKeys::new(&config.api_keys),
        node: config.node_id.clone(),
        started_at,
        cluster: cluster.clone(),
        presence: presences.clone(),
        draining: draining.clone(),
        max_body_bytes: config.max_body_bytes,
        gate,
    });
    let mut app = socketio_routes(engine.clone(), ENGINE_IO_PATH)
        .merge(phoenix_routes(phoenix.clone()))
        .merge(api::router(api));
    if let Some(p) = &pusher {
        app = app.merge(crate::frontend::pusher::http::routes(p.clone()));
        let apps: Vec<&str> = config.pusher_apps.iter().map(|a| a.id.as_str()).collect();
        tracing::info!(
            ?apps,
            "pusher frontend on /app/{{key}} and /apps/{{app_id}}"
        );
    }
    let app = app.fallback(api::not_found);

    let mode = if cluster.is_some() {
        "cluster, Redis bus"
    } else {
        "single node, in-process bus"
    };
    if config.api_keys.is_empty() {
        tracing::warn!("PUSHGATE_API_KEYS is not set: /v1 answers loopback callers only");
    }
    if !auth.requires_token() {
        tracing::warn!("PUSHGATE_JWT_SECRET is not set: anonymous connections are allowed");
    }
    tracing::debug!(limits = ?config.limits, origins = ?config.allowed_origins, "limits");
    tracing::info!(node = %config.node_id, mode, "listening on {listen}");

    let stop_accepting = CancellationToken::new();
    let polls = Arc::new(LongPolls {
        engine: engine.clone(),
        phoenix: phoenix.clone(),
    });
    let serve = listener::serve(listener, app, polls, metrics, stop_accepting.clone());
    let mut server = tokio::spawn(serve);

    tokio::select! {
        _ = shutdown => {}
        r = &mut server => {
            return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServerError::Serve(e)),
                Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
            };
        }
    }
    tracing::info!(timeout = ?config.shutdown_timeout, "shutting down: draining connections");
    // Not ready: /readyz answers 503 and new sessions and pushes are refused, while the
    // listener stays open so existing polling clients can still collect their frames
    // and, at the end, their close packet.
    draining.cancel();
    engine.start_draining();
    phoenix.start_draining();
    if let Some(p) = &pusher {
        p.start_draining();
    }
    engine
        .drain(tokio::time::Instant::now() + config.shutdown_timeout)
        .await;
    engine.close_all(CloseReason::Shutdown, CLOSE_GRACE).await;
    phoenix.close_all(CloseReason::Shutdown, CLOSE_GRACE).await;
    if let Some(p) = &pusher {
        p.close_all(CloseReason::Shutdown, CLOSE_GRACE).await;
    }
    if let Some(forwarder) = &forwarder {
        // Other nodes' WebSockets piped through this one: their clients reconnect.
        forwarder.close_all(CLOSE_GRACE).await;
    }
    stop_accepting.cancel();
    let _ = tokio::time::timeout(CLOSE_GRACE, &mut server).await;
    server.abort();
    if let Some(redis) = cluster {
        // Last: the sockets closed above are removed from the registry first.
        redis.shutdown().await;
    }
    if let Some(p) = &pusher {
        // The closes above made vacated and member_removed webhooks: send them.
        p.flush_webhooks(CLOSE_GRACE).await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// The cluster registry as the forwarder's directory of nodes.
struct RegistryDirectory(Arc<Registry>);

impl Directory for RegistryDirectory {
    fn is_live(&self, node: &str) -> bool {
        self.0.is_live(node)
    }

    fn address<'a>(&'a self, node: &'a str) -> AddressFuture<'a> {
        Box::pin(async move {
            self.0
                .address(node)
                .await
                .map_err(|e| DirectoryError(Box::new(e)))
        })
    }
}

/// The local address this host uses toward the Redis of `url` (the source address of
/// a route to it, found by connecting a UDP socket, which sends nothing): the default
/// address peers reach a node on when it listens on every interface. Loopback for a
/// unix socket. `None` when the URL's host does not resolve.
async fn local_ip_toward(url: &str) -> Option<std::net::IpAddr> {
    use fred::types::config::ServerConfig;
    let config = fred::types::config::Config::from_url(url).ok()?;
    let (host, port) = match &config.server {
        ServerConfig::Centralized { server } => (server.host.to_string(), server.port),
        ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
            let first = hosts.first()?;
            (first.host.to_string(), first.port)
        }
        ServerConfig::Unix { .. } => return Some(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()?
        .next()?;
    let bind: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    socket.connect(target).await.ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// The long-polling endpoints (Engine.IO's, Phoenix's long-poll), served on the
/// listener's fast path. Their paths are also routed in the router, which hyper uses
/// for the requests the fast path hands off.
struct LongPolls {
    engine: SocketIoEngine,
    phoenix: Phoenix,
}

impl listener::LongPolls for LongPolls {
    fn serves(&self, path: &str) -> bool {
        path == ENGINE_IO_PATH
            || path.strip_prefix(ENGINE_IO_PATH) == Some("/")
            || path == PHOENIX_LONGPOLL_PATH
    }

    fn call(&self, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        // The endpoints read the request at once: the boxed future holds only what a
        // held poll needs.
        let answer: Pin<Box<dyn Future<Output = Response> + Send>> =
            if request.uri().path() == PHOENIX_LONGPOLL_PATH {
                Box::pin(self.phoenix.longpoll(request))
            } else {
                Box::pin(self.engine.handle(request))
            };
        tracing::trace!(
            bytes = std::mem::size_of_val(&*answer),
            "long-poll request size"
        );
        answer
    }
}

/// Routes the Engine.IO path (with and without the trailing slash) to `engine`.
pub fn socketio_routes<H>(engine: Engine<H>, path: &str) -> Router
where
    H: crate::frontend::socketio::engine::Handler,
{
    let handler = move |req: Request| engine.handle(req);
    let trimmed = path.trim_end_matches('/');
    Router::new()
        .route(trimmed, any(handler.clone()))
        .route(&format!("{trimmed}/"), any(handler))
}

/// Routes Phoenix's WebSocket and long-poll paths to the Phoenix endpoint.
pub fn phoenix_routes(phoenix: Phoenix) -> Router {
    let poll = phoenix.clone();
    let websocket = move |req: Request| {
        let phoenix = phoenix.clone();
        async move { phoenix.websocket(req).await }
    };
    let longpoll = move |req: Request| poll.longpoll(req);
    Router::new()
        .route("/socket/websocket", any(websocket))
        .route(PHOENIX_LONGPOLL_PATH, any(longpoll))
}
