//! The Pusher Channels frontend (protocol 7), for unmodified `pusher-js`, Laravel Echo
//! and the Pusher server SDKs: the WebSocket endpoint `/app/{key}` and the Pusher
//! HTTP API under `/apps/{app_id}` ([`http`]).
//!
//! - [`protocol`] is the pure frame codec (fuzzed under `fuzz/`), [`signature`] the
//!   pure HMAC and MD5 checks.
//! - Apps come from `PUSHGATE_PUSHER_APPS`. A channel C of the *first* app is pushgate's
//!   room C (Socket.IO and Phoenix members of room C get its events, and Pusher
//!   subscribers get the room's pushes), and a user signed in there is pushgate's user
//!   of that id. Channels and users of a further app with id A are the rooms and users
//!   `pusher:A:<name>`, and its sockets live in the scope `/pusher:A`, so pushes from
//!   `/v1` (which name no such scope) never reach them.
//! - A Pusher socket id is `<digits>.<digits>`, as the server SDKs demand; it is the
//!   pushgate socket id `<node>.<digits>` with the node id written as digits
//!   ([`protocol::pusher_socket_id`]), so either names the other without a lookup.
//! - A push reaches a Pusher socket as `{"event","channel","data"}` with `data` a JSON
//!   string (the push's data if it is a string, its JSON text otherwise, `{}` without
//!   data): a room push on the room's channel, a push to a user on
//!   `#server-to-user-<id>` (pusher-js: `pusher.user.bind`), a push to all or to the
//!   socket without a channel (pusher-js: `pusher.bind`).
//! - Pusher has no client acks: ack-tracked pushes count Pusher deliveries as
//!   `unackable` ([`crate::id::Frontend::acks`]).
//! - Presence channels live in the shared presence core: a subscriber enters the room
//!   as the member its `channel_data` names (`user_id`, with `user_info`), or, without
//!   `channel_data`, as its signed-in user (with the `user_info` of its `user_data`),
//!   through a [`crate::presence::Profile`]. The member id is pushgate's user id as
//!   [`App::user`] maps it, so a Phoenix client of user `alice` and a Pusher
//!   subscriber with `user_id` `alice` are one member, counted once however many
//!   connections or nodes they have. It is independent of the connection's own user
//!   (its sign-in, the target of `/v1` user pushes); apps normally give both the same
//!   id. `member_added` and `member_removed` render the diffs whose change is an edge
//!   (the member's first or last connection, cluster-wide), never to the joining
//!   connection itself.
//! - A further app's presence channel `presence-X` is the room `presence-pusher:A:X`
//!   (not `pusher:A:presence-X`), so the presence core, which tracks rooms named
//!   `presence-*`, tracks it; channel names hold no `:`, so no channel of the first
//!   app is such a room.
//! - Webhooks ([`webhook`]): each app may name a URL; the events are decided once,
//!   cluster-wide, where the presence core decides them.

pub mod http;
pub mod protocol;
pub mod signature;
pub mod webhook;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, RedisBus};
use crate::codec::PushCodec;
use crate::config::PusherApp;
use crate::connection::{CloseReason, Frame, Outbox, Queued};
use crate::hub::{Connection, Hub, Join, Member};
use crate::id::{Frontend, NodeId, RoomName, SocketId, Target, UserId};
use crate::limits::{Admission, UserSlot};
use crate::metrics::Metrics;
use crate::presence::{Diff, Presences, Profile};
use crate::push::Push;
use crate::push_service::PushService;
use crate::transport::admission::{Gate, Refusal as GateRefusal};
use crate::transport::heartbeat::{Heartbeat, Mode};
use crate::transport::websocket::{self, Peer};
use protocol::{ChannelKind, ClientMessage};

/// Client events one connection may send per second (Pusher's documented limit).
pub const CLIENT_EVENTS_PER_SECOND: u32 = 10;
/// Client events waiting to be published, node-wide. They go out in order through one
/// task; a full queue refuses the event (4301) rather than growing memory.
const CLIENT_EVENT_QUEUE: usize = 4096;
/// Random digits in a Pusher socket id's second part: 20 digits, ~66 bits.
const SOCKET_ID_DIGITS: usize = 20;
/// How long a refused connection waits for the client's close frame.
const REFUSE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The room-name and scope prefix of every app but the first.
pub(crate) const APP_PREFIX: &str = "pusher:";

/// The app id a room of a further app names, and the channel it is for that app's
/// clients: `pusher:<app>:<channel>`, or `presence-pusher:<app>:<rest>` for its
/// presence channel `presence-<rest>`. Other rooms are the first app's, and their own
/// channel.
fn split_room(room: &str) -> (Option<&str>, Cow<'_, str>) {
    let presence = room
        .strip_prefix(protocol::PRESENCE_PREFIX)
        .and_then(|r| r.strip_prefix(APP_PREFIX))
        .and_then(|r| r.split_once(':'));
    if let Some((app, rest)) = presence {
        return (
            Some(app),
            Cow::Owned(format!("{}{rest}", protocol::PRESENCE_PREFIX)),
        );
    }
    match room
        .strip_prefix(APP_PREFIX)
        .and_then(|rest| rest.split_once(':'))
    {
        Some((app, channel)) => (Some(app), Cow::Borrowed(channel)),
        None => (None, Cow::Borrowed(room)),
    }
}

/// The channel a room is seen as by a Pusher client (see [`split_room`]).
fn channel_of_room(room: &str) -> Cow<'_, str> {
    split_room(room).1
}

