//! A minimal Socket.IO v4 client (Engine.IO 4, Socket.IO 5) over WebSocket only, built
//! for holding many idle connections cheaply: small WebSocket buffers, one task per
//! connection, no reconnection.
//!
//! The frame parser ([`parse_frame`]) is pure and unit-tested; [`connect`] runs the
//! handshake (`0{open}` → `40[{auth}]` → `40{"sid"}`) and [`Session::run`] answers pings
//! and acks until the server closes or the caller stops it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// One Engine.IO packet as received in one WebSocket text frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `0{...}`: the open packet with its JSON (sid, pingInterval, ...).
    Open(&'a str),
    /// `1`: the server closes the session.
    Close,
    /// `2`: server heartbeat; must be answered with `3`.
    Ping,
    /// `3`
    Pong,
    /// `4...`: a Socket.IO packet.
    Message(Packet<'a>),
    /// `5`
    Upgrade,
    /// `6`
    Noop,
}

/// Socket.IO packet types (the digit after the Engine.IO `4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A Socket.IO packet: `<type>[<attachments>-][<nsp>,][<ack id>][<json>]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: PacketKind,
    /// Binary attachments that follow as separate binary frames (binary kinds only).
    pub attachments: u32,
    /// Namespace, `/` when absent.
    pub nsp: &'a str,
    pub ack_id: Option<u64>,
    /// The JSON payload text, empty when absent.
    pub data: &'a str,
}

/// Why a text frame is not a valid Engine.IO / Socket.IO packet.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unknown Engine.IO packet type {0:?}")]
    EngineType(char),
    #[error("unknown Socket.IO packet type {0:?}")]
    SocketType(char),
    #[error("bad attachment count")]
    Attachments,
    #[error("ack id out of range")]
    AckId,
}

/// Parses one WebSocket text frame. Borrowed from the frame: no allocation.
pub fn parse_frame(text: &str) -> Result<Frame<'_>, FrameError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(FrameError::Empty)?;
    let rest = &text[1..];
    Ok(match kind {
        '0' => Frame::Open(rest),
        '1' => Frame::Close,
        '2' => Frame::Ping,
        '3' => Frame::Pong,
        '4' => Frame::Message(parse_packet(rest)?),
        '5' => Frame::Upgrade,
        '6' => Frame::Noop,
        c => return Err(FrameError::EngineType(c)),
    })
}

/// Parses the Socket.IO packet inside an Engine.IO message (without the `4`).
pub fn parse_packet(text: &str) -> Result<Packet<'_>, FrameError> {
    let bytes = text.as_bytes();
    let kind = match bytes.first() {
        None => return Err(FrameError::Empty),
        Some(b'0') => PacketKind::Connect,
        Some(b'1') => PacketKind::Disconnect,
        Some(b'2') => PacketKind::Event,
        Some(b'3') => PacketKind::Ack,
        Some(b'4') => PacketKind::ConnectError,
        Some(b'5') => PacketKind::BinaryEvent,
        Some(b'6') => PacketKind::BinaryAck,
        Some(_) => return Err(FrameError::SocketType(text.chars().next().unwrap_or('?'))),
    };
    let mut i = 1;
    let mut attachments = 0;
    if matches!(kind, PacketKind::BinaryEvent | PacketKind::BinaryAck) {
        let dash = text[i..].find('-').ok_or(FrameError::Attachments)? + i;
        attachments = text[i..dash]
            .parse::<u32>()
            .map_err(|_| FrameError::Attachments)?;
        if attachments == 0 {
            return Err(FrameError::Attachments);
        }
        i = dash + 1;
    }
    let mut nsp = "/";
    if bytes.get(i) == Some(&b'/') {
        // The namespace runs to the first ',' or to the end of the packet.
        match text[i..].find(',') {
            Some(comma) => {
                nsp = &text[i..i + comma];
                i += comma + 1;
            }
            None => {
                nsp = &text[i..];
                i = text.len();
            }
        }
    }
    let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    let ack_id = if digits > 0 {
        let id = text[i..i + digits]
            .parse::<u64>()
            .map_err(|_| FrameError::AckId)?;
        i += digits;
        Some(id)
    } else {
        None
    };
    Ok(Packet {
        kind,
        attachments,
        nsp,
        ack_id,
        data: &text[i..],
    })
}

/// The text of the CONNECT packet for `/`, with the token as auth when given.
pub fn connect_packet(token: Option<&str>) -> String {
    match token {
        Some(t) => format!("40{}", serde_json::json!({ "token": t })),
        None => "40".to_owned(),
    }
}

/// The ACK packet answering server event `ack_id` with no arguments.
pub fn ack_packet(ack_id: u64) -> String {
    format!("43{ack_id}[]")
}

/// Where the JWT goes: Socket.IO `auth.token` (the CONNECT payload) or `?token=`.
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
    /// Engine.IO path, e.g. `/socket.io/`.
    pub path: String,
    pub token_in: TokenPlace,
    /// TCP connect + WebSocket upgrade + Socket.IO handshake must finish in this time.
    pub connect_timeout: Duration,
    /// Answer `42<id>[...]` with `43<id>[]`.
    pub ack: bool,
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
    /// WebSocket close frame or EOF.
    TransportClose,
    /// Read or write error (reset, ...).
    TransportError,
    /// A frame the parser refused.
    ProtocolError,
}

