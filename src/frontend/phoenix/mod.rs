//! The Phoenix Channels frontend (serializer v2, `vsn=2.0.0`), for the unmodified
//! `phoenix` npm client: `/socket/websocket` and `/socket/longpoll`.
//!
//! - [`codec`] is the pure frame codec (fuzzed under `fuzz/`).
//! - [`Phoenix`] is the endpoint: the handshake (JWT from `?token=` or phoenix 1.8's
//!   `authToken` subprotocol), then one [`transport::websocket`] task per connection;
//!   or a long-poll session: GETs collect the outbox (held up to [`POLL_HOLD`]), POSTs
//!   carry the client's frames, a watchdog task closes it when no request came for
//!   the timeout.
//! - A topic T is pushgate's room T: joining it is allowed by the token's `rooms` and
//!   `join` claims. The topic `pushgate`, open to any connected socket, carries the
//!   pushes addressed to all, to the socket's user and to the socket; until a socket
//!   joined it, such pushes do not count it ([`crate::hub::Member::direct`]).
//! - A push arrives as `[null, ref, topic, event, payload]`: `ref` is the node-wide ack
//!   id of an ack-tracked push (the client answers `pushgate:ack` with `{ref}`), null
//!   otherwise; the payload is the push's data when it is an object, `{}` when it has
//!   none, and `{"value": data}` for any other JSON value, since Phoenix payloads are
//!   objects.

pub mod codec;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Authenticator, Identity};
use crate::codec::PushCodec;
use crate::connection::{CloseReason, Frame, Outbox, Queued};
use crate::delivery::Tracker;
use crate::hub::{Connection, Hub, Member};
use crate::id::{Frontend, NodeId, RoomName, SocketId, Target};
use crate::limits::{Admission, UserSlot};
use crate::metrics::Metrics;
use crate::presence::{is_presence_room, Diff, Meta, Presences};
use crate::push::Push;
use crate::recovery::{Recovery, Restored, Saved};
use crate::transport::admission::{Gate, Refusal};
use crate::transport::forward::{self, Forwarder, Route};
use crate::transport::heartbeat::{Heartbeat, Mode};
use crate::transport::websocket::{self, Peer};

/// The topic any connected socket may join: pushes to all, to its user, to itself.
pub const TOPIC_PUSHGATE: &str = "pushgate";
/// The event a client pushes to acknowledge an ack-tracked push: `{"ref": "<ref>"}`.
pub const ACK_EVENT: &str = "pushgate:ack";
/// How long a long-poll GET waits for frames before answering 204: Phoenix's own
/// window, well inside phoenix.js's 20 s request timeout.
pub const POLL_HOLD: Duration = Duration::from_secs(10);
/// How often the long-poll watchdog looks at a session.
const WATCHDOG_STEP: Duration = Duration::from_millis(500);

/// How Phoenix carries pushes: one text frame per push, on the room's topic for a room
/// push and on [`TOPIC_PUSHGATE`] for every other target.
pub struct PhoenixCodec;

impl PushCodec for PhoenixCodec {
    fn frontend(&self) -> Frontend {
        Frontend::Phoenix
    }

    fn check(&self, push: &Push) -> Result<(), String> {
        if codec::is_reserved_event(&push.event) {
            return Err(format!(
                "invalid event: {:?} is reserved by Phoenix Channels",
                push.event
            ));
        }
        if push.event.len() > codec::MAX_EVENT_BYTES {
            return Err(format!(
                "invalid event: Phoenix allows at most {} bytes",
                codec::MAX_EVENT_BYTES
            ));
        }
        Ok(())
    }

    fn encode(&self, push: &Push, ack_id: Option<u64>) -> Vec<Frame> {
        let topic = match &push.target {
            Target::Room(room) => room.as_str(),
            _ => TOPIC_PUSHGATE,
        };
        let wrapped;
        let payload = match &push.data {
            Some(v @ Value::Object(_)) => v,
            None => {
                wrapped = json!({});
                &wrapped
            }
            Some(other) => {
                wrapped = json!({ "value": other });
                &wrapped
            }
        };
        let mut text = String::with_capacity(push.event.len() + topic.len() + 32);
        if push.recoverable && ack_id.is_none() {
            // The recovery offset in the ref slot: phoenix.js hands it to the event's
            // callback as its second argument, `(payload, ref)`.
            codec::encode_message(
                &mut text,
                None,
                Some(push.id.as_str()),
                topic,
                &push.event,
                payload,
            );
        } else {
            codec::encode_push(&mut text, topic, &push.event, ack_id, payload);
        }
        vec![Frame::text(text)]
    }

    /// `presence_diff` on the room's topic, as phoenix.js `Presence` syncs it: joins and
    /// leaves keyed by member, one meta per connection with its `phx_ref`. The join
    /// ref is null so the one frame fits every member of the room.
    fn encode_presence(&self, diff: &Diff) -> Vec<Frame> {
        let payload = json!({
            "joins": presence_map(diff.joins.iter().map(|c| &c.meta)),
            "leaves": presence_map(diff.leaves.iter().map(|c| &c.meta)),
        });
        let mut text = String::new();
        codec::encode_message(
            &mut text,
            None,
            None,
            &diff.room,
            EVENT_PRESENCE_DIFF,
            &payload,
        );
        vec![Frame::text(text)]
    }
}

/// The event of a presence diff and of the state a joining client receives.
const EVENT_PRESENCE_DIFF: &str = "presence_diff";
const EVENT_PRESENCE_STATE: &str = "presence_state";

