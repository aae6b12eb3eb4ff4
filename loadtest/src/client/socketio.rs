//! The Socket.IO v4 client: Engine.IO 4 over WebSocket, namespace `/` only.
//!
//! Frames are decoded with the gateway's `engineio::decode_text` and `packet::Assembler`
//! (binary events complete with their attachments) and written with its encoders.
//! [`Reader`] is the pure part, what the session does with each frame; [`handshake`]
//! and [`Session::run`] do the I/O around it.

use bytes::Bytes;
use pushgate::frontend::socketio::engineio::{self, Packet as EnginePacket};
use pushgate::frontend::socketio::packet::{self, Assembled, Assembler, Packet, PacketKind};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{next_text, send, ws_config, ClientConfig, CloseReason, ConnectError, Event};
use super::{Identity, TokenPlace, Ws};
use crate::payload::{PayloadError, ReceivedEvent};

/// The namespace the gateway serves.
const ROOT: &str = "/";

/// The text of the CONNECT packet for `/`, with the token as auth when given.
pub fn connect_packet(token: Option<&str>) -> String {
    packet::encode(&Packet {
        kind: PacketKind::Connect,
        nsp: ROOT.to_owned(),
        id: None,
        attachments: 0,
        data: token.map(|t| json!({ "token": t })),
    })
}

/// The ACK packet answering server event `ack_id` with no arguments.
pub fn ack_packet(ack_id: u64) -> String {
    let mut out = String::new();
    packet::encode_ack(&mut out, ROOT, ack_id, 0, &Value::Array(Vec::new()));
    out
}

/// The Engine.IO pong that answers a server ping.
fn pong() -> String {
    let mut out = String::new();
    engineio::encode_text(&EnginePacket::Pong(""), &mut out);
    out
}

/// What a session does with the frames it receives, without the socket: answers pings,
/// reassembles binary events, hands events on `/` to the caller and acks them.
#[derive(Debug, Default)]
pub struct Reader {
    assembler: Assembler,
    /// Answer events that carry an ack id.
    ack: bool,
}

/// A frame's outcome: a reply to send (`Ok(Some)`), nothing (`Ok(None)`), or the end of
/// the session.
pub type Step = Result<Option<String>, CloseReason>;

impl Reader {
    pub fn new(ack: bool) -> Self {
        Reader {
            assembler: Assembler::default(),
            ack,
        }
    }

