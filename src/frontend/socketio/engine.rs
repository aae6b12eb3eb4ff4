//! Engine.IO v4 sessions: the handshake, server-driven heartbeats, the long-polling
//! and WebSocket transports, and the upgrade from one to the other.
//!
//! A [`Session`] is one Engine.IO connection. Its outbound frames wait in its
//! [`Outbox`]; whichever transport is current drains it: the pending long-poll GET, or
//! the session's WebSocket task. The layer above (Socket.IO) plugs in as a
//! [`Handler`] and sees only messages, never transports.
//!
//! Tasks: a WebSocket session has exactly one task, which reads, writes and keeps the
//! heartbeat. A polling session has one heartbeat task; its reads and writes happen in
//! the HTTP requests themselves. An upgrade hands the session from the second shape
//! to the first.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engineio::{self, ErrorCode, OpenPacket, Packet, Query};
use crate::connection::{CloseReason, Frame, Outbox, Queued};
use crate::id::Frontend;
use crate::limits::Admission;
use crate::metrics::Metrics;
use crate::transport::admission::{Gate, Refusal};
use crate::transport::forward::{self, Forwarder, Route};
use crate::transport::heartbeat::{Beat, Heartbeat, Mode};
use crate::transport::websocket::{self, Peer, Ws};

/// How long a polling session marked closing waits for a poll to collect its close.
const CLOSE_COLLECT_GRACE: Duration = Duration::from_secs(1);
/// A poll arriving mid-upgrade waits up to 10 x 10 ms for the upgrade to finish, the
/// same cadence as the reference server's noop check.
const UPGRADE_SETTLE_STEPS: u32 = 10;
const UPGRADE_SETTLE_STEP: Duration = Duration::from_millis(10);

/// Engine.IO settings of one endpoint.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub upgrade_timeout: Duration,
    /// A session that the handler has not marked attached by then is closed
    /// (Socket.IO's connectTimeout); `None` for plain Engine.IO.
    pub connect_timeout: Option<Duration>,
    pub max_payload: u64,
    pub queue_capacity: usize,
    pub queue_bytes: usize,
    /// In a cluster: how requests of sessions held by other nodes reach them. Sids
    /// then name their node (`<node>~<secret>`).
    pub forwarder: Option<Arc<Forwarder>>,
}

/// A message from the client, as the layer above sees it.
#[derive(Debug)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(Bytes),
}

/// The protocol layered on Engine.IO (Socket.IO, or an echo for conformance tests).
pub trait Handler: Send + Sync + Sized + 'static {
    /// Per-session state, touched only under the session's state lock.
    type State: Send + 'static;
    /// A session was opened.
    fn open(&self, session: &Arc<Session<Self>>, query: &Query) -> Self::State;
    /// A message arrived. An error closes the session with that reason (the session
    /// closes it after releasing the state lock).
    fn message(
        &self,
        session: &Arc<Session<Self>>,
        state: &mut Self::State,
        message: Message<'_>,
    ) -> Result<(), CloseReason>;
    /// The session ended; called once.
    fn close(&self, session: &Arc<Session<Self>>, state: Self::State, reason: CloseReason);
    /// The HTTP API asked to disconnect one of the session's sockets.
    fn disconnect(
        &self,
        session: &Session<Self>,
        state: &mut Self::State,
        socket: &crate::id::SocketId,
    );
    /// The session moved from polling to WebSocket.
    fn upgraded(&self, _session: &Session<Self>, _state: &mut Self::State) {}
}

const POLLING: u8 = 0;
const WEBSOCKET: u8 = 1;

