//! Serving a session that another node holds, so a balancer needs no stickiness.
//!
//! A long-polling session is a series of HTTP requests, and its WebSocket upgrade one
//! more; behind a round-robin balancer most of them reach a node other than the one
//! that holds the session. Such a node forwards the request to the owner: it reads
//! the owner from the session token ([`super::token`]), finds the owner's address
//! through a [`Directory`] (the cluster registry; cached here, so a poll costs Redis
//! nothing), and proxies the request over HTTP/1.1 — a poll or a post as one request
//! and its answer, an upgrade as an upgrade to the owner with the bytes piped both
//! ways until either side closes.
//!
//! Forwarding rather than moving the session: see ARCHITECTURE.md ("Decisions").
//!
//! Outcomes: a token of a node that is unknown, dead, or not listening any more is
//! [`NoOwner`] — the frontend answers as its protocol answers an unknown session.
//! An owner that does not answer within the request's hold (plus a margin) is 504,
//! a broken exchange 502: never a hang. Each forward is counted
//! (`pushgate_cluster_forwards_total{frontend, kind, outcome}`); failures are logged,
//! without the token, which is a secret.
//!
//! Loops cannot happen: a forwarded request carries [`FORWARD_HEADER`] naming the
//! owner; the node that receives it serves it itself, and answers 421 when it is not
//! that node (the cached address was stale), which makes the sender look again.
//!
//! Imports no frontend: a frontend asks [`Forwarder::route`] about a token it does not
//! hold, then calls [`Forwarder::forward`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::token;
use super::websocket;
use crate::id::{Frontend, NodeId};
use crate::metrics::Metrics;

/// Names the node a forwarded request is meant for. Its presence also means "do not
/// forward again".
pub const FORWARD_HEADER: &str = "pushgate-forward-to";

/// Added to a request's hold for its timeout: the owner answers a held poll at the
/// end of its hold; a forward that waits this much longer has failed.
pub const FORWARD_MARGIN: Duration = Duration::from_secs(5);
/// How long connecting to the owner may take. Peers are on one network.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle pooled connections to owners are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(20);
/// hyper's client read buffer per pooled connection: a poll's answer needs no more per
/// read (its head is a few hundred bytes, its body streams through), and it is
/// allocated per idle connection.
const CLIENT_READ_BUFFER: usize = 4096;
/// Bytes buffered per direction of a piped WebSocket: frames larger than this pass in
/// several reads. tokio's default is 8 KiB per direction, per connection.
const PIPE_BUFFER: usize = 2048;

/// Where the nodes of the cluster are (the registry implements it in `server`).
pub trait Directory: Send + Sync + 'static {
    /// Whether `node` was alive when last seen (no I/O).
    fn is_live(&self, node: &str) -> bool;
    /// Where `node`'s peers reach it (`host:port`); `None` when unknown or dead.
    fn address<'a>(&'a self, node: &'a str) -> AddressFuture<'a>;
}

/// The answer of [`Directory::address`].
pub type AddressFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<String>, DirectoryError>> + Send + 'a>>;

/// The directory could not be read (Redis down).
#[derive(Debug, thiserror::Error)]
#[error("the node directory is unavailable")]
pub struct DirectoryError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Where a request for a session this node does not hold goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'t> {
    /// Serve it here (as an unknown session): the token names no other node, or the
    /// request was forwarded to this node.
    Here,
    /// Forward it to this node.
    Owner(&'t str),
    /// It was forwarded to another node and reached this one: answer
    /// [`misdirected`].
    Misdirected,
}

/// No node holds the session: its node is unknown, dead, or gone from its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoOwner;

/// The kind of request forwarded (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Poll,
    Upgrade,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Poll => "poll",
            Kind::Upgrade => "upgrade",
        }
    }
}

/// The `outcome` label of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    NoOwner,
    Timeout,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NoOwner => "no_owner",
            Outcome::Timeout => "timeout",
            Outcome::Failed => "failed",
        }
    }
}

/// Forwards requests of sessions held by other nodes (cluster mode only).
pub struct Forwarder {
    node: NodeId,
    directory: Arc<dyn Directory>,
    client: Client<HttpConnector, Body>,
    /// Owners' addresses, read once per node from the directory. An entry is dropped
    /// when its node is no longer live, when nothing listens there, or when another
    /// node answers there (421).
    addresses: RwLock<HashMap<Box<str>, Arc<str>>>,
    metrics: Arc<Metrics>,
    /// The piped WebSockets, ended by [`Forwarder::close_all`].
    pipes: TaskTracker,
    closing: CancellationToken,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("node", &self.node)
            .finish()
    }
}