    /// A WebSocket text frame: one Engine.IO packet.
    pub fn text(&mut self, text: &str, on_event: &mut impl FnMut(Event<'_>)) -> Step {
        match engineio::decode_text(text) {
            Ok(EnginePacket::Ping(_)) => Ok(Some(pong())),
            Ok(EnginePacket::Close) => Err(CloseReason::EngineClose),
            Ok(EnginePacket::Message(m)) => match self.assembler.push_text(m) {
                Ok(assembled) => self.assembled(assembled, on_event),
                Err(_) => Err(CloseReason::ProtocolError),
            },
            // Open, pong, upgrade, noop: nothing to answer on an open WebSocket session.
            Ok(_) => Ok(None),
            Err(_) => Err(CloseReason::ProtocolError),
        }
    }

    /// A WebSocket binary frame: the next attachment of a binary event.
    pub fn binary(&mut self, bytes: Bytes, on_event: &mut impl FnMut(Event<'_>)) -> Step {
        match self.assembler.push_binary(bytes) {
            Ok(assembled) => self.assembled(assembled, on_event),
            Err(_) => Err(CloseReason::ProtocolError),
        }
    }

    fn assembled(&self, assembled: Assembled, on_event: &mut impl FnMut(Event<'_>)) -> Step {
        let Assembled::Complete(p, _attachments) = assembled else {
            return Ok(None);
        };
        if p.nsp != ROOT {
            return Ok(None);
        }
        match p.kind {
            PacketKind::Event | PacketKind::BinaryEvent => {
                let ack = p.id.filter(|_| self.ack);
                let received = p
                    .data
                    .as_ref()
                    .map_or(Err(PayloadError::NotAnEvent), ReceivedEvent::from_socketio);
                on_event(Event {
                    received,
                    acked: ack.is_some(),
                });
                Ok(ack.map(ack_packet))
            }
            PacketKind::Disconnect => Err(CloseReason::ServerDisconnect),
            _ => Ok(None),
        }
    }
}

/// An established Socket.IO session on `/`.
pub struct Session {
    ws: Ws,
    reader: Reader,
}

/// Upgrades `stream` on `cfg.path` and joins namespace `/` (open packet, CONNECT with the
/// token as auth or on the URL, the CONNECT reply with its `sid`).
pub(super) async fn handshake(
    stream: TcpStream,
    target: std::net::SocketAddr,
    who: Identity<'_>,
    cfg: &ClientConfig,
) -> Result<Session, ConnectError> {
    let mut url = format!("ws://{target}{}?EIO=4&transport=websocket", cfg.path);
    if let (Some(t), TokenPlace::Query) = (who.token, cfg.token_in) {
        url.push_str("&token=");
        url.push_str(t);
    }
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config()))
            .await
            .map_err(ConnectError::Upgrade)?;
    let open = next_text(&mut ws).await?;
    match engineio::decode_text(&open) {
        Ok(EnginePacket::Open(_)) => {}
        other => {
            return Err(ConnectError::Protocol(format!(
                "expected open packet, got {other:?}"
            )))
        }
    }
    let auth = match cfg.token_in {
        TokenPlace::Auth => who.token,
        TokenPlace::Query => None,
    };
    send(&mut ws, connect_packet(auth))
        .await
        .map_err(|_| ConnectError::Closed)?;
    loop {
        let text = next_text(&mut ws).await?;
        let message = match engineio::decode_text(&text) {
            Ok(EnginePacket::Ping(_)) => {
                send(&mut ws, pong())
                    .await
                    .map_err(|_| ConnectError::Closed)?;
                continue;
            }
            Ok(EnginePacket::Close) => return Err(ConnectError::Closed),
            Ok(EnginePacket::Noop | EnginePacket::Pong(_)) => continue,
            Ok(EnginePacket::Message(m)) => m,
            other => {
                return Err(ConnectError::Protocol(format!(
                    "unexpected during handshake: {other:?}"
                )))
            }
        };
        let p = packet::decode(message)
            .map_err(|e| ConnectError::Protocol(format!("{e}: {}", text.as_str())))?;
        match p.kind {
            PacketKind::Connect if p.nsp == ROOT => {
                // A v5 server always names the socket; socket.io-client refuses a reply
                // without one, and so do we.
                let has_sid = p
                    .data
                    .as_ref()
                    .and_then(|d| d.get("sid"))
                    .is_some_and(Value::is_string);
                if !has_sid {
                    return Err(ConnectError::Protocol(format!(
                        "CONNECT reply without sid: {}",
                        text.as_str()
                    )));
                }
                return Ok(Session {
                    ws,
                    reader: Reader::new(cfg.ack),
                });
            }
            PacketKind::ConnectError => {
                let message = match &p.data {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v
                        .get("message")
                        .and_then(Value::as_str)
                        .map_or_else(|| v.to_string(), str::to_owned),
                    None => String::new(),
                };
                return Err(ConnectError::Refused(message));
            }
            _ => {
                return Err(ConnectError::Protocol(format!(
                    "unexpected during handshake: {}",
                    text.as_str()
                )))
            }
        }
    }
}

impl Session {
    /// Reads until the server closes or `stop` fires; see [`Reader`].
    pub async fn run(
        mut self,
        stop: &CancellationToken,
        mut on_event: impl FnMut(Event<'_>),
    ) -> CloseReason {
        use futures_util::StreamExt;
        loop {
            let msg = tokio::select! {
                biased;
                _ = stop.cancelled() => return CloseReason::Stopped,
                msg = self.ws.next() => msg,
            };
            let step = match msg {
                None | Some(Ok(Message::Close(_))) => return CloseReason::TransportClose,
                Some(Err(_)) => return CloseReason::TransportError,
                Some(Ok(Message::Text(t))) => self.reader.text(t.as_str(), &mut on_event),
                Some(Ok(Message::Binary(b))) => self.reader.binary(b, &mut on_event),
                // WebSocket ping/pong: tungstenite answers pings itself.
                Some(Ok(_)) => continue,
            };
            match step {
                Ok(None) => {}
                Ok(Some(reply)) => {
                    if send(&mut self.ws, reply).await.is_err() {
                        return CloseReason::TransportError;
                    }
                }
                Err(reason) => return reason,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Stamp;

    /// What a reader handed to the caller: (event name, stamp, acked), or the error.
    type Seen = Vec<Result<(String, Option<Stamp>, bool), PayloadError>>;

    fn feed(reader: &mut Reader, text: &str, seen: &mut Seen) -> Step {
        reader.text(text, &mut |ev: Event<'_>| {
            seen.push(ev.received.map(|r| (r.event.to_owned(), r.stamp, ev.acked)))
        })
    }

    #[test]
    fn client_packets() {
        assert_eq!(connect_packet(None), "40");
        assert_eq!(connect_packet(Some("a.b.c")), r#"40{"token":"a.b.c"}"#);
        assert_eq!(ack_packet(7), "437[]");
        assert_eq!(pong(), "3");
    }

    #[test]
    fn a_ping_is_answered_with_a_pong_and_nothing_reaches_the_caller() {
        let mut r = Reader::new(true);
        let mut seen = Seen::new();
        assert_eq!(feed(&mut r, "2", &mut seen), Ok(Some("3".to_owned())));
        assert_eq!(feed(&mut r, "6", &mut seen), Ok(None));
        assert!(seen.is_empty());
    }

    #[test]
    fn a_stamped_event_reaches_the_caller_and_is_acked_when_asked() {
        let mut r = Reader::new(true);
        let mut seen = Seen::new();
        assert_eq!(
            feed(&mut r, r#"42["load",{"t":5,"seq":6}]"#, &mut seen),
            Ok(None)
        );
        assert_eq!(
            feed(&mut r, r#"4212["load",{"t":7,"seq":8}]"#, &mut seen),
            Ok(Some("4312[]".to_owned()))
        );
        assert_eq!(
            seen,
            vec![
                Ok(("load".to_owned(), Some(Stamp { t: 5, seq: 6 }), false)),
                Ok(("load".to_owned(), Some(Stamp { t: 7, seq: 8 }), true)),
            ]
        );
    }

    #[test]
    fn with_client_acks_off_an_ack_request_is_delivered_but_not_answered() {
        let mut r = Reader::new(false);
        let mut seen = Seen::new();
        assert_eq!(
            feed(&mut r, r#"423["load",{"t":1,"seq":2}]"#, &mut seen),
            Ok(None)
        );
        assert_eq!(
            seen,
            vec![Ok(("load".to_owned(), Some(Stamp { t: 1, seq: 2 }), false))]
        );
    }

    #[test]
    fn events_of_other_namespaces_are_not_ours() {
        let mut r = Reader::new(true);
        let mut seen = Seen::new();
        assert_eq!(
            feed(&mut r, r#"42/admin,5["load",{}]"#, &mut seen),
            Ok(None)
        );
        assert_eq!(feed(&mut r, "41/admin,", &mut seen), Ok(None));
        assert!(seen.is_empty());
    }

    #[test]
    fn a_numeric_event_name_reaches_the_caller_as_a_bad_payload() {
        let mut r = Reader::new(true);
        let mut seen = Seen::new();
        assert_eq!(
            feed(&mut r, r#"42[1,{"t":1,"seq":2}]"#, &mut seen),
            Ok(None)
        );
        assert_eq!(seen, vec![Err(PayloadError::NameNotString)]);
    }

    #[test]
    fn a_binary_event_arrives_once_its_attachments_have() {
        let mut r = Reader::new(true);
        let mut seen = Seen::new();
        let header = r#"451-9["load",{"_placeholder":true,"num":0}]"#;
        assert_eq!(feed(&mut r, header, &mut seen), Ok(None));
        assert!(seen.is_empty(), "nothing before the attachment");
        let step = r.binary(Bytes::from_static(&[1, 2]), &mut |ev: Event<'_>| {
            seen.push(ev.received.map(|r| (r.event.to_owned(), r.stamp, ev.acked)))
        });
        assert_eq!(step, Ok(Some("439[]".to_owned())));
        assert_eq!(seen, vec![Ok(("load".to_owned(), None, true))]);
    }

    #[test]
    fn engine_close_and_disconnect_end_the_session() {
        let mut seen = Seen::new();
        assert_eq!(
            feed(&mut Reader::new(true), "1", &mut seen),
            Err(CloseReason::EngineClose)
        );
        assert_eq!(
            feed(&mut Reader::new(true), "41", &mut seen),
            Err(CloseReason::ServerDisconnect)
        );
    }

    #[test]
    fn frames_the_codecs_refuse_end_the_session_as_protocol_errors() {
        for text in ["", "9", "4", "49", r#"42["a""#, "42[]", r#"42{"a":1}"#] {
            let mut seen = Seen::new();
            assert_eq!(
                feed(&mut Reader::new(true), text, &mut seen),
                Err(CloseReason::ProtocolError),
                "{text:?}"
            );
            assert!(seen.is_empty());
        }
        let mut r = Reader::new(true);
        assert_eq!(
            r.binary(Bytes::from_static(b"x"), &mut |_: Event<'_>| {}),
            Err(CloseReason::ProtocolError),
            "an attachment nobody announced"
        );
    }
}
