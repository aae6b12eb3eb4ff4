//! Minimal clients for the protocols pushgate speaks, over WebSocket only, built for
//! holding many idle connections cheaply: small WebSocket buffers, one task per
//! connection, no reconnection.
//!
//! Every frame is read and written with the gateway's own pure codecs
//! (`pushgate::frontend::socketio::{engineio, packet}`, `pushgate::frontend::phoenix::codec`,
//! `pushgate::frontend::pusher::protocol`),
//! so the tool speaks exactly the wire format the gateway is tested against, and a change
//! to a codec reaches the load generator too.
//!
//! - [`socketio`]: Engine.IO 4 / Socket.IO 5 (`0{open}` → `40[{auth}]` → `40{"sid"}`,
//!   pongs, `43<id>[]` acks).
//! - [`phoenix`]: Phoenix Channels, serializer v2 (`phx_join` of `pushgate` and the room
//!   topic, heartbeats every 30 s, `pushgate:ack`).
//! - [`pusher`]: Pusher Channels, protocol 7 (`/app/<key>`, the room as a public
//!   channel, pings after silence; no acks), against pushgate or any Pusher server.
//!
//! [`connect`] sets a connection up for either; [`Session::run`] hands every event to the
//! caller until the server ends the session or the caller stops it.

pub mod phoenix;
pub mod pusher;
pub mod socketio;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::payload::ReceivedEvent;

/// The client protocol of a connection.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Socket.IO v4 (Engine.IO 4, Socket.IO 5).
    #[default]
    Socketio,
    /// Phoenix Channels, serializer v2 (`vsn=2.0.0`).
    Phoenix,
    /// Pusher Channels, protocol 7 (pushgate's Pusher frontend, or another Pusher
    /// server such as Sockudo).
    Pusher,
}

impl Protocol {
    /// The protocol's name for people.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Socketio => "Socket.IO",
            Protocol::Phoenix => "Phoenix",
            Protocol::Pusher => "Pusher",
        }
    }

    /// The WebSocket path the gateway serves this protocol on.
    pub fn default_path(self) -> &'static str {
        match self {
            Protocol::Socketio => "/socket.io/",
            Protocol::Phoenix => "/socket/websocket",
            // The app key follows: `/app/<key>`.
            Protocol::Pusher => "/app",
        }
    }

    /// Where the token goes unless `--token-in` says otherwise: what the protocol's own
    /// client does by default.
    pub fn default_token_place(self) -> TokenPlace {
        match self {
            Protocol::Socketio => TokenPlace::Auth,
            // Pusher connections carry no token.
            Protocol::Phoenix | Protocol::Pusher => TokenPlace::Query,
        }
    }

    /// Whether connections join their room through a JWT's `rooms` claim (Pusher
    /// clients subscribe to their room's channel themselves).
    pub fn rooms_need_token(self) -> bool {
        self != Protocol::Pusher
    }
}

/// Where the JWT goes. Socket.IO: `auth.token` in the CONNECT payload, or `?token=`.
/// Phoenix: phoenix 1.8's `authToken` (the `Sec-WebSocket-Protocol` header), or
/// `?token=` (`params: {token}`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TokenPlace {
    Auth,
    Query,
}

/// Everything a connection needs besides its target and identity.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub protocol: Protocol,
    /// The WebSocket path, e.g. `/socket.io/` or `/socket/websocket`.
    pub path: String,
    pub token_in: TokenPlace,
    /// TCP connect + WebSocket upgrade + protocol handshake must finish in this time.
    pub connect_timeout: Duration,
    /// Acknowledge deliveries the server asks an ack for.
    pub ack: bool,
    /// Phoenix heartbeat interval (phoenix.js: 30 s).
    pub heartbeat: Duration,
    /// Pusher: the app key in the connection URL.
    pub pusher_key: String,
}

/// Who one connection is: its token, and the room its token names.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity<'a> {
    /// The connection JWT, when the scenario has a secret.
    pub token: Option<&'a str>,
    /// The room in the token's `rooms` claim: Socket.IO is joined to it on connect,
    /// Phoenix joins it as a topic, Pusher subscribes to it as a public channel.
    pub room: Option<&'a str>,
}

/// WebSocket buffers sized for many idle connections: the tungstenite defaults (128 KiB
/// read buffer, eagerly allocated) would cost gigabytes at 100k connections, and load
/// frames are small.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// The stage of connection set-up a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Socket,
    Bind,
    Connect,
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{stage:?}: {source}")]
    Io {
        stage: Stage,
        #[source]
        source: io::Error,
    },
    #[error("timed out")]
    Timeout,
    #[error("WebSocket upgrade: {0}")]
    Upgrade(#[source] tungstenite::Error),
    /// The server refused the identity: Socket.IO CONNECT_ERROR, Phoenix's 403 on the
    /// upgrade, or a refused `phx_join`.
    #[error("server refused the connection: {0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("closed during handshake")]
    Closed,
}