/// One Engine.IO session.
pub struct Session<H: Handler> {
    /// The Engine.IO session id. Secret to the client: whoever knows it can poll the
    /// session, so it is never used as a socket id or logged at info level.
    pub sid: Box<str>,
    shared: Arc<Shared<H>>,
    outbox: Outbox,
    state: Mutex<Option<H::State>>,
    transport: AtomicU8,
    /// A WebSocket probe succeeded and the client is switching; polls answer noop.
    upgrading: AtomicBool,
    /// A long-poll GET is pending (a second one is a protocol error).
    polling: AtomicBool,
    /// A POST is being processed (overlapping POSTs are a protocol error).
    posting: AtomicBool,
    /// The handler has a live attachment (a Socket.IO namespace), so the connect
    /// timeout no longer applies.
    attached: AtomicBool,
    closed: AtomicBool,
    /// Its place among the node's connections (and, until a namespace is connected,
    /// the pending ones), given back when it closes. `None` without a gate.
    admission: Option<Admission>,
    /// Wakes the polling heartbeat task when a pong arrives over polling, or the
    /// session closes.
    pong: Notify,
    opened_at: Instant,
}

struct Shared<H: Handler> {
    config: EngineConfig,
    handler: H,
    sessions: RwLock<HashMap<Box<str>, Arc<Session<H>>>>,
    metrics: Arc<Metrics>,
    ws_config: WebSocketConfig,
    tasks: TaskTracker,
    /// Set when the node drains: new handshakes are refused with 503.
    draining: CancellationToken,
    /// Origin and limits checks of new sessions; `None` admits everything (plain
    /// Engine.IO for the conformance suites).
    gate: Option<Arc<Gate>>,
}

/// An Engine.IO endpoint: the session table and the HTTP entry point.
pub struct Engine<H: Handler> {
    shared: Arc<Shared<H>>,
}

impl<H: Handler> Clone for Engine<H> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<H: Handler> Engine<H> {
    pub fn new(config: EngineConfig, handler: H, metrics: Arc<Metrics>) -> Self {
        let ws_config = websocket::config(config.max_payload as usize);
        Self {
            shared: Arc::new(Shared {
                config,
                handler,
                sessions: RwLock::new(HashMap::new()),
                metrics,
                ws_config,
                tasks: TaskTracker::new(),
                draining: CancellationToken::new(),
                gate: None,
            }),
        }
    }

