//! The HTTP API (`/v1`, JSON), health and metrics endpoints.
//!
//! This is the only module that knows HTTP status codes. Every error answer has the
//! body `{"error": {"code": "...", "message": "..."}}`. Requests to `/v1` carry a
//! bearer key when keys are configured; with none configured only loopback callers
//! are served. Each key (or, without keys, each caller's address) has a request rate
//! (`PUSHGATE_API_RATE`): beyond it, 429 with `Retry-After`. Requests with a wrong or
//! missing key spend their address's tokens, so guessing keys is rate-limited too.
//! Keys are never logged, and neither is any header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::auth::ApiKeys;
use crate::bus::RedisBus;
use crate::delivery::Tracker;
use crate::events::{Events, Item};
use crate::hub::{Hub, SocketInfo};
use crate::id::{Frontend, NodeId, PushId, RoomName, SocketId, UserId};
use crate::limits::{Address, Caller, Limit, Refused};
use crate::metrics::Metrics;
use crate::presence::{self, PresenceError, Presences};
use crate::push::{self, Push};
use crate::push_service::{self, PushService, SendError};
use crate::registry::NodeInfo;
use crate::transport::admission::Gate;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After`, in seconds, when waiting helps.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A limit's refusal: 429 for the caller's own request rate, 503 for the node's
/// pending acked pushes (a node-wide resource other callers filled: retry later, or
/// on another node), 400 for a request larger than the limits allow. The code is the
/// limit's name.
impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        let status = match r.limit {
            Limit::ApiRate => StatusCode::TOO_MANY_REQUESTS,
            Limit::PendingAcks | Limit::Connections | Limit::Pending => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            code: r.limit.as_str(),
            message: r.to_string(),
            retry_after: r.retry_after_secs(),
        }
    }
}

impl From<push::PushError> for ApiError {
    fn from(e: push::PushError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<crate::registry::RegistryError> for ApiError {
    fn from(e: crate::registry::RegistryError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the cluster registry cannot be read: {e}; retry later"),
        )
    }
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        match e {
            PresenceError::NotTracked => Self::bad_request(format!(
                "{e}: name the room {}… to track its members",
                presence::PREFIX
            )),
            PresenceError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{e}; retry later"),
            ),
        }
    }
}

impl From<crate::codec::Refused> for ApiError {
    fn from(e: crate::codec::Refused) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Refused(r) => r.into(),
            SendError::Bus(b) => b.into(),
            SendError::Limit(l) => l.into(),
        }
    }
}

impl From<crate::bus::BusError> for ApiError {
    fn from(e: crate::bus::BusError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

/// A JSON request body, with the API's own errors for a body that is too large (413),
/// not JSON (400) or unreadable.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is larger than PUSHGATE_MAX_BODY_BYTES",
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
    }
}

/// What the API handlers share.
pub struct Api {
    pub push: Arc<PushService>,
    pub hub: Arc<Hub>,
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
    /// The event stream that `GET /v1/events` reads.
    pub events: Arc<Events>,
    pub keys: ApiKeys,
    pub node: NodeId,
    /// Milliseconds since the epoch when this node started.
    pub started_at: u64,
    /// Cancelled when the node starts draining: `/readyz` answers 503, pushes too.
    pub draining: CancellationToken,
    pub max_body_bytes: usize,
    /// Cluster mode: the Redis bus (with its registry) that answers for other nodes.
    pub cluster: Option<Arc<RedisBus>>,
    /// Presence, wherever it is kept (in memory, or the cluster registry).
    pub presence: Arc<dyn Presences>,
    /// The node's limits, and callers' addresses (through trusted proxies).
    pub gate: Arc<Gate>,
}

impl Api {
    /// The node owning `sid` when it is another node of the cluster.
    fn remote_owner<'a>(&self, sid: &'a SocketId) -> Option<&'a str> {
        self.cluster.as_ref()?;
        sid.node().filter(|n| *n != self.node.as_str())
    }
}

type Shared = State<Arc<Api>>;

/// The API's routes, with key checks, request metrics and body limits applied.
pub fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route("/v1/push", post(push_one))
        .route("/v1/push/batch", post(push_batch))
        .route("/v1/pushes/{id}", get(push_report))
        .route("/v1/sockets/{sid}", get(get_socket).delete(delete_socket))
        .route("/v1/users/{uid}", get(get_user))
        .route(
            "/v1/users/{uid}/sockets",
            axum::routing::delete(delete_user_sockets),
        )
        .route("/v1/rooms/{room}", get(get_room))
        .route("/v1/rooms/{room}/presence", get(get_presence))
        .route("/v1/rooms/{room}/join", post(join_room))
        .route("/v1/rooms/{room}/leave", post(leave_room))
        .route("/v1/nodes", get(nodes))
        .route("/v1/events", get(events))
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize));
    Router::new()
        .merge(v1)
        .merge(crate::console::routes())
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(api.clone(), observe))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(api.max_body_bytes))
        .with_state(api)
}

/// The answer for paths no route matches (JSON, like every API error).
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn authorize(
    State(api): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let limits = api.gate.limits();
    let now = Instant::now();
    let address = Caller::Address(Address::from(api.gate.client_address(&req)));
    if api.keys.is_empty() {
        if !peer.ip().is_loopback() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "no API keys are configured (PUSHGATE_API_KEYS); /v1 answers loopback callers only",
            ));
        }
        limits.api_request(address, now)?;
    } else {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let key = presented.and_then(|k| api.keys.find(k.trim()));
        match (key, presented) {
            (Some(index), _) => limits.api_request(Caller::Key(index), now)?,
            // A wrong or missing key spends its address's tokens: past the rate,
            // guesses get 429 instead of an answer.
            (None, Some(_)) => {
                limits.api_request(address, now)?;
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the API key is not valid",
                ));
            }
            (None, None) => {
                limits.api_request(address, now)?;
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing API key: send Authorization: Bearer <key>",
                ));
            }
        }
    }
    Ok(next.run(req).await)
}

/// Counts every request by route template and status, and times it.
async fn observe(State(api): Shared, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let start = Instant::now();
    let response = next.run(req).await;
    api.metrics
        .http_requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    api.metrics
        .http_request_seconds
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    response
}

fn refuse_while_draining(api: &Api) -> Result<(), ApiError> {
    if api.draining.is_cancelled() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is shutting down; retry on another node",
        ));
    }
    Ok(())
}

/// The answer for an accepted push: 200 with its report when the caller waited, 202
/// without; 207 when a push to several users reached only some of them, naming the
/// others (`failed_users`) so a retry resends only those.
fn accepted_json(accepted: &push_service::Accepted) -> (StatusCode, Value) {
    let mut body = json!({"id": accepted.id});
    if let Some(report) = accepted.report {
        body["report"] = json!(report);
    }
    if !accepted.refused.is_empty() {
        body["failed_users"] = json!(accepted.refused);
        body["error"] = json!({
            "code": "unavailable",
            "message": "the push could not be handed to the bus for failed_users (Redis \
                        failed part way); the other users got it: retry with failed_users only",
        });
        return (StatusCode::MULTI_STATUS, body);
    }
    let status = if accepted.report.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, body)
}

/// Refuses a push that names more users than a push may.
fn check_targets(api: &Api, push: &Push) -> Result<(), Refused> {
    match &push.target {
        crate::id::Target::Users(users) => api.gate.limits().push_targets(users.len()),
        _ => Ok(()),
    }
}

async fn push_one(State(api): Shared, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    refuse_while_draining(&api)?;
    let push = Push::from_json(body)?;
    check_targets(&api, &push)?;
    let accepted = api.push.send(push).await?;
    let (status, body) = accepted_json(&accepted);
    Ok((status, Json(body)).into_response())
}

/// `POST /v1/push/batch`: every push is checked before any is sent (one invalid push
/// refuses the batch with 400, nothing sent); then each is sent and answered in
/// `results`, in order: `{"id", "report"?}` when accepted, `{"error"}` when not, and
/// `failed_users` for a push to several users that reached only some. 200 when every
/// push was accepted whole, 207 when some were not, 503 when none was.
async fn push_batch(State(api): Shared, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    refuse_while_draining(&api)?;
    let limits = api.gate.limits();
    if let Some(list) = body.get("pushes").and_then(Value::as_array) {
        limits.batch(list.len())?;
    }
    let pushes = push::batch_from_json(body, limits.settings().max_batch).map_err(
        |(index, e)| match index {
            Some(i) => ApiError::bad_request(format!("push {i}: {e}")),
            None => ApiError::from(e),
        },
    )?;
    for (i, p) in pushes.iter().enumerate() {
        api.push
            .check(p)
            .map_err(|e| ApiError::bad_request(format!("push {i}: {e}")))?;
        check_targets(&api, p).map_err(|r| {
            let mut e = ApiError::from(r);
            e.message = format!("push {i}: {}", e.message);
            e
        })?;
    }
    // The batch's ack-tracked pushes must all fit among the node's pending ones now
    // (each still takes its own place when sent).
    limits.pending_acks_fit(pushes.iter().filter(|p| p.ack.is_some()).count())?;
    let total = pushes.len();
    let sends = pushes.into_iter().map(|p| api.push.send(p));
    let mut results = Vec::with_capacity(total);
    let (mut whole, mut none) = (0, 0);
    for outcome in futures_util::future::join_all(sends).await {
        results.push(match outcome {
            Ok(accepted) => {
                let (status, body) = accepted_json(&accepted);
                if status != StatusCode::MULTI_STATUS {
                    whole += 1;
                }
                body
            }
            Err(e) => {
                none += 1;
                let e = ApiError::from(e);
                json!({"error": {"code": e.code, "message": e.message}})
            }
        });
    }
    let status = if whole == total {
        StatusCode::OK
    } else if none == total {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::MULTI_STATUS
    };
    if status != StatusCode::OK {
        tracing::warn!(
            pushes = total,
            whole,
            failed = none,
            "a batch was accepted only in part"
        );
    }
    Ok((status, Json(json!({"results": results}))).into_response())
}

/// `GET /v1/pushes/{id}`: from this node's tracker; in a cluster, a pending report
/// from the node that accepted the push (its id names it), then a final one from
/// Redis.
async fn push_report(State(api): Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let mut found = api.tracker.get(&id);
    if let (None, Some(c)) = (&found, &api.cluster) {
        let push = PushId::from(id.as_str());
        if let Some(origin) = push.origin().filter(|o| *o != api.node.as_str()) {
            found = c.report_of(origin, &push).await?;
        }
        if found.is_none() {
            found = c.registry().report(&id).await?;
        }
    }
    let (state, report) =
        found.ok_or_else(|| ApiError::not_found(format!("no push {id} in the last 10 minutes")))?;
    Ok(Json(json!({"id": id, "state": state, "report": report})))
}

fn socket_json(node: &NodeId, info: SocketInfo) -> Value {
    json!({
        "id": info.id,
        "node": node,
        "user": info.user,
        "frontend": info.frontend,
        "namespace": info.namespace,
        "transport": info.transport,
        "rooms": info.rooms,
        "connected_at": info.connected_at,
    })
}

async fn get_socket(State(api): Shared, Path(sid): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = SocketId::from(sid.as_str());
    if let Some(info) = api.hub.socket(&id) {
        return Ok(Json(socket_json(&api.node, info)));
    }
    if let (Some(c), Some(_)) = (&api.cluster, api.remote_owner(&id)) {
        if let Some(e) = c.registry().socket(&id).await? {
            return Ok(Json(socket_json(&e.node, e.info)));
        }
    }
    Err(ApiError::not_found(format!("no socket {sid}")))
}

async fn delete_socket(
    State(api): Shared,
    Path(sid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sid = SocketId::from(sid);
    if let Some(conn) = api.hub.connection(&sid) {
        conn.disconnect(&sid);
        tracing::info!(socket = %sid, "socket disconnected through the API");
        return Ok(Json(json!({"disconnected": 1})));
    }
    if let (Some(c), Some(node)) = (&api.cluster, api.remote_owner(&sid)) {
        let n = c.kick(node, vec![sid.clone()]).await?;
        if n > 0 {
            tracing::info!(socket = %sid, node, "socket disconnected through the API");
            return Ok(Json(json!({"disconnected": n})));
        }
    }
    Err(ApiError::not_found(format!("no socket {sid}")))
}

/// A user's sockets: this node's from the hub, the others' from the registry.
async fn user_sockets(api: &Api, user: &UserId) -> Result<Vec<(NodeId, SocketInfo)>, ApiError> {
    let mut out: Vec<(NodeId, SocketInfo)> = api
        .hub
        .user_sockets(user)
        .into_iter()
        .map(|i| (api.node.clone(), i))
        .collect();
    if let Some(c) = &api.cluster {
        for e in c.registry().user(user).await? {
            if e.node != api.node {
                out.push((e.node, e.info));
            }
        }
    }
    Ok(out)
}

async fn get_user(State(api): Shared, Path(uid): Path<String>) -> Result<Json<Value>, ApiError> {
    let sockets: Vec<Value> = user_sockets(&api, &UserId::from(uid.as_str()))
        .await?
        .into_iter()
        .map(|(node, info)| socket_json(&node, info))
        .collect();
    Ok(Json(json!({"user": uid, "sockets": sockets})))
}

/// Groups socket ids by owning node: this node's, and every other's.
fn by_node(api: &Api, sockets: Vec<SocketId>) -> (Vec<SocketId>, HashMap<String, Vec<SocketId>>) {
    let mut local = Vec::new();
    let mut remote: HashMap<String, Vec<SocketId>> = HashMap::new();
    for s in sockets {
        match api.remote_owner(&s) {
            Some(node) => remote.entry(node.to_owned()).or_default().push(s),
            None => local.push(s),
        }
    }
    (local, remote)
}

async fn delete_user_sockets(
    State(api): Shared,
    Path(uid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sockets = user_sockets(&api, &UserId::from(uid.as_str())).await?;
    let (local, remote) = by_node(&api, sockets.into_iter().map(|(_, i)| i.id).collect());
    let mut n = 0;
    for sid in local {
        if let Some(conn) = api.hub.connection(&sid) {
            conn.disconnect(&sid);
            n += 1;
        }
    }
    if let Some(c) = &api.cluster {
        for (node, sockets) in remote {
            n += c.kick(&node, sockets).await? as usize;
        }
    }
    tracing::info!(user = %uid, sockets = n, "user disconnected through the API");
    Ok(Json(json!({"disconnected": n})))
}

async fn get_room(State(api): Shared, Path(room): Path<String>) -> Result<Json<Value>, ApiError> {
    let name = RoomName::from(room.as_str());
    let mut sockets = api.hub.room_sockets(&name);
    if let Some(c) = &api.cluster {
        for e in c.registry().room(&name).await? {
            if e.node != api.node {
                sockets.push(e.info.id);
            }
        }
    }
    Ok(Json(
        json!({"room": room, "count": sockets.len(), "sockets": sockets}),
    ))
}

/// The sockets a room change applies to: `{"sockets": [..]}` or `{"user": "u"}`.
async fn members_of(api: &Api, body: Value) -> Result<Vec<SocketId>, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::bad_request(
            "expected {\"sockets\": [..]} or {\"user\": \"u\"}",
        ));
    };
    let sockets = obj.remove("sockets");
    let user = obj.remove("user");
    if let Some(k) = obj.keys().next() {
        return Err(ApiError::bad_request(format!("unknown field {k:?}")));
    }
    match (sockets, user) {
        (Some(Value::Array(ids)), None) => ids
            .into_iter()
            .map(|v| match v {
                Value::String(s) if !s.is_empty() => Ok(SocketId::from(s)),
                _ => Err(ApiError::bad_request(
                    "sockets must be a list of socket ids",
                )),
            })
            .collect(),
        (None, Some(Value::String(u))) if !u.is_empty() => Ok(user_sockets(api, &UserId::from(u))
            .await?
            .into_iter()
            .map(|(_, i)| i.id)
            .collect()),
        _ => Err(ApiError::bad_request(
            "give exactly one of {\"sockets\": [..]} or {\"user\": \"u\"}",
        )),
    }
}

fn room_name(room: &str) -> Result<RoomName, ApiError> {
    if room.is_empty() || room.len() > 200 {
        return Err(ApiError::bad_request("room names are 1 to 200 bytes"));
    }
    Ok(RoomName::from(room))
}

async fn join_room(
    State(api): Shared,
    Path(room): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let name = room_name(&room)?;
    let (n, refused) = change_rooms(&api, &name, members_of(&api, body).await?, true).await?;
    let mut answer = json!({"room": room, "sockets": n});
    // Only when some socket could not join, so answers keep their old shape.
    if !refused.is_empty() {
        let max = api.gate.limits().settings().max_rooms.unwrap_or(0);
        let error = json!({
            "code": Limit::Rooms.as_str(),
            "message": format!("at most {max} rooms per connection"),
        });
        answer["refused"] = refused
            .into_iter()
            .map(|s| json!({"socket": s, "error": error}))
            .collect();
    }
    Ok(Json(answer))
}

/// Joins or leaves `sockets` to `room` on whichever node holds them; answers once the
/// change is in effect for pushes (subscriptions made) with how many changed and
/// which sockets could not join (in as many rooms as a connection may be).
async fn change_rooms(
    api: &Api,
    room: &RoomName,
    sockets: Vec<SocketId>,
    join: bool,
) -> Result<(usize, Vec<SocketId>), ApiError> {
    let (local, remote) = by_node(api, sockets);
    let mut refused = Vec::new();
    let mut n = 0;
    for s in local {
        let changed = if join {
            match api.hub.try_join(&s, room) {
                crate::hub::Join::Joined => true,
                crate::hub::Join::Full { .. } => {
                    refused.push(s);
                    false
                }
                _ => false,
            }
        } else {
            api.hub.leave(&s, room)
        };
        n += usize::from(changed);
    }
    if let Some(c) = &api.cluster {
        for (node, sockets) in remote {
            let change = c.change_room(&node, room, sockets, join).await?;
            n += change.changed as usize;
            refused.extend(change.refused);
        }
        c.subscribed().await;
    }
    Ok((n, refused))
}

async fn leave_room(
    State(api): Shared,
    Path(room): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let name = room_name(&room)?;
    let (n, _) = change_rooms(&api, &name, members_of(&api, body).await?, false).await?;
    Ok(Json(json!({"room": room, "sockets": n})))
}

/// This node as `/v1/nodes` shows it, from its own counters (exact now).
fn this_node(api: &Api) -> NodeInfo {
    let frontends: std::collections::BTreeMap<&'static str, u64> = Frontend::ALL
        .iter()
        .map(|f| {
            (
                f.as_str(),
                api.metrics.frontend(*f).connections.get().max(0) as u64,
            )
        })
        .collect();
    NodeInfo {
        id: api.node.clone(),
        connections: frontends.values().sum(),
        frontends,
        started_at: api.started_at,
        address: api
            .cluster
            .as_ref()
            .and_then(|c| c.registry().advertised().map(str::to_owned)),
    }
}

/// How often an idle event stream gets a comment line, so that proxies and balancers
/// (HAProxy's `timeout server`, often 30 s or more) do not close it as idle.
const EVENTS_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// `GET /v1/events`: Server-Sent Events, one `data: {json}` frame per event of any
/// node, starting with `ready` once every event after it will be seen. Ends when the
/// node drains, or after a last `dropped` frame when the reader fell behind.
async fn events(State(api): Shared) -> Result<Response, ApiError> {
    refuse_while_draining(&api)?;
    let reader = api.events.reader();
    if let Some(c) = &api.cluster {
        // Subscribed to other nodes' events, and they were told to send them.
        c.events_followed().await;
    }
    let ready = api.events.ready_frame(api.cluster.is_some());
    tracing::info!("event stream opened");
    let state = EventStream {
        first: Some(ready),
        reader: Some(reader),
        keepalive: tokio::time::interval_at(
            tokio::time::Instant::now() + EVENTS_KEEPALIVE,
            EVENTS_KEEPALIVE,
        ),
        draining: api.draining.clone(),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let frame = st.next().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), st))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Tells nginx-style proxies not to buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// One `GET /v1/events` response body in progress.
struct EventStream {
    /// The `ready` frame, sent first.
    first: Option<Bytes>,
    /// `None` once the reader was dropped and its last frame sent.
    reader: Option<crate::events::Reader>,
    keepalive: tokio::time::Interval,
    draining: CancellationToken,
}

impl EventStream {
    /// The next chunk of the body; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(f) = self.first.take() {
            return Some(f);
        }
        let reader = self.reader.as_ref()?;
        let next = tokio::select! {
            next = reader.next() => next,
            _ = self.keepalive.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
            _ = self.draining.cancelled() => return None,
        };
        match next {
            Item::Frame(f) => Some(f),
            Item::Dropped => {
                let last = reader.dropped_frame();
                self.reader = None;
                Some(last)
            }
        }
    }
}

async fn nodes(State(api): Shared) -> Result<Json<Value>, ApiError> {
    let this = this_node(&api);
    let Some(c) = &api.cluster else {
        return Ok(Json(json!({ "nodes": [this] })));
    };
    let mut nodes = c.registry().nodes().await?;
    nodes.retain(|n| n.id != this.id);
    nodes.push(this);
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(json!({ "nodes": nodes })))
}

/// `GET /v1/rooms/{room}/presence`: the members of a presence room with their
/// connection counts; `?members=false` answers the count alone, which stays one Redis
/// read however large the room.
async fn get_presence(
    State(api): Shared,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let name = room_name(&room)?;
    let list = match query.get("members").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "members must be true or false, got {other:?}"
            )))
        }
    };
    if !list {
        let count = api.presence.count(&name).await?;
        return Ok(Json(json!({"room": room, "count": count})));
    }
    let members = presence::members(&api.presence.state(&name).await?);
    Ok(Json(
        json!({"room": room, "count": members.len(), "members": members}),
    ))
}

async fn readyz(State(api): Shared) -> Response {
    if api.draining.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    } else if api.cluster.as_ref().is_some_and(|c| !c.is_up()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "redis_unavailable"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ready"})).into_response()
    }
}

async fn metrics(State(api): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        // Bus metrics only where a bus exists: `pushgate_bus_up 0` on a single node
        // would read as an outage.
        api.metrics.render_for(api.cluster.is_some()),
    )
        .into_response()
}