/// An established Socket.IO session on `/`.
pub struct Session {
    ws: WebSocketStream<TcpStream>,
    ack: bool,
}

/// One event received by a session.
pub struct Event<'a> {
    /// The JSON array text `["event", args...]`.
    pub data: &'a str,
    pub ack_id: Option<u64>,
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
/// WebSocket and joins namespace `/`, all within `cfg.connect_timeout`.
pub async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    token: Option<&str>,
    cfg: &ClientConfig,
) -> Result<Session, ConnectError> {
    tokio::time::timeout(cfg.connect_timeout, handshake(target, source, token, cfg))
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn handshake(
    target: SocketAddr,
    source: Option<IpAddr>,
    token: Option<&str>,
    cfg: &ClientConfig,
) -> Result<Session, ConnectError> {
    let socket = tcp_socket(source)?;
    let stream = socket
        .connect(target)
        .await
        .map_err(|source| ConnectError::Io {
            stage: Stage::Connect,
            source,
        })?;
    // Pongs and acks are tiny writes that must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut url = format!("ws://{target}{}?EIO=4&transport=websocket", cfg.path);
    if let (Some(t), TokenPlace::Query) = (token, cfg.token_in) {
        url.push_str("&token=");
        url.push_str(t);
    }
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config()))
            .await
            .map_err(ConnectError::Upgrade)?;
    // Engine.IO open packet.
    let open = next_text(&mut ws).await?;
    match parse_frame(&open) {
        Ok(Frame::Open(_)) => {}
        other => {
            return Err(ConnectError::Protocol(format!(
                "expected open packet, got {other:?}"
            )))
        }
    }
    let auth = match cfg.token_in {
        TokenPlace::Auth => token,
        TokenPlace::Query => None,
    };
    send(&mut ws, connect_packet(auth))
        .await
        .map_err(|_| ConnectError::Closed)?;
    loop {
        let text = next_text(&mut ws).await?;
        match parse_frame(&text) {
            Ok(Frame::Ping) => send(&mut ws, "3".to_owned())
                .await
                .map_err(|_| ConnectError::Closed)?,
            Ok(Frame::Message(p)) if p.nsp == "/" && p.kind == PacketKind::Connect => {
                // A v5 server always names the socket; socket.io-client refuses a reply
                // without one, and so do we.
                let has_sid = serde_json::from_str::<serde_json::Value>(p.data)
                    .ok()
                    .is_some_and(|v| v.get("sid").is_some_and(serde_json::Value::is_string));
                if !has_sid {
                    return Err(ConnectError::Protocol(format!(
                        "CONNECT reply without sid: {text}"
                    )));
                }
                return Ok(Session { ws, ack: cfg.ack });
            }
            Ok(Frame::Message(p)) if p.kind == PacketKind::ConnectError => {
                let message = serde_json::from_str::<serde_json::Value>(p.data)
                    .ok()
                    .and_then(|v| match v {
                        serde_json::Value::String(s) => Some(s),
                        v => v.get("message")?.as_str().map(str::to_owned),
                    })
                    .unwrap_or_else(|| p.data.to_owned());
                return Err(ConnectError::Refused(message));
            }
            Ok(Frame::Close) => return Err(ConnectError::Closed),
            Ok(Frame::Noop | Frame::Pong) => {}
            other => {
                return Err(ConnectError::Protocol(format!(
                    "unexpected during handshake: {other:?}"
                )))
            }
        }
    }
}

async fn send(ws: &mut WebSocketStream<TcpStream>, text: String) -> Result<(), tungstenite::Error> {
    ws.send(Message::text(text)).await
}

/// The next text frame of the handshake; binary frames there are a protocol error.
async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> Result<String, ConnectError> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Err(ConnectError::Closed),
            Some(Err(e)) => return Err(ConnectError::Upgrade(e)),
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Binary(_))) => {
                return Err(ConnectError::Protocol("binary frame in handshake".into()))
            }
            Some(Ok(_)) => {}
        }
    }
}