    /// The same endpoint, checking every request's origin and every new session
    /// against `gate`. Call before serving (the endpoint must not be shared yet).
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.gate = Some(gate);
        }
        self
    }

    pub fn handler(&self) -> &H {
        &self.shared.handler
    }

    pub fn session_count(&self) -> usize {
        self.shared.sessions.read().len()
    }

    /// Entry point for every request on the Engine.IO path. The request is read at
    /// once; the returned future holds only what the answer still needs — for a long
    /// poll, the session — since a polling client has one of these pending at all
    /// times (its size is logged at `trace`, "long-poll request size").
    pub fn handle(&self, req: Request) -> impl Future<Output = Response> + Send + 'static {
        let answer = self.answer(req);
        async move {
            match answer {
                Answer::Poll(session) => session.poll().await,
                Answer::Later(answer) => answer.await,
            }
        }
    }

    fn answer(&self, req: Request) -> Answer<H> {
        let ready = |response: Response| Answer::Later(Box::pin(std::future::ready(response)));
        let query = engineio::parse_query(req.uri().query().unwrap_or(""));
        if query.eio.as_deref() != Some("4") {
            return ready(protocol_error(ErrorCode::UnsupportedProtocolVersion));
        }
        let websocket = match query.transport.as_deref() {
            Some("polling") => false,
            Some("websocket") => true,
            _ => return ready(protocol_error(ErrorCode::TransportUnknown)),
        };
        let gate = self.shared.gate.as_deref();
        if let Some(Err(refusal)) = gate.map(|g| g.check_origin(req.headers(), Frontend::SocketIo))
        {
            return ready(refused(&refusal));
        }
        let Some(sid) = &query.sid else {
            if req.method() != Method::GET {
                return ready(protocol_error(ErrorCode::BadHandshakeMethod));
            }
            if self.shared.draining.is_cancelled() {
                return ready((StatusCode::SERVICE_UNAVAILABLE, "draining").into_response());
            }
            // A session that must connect a namespace is pending until it does.
            let pending = self.shared.config.connect_timeout.is_some();
            let admission = match gate.map(|g| g.admit(&req, Frontend::SocketIo, pending)) {
                None => None,
                Some(Ok(a)) => Some(a),
                Some(Err(refusal)) => return ready(refused(&refusal)),
            };
            return ready(if websocket {
                self.upgrade(req, None, query, admission)
            } else {
                let session = self.open(POLLING, &query, admission);
                let open = self.open_packet(&session, &["websocket"]);
                self.spawn_polling_heartbeat(session);
                text_response(open.into_bytes())
            });
        };
        let Some(session) = self.shared.sessions.read().get(sid.as_str()).cloned() else {
            let engine = self.clone();
            let sid = sid.clone();
            return Answer::Later(Box::pin(async move {
                engine.elsewhere(req, &sid, websocket).await
            }));
        };
        if websocket {
            ready(self.upgrade(req, Some(session), query, None))
        } else if session.transport.load(Ordering::Acquire) != POLLING {
            ready(protocol_error(ErrorCode::BadRequest))
        } else if req.method() == Method::GET {
            Answer::Poll(session)
        } else if req.method() == Method::POST {
            Answer::Later(Box::pin(async move { session.post(req).await }))
        } else {
            ready(protocol_error(ErrorCode::BadRequest))
        }
    }

    /// A request for session `sid`, which this node does not hold: forwarded to the
    /// node that does, or answered as an unknown session.
    async fn elsewhere(&self, req: Request, sid: &str, websocket: bool) -> Response {
        let unknown = if websocket && websocket::is_upgrade_request(req.headers()) {
            raw_bad_request
        } else {
            protocol_error
        };
        let Some(forwarder) = &self.shared.config.forwarder else {
            return unknown(ErrorCode::UnknownSid);
        };
        match forwarder.route(sid, req.headers()) {
            Route::Here => unknown(ErrorCode::UnknownSid),
            Route::Misdirected => forward::misdirected(forwarder.node()),
            Route::Owner(node) => {
                let c = &self.shared.config;
                // A poll is held until the next ping is due, or the pong's deadline.
                let hold = c.ping_interval.max(c.ping_timeout);
                match forwarder.forward(req, node, Frontend::SocketIo, hold).await {
                    Ok(response) => response,
                    Err(forward::NoOwner) => unknown(ErrorCode::UnknownSid),
                }
            }
        }
    }

    fn open(&self, transport: u8, query: &Query, admission: Option<Admission>) -> Arc<Session<H>> {
        let mut raw = [0u8; 15];
        rand::rng().fill_bytes(&mut raw);
        let secret = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
        let c = &self.shared.config;
        let sid = match &c.forwarder {
            Some(forwarder) => forwarder.session_token(&secret),
            None => secret,
        };
        let session = Arc::new(Session {
            sid: sid.into_boxed_str(),
            shared: self.shared.clone(),
            outbox: Outbox::new(c.queue_capacity, c.queue_bytes),
            state: Mutex::new(None),
            transport: AtomicU8::new(transport),
            upgrading: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            posting: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            admission,
            pong: Notify::new(),
            opened_at: Instant::now(),
        });
        self.shared
            .sessions
            .write()
            .insert(session.sid.clone(), session.clone());
        let m = &self.shared.metrics;
        m.frontend(Frontend::SocketIo).connections.inc();
        m.connects
            .with_label_values(&[Frontend::SocketIo.as_str()])
            .inc();
        let state = self.shared.handler.open(&session, query);
        *session.state.lock() = Some(state);
        tracing::debug!(
            transport = transport_name(transport),
            "engine.io session opened"
        );
        session
    }

    fn open_packet(&self, session: &Session<H>, upgrades: &[&str]) -> String {
        let c = &self.shared.config;
        OpenPacket {
            sid: &session.sid,
            upgrades,
            ping_interval: c.ping_interval.as_millis() as u64,
            ping_timeout: c.ping_timeout.as_millis() as u64,
            max_payload: c.max_payload,
        }
        .to_text()
    }

    /// The session's heartbeat: the server pings (Engine.IO v4), and a session that
    /// never attaches is closed at the connect timeout. Its first ping is due one
    /// interval after `start`: the open packet for a new session (the client's timers
    /// start there), the upgrade for a session that moved to WebSocket.
    fn heartbeat(&self, start: Instant) -> Heartbeat {
        let c = &self.shared.config;
        Heartbeat::new(
            Mode::ServerPings {
                interval: c.ping_interval,
                timeout: c.ping_timeout,
            },
            start,
            c.connect_timeout.map(|t| start + t),
        )
    }

    fn spawn_polling_heartbeat(&self, session: Arc<Session<H>>) {
        let engine = self.clone();
        self.shared.tasks.spawn(async move {
            let mut beat = engine.heartbeat(session.opened_at);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(beat.deadline().into()) => {}
                    _ = session.pong.notified() => beat.on_pong(),
                }
                if session.closed.load(Ordering::Acquire)
                    || session.transport.load(Ordering::Acquire) != POLLING
                {
                    return;
                }
                if let Some(reason) = session.outbox.closing() {
                    // Closing but not closed: the close waits for a poll to collect
                    // it; if none comes, close anyway.
                    tokio::time::sleep(CLOSE_COLLECT_GRACE).await;
                    return session.close(reason);
                }
                match beat.on_deadline(session.attached.load(Ordering::Acquire)) {
                    Beat::Wait => {}
                    Beat::Ping => session.outbox.push_control(Frame::text("2")),
                    Beat::Close(reason) => return session.close(reason),
                }
            }
        });
    }

    /// Answers a WebSocket request: a new WebSocket-only session, or the upgrade of a
    /// polling session.
    fn upgrade(
        &self,
        req: Request,
        session: Option<Arc<Session<H>>>,
        query: Query,
        admission: Option<Admission>,
    ) -> Response {
        let Ok(accepted) = websocket::accept(req, None) else {
            return protocol_error(ErrorCode::BadRequest);
        };
        let engine = self.clone();
        self.shared.tasks.spawn(async move {
            let Some(ws) = websocket::upgraded(accepted.upgraded, engine.shared.ws_config).await
            else {
                return;
            };
            // The WebSocket loop runs in a task of its own, so an idle connection
            // holds only that loop's state, not the upgrade's and the probe's too.
            match session {
                None => {
                    let mut ws = ws;
                    let session = engine.open(WEBSOCKET, &query, admission);
                    let open = engine.open_packet(&session, &[]);
                    if ws.send(WsMessage::text(open)).await.is_err() {
                        return session.close(CloseReason::TransportError);
                    }
                    engine.spawn_websocket(session, ws, HeartbeatStart::Open);
                }
                Some(session) => {
                    if let Some((session, ws)) = engine.probe(session, ws).await {
                        engine.spawn_websocket(session, ws, HeartbeatStart::Now);
                    }
                }
            }
        });
        accepted.response
    }

    /// `start`: when the heartbeat's first interval began (see [`Heartbeat::new`]).
    fn spawn_websocket(&self, session: Arc<Session<H>>, ws: Ws, start: HeartbeatStart) {
        let start = match start {
            HeartbeatStart::Open => session.opened_at,
            HeartbeatStart::Now => Instant::now(),
        };
        let beat = self.heartbeat(start);
        let fut = websocket::run(session, ws, beat);
        tracing::trace!(bytes = std::mem::size_of_val(&fut), "websocket task size");
        self.shared.tasks.spawn(fut);
    }

    /// The upgrade of a polling session: `2probe` → `3probe`, pending polls get noop,
    /// then `5` makes the WebSocket the session's transport. Returns the session and
    /// its new transport when the upgrade completed.
    async fn probe(&self, session: Arc<Session<H>>, mut ws: Ws) -> Option<(Arc<Session<H>>, Ws)> {
        if session.transport.load(Ordering::Acquire) != POLLING
            || session.upgrading.swap(true, Ordering::AcqRel)
        {
            // Already upgraded or upgrading: accept the socket, then close it.
            let _ = ws.close(None).await;
            return None;
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.upgrade_timeout;
        let mut probed = false;
        let upgraded = loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(msg))) => msg,
                _ => break false,
            };
            let WsMessage::Text(text) = msg else {
                if matches!(msg, WsMessage::Ping(_) | WsMessage::Pong(_)) {
                    continue;
                }
                break false;
            };
            match engineio::decode_text(&text) {
                Ok(Packet::Ping("probe")) if !probed => {
                    probed = true;
                    if ws.send(WsMessage::text("3probe")).await.is_err() {
                        break false;
                    }
                    // Pending and new polls now answer noop so the client can switch.
                    session.outbox.wake();
                }
                Ok(Packet::Upgrade) if probed => break true,
                _ => break false,
            }
        };
        if !upgraded || session.closed.load(Ordering::Acquire) {
            session.upgrading.store(false, Ordering::Release);
            let _ = ws.close(None).await;
            return None;
        }
        session.transport.store(WEBSOCKET, Ordering::Release);
        session.upgrading.store(false, Ordering::Release);
        session.with_state(|state| self.shared.handler.upgraded(&session, state));
        tracing::debug!("engine.io session upgraded to websocket");
        Some((session, ws))
    }

    /// Stops accepting handshakes (returns immediately).
    pub fn start_draining(&self) {
        self.shared.draining.cancel();
    }

    /// Waits until every session's queue is empty or `deadline` passes.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        loop {
            let busy = self
                .shared
                .sessions
                .read()
                .values()
                .any(|s| !s.outbox.is_empty());
            if !busy || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every session. WebSocket sessions close at once (their task writes the
    /// close frame); a polling session is marked closing so that its pending or next
    /// poll collects the close packet, and is closed outright if no poll comes within
    /// `grace`. Then waits (up to `grace`) for the sessions' tasks to end.
    pub async fn close_all(&self, reason: CloseReason, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let sessions: Vec<_> = self.shared.sessions.read().values().cloned().collect();
        for s in &sessions {
            if s.transport.load(Ordering::Acquire) == POLLING {
                s.outbox.close(reason);
            } else {
                s.close(reason);
            }
        }
        while self.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let sessions: Vec<_> = self.shared.sessions.read().values().cloned().collect();
        for s in &sessions {
            s.close(reason);
        }
        self.shared.tasks.close();
        let _ = tokio::time::timeout_at(deadline, self.shared.tasks.wait()).await;
    }
}

