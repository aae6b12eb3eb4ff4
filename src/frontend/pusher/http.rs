//! The Pusher HTTP API (protocols.md §5.5), for the unmodified server SDKs, and the
//! WebSocket route: part of the Pusher frontend, not of `/v1`.
//!
//! Every `/apps/{app_id}/…` request is signed (`auth_key`, `auth_timestamp`,
//! `auth_version`, `body_md5`, `auth_signature`; see [`super::signature`]). Events
//! become pushes through the push service, so they reach every node; channel and user
//! questions are answered for the whole cluster: this node's hub for its own sockets,
//! the registry for the others', as `/v1` does, and the presence core for presence
//! channels (`user_count` is one read whatever the channel's size, `/users` lists the
//! members). Errors carry Pusher's status codes (400, 401, 404, 413, 503) with the
//! gateway's JSON error body.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::protocol::{self, ChannelKind};
use super::signature;
use super::{App, Pusher};
use crate::id::{Frontend, RoomName, SocketId, Target};
use crate::presence::PresenceError;
use crate::push::Push;
use crate::push_service::SendError;

/// Channels one `events` call may name (Pusher's limit).
pub const MAX_CHANNELS_PER_EVENT: usize = 100;
/// Events one `batch_events` call may hold. The hosted service takes 10; a gateway
/// with no per-message price takes more.
pub const MAX_BATCH: usize = 100;

/// An error answer: Pusher's status, the gateway's JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// `Retry-After` in seconds (a rate limit).
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

/// A limit's refusal: 429 (with `Retry-After`) for the app's request rate, 503 for
/// the node's resources.
impl From<crate::limits::Refused> for ApiError {
    fn from(r: crate::limits::Refused) -> Self {
        let status = match r.limit {
            crate::limits::Limit::ApiRate => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self {
            status,
            code: r.limit.as_str(),
            message: r.to_string(),
            retry_after: r.retry_after_secs(),
        }
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

impl From<crate::bus::BusError> for ApiError {
    fn from(e: crate::bus::BusError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        match e {
            PresenceError::NotTracked => {
                Self::bad_request("only presence channels have users".to_owned())
            }
            PresenceError::Unavailable(e) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the cluster registry cannot be read: {e}; retry later"),
            ),
        }
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Refused(r) => Self::bad_request(r.to_string()),
            SendError::Bus(b) => b.into(),
            SendError::Limit(l) => l.into(),
        }
    }
}

/// The routes of the Pusher frontend: `/app/{key}` (WebSocket) and the HTTP API.
pub fn routes(pusher: Pusher) -> Router {
    let limit = pusher.shared.config.max_body_bytes;
    let api = Router::new()
        .route("/apps/{app_id}/events", post(events))
        .route("/apps/{app_id}/batch_events", post(batch_events))
        .route("/apps/{app_id}/channels", get(channels))
        .route("/apps/{app_id}/channels/{channel}", get(channel))
        .route(
            "/apps/{app_id}/channels/{channel}/users",
            get(channel_users),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(terminate_connections),
        )
        .route_layer(middleware::from_fn_with_state(pusher.clone(), observe));
    let ws = move |State(p): State<Pusher>, Path(key): Path<String>, req: Request| async move {
        p.websocket(key, req).await
    };
    Router::new()
        .route("/app/{key}", any(ws))
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(pusher)
}

/// Counts every API request by route template and status, and times it (the same
/// series as `/v1`'s, with the `/apps/…` templates).
async fn observe(State(p): State<Pusher>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let start = Instant::now();
    let response = next.run(req).await;
    let m = &p.shared.metrics;
    m.http_requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    m.http_request_seconds
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    tracing::debug!(
        route,
        status = response.status().as_u16(),
        "pusher api request"
    );
    response
}

/// A request whose signature checked out.
struct Signed<'a> {
    app: &'a App,
    params: Vec<(String, String)>,
    body: Bytes,
}

impl Signed<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
    }
}