impl Forwarder {
    pub fn new(node: NodeId, directory: Arc<dyn Directory>, metrics: Arc<Metrics>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .http1_read_buf_exact_size(CLIENT_READ_BUFFER)
            .build(connector);
        Self {
            node,
            directory,
            client,
            addresses: RwLock::new(HashMap::new()),
            metrics,
            pipes: TaskTracker::new(),
            closing: CancellationToken::new(),
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The token of a new session of this node, around `secret`.
    pub fn session_token(&self, secret: &str) -> String {
        token::compose(&self.node, secret)
    }

    /// Where a request for session `token`, which this node does not hold, goes.
    pub fn route<'t>(&self, token: &'t str, headers: &HeaderMap) -> Route<'t> {
        if let Some(to) = headers.get(FORWARD_HEADER) {
            return if to.as_bytes() == self.node.as_str().as_bytes() {
                Route::Here
            } else {
                Route::Misdirected
            };
        }
        match token::node_of(token) {
            Some(node) if node != self.node.as_str() => Route::Owner(node),
            _ => Route::Here,
        }
    }

    /// Forwards `req` to `owner` and answers with the owner's answer (for an upgrade:
    /// its 101, with the bytes piped from then on). `hold`: how long the owner may
    /// hold the request before it answers.
    pub async fn forward(
        &self,
        mut req: Request,
        owner: &str,
        frontend: Frontend,
        hold: Duration,
    ) -> Result<Response, NoOwner> {
        let kind = if websocket::is_upgrade_request(req.headers()) {
            Kind::Upgrade
        } else {
            Kind::Poll
        };
        let span = tracing::debug_span!("forward", node = owner, kind = kind.as_str());
        let client_upgrade = match kind {
            Kind::Upgrade => match req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
                Some(u) => Some(u),
                // A connection that cannot be taken over cannot be piped either.
                None => {
                    return Ok(status_text(
                        StatusCode::BAD_REQUEST,
                        "this connection cannot be upgraded",
                    ))
                }
            },
            Kind::Poll => None,
        };
        let (outcome, result) = self
            .exchange(req, owner, kind, hold, client_upgrade)
            .instrument(span)
            .await;
        self.metrics
            .cluster_forwards
            .with_label_values(&[frontend.as_str(), kind.as_str(), outcome.as_str()])
            .inc();
        result
    }

    async fn exchange(
        &self,
        req: Request,
        owner: &str,
        kind: Kind,
        hold: Duration,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> (Outcome, Result<Response, NoOwner>) {
        let (parts, body) = req.into_parts();
        // A request without a body can be sent again after a stale address; one with
        // a body was consumed by the first attempt.
        let mut body = Some(body);
        let resendable = kind == Kind::Upgrade
            || parts.method == axum::http::Method::GET
            || parts.method == axum::http::Method::HEAD;
        for attempt in 0..2 {
            let address = match self.address(owner).await {
                Ok(Some(a)) => a,
                Ok(None) => {
                    tracing::debug!("the session's node is unknown or dead");
                    return (Outcome::NoOwner, Err(NoOwner));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look up the session's node");
                    return (Outcome::Failed, Ok(unavailable(&e.to_string())));
                }
            };
            let body = match body.take() {
                Some(b) => b,
                None => Body::empty(),
            };
            let outgoing = match outgoing(&parts, &address, owner, kind, body) {
                Ok(r) => r,
                Err(message) => {
                    tracing::warn!(%message, "cannot build the forwarded request");
                    return (Outcome::Failed, Ok(bad_gateway(&message)));
                }
            };
            let sent = tokio::time::timeout(hold + FORWARD_MARGIN, self.client.request(outgoing));
            let response = match sent.await {
                Err(_) => {
                    tracing::warn!(timeout = ?(hold + FORWARD_MARGIN), "the session's node did not answer in time");
                    return (
                        Outcome::Timeout,
                        Ok(status_text(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the node holding this session did not answer in time",
                        )),
                    );
                }
                Ok(Err(e)) if e.is_connect() => {
                    // Nothing listens there: the node is gone (or moved, after a
                    // restart with the same id — which lost its sessions anyway).
                    self.forget(owner, &address);
                    if attempt == 0 && resendable {
                        continue;
                    }
                    tracing::debug!(error = %e, "the session's node is not reachable");
                    return (Outcome::NoOwner, Err(NoOwner));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "forwarding to the session's node failed");
                    return (
                        Outcome::Failed,
                        Ok(bad_gateway(
                            "the exchange with the node holding this session failed",
                        )),
                    );
                }
                Ok(Ok(r)) => r,
            };
            if response.status() == StatusCode::MISDIRECTED_REQUEST
                && response.headers().contains_key(FORWARD_HEADER)
            {
                // Another node answers at the cached address.
                self.forget(owner, &address);
                if attempt == 0 && resendable {
                    continue;
                }
                tracing::warn!("another node answers at the session's node's address");
                return (
                    Outcome::Failed,
                    Ok(bad_gateway("the node holding this session moved")),
                );
            }
            return match (response.status(), client_upgrade) {
                (StatusCode::SWITCHING_PROTOCOLS, Some(client)) => {
                    // The owner's 101 (its accept key, subprotocol) goes to the client;
                    // both sides switch, and the bytes are piped from then on.
                    let mut switching = Response::new(Body::empty());
                    *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    *switching.headers_mut() = response.headers().clone();
                    self.pipe(client, response, owner);
                    (Outcome::Ok, Ok(switching))
                }
                _ => (Outcome::Ok, Ok(answer(response))),
            };
        }
        (Outcome::NoOwner, Err(NoOwner))
    }

    /// The cached address of `owner`, or the directory's.
    async fn address(&self, owner: &str) -> Result<Option<Arc<str>>, DirectoryError> {
        if !self.directory.is_live(owner) {
            self.addresses.write().remove(owner);
            return Ok(None);
        }
        if let Some(a) = self.addresses.read().get(owner) {
            return Ok(Some(a.clone()));
        }
        let Some(address) = self.directory.address(owner).await? else {
            return Ok(None);
        };
        let address: Arc<str> = Arc::from(address);
        self.addresses
            .write()
            .insert(Box::from(owner), address.clone());
        Ok(Some(address))
    }

    /// Drops `owner`'s cached address if it is still `address`.
    fn forget(&self, owner: &str, address: &str) {
        let mut addresses = self.addresses.write();
        if addresses.get(owner).is_some_and(|a| &**a == address) {
            addresses.remove(owner);
        }
    }

    /// Pipes the client's upgraded connection to the owner's, in a task of its own,
    /// until either side closes or the node shuts down.
    fn pipe(
        &self,
        client: hyper::upgrade::OnUpgrade,
        mut owner_response: Response<hyper::body::Incoming>,
        owner: &str,
    ) {
        let owner_upgrade = hyper::upgrade::on(&mut owner_response);
        let closing = self.closing.clone();
        let metrics = self.metrics.clone();
        let span = tracing::debug_span!("forwarded websocket", node = owner);
        self.pipes.spawn(
            async move {
                let (client, owner) = match tokio::join!(client, owner_upgrade) {
                    (Ok(c), Ok(o)) => (c, o),
                    (c, o) => {
                        tracing::debug!(client = c.is_ok(), owner = o.is_ok(), "an upgrade did not complete");
                        return;
                    }
                };
                metrics.cluster_forwarded_websockets.inc();
                let mut client = TokioIo::new(client);
                let mut owner = TokioIo::new(owner);
                tokio::select! {
                    r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut owner, PIPE_BUFFER, PIPE_BUFFER) => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "forwarded websocket ended");
                        }
                    }
                    _ = closing.cancelled() => {}
                }
                metrics.cluster_forwarded_websockets.dec();
            }
            .instrument(span),
        );
    }

    /// Ends every piped WebSocket (their clients reconnect) and waits up to `grace`.
    pub async fn close_all(&self, grace: Duration) {
        self.closing.cancel();
        self.pipes.close();
        let _ = tokio::time::timeout(grace, self.pipes.wait()).await;
    }
}