/// The id a Pusher client knows a pushgate user (or presence member) by: a further
/// app's `pusher:<app>:<id>` loses its prefix.
fn user_of_key(key: &str) -> &str {
    key.strip_prefix(APP_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .map_or(key, |(_, id)| id)
}

/// How Pusher carries pushes: one text frame per push, encoded once for every Pusher
/// socket it reaches.
pub struct PusherCodec;

impl PushCodec for PusherCodec {
    fn frontend(&self) -> Frontend {
        Frontend::Pusher
    }

    fn check(&self, push: &Push) -> Result<(), String> {
        if protocol::is_reserved_event(&push.event) {
            return Err(format!(
                "invalid event: {:?} is reserved by the Pusher protocol",
                push.event
            ));
        }
        Ok(())
    }

    fn encode(&self, push: &Push, _ack_id: Option<u64>) -> Vec<Frame> {
        match &push.target {
            Target::Room(room) => encode(push, Some(channel_of_room(room.as_str()))),
            Target::User(user) => encode(push, Some(Cow::Owned(user_channel(user)))),
            // A users push is encoded per user (`encode_for_user`); all and socket
            // pushes have no channel in the protocol.
            Target::Users(_) | Target::All | Target::Socket(_) => encode(push, None),
        }
    }

    fn names_user(&self) -> bool {
        true
    }

    fn encode_for_user(&self, push: &Push, user: &UserId, _ack_id: Option<u64>) -> Vec<Frame> {
        encode(push, Some(Cow::Owned(user_channel(user))))
    }
    /// `member_added` for each join that is its member's first connection in the
    /// room, `member_removed` for each leave that is its last; nothing for the others
    /// (a member is announced once however many connections it has).
    fn encode_presence(&self, diff: &Diff) -> Vec<Frame> {
        let channel = channel_of_room(&diff.room);
        let mut frames = Vec::new();
        for c in diff.joins.iter().filter(|c| c.edge) {
            let mut out = String::new();
            let id = user_of_key(&c.meta.key);
            protocol::encode_member_added(&mut out, &channel, id, c.meta.info.as_deref());
            frames.push(Frame::text(out));
        }
        for c in diff.leaves.iter().filter(|c| c.edge) {
            let mut out = String::new();
            protocol::encode_member_removed(&mut out, &channel, user_of_key(&c.meta.key));
            frames.push(Frame::text(out));
        }
        frames
    }

    fn presence_tells_own_join(&self) -> bool {
        false
    }
}

/// `#server-to-user-<id>`: the channel a signed-in user's pushes arrive on.
fn user_channel(user: &UserId) -> String {
    format!(
        "{}{}",
        protocol::SERVER_TO_USER_PREFIX,
        user_of_key(user.as_str())
    )
}

/// One push as a Pusher event on `channel` (none for pushes to all or to a socket);
/// a client event on a presence channel names its sender.
fn encode(push: &Push, channel: Option<Cow<'_, str>>) -> Vec<Frame> {
    let text;
    let data = match &push.data {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            text = other.to_string();
            text.as_str()
        }
        None => "{}",
    };
    let mut out = String::with_capacity(push.event.len() + data.len() + 64);
    match (&push.sender, channel.as_deref()) {
        (Some(sender), Some(channel)) if channel.starts_with(protocol::PRESENCE_PREFIX) => {
            protocol::encode_client_event(
                &mut out,
                &push.event,
                channel,
                data,
                Some(user_of_key(sender)),
            )
        }
        _ => protocol::encode_event(&mut out, &push.event, channel.as_deref(), data),
    }
    vec![Frame::text(out)]
}

/// Settings of the Pusher frontend.
#[derive(Debug, Clone)]
pub struct PusherConfig {
    pub apps: Vec<PusherApp>,
    /// Silence before the server pings; announced (in whole seconds) as
    /// `activity_timeout`.
    pub activity_timeout: Duration,
    pub pong_timeout: Duration,
    /// Connections per app on this node; `None` = no limit.
    pub max_connections: Option<usize>,
    /// Channels one connection may be subscribed to (`PUSHGATE_MAX_ROOMS_PER_CONNECTION`;
    /// `None`: no limit).
    pub max_channels: Option<usize>,
    pub max_payload: usize,
    pub max_body_bytes: usize,
    pub queue_capacity: usize,
    pub queue_bytes: usize,
}

/// One configured app and how its names map onto pushgate's.
pub struct App {
    pub config: PusherApp,
    /// `""` for the first app, `pusher:<id>:` for the others: prepended to channel
    /// names to make room names and to user ids to make pushgate user ids.
    prefix: String,
    /// `None` for the first app; `/pusher:<id>` for the others (a scope is shaped
    /// like a Socket.IO namespace, which every frontend's check accepts).
    scope: Option<Arc<str>>,
    /// Open connections on this node.
    connections: AtomicUsize,
}

impl App {
    /// The app of `config`; the `first` configured one keeps channel names and user ids
    /// as they are, the others get their prefix and scope.
    pub fn new(config: PusherApp, first: bool) -> Self {
        let (prefix, scope) = if first {
            (String::new(), None)
        } else {
            (
                format!("{APP_PREFIX}{}:", config.id),
                Some(Arc::from(format!("/{APP_PREFIX}{}", config.id))),
            )
        };
        Self {
            config,
            prefix,
            scope,
            connections: AtomicUsize::new(0),
        }
    }

    /// The pushgate room of channel `channel` (see [`split_room`]).
    pub fn room(&self, channel: &str) -> RoomName {
        if self.prefix.is_empty() {
            return RoomName::from(channel);
        }
        match channel.strip_prefix(protocol::PRESENCE_PREFIX) {
            Some(rest) => RoomName::from(format!(
                "{}{}{rest}",
                protocol::PRESENCE_PREFIX,
                self.prefix
            )),
            None => RoomName::from(format!("{}{channel}", self.prefix)),
        }
    }

    /// The pushgate user of this app's user `id`.
    pub fn user(&self, id: &str) -> UserId {
        UserId::from(format!("{}{id}", self.prefix))
    }

    /// Whether `id` is a user id this app's clients and backend may not use: the first
    /// app's users are pushgate's users as they are, so its ids must not reach into the
    /// further apps' `pusher:<id>:` users (nor be rendered as one of theirs).
    pub fn reserves(&self, id: &str) -> bool {
        self.prefix.is_empty() && id.starts_with(APP_PREFIX)
    }

    /// The id this app's clients know pushgate user (or presence member) `key` by.
    pub fn user_id<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(self.prefix.as_str()).unwrap_or(key)
    }

    /// The channel that `room` is for this app's clients, if it is one of its rooms
    /// with a name clients can subscribe to.
    pub fn channel_of<'a>(&self, room: &'a str) -> Option<Cow<'a, str>> {
        let (app, channel) = split_room(room);
        let mine = match app {
            None => self.prefix.is_empty(),
            Some(id) => id == self.config.id,
        };
        (mine && protocol::is_channel_name(&channel)).then_some(channel)
    }

    /// The prefixes of this app's rooms whose channels start with `prefix`.
    pub fn room_prefixes(&self, prefix: &str) -> Vec<String> {
        let mut out = vec![self.room(prefix).to_string()];
        if !self.prefix.is_empty()
            && prefix.len() < protocol::PRESENCE_PREFIX.len()
            && protocol::PRESENCE_PREFIX.starts_with(prefix)
        {
            out.push(self.room(protocol::PRESENCE_PREFIX).to_string());
        }
        out
    }

    /// The scope of a push to this app's channels and users.
    pub fn scope(&self) -> Option<Arc<str>> {
        self.scope.clone()
    }
}