impl Pusher {
    /// Finds the app and checks the request's signature over its method, path, query
    /// and raw body.
    async fn signed(&self, app_id: &str, req: Request) -> Result<Signed<'_>, ApiError> {
        let app = self.app_by_id(app_id).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no Pusher app with id {app_id:?}"),
            )
        })?;
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let params: Vec<(String, String)> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        let limit = self.shared.config.max_body_bytes;
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is larger than PUSHGATE_MAX_BODY_BYTES",
                )
            })?;
        let now = crate::id::now_ms() / 1000;
        let c = &app.config;
        signature::check_request(&c.key, &c.secret, &method, &path, &params, &body, now).map_err(
            |e| {
                tracing::debug!(app = %c.id, error = %e, "pusher api request refused");
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            },
        )?;
        // The app's request rate, as `/v1` limits each key's (`PUSHGATE_API_RATE`).
        if let Some(gate) = &self.shared.gate {
            let index = self.shared.apps.iter().position(|a| a.config.id == c.id);
            let caller = crate::limits::Caller::App(index.unwrap_or_default());
            gate.limits().api_request(caller, Instant::now())?;
        }
        Ok(Signed { app, params, body })
    }

    fn refuse_while_draining(&self) -> Result<(), ApiError> {
        if self.shared.draining.is_cancelled() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "this node is shutting down; retry on another node",
            ));
        }
        Ok(())
    }

    /// How many sockets are in `room` on every node.
    async fn subscription_count(&self, room: &RoomName) -> Result<usize, ApiError> {
        let s = &self.shared;
        let mut n = s.hub.room_sockets(room).len();
        if let Some(c) = &s.cluster {
            n += c
                .registry()
                .room(room)
                .await?
                .iter()
                .filter(|e| e.node != s.node)
                .count();
        }
        Ok(n)
    }

    /// The rooms of `app` whose channel starts with `prefix`, on every node.
    async fn occupied(&self, app: &App, prefix: &str) -> Result<Vec<RoomName>, ApiError> {
        let s = &self.shared;
        let room_prefixes = app.room_prefixes(prefix);
        let mut rooms: BTreeSet<RoomName> = s
            .hub
            .sockets()
            .into_iter()
            .flat_map(|i| i.rooms)
            .filter(|r| room_prefixes.iter().any(|p| r.as_str().starts_with(p)))
            .collect();
        if let Some(c) = &s.cluster {
            for p in &room_prefixes {
                rooms.extend(c.registry().rooms(p).await?);
            }
        }
        Ok(rooms
            .into_iter()
            .filter(|r| {
                app.channel_of(r.as_str())
                    .is_some_and(|c| c.starts_with(prefix))
            })
            .collect())
    }

    /// How many distinct members presence channel `room` has, on every node.
    async fn user_count(&self, room: &RoomName) -> Result<usize, ApiError> {
        Ok(self.shared.presences.count(room).await?)
    }
}

/// The `info` attributes asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Info {
    subscription_count: bool,
    /// Distinct members: presence channels only.
    user_count: bool,
}

impl Info {
    fn any(self) -> bool {
        self.subscription_count || self.user_count
    }
}

fn info_attributes(info: Option<&str>) -> Result<Info, ApiError> {
    let mut out = Info::default();
    for attr in info
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        match attr {
            "subscription_count" => out.subscription_count = true,
            "user_count" => out.user_count = true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown info attribute {other:?}: ask for subscription_count or user_count"
                )))
            }
        }
    }
    Ok(out)
}

/// Refuses `info=user_count` for a channel that is not a presence channel.
fn user_count_only_for_presence(info: Info, channel: &str) -> Result<(), ApiError> {
    if info.user_count && !channel.starts_with(protocol::PRESENCE_PREFIX) {
        return Err(ApiError::bad_request(format!(
            "info=user_count is only for presence channels, and {channel:?} is not one"
        )));
    }
    Ok(())
}

/// Why the first app may not name a user ([`App::reserves`]).
fn reserved() -> String {
    format!(
        "user ids starting with {:?} are reserved",
        super::APP_PREFIX
    )
}

/// One event as validated: the pushes it becomes, and the channels to report on.
pub struct Event {
    /// One per channel, in the order of `channels`.
    pub pushes: Vec<Push>,
    pub channels: Vec<String>,
    info: Info,
}