impl<H: Handler> Session<H> {
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn transport_name(&self) -> &'static str {
        transport_name(self.transport.load(Ordering::Acquire))
    }

    /// Marks whether the layer above holds a live attachment (see `connect_timeout`).
    /// The first attachment authenticates the session: it no longer counts as
    /// pending.
    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Release);
        if let (true, Some(a)) = (attached, &self.admission) {
            a.authenticated();
        }
    }

    /// Runs `f` on the handler state, unless the session is closed.
    /// The handler of this session's endpoint.
    pub fn handler(&self) -> &H {
        &self.shared.handler
    }

    pub fn with_state<R>(&self, f: impl FnOnce(&mut H::State) -> R) -> Option<R> {
        self.state.lock().as_mut().map(f)
    }

    /// Ends the session: unregisters it, wakes its transport (which writes the close),
    /// and tells the handler. Idempotent.
    pub fn close(self: &Arc<Self>, reason: CloseReason) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.outbox.close(reason);
        // Wakes a polling session's heartbeat task so it ends now, not at its deadline.
        self.pong.notify_one();
        self.shared.sessions.write().remove(&self.sid);
        if let Some(a) = &self.admission {
            a.release();
        }
        let state = self.state.lock().take();
        if let Some(state) = state {
            self.shared.handler.close(self, state, reason);
        }
        let m = &self.shared.metrics;
        m.frontend(Frontend::SocketIo).connections.dec();
        m.disconnects
            .with_label_values(&[Frontend::SocketIo.as_str(), reason.as_str()])
            .inc();
        tracing::debug!(reason = reason.as_str(), "engine.io session closed");
    }

    fn dispatch(self: &Arc<Self>, message: Message<'_>) {
        let result = {
            let mut state = self.state.lock();
            match state.as_mut() {
                Some(state) => self.shared.handler.message(self, state, message),
                None => Ok(()),
            }
        };
        if let Err(reason) = result {
            self.close(reason);
        }
    }

    /// Handles one decoded packet from either transport. Returns false when the
    /// session must close for a protocol error.
    fn receive(self: &Arc<Self>, packet: Packet<'_>, beat: Option<&mut Heartbeat>) -> bool {
        match packet {
            Packet::Pong(_) => {
                match beat {
                    Some(beat) => beat.on_pong(),
                    None => self.pong.notify_one(),
                }
                true
            }
            Packet::Message(text) => {
                self.dispatch(Message::Text(text));
                true
            }
            Packet::Binary(bytes) => {
                self.dispatch(Message::Binary(Bytes::from(bytes.into_owned())));
                true
            }
            Packet::Close => {
                match beat {
                    // WebSocket: nothing else is in flight; close now.
                    Some(_) => self.close(CloseReason::Client),
                    // Polling: the client's pending GET must still get its noop (it
                    // may reach us after this POST), so only mark the session
                    // closing; the poll that collects the noop closes it, or the
                    // heartbeat task does after a grace period.
                    None => {
                        self.outbox.close(CloseReason::Client);
                        self.pong.notify_one();
                    }
                }
                true
            }
            Packet::Noop => true,
            // v4: the server pings; a client ping is "invalid heartbeat direction".
            Packet::Ping(_) | Packet::Open(_) | Packet::Upgrade => false,
        }
    }

    /// A long-poll GET: answers with every queued frame, waiting until there is one.
    async fn poll(self: &Arc<Self>) -> Response {
        if self.polling.swap(true, Ordering::AcqRel) {
            self.close(CloseReason::ProtocolError);
            return protocol_error(ErrorCode::BadRequest);
        }
        let _pending = ResetOnDrop(&self.polling);
        if self.upgrading.load(Ordering::Acquire) {
            // A poll that arrives mid-upgrade: the client may already have sent the
            // upgrade packet on the WebSocket, which we have not read yet. Give it a
            // moment, so a poll after the upgrade gets the 400 it should.
            for _ in 0..UPGRADE_SETTLE_STEPS {
                tokio::time::sleep(UPGRADE_SETTLE_STEP).await;
                if self.transport.load(Ordering::Acquire) != POLLING {
                    return protocol_error(ErrorCode::BadRequest);
                }
                if !self.upgrading.load(Ordering::Acquire) {
                    break;
                }
            }
        }
        let mut batch = Vec::new();
        loop {
            if self.upgrading.load(Ordering::Acquire) {
                return text_response(b"6".to_vec());
            }
            let closing = self.outbox.drain(&mut batch);
            if !batch.is_empty() {
                let mut body = Vec::new();
                let now = Instant::now();
                for q in &batch {
                    self.observe_write(q, now);
                    match &q.frame {
                        Frame::Text(t) => engineio::append_text_record(&mut body, t),
                        Frame::Binary(b) => engineio::append_binary_record(&mut body, b),
                    }
                }
                match closing {
                    None | Some(CloseReason::Client) => {}
                    Some(reason) => {
                        engineio::append_text_record(&mut body, "1");
                        self.close(reason);
                    }
                }
                return text_response(body);
            }
            match closing {
                // The client asked to close: its pending poll ends with a noop.
                Some(CloseReason::Client) => {
                    self.close(CloseReason::Client);
                    return text_response(b"6".to_vec());
                }
                Some(reason) => {
                    self.close(reason);
                    return text_response(b"1".to_vec());
                }
                None => {}
            }
            self.outbox.ready().await;
        }
    }

    /// A polling POST: the client's packets, record-separated.
    async fn post(self: &Arc<Self>, req: Request) -> Response {
        if self.posting.swap(true, Ordering::AcqRel) {
            self.close(CloseReason::ProtocolError);
            return protocol_error(ErrorCode::BadRequest);
        }
        let _posting = ResetOnDrop(&self.posting);
        if req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"))
        {
            // v4 carries binary as base64 text over polling.
            return protocol_error(ErrorCode::BadRequest);
        }
        let limit = self.shared.config.max_payload as usize;
        let body = match axum::body::to_bytes(req.into_body(), limit).await {
            Ok(b) => b,
            Err(e) => {
                let too_large = e.into_inner().is::<http_body_util::LengthLimitError>();
                if too_large {
                    self.close(CloseReason::ProtocolError);
                    return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response();
                }
                return protocol_error(ErrorCode::BadRequest);
            }
        };
        let Ok(text) = std::str::from_utf8(&body) else {
            self.close(CloseReason::ProtocolError);
            return protocol_error(ErrorCode::BadRequest);
        };
        for packet in engineio::decode_payload(text) {
            let ok = match packet {
                Ok(p) => self.receive(p, None),
                Err(_) => false,
            };
            if !ok {
                self.close(CloseReason::ProtocolError);
                return protocol_error(ErrorCode::BadRequest);
            }
        }
        Response::builder()
            .header(header::CONTENT_TYPE, "text/html")
            .body(Body::from("ok"))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }

    fn observe_write(&self, q: &Queued, now: Instant) {
        self.shared.metrics.observe_write(q.pushed_at, now);
    }
}