struct Shared {
    config: PusherConfig,
    apps: Vec<Arc<App>>,
    hub: Arc<Hub>,
    push: Arc<PushService>,
    /// Where presence is kept: the member list a presence subscriber gets, and the
    /// HTTP API's `user_count` and `/users`.
    presences: Arc<dyn Presences>,
    /// The apps' webhooks, when any app names a URL.
    webhooks: Option<Arc<webhook::Webhooks>>,
    /// Cluster mode: the registry (rooms and users on other nodes) and kicks.
    cluster: Option<Arc<RedisBus>>,
    node: NodeId,
    metrics: Arc<Metrics>,
    ws_config: WebSocketConfig,
    tasks: TaskTracker,
    /// Open connections, to close them at shutdown.
    connections: RwLock<HashMap<SocketId, Arc<Conn>>>,
    /// Client events to publish, in order, by one task.
    client_events: mpsc::Sender<Push>,
    /// Set when the node drains: new connections and API pushes are refused.
    draining: CancellationToken,
    /// Origin and limits checks of new connections; `None` admits everything.
    gate: Option<Arc<Gate>>,
}

/// The Pusher endpoint: WebSocket connections and the HTTP API.
#[derive(Clone)]
pub struct Pusher {
    shared: Arc<Shared>,
}

impl Pusher {
    /// The frontend for `config.apps`. `bus` carries client events (not through the
    /// push service: they need no report), `push` the HTTP API's events.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: PusherConfig,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        push: Arc<PushService>,
        presences: Arc<dyn Presences>,
        cluster: Option<Arc<RedisBus>>,
        node: NodeId,
        metrics: Arc<Metrics>,
    ) -> Self {
        let apps: Vec<Arc<App>> = config
            .apps
            .iter()
            .enumerate()
            .map(|(i, a)| Arc::new(App::new(a.clone(), i == 0)))
            .collect();
        let webhooks = webhook::Webhooks::start(&apps, metrics.clone());
        let (tx, mut rx) = mpsc::channel::<Push>(CLIENT_EVENT_QUEUE);
        tokio::spawn(async move {
            while let Some(push) = rx.recv().await {
                if let Err(e) = bus.publish(&push, None).await {
                    tracing::debug!(error = %e, "pusher client event not published");
                }
            }
        });
        let ws_config = websocket::config(config.max_payload);
        Self {
            shared: Arc::new(Shared {
                config,
                apps,
                hub,
                push,
                presences,
                webhooks,
                cluster,
                node,
                metrics,
                ws_config,
                tasks: TaskTracker::new(),
                connections: RwLock::new(HashMap::new()),
                client_events: tx,
                draining: CancellationToken::new(),
                gate: None,
            }),
        }
    }

    /// The same endpoint, checking new connections' origins and limits (and signed-in
    /// users' connection counts) against `gate`. Call before serving.
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.gate = Some(gate);
        }
        self
    }

    pub fn connection_count(&self) -> usize {
        self.shared.connections.read().len()
    }

    /// What the presence stores tell of the apps' rooms, when any app has a webhook
    /// (see [`crate::presence::Watcher`]): the server hands it to the store in use.
    pub fn watcher(&self) -> Option<Arc<dyn crate::presence::Watcher>> {
        self.shared
            .webhooks
            .clone()
            .map(|w| w as Arc<dyn crate::presence::Watcher>)
    }

    /// Sends what the webhooks still hold, waiting at most `grace` (at shutdown,
    /// after the bus wrote the last removals).
    pub async fn flush_webhooks(&self, grace: Duration) {
        if let Some(w) = &self.shared.webhooks {
            w.flush(grace).await;
        }
    }

    fn app_by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.shared.apps.iter().find(|a| a.config.key == key)
    }

    fn app_by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.shared.apps.iter().find(|a| a.config.id == id)
    }

    /// `GET /app/{key}?protocol=7&…`: upgrades, then either refuses in the protocol
    /// (`pusher:error` and a close with its code) or opens the connection.
    pub async fn websocket(&self, key: String, req: Request) -> Response {
        if self.shared.draining.is_cancelled() {
            return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
        }
        let protocol = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "protocol")
            .map(|(_, v)| v.into_owned());
        // Checked before the upgrade, told in the protocol after it. Pusher connections
        // authenticate with the app key in the URL, so none is ever pending.
        let gate = self.shared.gate.as_deref();
        let admitted = match gate {
            None => Ok(None),
            Some(g) => g
                .check_origin(req.headers(), Frontend::Pusher)
                .and_then(|()| g.admit(&req, Frontend::Pusher, false))
                .map(Some),
        };
        let accepted = match websocket::accept(req, None) {
            Ok(a) => a,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("not a WebSocket upgrade: {e:?}"),
                )
                    .into_response()
            }
        };
        let endpoint = self.clone();
        self.shared.tasks.spawn(async move {
            let Some(ws) = websocket::upgraded(accepted.upgraded, endpoint.shared.ws_config).await
            else {
                return;
            };
            let admission = match admitted {
                Ok(a) => a,
                // Counted by the gate.
                Err(refusal) => {
                    let code = gate_code(&refusal);
                    return refuse(ws, code, &refusal.to_string()).await;
                }
            };
            let app = match endpoint.admit(&key, protocol.as_deref()) {
                Ok(app) => app,
                Err(refusal) => {
                    endpoint
                        .shared
                        .metrics
                        .connect_errors
                        .with_label_values(&[Frontend::Pusher.as_str(), refusal.reason])
                        .inc();
                    tracing::debug!(reason = refusal.reason, "pusher connection refused");
                    return refuse(ws, refusal.code, &refusal.message).await;
                }
            };
            let conn = endpoint.open(app, admission);
            let activity = endpoint.shared.config.activity_timeout;
            let mut hello = String::new();
            protocol::encode_connection_established(
                &mut hello,
                &conn.pusher_id,
                activity.as_secs_f64().ceil().max(1.0) as u64,
            );
            conn.outbox.push_control(Frame::text(hello));
            let beat = Heartbeat::new(
                Mode::IdlePings {
                    idle: activity,
                    timeout: endpoint.shared.config.pong_timeout,
                },
                Instant::now(),
                None,
            );
            let fut = websocket::run(conn, ws, beat);
            tracing::trace!(bytes = std::mem::size_of_val(&fut), "websocket task size");
            endpoint.shared.tasks.spawn(fut);
        });
        accepted.response
    }

    /// Checks the protocol version, the app key and the app's connection quota.
    fn admit(&self, key: &str, protocol: Option<&str>) -> Result<Arc<App>, Refusal> {
        let Some(version) = protocol else {
            return Err(Refusal {
                code: protocol::code::NO_PROTOCOL,
                reason: "no_protocol",
                message: "no protocol version: connect with ?protocol=7".into(),
            });
        };
        if !version
            .parse::<u32>()
            .is_ok_and(|v| protocol::PROTOCOLS.contains(&v))
        {
            return Err(Refusal {
                code: protocol::code::UNSUPPORTED_PROTOCOL,
                reason: "unsupported_protocol",
                message: format!("unsupported protocol version {version:?}: this server speaks 7"),
            });
        }
        let Some(app) = self.app_by_key(key) else {
            return Err(Refusal {
                code: protocol::code::APP_NOT_FOUND,
                reason: "unknown_app",
                message: format!("app key {key:?} does not exist"),
            });
        };
        let n = app.connections.fetch_add(1, Ordering::AcqRel) + 1;
        if self
            .shared
            .config
            .max_connections
            .is_some_and(|max| n > max)
        {
            app.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal {
                code: protocol::code::OVER_QUOTA,
                reason: "over_quota",
                message: "over the app's connection quota on this node".into(),
            });
        }
        Ok(app.clone())
    }

    fn open(&self, app: Arc<App>, admission: Option<Admission>) -> Arc<Conn> {
        use rand::Rng;
        let s = &self.shared;
        let mut raw = String::with_capacity(s.node.as_str().len() + 1 + SOCKET_ID_DIGITS);
        raw.push_str(s.node.as_str());
        raw.push('.');
        let mut rng = rand::rng();
        for _ in 0..SOCKET_ID_DIGITS {
            raw.push(char::from(b'0' + rng.random_range(0..10u8)));
        }
        let pusher_id = protocol::pusher_socket_id(&raw).unwrap_or_else(|| raw.clone());
        let id = SocketId::from(raw);
        let conn = Arc::new(Conn {
            id: id.clone(),
            pusher_id: pusher_id.into(),
            app: app.clone(),
            shared: self.shared.clone(),
            outbox: Outbox::new(s.config.queue_capacity, s.config.queue_bytes),
            state: Mutex::new(ConnState::default()),
            closed: AtomicBool::new(false),
            admission,
        });
        s.connections.write().insert(id.clone(), conn.clone());
        s.hub.register(
            id.clone(),
            Member {
                connection: conn.clone(),
                frontend: Frontend::Pusher,
                scope: app.scope.clone(),
                direct: true,
                user: None,
                rooms: Vec::new(),
                connected_at: crate::id::now_ms(),
                held: false,
            },
        );
        s.metrics.frontend(Frontend::Pusher).connections.inc();
        s.metrics
            .connects
            .with_label_values(&[Frontend::Pusher.as_str()])
            .inc();
        tracing::debug!(socket = %id, app = %app.config.id, "pusher socket connected");
        conn
    }

    /// Stops accepting connections and API pushes (returns immediately).
    pub fn start_draining(&self) {
        self.shared.draining.cancel();
    }

    /// Closes every connection (close 4200: pusher-js reconnects at once, to another
    /// node) and waits up to `grace` for their tasks.
    pub async fn close_all(&self, reason: CloseReason, grace: Duration) {
        let conns: Vec<_> = self.shared.connections.read().values().cloned().collect();
        for c in conns {
            c.outbox.close(reason);
        }
        self.shared.tasks.close();
        let _ = tokio::time::timeout(grace, self.shared.tasks.wait()).await;
    }
}