/// Validates one event object (`events` body, or one entry of `batch`). Pure, and
/// public for the `pusher_events` fuzz target.
pub fn event(app: &App, value: Value, batch: bool) -> Result<Event, ApiError> {
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad_request("an event is a JSON object"));
    };
    let name = match obj.remove("name") {
        Some(Value::String(n)) if !n.is_empty() && n.len() <= protocol::MAX_EVENT_LEN => n,
        _ => {
            return Err(ApiError::bad_request(format!(
                "\"name\" must be a string of 1 to {} characters",
                protocol::MAX_EVENT_LEN
            )))
        }
    };
    let data = match obj.remove("data") {
        Some(Value::String(d)) => d,
        _ => {
            return Err(ApiError::bad_request(
                "\"data\" must be a string (the SDKs JSON-encode objects)",
            ))
        }
    };
    if data.len() > protocol::MAX_DATA_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "event data is larger than {} bytes",
                protocol::MAX_DATA_BYTES
            ),
        ));
    }
    let channels: Vec<String> = match (obj.remove("channels"), obj.remove("channel")) {
        (Some(Value::Array(list)), None) if !batch => list
            .into_iter()
            .map(|c| match c {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::bad_request(
                    "\"channels\" must be a list of strings",
                )),
            })
            .collect::<Result<_, _>>()?,
        (None, Some(Value::String(c))) => vec![c],
        _ if batch => {
            return Err(ApiError::bad_request(
                "each batch event needs \"channel\", a string",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "give \"channels\" (a list) or \"channel\" (a string)",
            ))
        }
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_EVENT {
        return Err(ApiError::bad_request(format!(
            "an event goes to 1 to {MAX_CHANNELS_PER_EVENT} channels"
        )));
    }
    let except = match obj.remove("socket_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if protocol::is_socket_id(&id) => {
            // A Pusher id this gateway did not make names no socket: nothing to skip.
            protocol::socket_of(&id).map(SocketId::from)
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "\"socket_id\" must be a socket id of the form 123.456",
            ))
        }
    };
    let info = match obj.remove("info") {
        None | Some(Value::Null) => Info::default(),
        Some(Value::String(i)) => info_attributes(Some(&i))?,
        Some(_) => return Err(ApiError::bad_request("\"info\" must be a string")),
    };
    for channel in &channels {
        user_count_only_for_presence(info, channel)?;
    }
    let mut pushes = Vec::with_capacity(channels.len());
    for channel in &channels {
        let target = match protocol::channel_kind(channel) {
            Ok(ChannelKind::ServerToUser(user)) if app.reserves(&user) => {
                return Err(ApiError::bad_request(format!(
                    "invalid channel name {channel:?}: {}",
                    reserved()
                )))
            }
            Ok(ChannelKind::ServerToUser(user)) => Target::User(app.user(&user)),
            Ok(_) => Target::Room(app.room(channel)),
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "invalid channel name {channel:?}: {e}"
                )))
            }
        };
        let mut push = Push::new(target, name.clone(), Some(Value::String(data.clone())));
        push.scope = app.scope();
        push.except.extend(except.clone());
        pushes.push(push);
    }
    Ok(Event {
        pushes,
        channels,
        info,
    })
}

impl Pusher {
    /// Sends every push of `events` (all checked first, so a refusal sends nothing).
    async fn trigger(&self, events: &[Event]) -> Result<(), ApiError> {
        self.refuse_while_draining()?;
        for e in events {
            for p in &e.pushes {
                self.shared
                    .push
                    .check(p)
                    .map_err(|r| ApiError::bad_request(r.to_string()))?;
            }
        }
        for e in events {
            for p in &e.pushes {
                self.shared.push.send(p.clone()).await?;
            }
        }
        Ok(())
    }

    /// `{"<channel>": {"subscription_count": n, "user_count": m}}` for an event that
    /// asked for info.
    async fn channel_info(&self, app: &App, e: &Event) -> Result<Value, ApiError> {
        let mut out = Map::new();
        for channel in &e.channels {
            let mut attrs = Map::new();
            if !channel.starts_with(protocol::SERVER_TO_USER_PREFIX) {
                let room = app.room(channel);
                if e.info.subscription_count {
                    let n = self.subscription_count(&room).await?;
                    attrs.insert("subscription_count".into(), n.into());
                }
                if e.info.user_count {
                    attrs.insert("user_count".into(), self.user_count(&room).await?.into());
                }
            }
            out.insert(channel.clone(), Value::Object(attrs));
        }
        Ok(Value::Object(out))
    }
}