/// Hop-by-hop headers, which belong to one connection and are not forwarded (RFC 9110
/// §7.6.1); for an upgrade, `connection` and `upgrade` are set again.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The request to send to `owner` at `address`: the client's, minus hop-by-hop
/// headers, plus [`FORWARD_HEADER`].
fn outgoing(
    parts: &axum::http::request::Parts,
    address: &str,
    owner: &str,
    kind: Kind,
    body: Body,
) -> Result<Request, String> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = format!("http://{address}{path}")
        .parse()
        .map_err(|e| format!("bad address {address:?}: {e}"))?;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    // Headers the client named in `Connection` are hop-by-hop too.
    let named: Vec<String> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let headers = req.headers_mut();
    for (name, value) in &parts.headers {
        let name_str = name.as_str();
        if !HOP_BY_HOP.contains(&name_str)
            && name_str != FORWARD_HEADER
            && !named.iter().any(|n| n == name_str)
        {
            headers.append(name.clone(), value.clone());
        }
    }
    if kind == Kind::Upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let to = HeaderValue::from_str(owner).map_err(|e| e.to_string())?;
    headers.insert(HeaderName::from_static(FORWARD_HEADER), to);
    Ok(req)
}

/// The owner's answer to a poll, as the client gets it.
fn answer(response: Response<hyper::body::Incoming>) -> Response {
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    Response::from_parts(parts, Body::new(body))
}