impl<H: Handler> crate::hub::Connection for Session<H> {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn disconnect(&self, socket: &crate::id::SocketId) {
        let mut state = self.state.lock();
        if let Some(state) = state.as_mut() {
            self.shared.handler.disconnect(self, state, socket);
        }
    }

    fn transport(&self) -> &'static str {
        self.transport_name()
    }
}

/// How [`Engine::handle`] answers a request it has read.
enum Answer<H: Handler> {
    /// A long-polling GET: wait on the session's outbox.
    Poll(Arc<Session<H>>),
    /// Anything else (answered already, a post, a forward), boxed so that a held
    /// poll does not carry its size.
    Later(Pin<Box<dyn Future<Output = Response> + Send>>),
}

/// Where a WebSocket session's first ping interval starts.
#[derive(Debug, Clone, Copy)]
enum HeartbeatStart {
    /// At the open packet: a session that began on WebSocket.
    Open,
    /// Now: a session that just upgraded from polling.
    Now,
}

impl<H: Handler> Peer for Session<H> {
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    fn text(self: &Arc<Self>, text: &str, beat: &mut Heartbeat) -> Result<(), CloseReason> {
        let ok = match engineio::decode_text(text) {
            Ok(p) => self.receive(p, Some(beat)),
            Err(_) => false,
        };
        if ok {
            Ok(())
        } else {
            Err(CloseReason::ProtocolError)
        }
    }