impl Session {
    /// Reads until the server closes or `stop` fires: answers pings with pongs, hands
    /// every event on `/` to `on_event` and acks it when asked and acks are on.
    pub async fn run(
        mut self,
        stop: &CancellationToken,
        mut on_event: impl FnMut(Event<'_>),
    ) -> CloseReason {
        loop {
            let msg = tokio::select! {
                biased;
                _ = stop.cancelled() => return CloseReason::Stopped,
                msg = self.ws.next() => msg,
            };
            let text = match msg {
                None | Some(Ok(Message::Close(_))) => return CloseReason::TransportClose,
                Some(Err(_)) => return CloseReason::TransportError,
                Some(Ok(Message::Text(t))) => t,
                // Attachments of binary events, WebSocket ping/pong: nothing to do.
                Some(Ok(_)) => continue,
            };
            let reply = match parse_frame(text.as_str()) {
                Ok(Frame::Ping) => Some("3".to_owned()),
                Ok(Frame::Close) => return CloseReason::EngineClose,
                Ok(Frame::Message(p)) if p.nsp == "/" => match p.kind {
                    PacketKind::Event | PacketKind::BinaryEvent => {
                        on_event(Event {
                            data: p.data,
                            ack_id: p.ack_id,
                        });
                        p.ack_id.filter(|_| self.ack).map(ack_packet)
                    }
                    PacketKind::Disconnect => return CloseReason::ServerDisconnect,
                    _ => None,
                },
                Ok(_) => None,
                Err(_) => return CloseReason::ProtocolError,
            };
            if let Some(reply) = reply {
                if send(&mut self.ws, reply).await.is_err() {
                    return CloseReason::TransportError;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet<'a>(
        kind: PacketKind,
        nsp: &'a str,
        ack_id: Option<u64>,
        data: &'a str,
    ) -> Packet<'a> {
        Packet {
            kind,
            attachments: 0,
            nsp,
            ack_id,
            data,
        }
    }

    #[test]
    fn engine_packets_parse_by_their_digit() {
        assert_eq!(
            parse_frame(r#"0{"sid":"x","upgrades":[]}"#),
            Ok(Frame::Open(r#"{"sid":"x","upgrades":[]}"#))
        );
        assert_eq!(parse_frame("1"), Ok(Frame::Close));
        assert_eq!(parse_frame("2"), Ok(Frame::Ping));
        assert_eq!(parse_frame("3"), Ok(Frame::Pong));
        assert_eq!(parse_frame("5"), Ok(Frame::Upgrade));
        assert_eq!(parse_frame("6"), Ok(Frame::Noop));
        assert_eq!(parse_frame(""), Err(FrameError::Empty));
        assert_eq!(parse_frame("9"), Err(FrameError::EngineType('9')));
    }

    #[test]
    fn connect_reply_carries_the_sid() {
        assert_eq!(
            parse_frame(r#"40{"sid":"wZX3oN0bSVIhsaknAAAI"}"#),
            Ok(Frame::Message(packet(
                PacketKind::Connect,
                "/",
                None,
                r#"{"sid":"wZX3oN0bSVIhsaknAAAI"}"#
            )))
        );
    }

    #[test]
    fn event_without_and_with_ack_id() {
        assert_eq!(
            parse_packet(r#"2["load",{"t":1,"seq":2}]"#),
            Ok(packet(
                PacketKind::Event,
                "/",
                None,
                r#"["load",{"t":1,"seq":2}]"#
            ))
        );
        assert_eq!(
            parse_packet(r#"212["foo"]"#),
            Ok(packet(PacketKind::Event, "/", Some(12), r#"["foo"]"#))
        );
    }

    #[test]
    fn namespace_runs_to_comma_or_end() {
        assert_eq!(
            parse_packet(r#"2/admin,13["bar"]"#),
            Ok(packet(PacketKind::Event, "/admin", Some(13), r#"["bar"]"#))
        );
        assert_eq!(
            parse_packet("1/admin,"),
            Ok(packet(PacketKind::Disconnect, "/admin", None, ""))
        );
        assert_eq!(
            parse_packet("0/custom"),
            Ok(packet(PacketKind::Connect, "/custom", None, ""))
        );
    }

    #[test]
    fn connect_error_and_disconnect() {
        assert_eq!(
            parse_frame(r#"44{"message":"Not authorized"}"#),
            Ok(Frame::Message(packet(
                PacketKind::ConnectError,
                "/",
                None,
                r#"{"message":"Not authorized"}"#
            )))
        );
        assert_eq!(
            parse_frame("41"),
            Ok(Frame::Message(packet(
                PacketKind::Disconnect,
                "/",
                None,
                ""
            )))
        );
    }

    #[test]
    fn binary_packets_count_attachments() {
        let p = parse_packet(r#"51-["baz",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(p.kind, PacketKind::BinaryEvent);
        assert_eq!(p.attachments, 1);
        assert_eq!(p.ack_id, None);
        let p = parse_packet(r#"61-15["bar",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.ack_id),
            (PacketKind::BinaryAck, 1, Some(15))
        );
        assert_eq!(parse_packet(r#"5["x"]"#), Err(FrameError::Attachments));
        assert_eq!(parse_packet(r#"50-["x"]"#), Err(FrameError::Attachments));
    }

    #[test]
    fn bad_socket_type_and_huge_ack_id_are_errors() {
        assert_eq!(parse_packet("9"), Err(FrameError::SocketType('9')));
        assert_eq!(parse_packet(""), Err(FrameError::Empty));
        assert_eq!(
            parse_packet("299999999999999999999999[\"x\"]"),
            Err(FrameError::AckId)
        );
    }

    #[test]
    fn client_packets() {
        assert_eq!(connect_packet(None), "40");
        assert_eq!(connect_packet(Some("a.b.c")), r#"40{"token":"a.b.c"}"#);
        assert_eq!(ack_packet(7), "437[]");
    }
}