/// What a node answers to a request forwarded to another node (its address was
/// stale): 421, with [`FORWARD_HEADER`] so the sender knows it came from a node.
pub fn misdirected(node: &NodeId) -> Response {
    let mut response = status_text(
        StatusCode::MISDIRECTED_REQUEST,
        "this request was forwarded to another node",
    );
    if let Ok(v) = HeaderValue::from_str(node.as_str()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(FORWARD_HEADER), v);
    }
    response
}

fn status_text(status: StatusCode, message: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        message,
    )
        .into_response()
}

fn bad_gateway(message: &str) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        message.to_owned(),
    )
        .into_response()
}

fn unavailable(message: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        message.to_owned(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No node is ever found: these tests exercise routing and the request sent,
    /// not the directory (the Node suite runs the registry behind it).
    struct Nowhere;

    impl Directory for Nowhere {
        fn is_live(&self, _: &str) -> bool {
            true
        }
        fn address<'a>(&'a self, _: &'a str) -> AddressFuture<'a> {
            Box::pin(std::future::ready(Ok(None)))
        }
    }

    fn forwarder(node: &str) -> Forwarder {
        Forwarder::new(
            NodeId::parse(node).unwrap(),
            Arc::new(Nowhere),
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn a_token_of_another_node_is_forwarded_and_a_forwarded_request_never_again() {
        let f = forwarder("gw1");
        let none = HeaderMap::new();
        assert_eq!(f.route("gw2~secret", &none), Route::Owner("gw2"));
        assert_eq!(f.route("gw1~secret", &none), Route::Here);
        assert_eq!(f.route("plainsecret", &none), Route::Here);
        let mut to = HeaderMap::new();
        to.insert(FORWARD_HEADER, HeaderValue::from_static("gw1"));
        assert_eq!(f.route("gw2~secret", &to), Route::Here);
        to.insert(FORWARD_HEADER, HeaderValue::from_static("gw3"));
        assert_eq!(f.route("gw2~secret", &to), Route::Misdirected);
        assert_eq!(f.session_token("abc"), "gw1~abc");
    }

    #[test]
    fn the_request_sent_to_the_owner_drops_hop_by_hop_headers_and_names_the_owner() {
        let client = Request::builder()
            .method("POST")
            .uri("/socket.io/?EIO=4&transport=polling&sid=gw2~s")
            .header("host", "lb.example")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "1")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("content-type", "text/plain")
            .header(FORWARD_HEADER, "spoofed")
            .body(Body::empty())
            .unwrap();
        let (parts, _) = client.into_parts();
        let sent = outgoing(&parts, "10.0.0.2:3000", "gw2", Kind::Poll, Body::empty()).unwrap();
        assert_eq!(sent.method(), "POST");
        assert_eq!(
            sent.uri().to_string(),
            "http://10.0.0.2:3000/socket.io/?EIO=4&transport=polling&sid=gw2~s"
        );
        let names: Vec<&str> = sent.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type", FORWARD_HEADER]);
        assert_eq!(sent.headers()[FORWARD_HEADER], "gw2");

        let upgrade = Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket&sid=gw2~s")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(Body::empty())
            .unwrap();
        let (parts, _) = upgrade.into_parts();
        let sent = outgoing(
            &parts,
            "[fd00::2]:3000",
            "gw2",
            Kind::Upgrade,
            Body::empty(),
        )
        .unwrap();
        assert_eq!(sent.headers()["connection"], "upgrade");
        assert_eq!(sent.headers()["upgrade"], "websocket");
        assert_eq!(
            sent.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert!(sent.uri().to_string().starts_with("http://[fd00::2]:3000/"));
    }

    #[tokio::test]
    async fn a_session_of_a_node_the_directory_does_not_know_has_no_owner() {
        let f = forwarder("gw1");
        let req = Request::builder()
            .uri("/socket.io/?EIO=4&transport=polling&sid=gw9~s")
            .body(Body::empty())
            .unwrap();
        let answer = f
            .forward(req, "gw9", Frontend::SocketIo, Duration::from_secs(1))
            .await;
        assert_eq!(answer.err(), Some(NoOwner));
        let text = f.metrics.render();
        assert!(
            text.contains(
                r#"pushgate_cluster_forwards_total{frontend="socketio",kind="poll",outcome="no_owner"} 1"#
            ),
            "{text}"
        );
    }
}