    fn binary(self: &Arc<Self>, bytes: Bytes, _beat: &mut Heartbeat) -> Result<(), CloseReason> {
        self.dispatch(Message::Binary(bytes));
        Ok(())
    }

    fn ping(&self) -> Option<Frame> {
        Some(Frame::text("2"))
    }

    fn attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    fn close(self: &Arc<Self>, reason: CloseReason) {
        Session::close(self, reason)
    }

    fn written(&self, q: &Queued, now: Instant) {
        self.observe_write(q, now)
    }
}

struct ResetOnDrop<'a>(&'a AtomicBool);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn transport_name(t: u8) -> &'static str {
    if t == WEBSOCKET {
        "websocket"
    } else {
        "polling"
    }
}

/// The Engine.IO error answer: 400 (403 for Forbidden) with `{"code":N,"message":"…"}`.
fn protocol_error(code: ErrorCode) -> Response {
    let status = if code == ErrorCode::Forbidden {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        code.to_json(),
    )
        .into_response()
}

/// A handshake refused by the gate: the status a client backs off from (403, 429 or
/// 503, with `Retry-After` when waiting helps) and Engine.IO's JSON error body, code 4
/// (`Forbidden`, the reference server's code for a refused request) with a readable
/// message.
fn refused(refusal: &Refusal) -> Response {
    let body =
        serde_json::json!({"code": ErrorCode::Forbidden as u8, "message": refusal.to_string()});
    let mut response = (
        refusal.status(),
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response();
    if let Some(after) = refusal.retry_after() {
        response.headers_mut().insert(header::RETRY_AFTER, after);
    }
    response
}

/// A refused WebSocket upgrade: a plain 400 with the message, as the reference server
/// answers it.
fn raw_bad_request(code: ErrorCode) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
        code.message(),
    )
        .into_response()
}

fn text_response(body: Vec<u8>) -> Response {
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=UTF-8"),
        )
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