/// `POST /apps/{app_id}/events`.
async fn events(
    State(p): State<Pusher>,
    Path(app_id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let signed = p.signed(&app_id, req).await?;
    let e = event(signed.app, signed.json()?, false)?;
    p.trigger(std::slice::from_ref(&e)).await?;
    if !e.info.any() {
        return Ok(Json(json!({})));
    }
    Ok(Json(
        json!({"channels": p.channel_info(signed.app, &e).await?}),
    ))
}

/// `POST /apps/{app_id}/batch_events`.
async fn batch_events(
    State(p): State<Pusher>,
    Path(app_id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let signed = p.signed(&app_id, req).await?;
    let Some(Value::Array(list)) = signed.json()?.get_mut("batch").map(Value::take) else {
        return Err(ApiError::bad_request("expected {\"batch\": [events]}"));
    };
    if list.is_empty() || list.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH} events"
        )));
    }
    let events = list
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            event(signed.app, v, true).map_err(|e| ApiError {
                message: format!("batch event {i}: {}", e.message),
                ..e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    p.trigger(&events).await?;
    if !events.iter().any(|e| e.info.any()) {
        return Ok(Json(json!({})));
    }
    let mut batch = Vec::with_capacity(events.len());
    for e in &events {
        batch.push(if e.info.any() {
            let info = p.channel_info(signed.app, e).await?;
            info.as_object()
                .and_then(|o| o.values().next().cloned())
                .unwrap_or_else(|| json!({}))
        } else {
            json!({})
        });
    }
    Ok(Json(json!({ "batch": batch })))
}

/// `GET /apps/{app_id}/channels?filter_by_prefix=…&info=subscription_count,user_count`
/// (`user_count` only with `filter_by_prefix=presence-…`, as Pusher asks).
async fn channels(
    State(p): State<Pusher>,
    Path(app_id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let signed = p.signed(&app_id, req).await?;
    let info = info_attributes(signed.param("info"))?;
    let prefix = signed.param("filter_by_prefix").unwrap_or("");
    if info.user_count && !prefix.starts_with(protocol::PRESENCE_PREFIX) {
        return Err(ApiError::bad_request(
            "info=user_count is only for presence channels: give filter_by_prefix=presence-",
        ));
    }
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for room in p.occupied(signed.app, prefix).await? {
        // An index may outlive its last member by a TTL: count to be sure.
        let n = p.subscription_count(&room).await?;
        if n == 0 {
            continue;
        }
        let Some(channel) = signed.app.channel_of(room.as_str()) else {
            continue;
        };
        let mut attrs = Map::new();
        if info.subscription_count {
            attrs.insert("subscription_count".into(), n.into());
        }
        if info.user_count {
            attrs.insert("user_count".into(), p.user_count(&room).await?.into());
        }
        out.insert(channel.into_owned(), Value::Object(attrs));
    }
    Ok(Json(json!({ "channels": out })))
}

/// `GET /apps/{app_id}/channels/{channel}?info=subscription_count,user_count`.
async fn channel(
    State(p): State<Pusher>,
    Path((app_id, channel)): Path<(String, String)>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let signed = p.signed(&app_id, req).await?;
    let info = info_attributes(signed.param("info"))?;
    if !protocol::is_channel_name(&channel) {
        return Err(ApiError::bad_request(format!(
            "invalid channel name {channel:?}"
        )));
    }
    user_count_only_for_presence(info, &channel)?;
    let room = signed.app.room(&channel);
    let n = p.subscription_count(&room).await?;
    let mut out = json!({ "occupied": n > 0 });
    if info.subscription_count {
        out["subscription_count"] = n.into();
    }
    if info.user_count {
        out["user_count"] = p.user_count(&room).await?.into();
    }
    Ok(Json(out))
}

/// `GET /apps/{app_id}/channels/{channel}/users`: a presence channel's members,
/// each once, as `{"users": [{"id"}, …]}`.
async fn channel_users(
    State(p): State<Pusher>,
    Path((app_id, channel)): Path<(String, String)>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let signed = p.signed(&app_id, req).await?;
    if !channel.starts_with(protocol::PRESENCE_PREFIX) || !protocol::is_channel_name(&channel) {
        return Err(ApiError::bad_request(
            "users are only listed for presence channels",
        ));
    }
    let metas = p.shared.presences.state(&signed.app.room(&channel)).await?;
    let users: Vec<Value> = crate::presence::members(&metas)
        .iter()
        .map(|m| json!({ "id": signed.app.user_id(&m.user) }))
        .collect();
    Ok(Json(json!({ "users": users })))
}

/// `POST /apps/{app_id}/users/{user_id}/terminate_connections`: closes the user's
/// Pusher connections on every node (close 4009: pusher-js does not reconnect).
async fn terminate_connections(
    State(p): State<Pusher>,
    Path((app_id, user_id)): Path<(String, String)>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let signed = p.signed(&app_id, req).await?;
    // Else the first app could close a further app's user's connections.
    if signed.app.reserves(&user_id) {
        return Err(ApiError::bad_request(reserved()));
    }
    let s = &p.shared;
    let user = signed.app.user(&user_id);
    let mut n = 0;
    for info in s.hub.user_sockets(&user) {
        if info.frontend != Frontend::Pusher {
            continue;
        }
        if let Some(conn) = s.hub.connection(&info.id) {
            conn.disconnect(&info.id);
            n += 1;
        }
    }
    if let Some(c) = &s.cluster {
        let mut remote: HashMap<String, Vec<SocketId>> = HashMap::new();
        for e in c.registry().user(&user).await? {
            if e.node != s.node && e.info.frontend == Frontend::Pusher {
                remote
                    .entry(e.node.to_string())
                    .or_default()
                    .push(e.info.id);
            }
        }
        for (node, sockets) in remote {
            n += c.kick(&node, sockets).await? as usize;
        }
    }
    tracing::info!(app = %signed.app.config.id, user = %user_id, connections = n, "pusher user terminated");
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PusherApp;

    fn app(first: bool) -> App {
        App::new(
            PusherApp {
                id: "9".into(),
                key: "k".into(),
                secret: "s".into(),
                webhook: None,
            },
            first,
        )
    }

    #[test]
    fn an_event_becomes_one_push_per_channel_with_its_exclusion() {
        let sid = protocol::pusher_socket_id("gw1.123").unwrap();
        let e = event(
            &app(true),
            json!({"name": "n", "data": "{\"x\":1}", "channels": ["a", "#server-to-user-u"], "socket_id": sid, "info": "subscription_count"}),
            false,
        )
        .unwrap();
        assert_eq!(
            e.info,
            Info {
                subscription_count: true,
                user_count: false
            }
        );
        assert_eq!(e.pushes.len(), 2);
        assert_eq!(e.pushes[0].target, Target::Room(RoomName::from("a")));
        assert_eq!(e.pushes[1].target, Target::User("u".into()));
        assert_eq!(
            e.pushes[0].data,
            Some(json!("{\"x\":1}")),
            "data stays a string"
        );
        assert!(e.pushes[0].except.contains("gw1.123"));
        let other = event(
            &app(false),
            json!({"name": "n", "data": "", "channel": "a"}),
            true,
        )
        .unwrap();
        assert_eq!(
            other.pushes[0].target,
            Target::Room(RoomName::from("pusher:9:a"))
        );
        assert_eq!(other.pushes[0].scope.as_deref(), Some("/pusher:9"));
    }

    #[test]
    fn bad_events_are_refused_with_pushers_status() {
        let status = |v: Value| event(&app(true), v, false).err().map(|e| e.status);
        let ok = json!({"name": "n", "data": "d", "channel": "a"});
        assert_eq!(status(ok), None);
        assert_eq!(
            status(json!({"name": "n", "data": {"a": 1}, "channel": "a"})),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(json!({"name": "n", "data": "d", "channel": "a b"})),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(json!({"name": "n", "data": "d"})),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(json!({"name": "n", "data": "d", "channels": []})),
            Some(StatusCode::BAD_REQUEST)
        );
        let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        assert_eq!(
            status(json!({"name": "n", "data": "d", "channels": many})),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(json!({"name": "n", "data": "x".repeat(10 * 1024 + 1), "channel": "a"})),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            status(json!({"name": "n", "data": "d", "channel": "a", "socket_id": "abc"})),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            status(json!({"name": "n", "data": "d", "channel": "a", "info": "user_count"})),
            Some(StatusCode::BAD_REQUEST),
            "user_count is for presence channels"
        );
        assert_eq!(
            status(
                json!({"name": "n", "data": "d", "channel": "presence-a", "info": "user_count,subscription_count"})
            ),
            None
        );
        assert_eq!(
            status(json!({"name": "n", "data": "d", "channel": "a", "info": "users"})),
            Some(StatusCode::BAD_REQUEST)
        );
        assert!(
            event(
                &app(true),
                json!({"name": "n", "data": "d", "channels": ["a"]}),
                true
            )
            .is_err(),
            "batch entries name one channel"
        );
    }

    #[test]
    fn the_first_app_may_not_push_to_a_further_apps_user() {
        // Caught by the pusher_events fuzz target: the push went to pushgate user
        // `pusher:2:u` (app 2's user `u`) and was rendered on `#server-to-user-u`.
        let e = event(
            &app(true),
            json!({"name": "n", "data": "d", "channel": "#server-to-user-pusher:2:u"}),
            false,
        )
        .err()
        .expect("refused");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("reserved"), "{}", e.message);
        // A further app's users may have any id: theirs are prefixed.
        let e = event(
            &app(false),
            json!({"name": "n", "data": "d", "channel": "#server-to-user-pusher:2:u"}),
            false,
        )
        .unwrap();
        assert_eq!(
            e.pushes[0].target,
            Target::User("pusher:9:pusher:2:u".into())
        );
    }
}