/// Why an established session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The caller's stop token fired (not a failure).
    Stopped,
    /// Engine.IO close packet `1`.
    EngineClose,
    /// Socket.IO DISCONNECT `41` for `/`.
    ServerDisconnect,
    /// Phoenix `phx_close` or `phx_error` on a joined topic: the channel is gone.
    ChannelClosed,
    /// Phoenix: the previous heartbeat was still unanswered at the next one (phoenix.js
    /// closes the socket then too). Pusher: no answer to a ping within 30 s.
    HeartbeatTimeout,
    /// WebSocket close frame or EOF.
    TransportClose,
    /// Read or write error (reset, ...).
    TransportError,
    /// A frame the codec refused.
    ProtocolError,
}

/// One event received by a session.
pub struct Event<'a> {
    /// The event's name and stamp, or why its payload is not one of the tool's.
    pub received: Result<ReceivedEvent<'a>, crate::payload::PayloadError>,
    /// The server asked for an ack of this delivery, and the client sent it.
    pub acked: bool,
}

/// An established session of either protocol.
pub enum Session {
    SocketIo(socketio::Session),
    Phoenix(phoenix::Session),
    Pusher(pusher::Session),
}

impl Session {
    /// Reads until the server closes or `stop` fires, keeping the session alive (pongs,
    /// heartbeats), handing every event to `on_event` and acking it when asked and acks
    /// are on.
    pub async fn run(
        self,
        stop: &CancellationToken,
        on_event: impl FnMut(Event<'_>),
    ) -> CloseReason {
        match self {
            Session::SocketIo(s) => s.run(stop, on_event).await,
            Session::Phoenix(s) => s.run(stop, on_event).await,
            Session::Pusher(s) => s.run(stop, on_event).await,
        }
    }
}

/// `IP_BIND_ADDRESS_NO_PORT` (linux/in.h): bind the source address now, pick the port at
/// connect time from the 4-tuple, so each (source, target) pair has its own ephemeral
/// port range instead of every bound socket taking a port of its own.
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

fn tcp_socket(source: Option<IpAddr>) -> Result<TcpSocket, ConnectError> {
    let socket = TcpSocket::new_v4().map_err(|source| ConnectError::Io {
        stage: Stage::Socket,
        source,
    })?;
    if let Some(ip) = source {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(ConnectError::Io {
                stage: Stage::Bind,
                source: io::Error::last_os_error(),
            });
        }
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|source| ConnectError::Io {
                stage: Stage::Bind,
                source,
            })?;
    }
    Ok(socket)
}

/// Opens a TCP connection from `source` (any when `None`) to `target`, upgrades it to
/// WebSocket and runs the protocol's handshake, all within `cfg.connect_timeout`.
pub async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    who: Identity<'_>,
    cfg: &ClientConfig,
) -> Result<Session, ConnectError> {
    let handshake = async {
        let stream = tcp_connect(target, source).await?;
        match cfg.protocol {
            Protocol::Socketio => socketio::handshake(stream, target, who, cfg)
                .await
                .map(Session::SocketIo),
            Protocol::Phoenix => phoenix::handshake(stream, target, who, cfg)
                .await
                .map(Session::Phoenix),
            Protocol::Pusher => pusher::handshake(stream, target, who, cfg)
                .await
                .map(Session::Pusher),
        }
    };
    tokio::time::timeout(cfg.connect_timeout, handshake)
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn tcp_connect(
    target: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, ConnectError> {
    let stream = tcp_socket(source)?
        .connect(target)
        .await
        .map_err(|source| ConnectError::Io {
            stage: Stage::Connect,
            source,
        })?;
    // Pongs, heartbeats and acks are tiny writes that must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

type Ws = WebSocketStream<TcpStream>;

async fn send(ws: &mut Ws, text: String) -> Result<(), tungstenite::Error> {
    ws.send(Message::text(text)).await
}

/// The next text frame of the handshake; binary frames there are a protocol error.
async fn next_text(ws: &mut Ws) -> Result<tungstenite::Utf8Bytes, ConnectError> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Err(ConnectError::Closed),
            Some(Err(e)) => return Err(ConnectError::Upgrade(e)),
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Binary(_))) => {
                return Err(ConnectError::Protocol("binary frame in handshake".into()))
            }
            Some(Ok(_)) => {}
        }
    }
}