/// The Pusher code of a gate's refusal: 4009 for an origin not allowed, 4004 (over
/// quota: pusher-js does not retry) for the address's connections, 4100 (over
/// capacity: pusher-js backs off and retries) for a full node or a connect rate.
fn gate_code(refusal: &GateRefusal) -> u16 {
    match refusal {
        GateRefusal::Origin => protocol::code::UNAUTHORIZED,
        GateRefusal::Limit(r) if r.limit.is_transient() => protocol::code::OVER_CAPACITY,
        GateRefusal::Limit(_) => protocol::code::OVER_QUOTA,
    }
}

/// Why a connection was refused before it opened.
struct Refusal {
    code: u16,
    /// The `reason` label of `pushgate_connect_errors_total`.
    reason: &'static str,
    message: String,
}

/// Tells the client why in `pusher:error`, then closes with the same code.
async fn refuse(mut ws: websocket::Ws, code: u16, message: &str) {
    let mut text = String::new();
    protocol::encode_error(&mut text, Some(code), message);
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(message.chars().take(100).collect::<String>()),
    };
    let _ = tokio::time::timeout(REFUSE_CLOSE_WAIT, async {
        if ws.send(WsMessage::Text(text.into())).await.is_ok()
            && ws.close(Some(frame)).await.is_ok()
        {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// What a connection is subscribed to and who it signed in as.
#[derive(Default)]
struct ConnState {
    /// Subscribed channels. A connection holds a few, so a list.
    channels: Vec<Subscribed>,
    /// The signed-in user (boxed: most connections never sign in).
    user: Option<Box<SignedIn>>,
    /// Its share of the user's connections, once signed in.
    user_slot: Option<UserSlot>,
    /// The start of the current one-second window of client events, and how many
    /// were sent in it.
    window: Option<Instant>,
    events: u32,
}

/// One subscribed channel.
struct Subscribed {
    name: Box<str>,
    /// On a presence channel: the member id it subscribed as, as the app names it
    /// (client events carry it as `user_id`).
    member: Option<Box<str>>,
}

/// Who a connection signed in as.
struct SignedIn {
    /// The user id, as the app names it.
    id: Box<str>,
    /// The `user_info` of its `user_data` (compact JSON), for a presence subscription
    /// without `channel_data`.
    info: Option<Box<str>>,
}

impl ConnState {
    fn subscribed(&self, channel: &str) -> Option<&Subscribed> {
        self.channels.iter().find(|c| *c.name == *channel)
    }
}

/// One Pusher connection.
struct Conn {
    /// The pushgate socket id (`<node>.<digits>`).
    id: SocketId,
    /// The id the client knows (`<digits>.<digits>`), which its signatures name.
    pusher_id: Box<str>,
    app: Arc<App>,
    shared: Arc<Shared>,
    outbox: Outbox,
    /// Held for in-memory bookkeeping only, never across an await or a hub call.
    state: Mutex<ConnState>,
    closed: AtomicBool,
    /// Its place among the node's connections, given back at close.
    admission: Option<Admission>,
}

impl Conn {
    fn send(&self, text: String) {
        self.outbox.push_control(Frame::text(text));
    }

    fn error(&self, code: Option<u16>, message: &str) {
        let mut out = String::new();
        protocol::encode_error(&mut out, code, message);
        self.send(out);
    }

    fn count(&self, kind: &'static str) {
        self.shared
            .metrics
            .client_events
            .with_label_values(&[kind])
            .inc();
    }

    /// Refuses a subscription: `pusher:error` for the connection's error handlers and
    /// `pusher:subscription_error` for the channel's.
    fn refuse_subscription(&self, channel: &str, code: Option<u16>, status: u16, message: &str) {
        self.shared
            .metrics
            .client_joins
            .with_label_values(&["join", "refused"])
            .inc();
        tracing::debug!(socket = %self.id, channel, message, "pusher subscription refused");
        self.error(code, message);
        let mut out = String::new();
        let kind = if status == 401 || status == 403 {
            "AuthError"
        } else {
            "SubscriptionError"
        };
        protocol::encode_subscription_error(&mut out, channel, kind, message, status);
        self.send(out);
    }

    fn handle(self: &Arc<Self>, m: ClientMessage) {
        match m {
            ClientMessage::Ping => {
                let mut out = String::new();
                protocol::encode_pong(&mut out);
                self.send(out);
            }
            ClientMessage::Pong => {}
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => self.subscribe(channel, auth, channel_data),
            ClientMessage::Unsubscribe { channel } => self.unsubscribe(&channel),
            ClientMessage::Signin { auth, user_data } => self.signin(&auth, &user_data),
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => self.client_event(event, &channel, data),
            ClientMessage::Other { event } => {
                self.count("unknown");
                self.error(
                    None,
                    &format!(
                        "unknown event {event:?}: clients send pusher:ping, pusher:pong, \
                         pusher:subscribe, pusher:unsubscribe, pusher:signin or client-* events"
                    ),
                );
            }
        }
    }

    fn subscribe(self: &Arc<Self>, channel: String, auth: Option<String>, data: Option<String>) {
        self.count("join");
        let kind = match protocol::channel_kind(&channel) {
            Ok(k) => k,
            Err(e) => return self.refuse_subscription(&channel, None, 400, &e.to_string()),
        };
        let app = &self.app.config;
        let mut member: Option<protocol::MemberData> = None;
        match &kind {
            ChannelKind::Public => {}
            ChannelKind::Presence => match self.presence_member(&channel, auth, data) {
                Ok(m) => member = Some(m),
                Err((code, status, message)) => {
                    return self.refuse_subscription(&channel, code, status, &message)
                }
            },
            ChannelKind::Private | ChannelKind::Encrypted => {
                let message = signature::channel_message(&self.pusher_id, &channel);
                if let Err(e) =
                    signature::check_auth(&app.key, &app.secret, auth.as_deref(), &message)
                {
                    return self.refuse_subscription(
                        &channel,
                        Some(protocol::code::UNAUTHORIZED),
                        401,
                        &format!("{e}: expected the app key and the HMAC-SHA256 of {message:?}"),
                    );
                }
            }
            ChannelKind::ServerToUser(user) => {
                let mine = self
                    .state
                    .lock()
                    .user
                    .as_ref()
                    .is_some_and(|u| *u.id == **user);
                if !mine {
                    return self.refuse_subscription(
                        &channel,
                        Some(protocol::code::UNAUTHORIZED),
                        403,
                        "only the user signed in on this connection may subscribe to its channel",
                    );
                }
            }
        }
        let added = {
            let mut state = self.state.lock();
            let max = self.shared.config.max_channels;
            if state.subscribed(&channel).is_some() {
                false
            } else if let Some(max) = max.filter(|m| state.channels.len() >= *m) {
                drop(state);
                return self.refuse_channels(&channel, max);
            } else {
                state.channels.push(Subscribed {
                    name: channel.as_str().into(),
                    member: member.as_ref().map(|m| m.user_id.as_str().into()),
                });
                true
            }
        };
        // Joined before the client hears of it, so a push it triggers next reaches it.
        if added && !matches!(kind, ChannelKind::ServerToUser(_)) {
            let profile = member.map(|m| Profile {
                key: self.app.user(&m.user_id).to_string(),
                info: m.user_info,
            });
            // Rooms joined through the API count against the same limit.
            if let Join::Full { max } =
                self.shared
                    .hub
                    .try_join_as(&self.id, &self.app.room(&channel), profile)
            {
                self.state.lock().channels.retain(|c| *c.name != *channel);
                return self.refuse_channels(&channel, max);
            }
        }
        self.shared
            .metrics
            .client_joins
            .with_label_values(&["join", "ok"])
            .inc();
        if kind == ChannelKind::Presence {
            return self.send_presence_state(channel);
        }
        let mut out = String::new();
        protocol::encode_subscription_succeeded(&mut out, &channel);
        self.send(out);
    }

    /// Refuses a subscription past the per-connection limit (429, as Pusher answers
    /// a limit).
    fn refuse_channels(&self, channel: &str, max: usize) {
        self.refuse_subscription(
            channel,
            None,
            429,
            &format!("at most {max} channels per connection"),
        );
    }

    /// Checks a presence subscription and names its member: `channel_data` signed
    /// with the channel (`<socket_id>:<channel>:<channel_data>`), or, without it, the
    /// connection's signed-in user and a signature of `<socket_id>:<channel>`. The
    /// error is `(pusher:error code, status, message)`.
    fn presence_member(
        &self,
        channel: &str,
        auth: Option<String>,
        data: Option<String>,
    ) -> Result<protocol::MemberData, (Option<u16>, u16, String)> {
        let app = &self.app.config;
        let message = match &data {
            Some(d) => format!(
                "{}:{d}",
                signature::channel_message(&self.pusher_id, channel)
            ),
            None => signature::channel_message(&self.pusher_id, channel),
        };
        if let Err(e) = signature::check_auth(&app.key, &app.secret, auth.as_deref(), &message) {
            return Err((
                Some(protocol::code::UNAUTHORIZED),
                401,
                format!("{e}: expected the app key and the HMAC-SHA256 of {message:?}"),
            ));
        }
        let member = match &data {
            Some(d) => protocol::parse_channel_data(d).map_err(|e| (None, 400, e.to_string()))?,
            None => {
                let state = self.state.lock();
                let Some(user) = &state.user else {
                    return Err((
                        None,
                        400,
                        "a presence subscription needs channel_data, or a signed-in connection"
                            .to_owned(),
                    ));
                };
                protocol::MemberData {
                    user_id: user.id.to_string(),
                    user_info: user.info.as_deref().map(str::to_owned),
                }
            }
        };
        if self.app.reserves(&member.user_id) {
            return Err((
                None,
                400,
                format!("user ids starting with {APP_PREFIX:?} are reserved"),
            ));
        }
        Ok(member)
    }

    /// Sends `subscription_succeeded` with the channel's members once this join is in
    /// the presence store (in a cluster, after this node's registry write), unless the
    /// channel was left meanwhile. A member that arrives between the store's answer
    /// and the frame may be announced by `member_added` too; pusher-js counts it once.
    fn send_presence_state(self: &Arc<Self>, channel: String) {
        let conn = self.clone();
        self.shared.tasks.spawn(async move {
            let room = conn.app.room(&channel);
            let state = conn.shared.presences.state(&room).await;
            if conn.state.lock().subscribed(&channel).is_none() {
                return;
            }
            let metas = match state {
                Ok(metas) => metas,
                Err(e) => {
                    tracing::warn!(socket = %conn.id, channel, error = %e, "presence members not read");
                    return conn.refuse_subscription(
                        &channel,
                        None,
                        503,
                        "the presence members cannot be read; subscribe again later",
                    );
                }
            };
            let mut out = String::new();
            protocol::encode_presence_succeeded(
                &mut out,
                &channel,
                metas
                    .iter()
                    .map(|m| (conn.app.user_id(&m.key), m.info.as_deref())),
            );
            conn.send(out);
        });
    }

    fn unsubscribe(&self, channel: &str) {
        self.count("leave");
        let removed = {
            let mut state = self.state.lock();
            let before = state.channels.len();
            state.channels.retain(|c| *c.name != *channel);
            state.channels.len() != before
        };
        if removed && !channel.starts_with(protocol::SERVER_TO_USER_PREFIX) {
            self.shared.hub.leave(&self.id, &self.app.room(channel));
        }
        self.shared
            .metrics
            .client_joins
            .with_label_values(&["leave", "ok"])
            .inc();
    }

    /// `pusher:signin`: a good signature makes the connection its user's; a bad one
    /// ends it with 4009, as Pusher does.
    fn signin(&self, auth: &str, user_data: &str) {
        if self.state.lock().user.is_some() {
            self.count("signin_refused");
            return self.error(None, "this connection is signed in already");
        }
        let app = &self.app.config;
        let message = signature::signin_message(&self.pusher_id, user_data);
        let refused = match signature::check_auth(&app.key, &app.secret, Some(auth), &message) {
            Err(e) => Some(format!(
                "sign-in refused: {e}: expected the app key and the HMAC-SHA256 of {message:?}"
            )),
            Ok(()) => match (user_id(user_data), protocol::parse_user_data(user_data)) {
                (Some(id), _) if self.app.reserves(&id) => Some(format!(
                    "sign-in refused: user ids starting with {APP_PREFIX:?} are reserved"
                )),
                (Some(id), member) => {
                    let user = self.app.user(&id);
                    let slot = match &self.shared.gate {
                        None => None,
                        Some(g) => match g.limits().user(&user, Frontend::Pusher) {
                            Ok(slot) => Some(slot),
                            Err(refused) => {
                                // Over quota: pusher-js does not retry a 4004 close.
                                self.count("signin_refused");
                                self.error(Some(protocol::code::OVER_QUOTA), &refused.to_string());
                                self.outbox.close(CloseReason::OverQuota);
                                return;
                            }
                        },
                    };
                    {
                        let mut state = self.state.lock();
                        state.user = Some(Box::new(SignedIn {
                            id: id.as_str().into(),
                            info: member.ok().and_then(|m| m.user_info).map(Box::from),
                        }));
                        state.user_slot = slot;
                    }
                    self.shared.hub.set_user(&self.id, user);
                    None
                }
                (None, _) => Some(
                    "sign-in refused: user_data must be a JSON object with a non-empty string id"
                        .to_owned(),
                ),
            },
        };
        if let Some(message) = refused {
            self.count("signin_refused");
            tracing::debug!(socket = %self.id, "pusher sign-in refused");
            self.error(Some(protocol::code::UNAUTHORIZED), &message);
            // Queued frames are still written before the close.
            self.outbox.close(CloseReason::ProtocolError);
            return;
        }
        self.count("signin");
        let mut out = String::new();
        protocol::encode_signin_success(&mut out, user_data);
        self.send(out);
    }

    fn client_event(&self, event: String, channel: &str, data: Value) {
        let refuse = |code: Option<u16>, message: &str| {
            self.count("client_event_refused");
            self.error(code, message);
        };
        let subscribed = self
            .state
            .lock()
            .subscribed(channel)
            .map(|s| s.member.as_deref().map(str::to_owned));
        let Some(member) = subscribed else {
            return refuse(
                None,
                &format!("client event refused: not subscribed to {channel:?}"),
            );
        };
        match protocol::channel_kind(channel) {
            Ok(ChannelKind::Private | ChannelKind::Presence) => {}
            Ok(ChannelKind::Encrypted) => {
                return refuse(
                    None,
                    "client event refused: not allowed on encrypted channels",
                )
            }
            _ => {
                return refuse(
                    None,
                    "client event refused: client events are only allowed on private and presence channels",
                )
            }
        }
        let text = data.to_string();
        if text.len() > protocol::MAX_DATA_BYTES {
            return refuse(
                Some(protocol::code::CLIENT_EVENT_REJECTED),
                &format!(
                    "client event refused: data larger than {} bytes",
                    protocol::MAX_DATA_BYTES
                ),
            );
        }
        let within_rate = {
            let mut state = self.state.lock();
            let now = Instant::now();
            match state.window {
                Some(start) if now.duration_since(start) < Duration::from_secs(1) => {
                    state.events += 1;
                }
                _ => {
                    state.window = Some(now);
                    state.events = 1;
                }
            }
            state.events <= CLIENT_EVENTS_PER_SECOND
        };
        if !within_rate {
            return refuse(
                Some(protocol::code::CLIENT_EVENT_REJECTED),
                &format!("client event refused: more than {CLIENT_EVENTS_PER_SECOND} per second"),
            );
        }
        // For the webhook: the data as the other subscribers get it (a string as it is,
        // other JSON as its text).
        let wire = self.shared.webhooks.as_ref().map(|_| match &data {
            Value::String(s) => s.clone(),
            _ => text.clone(),
        });
        let mut push = Push::new(
            Target::Room(self.app.room(channel)),
            event.clone(),
            Some(data),
        );
        push.scope = self.app.scope.clone();
        push.except.insert(self.id.clone());
        push.sender = member
            .as_deref()
            .map(|m| Arc::from(self.app.user(m).as_str()));
        if let Err(e) = self.shared.push.check(&push) {
            return refuse(None, &format!("client event refused: {e}"));
        }
        if self.shared.client_events.try_send(push).is_err() {
            return refuse(
                Some(protocol::code::CLIENT_EVENT_REJECTED),
                "client event refused: the server is busy",
            );
        }
        self.count("client_event");
        if let (Some(w), Some(wire)) = (&self.shared.webhooks, &wire) {
            w.client_event(
                &self.app,
                channel,
                &event,
                wire,
                &self.pusher_id,
                member.as_deref(),
            );
        }
    }
}

/// The `id` of a sign-in's `user_data`.
fn user_id(user_data: &str) -> Option<String> {
    match serde_json::from_str::<Value>(user_data).ok()? {
        Value::Object(mut o) => match o.remove("id")? {
            Value::String(id) if !id.is_empty() => Some(id),
            _ => None,
        },
        _ => None,
    }
}

impl Connection for Conn {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn disconnect(&self, _socket: &SocketId) {
        self.outbox.close(CloseReason::Kicked);
    }

    fn transport(&self) -> &'static str {
        "websocket"
    }
}

impl Peer for Conn {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn text(self: &Arc<Self>, text: &str, beat: &mut Heartbeat) -> Result<(), CloseReason> {
        beat.on_pong();
        match protocol::decode(text) {
            Ok(m) => self.handle(m),
            Err(e) => {
                tracing::debug!(socket = %self.id, error = %e, "pusher frame refused");
                self.count("unknown");
                self.error(None, &format!("message refused: {e}"));
            }
        }
        Ok(())
    }

    fn binary(self: &Arc<Self>, _bytes: Bytes, beat: &mut Heartbeat) -> Result<(), CloseReason> {
        beat.on_pong();
        self.count("unknown");
        self.error(
            None,
            "binary messages are not part of the Pusher protocol: send JSON text",
        );
        Ok(())
    }

    fn ping(&self) -> Option<Frame> {
        Some(Frame::Text(Utf8Bytes::from_static(
            r#"{"event":"pusher:ping","data":{}}"#,
        )))
    }

    fn attached(&self) -> bool {
        true
    }

    fn close(self: &Arc<Self>, reason: CloseReason) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.outbox.close(reason);
        let s = &self.shared;
        s.connections.write().remove(&self.id);
        s.hub.unregister(&self.id);
        self.app.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(a) = &self.admission {
            a.release();
        }
        if let Some(u) = self.state.lock().user_slot.take() {
            u.release();
        }
        s.metrics.frontend(Frontend::Pusher).connections.dec();
        s.metrics
            .disconnects
            .with_label_values(&[Frontend::Pusher.as_str(), reason.as_str()])
            .inc();
        tracing::debug!(socket = %self.id, reason = reason.as_str(), "pusher socket closed");
    }

    fn written(&self, q: &Queued, now: Instant) {
        self.shared.metrics.observe_write(q.pushed_at, now);
    }

    /// Pusher's close codes: 4200 (reconnect at once) for a shutdown, 4201 for a
    /// missing pong, 4100 (back off) for a client too slow to keep, 4009 (do not
    /// reconnect unchanged) for a refused sign-in or a connection the app ended.
    fn close_code(&self, reason: CloseReason) -> Option<CloseCode> {
        use protocol::code;
        let c = match reason {
            CloseReason::Client | CloseReason::TransportClose | CloseReason::TransportError => {
                return None
            }
            CloseReason::Shutdown => code::RECONNECT,
            CloseReason::PingTimeout => code::PONG_NOT_RECEIVED,
            CloseReason::SlowClient => code::OVER_CAPACITY,
            CloseReason::ProtocolError | CloseReason::Kicked => code::UNAUTHORIZED,
            CloseReason::OverQuota => code::OVER_QUOTA,
            CloseReason::TooLarge => return Some(CloseCode::Size),
            CloseReason::ConnectTimeout => code::RECONNECT,
        };
        Some(CloseCode::from(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decoded(frames: Vec<Frame>) -> Value {
        let [Frame::Text(t)] = frames.as_slice() else {
            panic!("one text frame expected: {frames:?}");
        };
        serde_json::from_str(t.as_str()).unwrap()
    }

    #[test]
    fn a_room_push_arrives_on_its_channel_with_string_data() {
        let p = Push::new(
            Target::Room(RoomName::from("news")),
            "flash",
            Some(json!({"a": 1})),
        );
        assert_eq!(
            decoded(PusherCodec.encode(&p, Some(3))),
            json!({"event": "flash", "channel": "news", "data": "{\"a\":1}"})
        );
        let other_app = Push::new(
            Target::Room(RoomName::from("pusher:7:private-x")),
            "e",
            Some(json!("as is")),
        );
        assert_eq!(
            decoded(PusherCodec.encode(&other_app, None)),
            json!({"event": "e", "channel": "private-x", "data": "as is"})
        );
    }

    #[test]
    fn user_pushes_use_the_user_channel_and_others_none() {
        let p = Push::new(Target::User(UserId::from("u1")), "hi", None);
        assert_eq!(
            decoded(PusherCodec.encode(&p, None)),
            json!({"event": "hi", "channel": "#server-to-user-u1", "data": "{}"})
        );
        let p = Push::new(Target::User(UserId::from("pusher:7:u1")), "hi", None);
        assert_eq!(
            decoded(PusherCodec.encode(&p, None))["channel"],
            "#server-to-user-u1"
        );
        let all = Push::new(Target::All, "hi", Some(json!([1])));
        assert_eq!(
            decoded(PusherCodec.encode(&all, None)),
            json!({"event": "hi", "data": "[1]"})
        );
    }

    #[test]
    fn protocol_event_names_are_refused() {
        for e in ["pusher:error", "pusher_internal:member_added"] {
            assert!(PusherCodec.check(&Push::new(Target::All, e, None)).is_err());
        }
        assert!(PusherCodec
            .check(&Push::new(Target::All, "client-x", None))
            .is_ok());
    }

    #[test]
    fn apps_after_the_first_live_under_their_own_prefix() {
        let first = App::new(
            PusherApp {
                id: "1".into(),
                key: "k".into(),
                secret: "s".into(),
                webhook: None,
            },
            true,
        );
        let second = App::new(
            PusherApp {
                id: "2".into(),
                key: "k2".into(),
                secret: "s".into(),
                webhook: None,
            },
            false,
        );
        assert_eq!(first.room("news").as_str(), "news");
        assert_eq!(second.room("news").as_str(), "pusher:2:news");
        assert_eq!(second.user("u").as_str(), "pusher:2:u");
        assert_eq!(second.scope().as_deref(), Some("/pusher:2"));
        assert_eq!(first.channel_of("news").as_deref(), Some("news"));
        assert_eq!(first.channel_of("chat:1"), None, "not a channel name");
        assert_eq!(first.channel_of("pusher:2:news"), None);
        assert_eq!(second.channel_of("pusher:2:news").as_deref(), Some("news"));
        assert_eq!(second.channel_of("news"), None);
        // A further app's presence channel is a room the presence core tracks.
        let room = second.room("presence-lobby");
        assert_eq!(room.as_str(), "presence-pusher:2:lobby");
        assert!(crate::presence::is_presence_room(room.as_str()));
        assert_eq!(
            second.channel_of(room.as_str()).as_deref(),
            Some("presence-lobby")
        );
        assert_eq!(first.channel_of(room.as_str()), None);
        assert_eq!(first.room("presence-lobby").as_str(), "presence-lobby");
        assert_eq!(second.user_id("pusher:2:u"), "u");
        assert_eq!(
            second.room_prefixes(""),
            ["pusher:2:", "presence-pusher:2:"]
        );
        assert_eq!(second.room_prefixes("presence-l"), ["presence-pusher:2:l"]);
        assert_eq!(second.room_prefixes("news"), ["pusher:2:news"]);
        assert_eq!(first.room_prefixes("pre"), ["pre"]);
    }

    fn change(key: &str, info: Option<&str>, edge: bool) -> crate::presence::Change {
        crate::presence::Change {
            meta: crate::presence::Meta {
                key: key.into(),
                r#ref: "0123456789abcdef".into(),
                online_at: 1,
                info: info.map(str::to_owned),
            },
            edge,
        }
    }

    fn texts(frames: Vec<Frame>) -> Vec<Value> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
                Frame::Binary(_) => panic!("binary"),
            })
            .collect()
    }

    #[test]
    fn presence_diffs_announce_members_only_at_their_edges() {
        let diff = Diff {
            room: "presence-pusher:2:lobby".into(),
            joins: vec![
                change("pusher:2:ann", Some(r#"{"n":1}"#), true),
                change("pusher:2:ann", None, false),
            ],
            leaves: vec![
                change("pusher:2:bob", None, false),
                change("pusher:2:cy", None, true),
            ],
        };
        let frames = texts(PusherCodec.encode_presence(&diff));
        assert_eq!(
            frames,
            [
                json!({"event": "pusher_internal:member_added", "channel": "presence-lobby",
                       "data": r#"{"user_id":"ann","user_info":{"n":1}}"#}),
                json!({"event": "pusher_internal:member_removed", "channel": "presence-lobby",
                       "data": r#"{"user_id":"cy"}"#}),
            ]
        );
        assert!(!PusherCodec.presence_tells_own_join());
        let quiet = Diff {
            room: "presence-x".into(),
            joins: vec![change("ann", None, false)],
            leaves: vec![],
        };
        assert!(PusherCodec.encode_presence(&quiet).is_empty());
    }

    #[test]
    fn a_client_event_names_its_sender_on_presence_channels_only() {
        let mut p = Push::new(
            Target::Room(RoomName::from("presence-pusher:2:x")),
            "client-hi",
            Some(json!({"a": 1})),
        );
        p.sender = Some(Arc::from("pusher:2:ann"));
        assert_eq!(
            decoded(PusherCodec.encode(&p, None)),
            json!({"event": "client-hi", "channel": "presence-x", "data": "{\"a\":1}", "user_id": "ann"})
        );
        p.target = Target::Room(RoomName::from("private-x"));
        assert!(decoded(PusherCodec.encode(&p, None))
            .get("user_id")
            .is_none());
    }

    #[test]
    fn the_user_id_of_a_signin_is_a_non_empty_string() {
        assert_eq!(user_id(r#"{"id":"u1","name":"x"}"#).as_deref(), Some("u1"));
        assert_eq!(user_id(r#"{"id":1}"#), None);
        assert_eq!(user_id(r#"{"id":""}"#), None);
        assert_eq!(user_id("[]"), None);
        assert_eq!(user_id("nope"), None);
    }
}