/// Phoenix's presence shape: `{member: {"metas": [{"phx_ref", "online_at"}, …]}}`. A
/// meta of a connection that described itself (a Pusher member's `user_info`) also
/// carries that as `info`.
fn presence_map<'a>(metas: impl IntoIterator<Item = &'a Meta>) -> Value {
    let mut map = serde_json::Map::new();
    for m in metas {
        let entry = map
            .entry(m.key.clone())
            .or_insert_with(|| json!({"metas": []}));
        if let Some(list) = entry["metas"].as_array_mut() {
            let mut meta = json!({"phx_ref": m.r#ref, "online_at": m.online_at});
            if let Some(info) = m.info.as_deref().and_then(|i| serde_json::from_str(i).ok()) {
                meta["info"] = info;
            }
            list.push(meta);
        }
    }
    Value::Object(map)
}

/// Settings of the Phoenix endpoint.
#[derive(Debug, Clone)]
pub struct PhoenixConfig {
    /// A connection that sends nothing (not even a heartbeat) this long is closed.
    pub timeout: Duration,
    pub max_payload: usize,
    pub queue_capacity: usize,
    pub queue_bytes: usize,
    /// In a cluster: how requests of long-poll sessions held by other nodes reach
    /// them. Session tokens then name their node (`<node>~<secret>`).
    pub forwarder: Option<Arc<Forwarder>>,
}

struct Shared {
    config: PhoenixConfig,
    hub: Arc<Hub>,
    tracker: Arc<Tracker>,
    auth: Arc<Authenticator>,
    /// Where presence is kept, for the state a client gets when it joins a
    /// `presence-*` topic.
    presences: Arc<dyn Presences>,
    node: NodeId,
    metrics: Arc<Metrics>,
    ws_config: WebSocketConfig,
    tasks: TaskTracker,
    /// Open connections, to close them at shutdown.
    connections: RwLock<HashMap<SocketId, Arc<Conn>>>,
    /// Long-poll sessions by their token (a secret: whoever holds it polls the
    /// session, so it is never the socket id and never logged).
    polls: RwLock<HashMap<Box<str>, Arc<Conn>>>,
    /// Set when the node drains: new connections are refused with 503.
    draining: CancellationToken,
    /// Origin and limits checks of new connections; `None` admits everything.
    gate: Option<Arc<Gate>>,
    /// Connection state recovery, when on: a socket that connects with `pid` and
    /// `offset` params gets its session back.
    recovery: Option<Recovery>,
    /// Told when a connection's recovery is decided, for `pushgate` join answers
    /// that wait for it.
    decided: tokio::sync::Notify,
}

/// What a new connection holds once admitted: its place on the node and its share of
/// its user's connections.
type Admitted = (Option<Admission>, Option<UserSlot>);

/// A bodiless copy of `req` (method, URI, headers, extensions such as the peer
/// address): what admission reads, kept for a request that is handed on.
fn head_of(req: &Request) -> Request {
    let mut head = Request::new(axum::body::Body::empty());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.headers_mut() = req.headers().clone();
    *head.extensions_mut() = req.extensions().clone();
    head
}

/// The Phoenix endpoint.
#[derive(Clone)]
pub struct Phoenix {
    shared: Arc<Shared>,
}

impl Phoenix {
    pub fn new(
        config: PhoenixConfig,
        hub: Arc<Hub>,
        tracker: Arc<Tracker>,
        auth: Arc<Authenticator>,
        presences: Arc<dyn Presences>,
        node: NodeId,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ws_config = websocket::config(config.max_payload);
        Self {
            shared: Arc::new(Shared {
                config,
                hub,
                tracker,
                auth,
                presences,
                node,
                metrics,
                ws_config,
                tasks: TaskTracker::new(),
                connections: RwLock::new(HashMap::new()),
                polls: RwLock::new(HashMap::new()),
                draining: CancellationToken::new(),
                gate: None,
                recovery: None,
                decided: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The same endpoint, checking new connections' origins and limits against
    /// `gate`. Call before serving (the endpoint must not be shared yet).
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.gate = Some(gate);
        }
        self
    }

    /// The same endpoint, with connection state recovery. Call before serving.
    pub fn with_recovery(mut self, recovery: Recovery) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.recovery = Some(recovery);
        }
        self
    }

    /// The gate's checks for a new connection, then its token, then its user's
    /// connections: the identity and what it holds, or the refusal. Phoenix has no
    /// unauthenticated connections: the token is checked before one exists.
    fn admit(&self, req: &Request, token: Option<&str>) -> Result<(Identity, Admitted), Refused> {
        let gate = self.shared.gate.as_deref();
        if let Some(g) = gate {
            g.check_origin(req.headers(), Frontend::Phoenix)
                .map_err(Refused::Gate)?;
        }
        let admission = gate
            .map(|g| g.admit(req, Frontend::Phoenix, false))
            .transpose()
            .map_err(Refused::Gate)?;
        let identity = self.authenticate(token).map_err(Refused::Token)?;
        let user = match (gate, &identity.user) {
            (Some(g), Some(user)) => Some(
                g.limits()
                    .user(user, Frontend::Phoenix)
                    .map_err(|r| Refused::Gate(Refusal::Limit(r)))?,
            ),
            _ => None,
        };
        Ok((identity, (admission, user)))
    }

    pub fn connection_count(&self) -> usize {
        self.shared.connections.read().len()
    }

    /// `GET /socket/websocket?vsn=2.0.0&token=…`: authenticates, then upgrades.
    pub async fn websocket(&self, req: Request) -> Response {
        let Params {
            vsn,
            mut token,
            pid,
            offset,
            ..
        } = Params::of(&req);
        if !vsn.as_deref().is_some_and(codec::is_supported_vsn) {
            return (
                StatusCode::BAD_REQUEST,
                "unsupported serializer: connect with vsn=2.0.0",
            )
                .into_response();
        }
        if self.shared.draining.is_cancelled() {
            return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
        }
        let protocols = req
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if let Ok(Some(raw)) = codec::auth_token_from_protocols(&protocols) {
            token = String::from_utf8(raw).ok();
        }
        let (identity, admitted) = match self.admit(&req, token.as_deref()) {
            Ok(admitted) => admitted,
            // Phoenix refuses a connect with a bare 403; phoenix.js retries with backoff.
            Err(Refused::Token(message)) => {
                return (StatusCode::FORBIDDEN, message).into_response()
            }
            // The same for the gate's refusals, with their own status (429, 503) and
            // `Retry-After` for other clients.
            Err(Refused::Gate(refusal)) => {
                let mut response = (refusal.status(), refusal.to_string()).into_response();
                if let Some(after) = refusal.retry_after() {
                    response.headers_mut().insert(header::RETRY_AFTER, after);
                }
                return response;
            }
        };
        let subprotocol =
            codec::offers_phoenix_subprotocol(&protocols).then_some(codec::SUBPROTOCOL_PHOENIX);
        let accepted = match websocket::accept(req, subprotocol) {
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
            let conn = endpoint.open(identity, "websocket", admitted, pid.zip(offset));
            let beat = Heartbeat::new(
                Mode::ClientBeats {
                    timeout: endpoint.shared.config.timeout,
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

    fn authenticate(&self, token: Option<&str>) -> Result<Identity, String> {
        self.shared.auth.authenticate(token).map_err(|e| {
            self.shared
                .metrics
                .connect_errors
                .with_label_values(&[Frontend::Phoenix.as_str(), e.code()])
                .inc();
            tracing::debug!(reason = e.code(), "phoenix connect refused");
            e.to_string()
        })
    }

    /// `/socket/longpoll`: a GET without `token` opens a session (answered 410 with
    /// its token, as Phoenix does), a GET with one collects frames, a POST sends them.
    /// Every answer is HTTP 200 with the protocol's status in the JSON body. In a
    /// cluster, a token of another node's session is forwarded to that node.
    ///
    /// The request is read at once; the returned future holds only what the answer
    /// still needs — for a held poll, the connection and its token.
    pub fn longpoll(&self, req: Request) -> impl Future<Output = Response> + Send + 'static {
        let answer = self.longpoll_answer(req);
        async move {
            match answer {
                LongPoll::Poll(conn, token) => conn.poll(&token).await,
                LongPoll::Later(answer) => answer.await,
            }
        }
    }

    fn longpoll_answer(&self, req: Request) -> LongPoll {
        let status = |status: u16| {
            let mut out = String::new();
            codec::encode_poll_status(&mut out, status);
            LongPoll::Later(Box::pin(std::future::ready(json_response(out))))
        };
        let params = Params::of(&req);
        if !params.vsn.as_deref().is_some_and(codec::is_supported_vsn) {
            return status(400);
        }
        if let Some(g) = &self.shared.gate {
            if g.check_origin(req.headers(), Frontend::Phoenix).is_err() {
                return status(codec::poll_status::FORBIDDEN);
            }
        }
        let session = params
            .session
            .as_deref()
            .and_then(|t| self.shared.polls.read().get(t).cloned());
        let method = req.method().clone();
        match (session, &params.session) {
            (Some(conn), Some(token)) if method == Method::GET => {
                LongPoll::Poll(conn, token.as_str().into())
            }
            (Some(conn), Some(_)) if method == Method::POST => {
                let limit = self.shared.config.max_payload;
                LongPoll::Later(Box::pin(async move {
                    let ndjson = req
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(codec::is_ndjson);
                    let status = match axum::body::to_bytes(req.into_body(), limit).await {
                        Ok(body) => conn.post(&body, ndjson),
                        Err(_) => {
                            conn.outbox.close(CloseReason::TooLarge);
                            400
                        }
                    };
                    let mut out = String::new();
                    codec::encode_poll_status(&mut out, status);
                    json_response(out)
                }))
            }
            (Some(_), _) => status(400),
            (None, session) => {
                // The user's token of a new session may come as a header (phoenix.js
                // 1.8's `authToken`); otherwise it is the first `token`.
                let user_token = req
                    .headers()
                    .get("x-phoenix-authtoken")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or(params.token);
                // A session no node holds: gone. A GET answered so makes phoenix.js
                // poll again without a session token, which opens a new one.
                let unknown = move || {
                    let mut out = String::new();
                    let status = if method == Method::GET || method == Method::POST {
                        codec::poll_status::GONE
                    } else {
                        400
                    };
                    codec::encode_poll_status(&mut out, status);
                    json_response(out)
                };
                let route = match (session, &self.shared.config.forwarder) {
                    (Some(token), Some(forwarder)) => forwarder.route(token, req.headers()),
                    _ => Route::Here,
                };
                match (route, &self.shared.config.forwarder) {
                    (Route::Misdirected, Some(forwarder)) => LongPoll::Later(Box::pin(
                        std::future::ready(forward::misdirected(forwarder.node())),
                    )),
                    (Route::Owner(node), Some(forwarder)) => {
                        let forwarder = forwarder.clone();
                        let node = node.to_owned();
                        // Its node may be gone: then a GET opens a session here, as
                        // for any unknown token, which needs the request's address
                        // and headers after the request itself went to the forwarder.
                        let reopen =
                            (req.method() == Method::GET).then(|| (self.clone(), head_of(&req)));
                        LongPoll::Later(Box::pin(async move {
                            match forwarder
                                .forward(req, &node, Frontend::Phoenix, POLL_HOLD)
                                .await
                            {
                                Ok(response) => response,
                                Err(forward::NoOwner) => match reopen {
                                    Some((endpoint, head)) => {
                                        endpoint.open_longpoll(&head, user_token)
                                    }
                                    None => unknown(),
                                },
                            }
                        }))
                    }
                    // No session of that name: a GET opens a new one.
                    _ if req.method() == Method::GET => LongPoll::Later(Box::pin(
                        std::future::ready(self.open_longpoll(&req, user_token)),
                    )),
                    _ => LongPoll::Later(Box::pin(std::future::ready(unknown()))),
                }
            }
        }
    }

    /// A new long-poll session for the user of `token`: answered 410 with the
    /// session's token, as Phoenix does (403 when the token is refused).
    fn open_longpoll(&self, req: &Request, token: Option<String>) -> Response {
        let mut out = String::new();
        if self.shared.draining.is_cancelled() {
            codec::encode_poll_status(&mut out, codec::poll_status::GONE);
            return json_response(out);
        }
        // Every refusal is 403 here: the one status phoenix.js's LongPoll treats as a
        // refusal (it closes and reconnects with backoff).
        match self.admit(req, token.as_deref()) {
            Ok((identity, admitted)) => {
                let Params { pid, offset, .. } = Params::of(req);
                let conn = self.open(identity, "longpoll", admitted, pid.zip(offset));
                let secret = poll_secret();
                let token: Box<str> = match &self.shared.config.forwarder {
                    Some(forwarder) => forwarder.session_token(&secret).into(),
                    None => secret.into(),
                };
                *conn.poll_token.lock() = Some(token.clone());
                self.shared
                    .polls
                    .write()
                    .insert(token.clone(), conn.clone());
                self.spawn_watchdog(conn);
                codec::encode_poll_response(
                    &mut out,
                    codec::poll_status::GONE,
                    &token,
                    std::iter::empty::<&str>(),
                );
            }
            Err(_) => codec::encode_poll_status(&mut out, codec::poll_status::FORBIDDEN),
        }
        json_response(out)
    }

    /// Closes a long-poll session when no request came for the timeout, or soon after
    /// it started closing (its next poll collects the news; if none comes, it ends).
    fn spawn_watchdog(&self, conn: Arc<Conn>) {
        let timeout = self.shared.config.timeout;
        self.shared.tasks.spawn(async move {
            let mut closing_since: Option<tokio::time::Instant> = None;
            loop {
                tokio::time::sleep(WATCHDOG_STEP).await;
                if conn.closed.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                if let Some(reason) = conn.outbox.closing() {
                    let since = *closing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= Duration::from_secs(1) {
                        return conn.close(reason);
                    }
                    continue;
                }
                // A held poll is the client waiting on us, not silence (phoenix.js
                // sends no heartbeats over long-poll).
                let polling = conn.polling.load(std::sync::atomic::Ordering::Acquire);
                if !polling && conn.last_seen.lock().elapsed() >= timeout {
                    return conn.close(CloseReason::PingTimeout);
                }
            }
        });
    }

    /// Opens a connection; `recover`: the pid and offset it asks to recover with.
    fn open(
        &self,
        identity: Identity,
        transport: &'static str,
        admitted: Admitted,
        recover: Option<(String, String)>,
    ) -> Arc<Conn> {
        let s = &self.shared;
        let recover = recover.filter(|_| s.recovery.is_some());
        let id = SocketId::generate(&s.node);
        let conn = Arc::new(Conn {
            id: id.clone(),
            shared: self.shared.clone(),
            outbox: Outbox::new(s.config.queue_capacity, s.config.queue_bytes),
            identity,
            admitted,
            joined: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            transport,
            poll_token: Mutex::new(None),
            last_seen: Mutex::new(tokio::time::Instant::now()),
            polling: std::sync::atomic::AtomicBool::new(false),
            recovered: std::sync::atomic::AtomicBool::new(false),
            restoring: std::sync::atomic::AtomicBool::new(false),
        });
        s.connections.write().insert(id.clone(), conn.clone());
        s.hub.register(
            id.clone(),
            Member {
                connection: conn.clone(),
                frontend: Frontend::Phoenix,
                scope: None,
                direct: false,
                user: conn.identity.user.clone(),
                rooms: Vec::new(),
                connected_at: crate::id::now_ms(),
                // Until its session is given back or found gone.
                held: recover.is_some(),
            },
        );
        if let (Some((pid, offset)), Some(recovery)) = (recover, &s.recovery) {
            let request = crate::recovery::Request {
                pid,
                offset,
                user: conn.identity.user.clone(),
                namespace: None,
            };
            let adopting = conn.clone();
            conn.restoring
                .store(true, std::sync::atomic::Ordering::Release);
            // A single node's store decides in this call, before the connection reads
            // anything; a cluster's decides in the task.
            let decided = recovery
                .store
                .restore(request, Box::new(move |r| adopting.adopt(r)));
            s.tasks.spawn(decided);
        }
        let series = s.metrics.frontend(Frontend::Phoenix);
        series.connections.inc();
        s.metrics
            .connects
            .with_label_values(&[Frontend::Phoenix.as_str()])
            .inc();
        tracing::debug!(socket = %id, user = ?conn.identity.user, "phoenix socket connected");
        conn
    }

    /// Stops accepting connections (returns immediately).
    pub fn start_draining(&self) {
        self.shared.draining.cancel();
    }

    /// Closes every connection (WebSocket close 1001, so phoenix.js reconnects
    /// elsewhere) and waits up to `grace` for their tasks.
    pub async fn close_all(&self, reason: CloseReason, grace: Duration) {
        let conns: Vec<_> = self.shared.connections.read().values().cloned().collect();
        for c in conns {
            c.outbox.close(reason);
        }
        self.shared.tasks.close();
        let _ = tokio::time::timeout(grace, self.shared.tasks.wait()).await;
    }
}

/// How [`Phoenix::longpoll`] answers a request it has read.
enum LongPoll {
    /// A GET of a session of this node: wait on its outbox.
    Poll(Arc<Conn>, Box<str>),
    /// Anything else (answered already, a post, a forward), boxed so that a held
    /// poll does not carry its size.
    Later(Pin<Box<dyn Future<Output = Response> + Send>>),
}

/// A joined topic and the ref of the join that opened it.
type Joined = (Box<str>, Option<Box<str>>);

/// Why a new Phoenix connection was refused.
enum Refused {
    /// Its token (the message says why).
    Token(String),
    /// Its origin or a limit.
    Gate(Refusal),
}

/// One Phoenix connection.
struct Conn {
    id: SocketId,
    shared: Arc<Shared>,
    outbox: Outbox,
    identity: Identity,
    /// Its place among the node's and its user's connections, given back at close.
    admitted: Admitted,
    /// Joined topics with their join refs. A socket joins a few topics, so a list.
    joined: Mutex<Vec<Joined>>,
    closed: std::sync::atomic::AtomicBool,
    /// "websocket" or "longpoll".
    transport: &'static str,
    /// The long-poll session's token (`None` over WebSocket).
    poll_token: Mutex<Option<Box<str>>>,
    /// When the long-poll client last made a request, on tokio's clock (the
    /// watchdog's, which tests pause).
    last_seen: Mutex<tokio::time::Instant>,
    /// A long-poll GET is pending.
    polling: std::sync::atomic::AtomicBool,
    /// It got a lost session back (told in the `pushgate` join's answer).
    recovered: std::sync::atomic::AtomicBool,
    /// Its recovery is not decided yet: a `pushgate` join's answer waits.
    restoring: std::sync::atomic::AtomicBool,
}

/// A long-poll GET in progress: while it lives the watchdog takes the session as
/// alive; when it ends (answered or abandoned) the session was last seen now.
struct PendingPoll<'a>(&'a Conn);

impl Drop for PendingPoll<'_> {
    fn drop(&mut self) {
        self.0.seen();
        self.0
            .polling
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// The request parameters Phoenix transports read.
struct Params {
    vsn: Option<String>,
    /// Connection state recovery: the session's pid and the offset (the ref) of the
    /// last push the client got, as the app passes them back in its socket params.
    pid: Option<String>,
    offset: Option<String>,
    /// The connection token (`params: {token}`): the first `token`.
    token: Option<String>,
    /// The last `token`, which names a long-poll session when there is one: phoenix.js
    /// appends `token=<session>` after the user's params, which may hold a `token` too.
    session: Option<String>,
}

impl Params {
    fn of(req: &Request) -> Self {
        let mut p = Params {
            vsn: None,
            pid: None,
            offset: None,
            token: None,
            session: None,
        };
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match &*k {
                "vsn" => p.vsn = Some(v.into_owned()),
                "pid" if !v.is_empty() && v.len() <= 512 => p.pid = Some(v.into_owned()),
                "offset" if !v.is_empty() && v.len() <= 512 => p.offset = Some(v.into_owned()),
                "token" if !v.is_empty() => {
                    if p.token.is_none() {
                        p.token = Some(v.clone().into_owned());
                    }
                    p.session = Some(v.into_owned());
                }
                _ => {}
            }
        }
        p
    }
}

/// The secret of a fresh long-poll session token: 20 random bytes, URL-safe.
fn poll_secret() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 20];
    rand::rng().fill_bytes(&mut raw);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw)
}

fn json_response(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

impl Conn {
    fn seen(&self) {
        *self.last_seen.lock() = tokio::time::Instant::now();
    }

    /// A long-poll GET: every queued frame, waiting up to [`POLL_HOLD`] for one.
    async fn poll(self: &Arc<Self>, token: &str) -> Response {
        use std::sync::atomic::Ordering;
        self.seen();
        let mut out = String::new();
        if self.polling.swap(true, Ordering::AcqRel) {
            // One pending poll per session; a second one is answered empty at once.
            codec::encode_poll_response(&mut out, 204, token, std::iter::empty::<&str>());
            return json_response(out);
        }
        // Ends the pending poll however this future ends: answered, or dropped because
        // the client went away mid-hold (hyper drops the handler), after which the
        // watchdog must count the silence from now.
        let _pending = PendingPoll(self);
        let deadline = tokio::time::Instant::now() + POLL_HOLD;
        let mut batch = Vec::new();
        let status = loop {
            let closing = self.outbox.drain(&mut batch);
            if !batch.is_empty() {
                break codec::poll_status::OK;
            }
            if let Some(reason) = closing {
                self.close(reason);
                break codec::poll_status::GONE;
            }
            if tokio::time::timeout_at(deadline, self.outbox.ready())
                .await
                .is_err()
            {
                break codec::poll_status::NO_CONTENT;
            }
        };
        let now = Instant::now();
        for q in &batch {
            self.written(q, now);
        }
        let texts = batch.iter().filter_map(|q| match &q.frame {
            Frame::Text(t) => Some(t.as_str()),
            // Phoenix frames over long-poll are text; nothing binary is queued here.
            Frame::Binary(_) => None,
        });
        codec::encode_poll_response(&mut out, status, token, texts);
        json_response(out)
    }

    /// A long-poll POST: the client's frames, handled in order. Answers the status
    /// for the JSON body; a frame that is not the protocol ends the session.
    fn post(self: &Arc<Self>, body: &[u8], ndjson: bool) -> u16 {
        self.seen();
        for frame in codec::decode_poll_body(body, ndjson) {
            match frame {
                Ok(m) => self.handle(m),
                Err(e) => {
                    tracing::debug!(socket = %self.id, error = %e, "phoenix long-poll frame refused");
                    self.outbox.close(CloseReason::ProtocolError);
                    return 400;
                }
            }
        }
        codec::poll_status::OK
    }

    fn reply(&self, m: &codec::Message, status: &str, response: Value) {
        let mut out = String::new();
        codec::encode_reply(
            &mut out,
            m.join_ref.as_deref(),
            m.r#ref.as_deref(),
            &m.topic,
            status,
            &response,
        );
        self.outbox.push_control(Frame::text(out));
    }

    fn error(&self, m: &codec::Message, reason: &str) {
        self.reply(m, "error", json!({ "reason": reason }));
    }

    fn event(&self, op: &'static str) {
        self.shared
            .metrics
            .client_events
            .with_label_values(&[op])
            .inc();
    }

    fn may_join(&self, topic: &str) -> bool {
        topic == TOPIC_PUSHGATE
            || self.identity.rooms.iter().any(|r| r.as_str() == topic)
            || self.identity.may_join(topic)
    }

    /// Enters `topic` in the hub: the room, or direct pushes for `pushgate`.
    fn enter(&self, topic: &str, enter: bool) {
        let hub = &self.shared.hub;
        if topic == TOPIC_PUSHGATE {
            hub.set_direct(&self.id, enter);
        } else if enter {
            // The room limit was checked by the join (see `handle`).
            hub.join(&self.id, &RoomName::from(topic));
        } else {
            hub.leave(&self.id, &RoomName::from(topic));
        }
    }

    /// Sends `presence_state` for a presence topic just joined with `join_ref`, once the
    /// join is in the presence store (in a cluster, after this node's registry write);
    /// skipped when the channel was left or joined again meanwhile. Diffs that arrive
    /// before it are held by phoenix.js until the state comes, and deduplicated by
    /// `phx_ref`.
    fn send_presence_state(self: &Arc<Self>, topic: &str, join_ref: Option<Box<str>>) {
        let conn = self.clone();
        let room = RoomName::from(topic);
        self.shared.tasks.spawn(async move {
            let state = conn.shared.presences.state(&room).await;
            let current = conn
                .joined
                .lock()
                .iter()
                .any(|(t, r)| **t == *room.as_str() && *r == join_ref);
            if !current {
                return;
            }
            let metas = match state {
                Ok(metas) => metas,
                Err(e) => {
                    tracing::warn!(socket = %conn.id, room = %room, error = %e, "presence state not sent");
                    return;
                }
            };
            let mut out = String::new();
            codec::encode_message(
                &mut out,
                join_ref.as_deref(),
                None,
                room.as_str(),
                EVENT_PRESENCE_STATE,
                &presence_map(&metas),
            );
            conn.outbox.push_control(Frame::text(out));
        });
    }

    fn handle(self: &Arc<Self>, m: codec::Message) {
        if m.topic == codec::TOPIC_PHOENIX && m.event == codec::EVENT_HEARTBEAT {
            return self.reply(&m, "ok", json!({}));
        }
        let position = self.joined.lock().iter().position(|(t, _)| **t == *m.topic);
        match m.event.as_str() {
            codec::EVENT_JOIN => {
                let op = "join";
                self.event(op);
                if !self.may_join(&m.topic) {
                    self.shared
                        .metrics
                        .client_joins
                        .with_label_values(&[op, "refused"])
                        .inc();
                    tracing::debug!(socket = %self.id, topic = %m.topic, "phoenix join refused");
                    return self.error(&m, "unauthorized");
                }
                if let Some(i) = position {
                    // A second join of a joined topic: Phoenix closes the old channel.
                    let old = self.joined.lock().remove(i).1;
                    let mut out = String::new();
                    codec::encode_message(
                        &mut out,
                        old.as_deref(),
                        old.as_deref(),
                        &m.topic,
                        codec::EVENT_CLOSE,
                        &json!({}),
                    );
                    self.outbox.push_control(Frame::text(out));
                } else if m.topic == TOPIC_PUSHGATE {
                    self.enter(&m.topic, true);
                } else if let crate::hub::Join::Full { max } = self
                    .shared
                    .hub
                    .try_join(&self.id, &RoomName::from(m.topic.as_str()))
                {
                    self.shared
                        .metrics
                        .client_joins
                        .with_label_values(&[op, "refused"])
                        .inc();
                    tracing::debug!(socket = %self.id, topic = %m.topic, "phoenix join refused: room limit");
                    return self.error(&m, &format!("at most {max} rooms per connection"));
                }
                self.joined.lock().push((
                    Box::from(m.topic.as_str()),
                    m.r#ref.as_deref().map(Box::from),
                ));
                self.shared
                    .metrics
                    .client_joins
                    .with_label_values(&[op, "ok"])
                    .inc();
                if m.topic == TOPIC_PUSHGATE
                    && self.restoring.load(std::sync::atomic::Ordering::Acquire)
                {
                    // Its answer says whether the session came back: once decided.
                    let conn = self.clone();
                    self.shared.tasks.spawn(async move {
                        loop {
                            let decided = conn.shared.decided.notified();
                            if !conn.restoring.load(std::sync::atomic::Ordering::Acquire) {
                                break;
                            }
                            decided.await;
                        }
                        let response = conn.pushgate_joined();
                        conn.reply(&m, "ok", response);
                    });
                    return;
                }
                let response = if m.topic == TOPIC_PUSHGATE {
                    self.pushgate_joined()
                } else {
                    json!({})
                };
                self.reply(&m, "ok", response);
                if is_presence_room(&m.topic) {
                    self.send_presence_state(&m.topic, m.r#ref.as_deref().map(Box::from));
                }
            }
            _ if position.is_none() => self.error(&m, "unmatched topic"),
            codec::EVENT_LEAVE => {
                self.event("leave");
                if let Some(i) = position {
                    self.joined.lock().remove(i);
                }
                self.enter(&m.topic, false);
                self.reply(&m, "ok", json!({}));
                let mut out = String::new();
                codec::encode_message(
                    &mut out,
                    m.join_ref.as_deref(),
                    m.join_ref.as_deref(),
                    &m.topic,
                    codec::EVENT_CLOSE,
                    &json!({}),
                );
                self.outbox.push_control(Frame::text(out));
            }
            ACK_EVENT => {
                self.event("ack");
                let ack = match &m.payload {
                    codec::Payload::Json(p) => p.get("ref").and_then(|r| match r {
                        Value::String(s) => s.parse::<u64>().ok(),
                        Value::Number(n) => n.as_u64(),
                        _ => None,
                    }),
                    codec::Payload::Binary(_) => None,
                };
                match ack {
                    Some(id) => {
                        self.shared.tracker.ack(id, &self.id);
                        self.reply(&m, "ok", json!({}));
                    }
                    None => self.error(&m, "pushgate:ack takes {\"ref\": \"<ref>\"}"),
                }
            }
            _ => {
                self.event("unknown");
                self.error(&m, "unknown event");
            }
        }
    }
}

/// Marks a connection's recovery decided when dropped, whichever way `adopt` ends.
struct Decided<'a>(&'a Conn);

impl Drop for Decided<'_> {
    fn drop(&mut self) {
        self.0
            .restoring
            .store(false, std::sync::atomic::Ordering::Release);
        self.0.shared.decided.notify_waiters();
    }
}

impl Conn {
    /// The answer to a `pushgate` join: the socket id and, with recovery on, the pid
    /// and whether the session came back.
    fn pushgate_joined(&self) -> Value {
        match &self.shared.recovery {
            Some(r) => json!({
                "socket_id": self.id,
                "pid": r.pids.pid_of(&self.id),
                "recovered": self.recovered.load(std::sync::atomic::Ordering::Acquire),
            }),
            None => json!({ "socket_id": self.id }),
        }
    }

    /// Takes a lost session over (its rooms, its user's and direct pushes, its pid),
    /// queues what it missed when the store hands it over, or, with `None`, stops
    /// holding the connection as a fresh one.
    fn adopt(&self, restored: Option<Restored>) -> Option<SocketId> {
        let s = &self.shared;
        let _decided = Decided(self);
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let recovery = s.recovery.as_ref()?;
        let Some(r) = restored else {
            s.hub.release(&self.id, &self.id, &[]);
            s.metrics.recovery.with_label_values(&["not_found"]).inc();
            return Some(self.id.clone());
        };
        recovery.pids.restored(&self.id, &r.pid);
        for room in &r.saved.rooms {
            // Past the room limit it stays out, as a join would.
            s.hub.try_join(&self.id, room);
        }
        s.hub.set_direct(&self.id, true);
        self.recovered
            .store(true, std::sync::atomic::Ordering::Release);
        s.metrics.recovery.with_label_values(&["recovered"]).inc();
        tracing::debug!(socket = %self.id, lost = %r.saved.sid, "phoenix session recovered");
        if !r.held {
            if let Some(n) = s.hub.release(&self.id, &r.saved.sid, &r.missed) {
                s.metrics.recovery_replayed.inc_by(n as u64);
            }
        }
        Some(self.id.clone())
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
        self.transport
    }
}

impl Peer for Conn {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn text(self: &Arc<Self>, text: &str, beat: &mut Heartbeat) -> Result<(), CloseReason> {
        beat.on_pong();
        match codec::decode(text) {
            Ok(m) => {
                self.handle(m);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(socket = %self.id, error = %e, "phoenix frame refused");
                Err(CloseReason::ProtocolError)
            }
        }
    }

    fn binary(self: &Arc<Self>, bytes: Bytes, beat: &mut Heartbeat) -> Result<(), CloseReason> {
        beat.on_pong();
        match codec::decode_binary(&bytes) {
            Ok(m) => {
                self.handle(m);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(socket = %self.id, error = %e, "phoenix binary frame refused");
                Err(CloseReason::ProtocolError)
            }
        }
    }

    fn ping(&self) -> Option<Frame> {
        None
    }

    fn attached(&self) -> bool {
        true
    }

    fn close(self: &Arc<Self>, reason: CloseReason) {
        use std::sync::atomic::Ordering;
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.outbox.close(reason);
        let s = &self.shared;
        s.connections.write().remove(&self.id);
        if let Some(token) = self.poll_token.lock().take() {
            s.polls.write().remove(&token);
        }
        match &s.recovery {
            Some(recovery) if crate::recovery::may_come_back(reason) => {
                if let Some(m) = s.hub.unregister_keeping(&self.id) {
                    recovery.store.lost(
                        &recovery.pids.pid_of(&self.id),
                        Saved {
                            sid: self.id.clone(),
                            user: m.user,
                            namespace: None,
                            rooms: m.rooms,
                        },
                    );
                }
                recovery.pids.forget(&self.id);
            }
            Some(recovery) => {
                s.hub.unregister(&self.id);
                recovery.pids.forget(&self.id);
            }
            None => {
                s.hub.unregister(&self.id);
            }
        }
        if let Some(a) = &self.admitted.0 {
            a.release();
        }
        if let Some(u) = &self.admitted.1 {
            u.release();
        }
        s.metrics.frontend(Frontend::Phoenix).connections.dec();
        s.metrics
            .disconnects
            .with_label_values(&[Frontend::Phoenix.as_str(), reason.as_str()])
            .inc();
        tracing::debug!(socket = %self.id, reason = reason.as_str(), "phoenix socket closed");
    }

    fn written(&self, q: &Queued, now: Instant) {
        self.shared.metrics.observe_write(q.pushed_at, now);
    }

    /// Phoenix's codes: 1001 for a shutdown and 1011 for other server-side ends, both
    /// of which phoenix.js reconnects after; 1007 for a frame that is not the protocol.
    fn close_code(&self, reason: CloseReason) -> Option<CloseCode> {
        match reason {
            CloseReason::Client | CloseReason::TransportClose | CloseReason::TransportError => None,
            CloseReason::Shutdown => Some(CloseCode::Away),
            CloseReason::ProtocolError => Some(CloseCode::Invalid),
            CloseReason::TooLarge => Some(CloseCode::Size),
            CloseReason::SlowClient => Some(CloseCode::Policy),
            _ => Some(CloseCode::Error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::RoomName;

    #[test]
    fn a_room_push_goes_on_the_room_topic_and_others_on_the_pushgate_topic() {
        let room = Push::new(
            Target::Room(RoomName::from("chat:1")),
            "msg",
            Some(json!({"a": 1})),
        );
        assert_eq!(
            PhoenixCodec.encode(&room, Some(9)),
            vec![Frame::text(r#"[null,"9","chat:1","msg",{"a":1}]"#)]
        );
        let all = Push::new(Target::All, "msg", Some(json!([1, 2])));
        assert_eq!(
            PhoenixCodec.encode(&all, None),
            vec![Frame::text(
                r#"[null,null,"pushgate","msg",{"value":[1,2]}]"#
            )]
        );
        let empty = Push::new(Target::All, "msg", None);
        assert_eq!(
            PhoenixCodec.encode(&empty, None),
            vec![Frame::text(r#"[null,null,"pushgate","msg",{}]"#)]
        );
    }

    fn endpoint(timeout: Duration) -> Phoenix {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(crate::codec::Codecs::new(), metrics.clone()));
        Phoenix::new(
            PhoenixConfig {
                timeout,
                max_payload: 1 << 16,
                queue_capacity: 16,
                queue_bytes: 1 << 16,
                forwarder: None,
            },
            hub,
            Tracker::new(metrics.clone()),
            Arc::new(Authenticator::new(None)),
            Arc::new(crate::presence::local::LocalPresence::new(metrics.clone())),
            NodeId::from("n1"),
            metrics,
        )
    }

    fn get(query: &str) -> Request {
        Request::get(format!("/socket/longpoll?{query}"))
            .body(axum::body::Body::empty())
            .unwrap()
    }

    async fn body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_poll_session_whose_held_poll_was_abandoned_is_closed_after_the_timeout() {
        let timeout = Duration::from_secs(5);
        let phoenix = endpoint(timeout);
        let opened = body(phoenix.longpoll(get("vsn=2.0.0")).await).await;
        assert_eq!(opened["status"], 410, "{opened}");
        let token = opened["token"].as_str().unwrap().to_owned();
        assert_eq!(phoenix.connection_count(), 1);

        // The client holds a poll, then goes away: hyper drops the handler's future.
        let held = phoenix.longpoll(get(&format!("vsn=2.0.0&token={token}")));
        let abandoned = tokio::time::timeout(Duration::from_secs(1), held).await;
        assert!(abandoned.is_err(), "the poll was still held");

        tokio::time::sleep(timeout - Duration::from_secs(1)).await;
        assert_eq!(
            phoenix.connection_count(),
            1,
            "the silence counts from when the poll was abandoned"
        );
        tokio::time::sleep(Duration::from_secs(2) + WATCHDOG_STEP).await;
        assert_eq!(
            phoenix.connection_count(),
            0,
            "closed once silent for the timeout"
        );
    }

    #[test]
    fn phoenix_reserved_events_are_refused() {
        for e in ["phx_reply", "heartbeat", "presence_diff", "chan_reply_3"] {
            assert!(PhoenixCodec
                .check(&Push::new(Target::All, e, None))
                .is_err());
        }
        assert!(PhoenixCodec
            .check(&Push::new(Target::All, "notice", None))
            .is_ok());
    }
}
