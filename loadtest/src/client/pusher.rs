//! The Pusher Channels client (protocol 7), over WebSocket, behaving as pusher-js does
//! where a server can tell: `/app/<key>?protocol=7&client=…&version=…`, the socket id
//! and `activity_timeout` from `pusher:connection_established`, a public channel
//! subscribed with `{"auth": ""}`, `pusher:pong` for every `pusher:ping`, and a
//! `pusher:ping` of its own after `activity_timeout` without a message from the
//! server, the socket closed when nothing answers it within [`PONG_TIMEOUT`].
//!
//! A connection with a room subscribes to the public channel of that name (`r<k>`),
//! so the same scenario runs against pushgate (where channel `r<k>` is room `r<k>`)
//! and any other Pusher server. An event arrives as `{"event", "channel", "data"}` with
//! `data` the push's JSON as a string; Pusher has no client acks. Frames are read and
//! written with the gateway's own `frontend::pusher::protocol`. [`Reader`] is the pure
//! part; [`handshake`] and [`Session::run`] do the I/O around it.

use std::time::Duration;

use pushgate::frontend::pusher::protocol::{self, ClientMessage, ServerMessage};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::{next_text, send, ws_config, ClientConfig, CloseReason, ConnectError, Event};
use super::{Identity, Ws};
use crate::payload::{ReceivedEvent, Stamp};

/// The protocol version the client speaks.
pub const PROTOCOL: u32 = 7;
/// pusher-js's own activity timeout: it pings after the smaller of this and the
/// server's.
pub const CLIENT_ACTIVITY_TIMEOUT: Duration = Duration::from_secs(120);
/// pusher-js's pong wait.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(30);

/// The connection URL path and query for app `key` under `path` (`/app`).
pub fn url_path(path: &str, key: &str) -> String {
    format!(
        "{}/{key}?protocol={PROTOCOL}&client=pushgate-load&version={}&flash=false",
        path.trim_end_matches('/'),
        env!("CARGO_PKG_VERSION")
    )
}

/// The text of a client message, written by the gateway's encoder.
fn encode(m: &ClientMessage) -> String {
    let mut out = String::new();
    protocol::encode_client(&mut out, m);
    out
}

/// `pusher:subscribe` to public channel `channel`, as pusher-js sends it.
pub fn subscribe_frame(channel: &str) -> String {
    encode(&ClientMessage::Subscribe {
        channel: channel.to_owned(),
        auth: Some(String::new()),
        channel_data: None,
    })
}

/// The first server message: the socket id and the activity timeout it announces, or
/// why the connection was refused.
pub fn established(m: &ServerMessage) -> Result<(String, Duration), ConnectError> {
    match m.event.as_str() {
        "pusher:connection_established" => {
            let data = m.data_json();
            let id = data.get("socket_id").and_then(Value::as_str);
            let timeout = data.get("activity_timeout").and_then(Value::as_u64);
            match (id, timeout) {
                (Some(id), Some(t)) if t > 0 => Ok((id.to_owned(), Duration::from_secs(t))),
                _ => Err(ConnectError::Protocol(format!(
                    "connection_established without socket_id or activity_timeout: {data}"
                ))),
            }
        }
        "pusher:error" => Err(ConnectError::Refused(error_text(&m.data_json()))),
        other => Err(ConnectError::Protocol(format!(
            "expected pusher:connection_established, got {other}"
        ))),
    }
}

fn error_text(data: &Value) -> String {
    let code = data.get("code").map_or(Value::Null, Value::clone);
    let message = data.get("message").and_then(Value::as_str).unwrap_or("");
    format!("pusher:error {code} {message}")
}

/// What a session does with the frames it receives, without the socket: answers pings,
/// notes pongs, hands events to the caller.
#[derive(Debug)]
pub struct Reader {
    /// Silence after which the client pings.
    pub activity: Duration,
    /// A ping was sent and nothing has arrived since.
    pub pinged: bool,
}

/// A frame's outcome: a frame to send (`Ok(Some)`), nothing (`Ok(None)`), or the end of
/// the session.
pub type Step = Result<Option<String>, CloseReason>;

impl Reader {
    /// A reader for a connection whose server announced `activity`.
    pub fn new(activity: Duration) -> Self {
        Reader {
            activity: activity.min(CLIENT_ACTIVITY_TIMEOUT),
            pinged: false,
        }
    }

    /// A text frame of the established session. Any message answers an outstanding
    /// ping, as in pusher-js.
    pub fn text(&mut self, text: &str, on_event: &mut impl FnMut(Event<'_>)) -> Step {
        let m = protocol::decode_server(text).map_err(|_| CloseReason::ProtocolError)?;
        self.pinged = false;
        match m.event.as_str() {
            "pusher:ping" => Ok(Some(encode(&ClientMessage::Pong))),
            // Pongs, subscription answers, errors (a refused client event, say): nothing
            // to deliver.
            e if protocol::is_reserved_event(e) => Ok(None),
            event => {
                let data = m.data_json();
                on_event(Event {
                    received: Ok(ReceivedEvent {
                        event,
                        stamp: Stamp::of(&data),
                    }),
                    acked: false,
                });
                Ok(None)
            }
        }
    }

    /// The server was silent for `activity`: a ping, or the end when the last one is
    /// still unanswered.
    pub fn idle(&mut self) -> Result<String, CloseReason> {
        if self.pinged {
            return Err(CloseReason::HeartbeatTimeout);
        }
        self.pinged = true;
        Ok(encode(&ClientMessage::Ping))
    }

    /// How long to wait for the next frame before [`Reader::idle`].
    pub fn wait(&self) -> Duration {
        if self.pinged {
            PONG_TIMEOUT
        } else {
            self.activity
        }
    }
}

/// An established Pusher connection, subscribed to its channel if it has one.
pub struct Session {
    ws: Ws,
    reader: Reader,
    /// Frames that arrived during the handshake before the subscription was answered.
    early: Vec<tungstenite::Utf8Bytes>,
}

/// Upgrades `stream` on `<cfg.path>/<key>`, reads `connection_established` and, for a
/// connection with a room, subscribes to that channel and waits for its answer.
pub(super) async fn handshake(
    stream: TcpStream,
    target: std::net::SocketAddr,
    who: Identity<'_>,
    cfg: &ClientConfig,
) -> Result<Session, ConnectError> {
    let url = format!("ws://{target}{}", url_path(&cfg.path, &cfg.pusher_key));
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config()))
            .await
            .map_err(ConnectError::Upgrade)?;
    let first = next_text(&mut ws).await?;
    let hello = protocol::decode_server(&first)
        .map_err(|e| ConnectError::Protocol(format!("{e}: {}", first.as_str())))?;
    let (_, activity) = established(&hello)?;
    let mut early = Vec::new();
    if let Some(channel) = who.room {
        send(&mut ws, subscribe_frame(channel))
            .await
            .map_err(|_| ConnectError::Closed)?;
        loop {
            let text = next_text(&mut ws).await?;
            let m = protocol::decode_server(&text)
                .map_err(|e| ConnectError::Protocol(format!("{e}: {}", text.as_str())))?;
            let mine = m.channel.as_deref() == Some(channel);
            match m.event.as_str() {
                "pusher_internal:subscription_succeeded" if mine => break,
                "pusher:subscription_error" if mine => {
                    return Err(ConnectError::Refused(format!(
                        "subscribe {channel}: {}",
                        m.data_json()
                    )))
                }
                "pusher:ping" => send(&mut ws, encode(&ClientMessage::Pong))
                    .await
                    .map_err(|_| ConnectError::Closed)?,
                _ => early.push(text),
            }
        }
    }
    Ok(Session {
        ws,
        reader: Reader::new(activity),
        early,
    })
}

impl Session {
    /// Reads until the server closes or `stop` fires, pinging after silence; see
    /// [`Reader`].
    pub async fn run(
        mut self,
        stop: &CancellationToken,
        mut on_event: impl FnMut(Event<'_>),
    ) -> CloseReason {
        use futures_util::StreamExt;
        for text in std::mem::take(&mut self.early) {
            let step = self.reader.text(text.as_str(), &mut on_event);
            if let Some(reason) = self.answer(step).await {
                return reason;
            }
        }
        loop {
            let wait = self.reader.wait();
            let msg = tokio::select! {
                biased;
                _ = stop.cancelled() => return CloseReason::Stopped,
                m = tokio::time::timeout(wait, self.ws.next()) => m,
            };
            let step = match msg {
                Err(_) => self.reader.idle().map(Some),
                Ok(None | Some(Ok(Message::Close(_)))) => return CloseReason::TransportClose,
                Ok(Some(Err(_))) => return CloseReason::TransportError,
                Ok(Some(Ok(Message::Text(t)))) => self.reader.text(t.as_str(), &mut on_event),
                // The protocol is JSON text; a binary frame is not it.
                Ok(Some(Ok(Message::Binary(_)))) => Err(CloseReason::ProtocolError),
                // WebSocket ping/pong: tungstenite answers pings itself.
                Ok(Some(Ok(_))) => continue,
            };
            if let Some(reason) = self.answer(step).await {
                return reason;
            }
        }
    }

    async fn answer(&mut self, step: Step) -> Option<CloseReason> {
        match step {
            Ok(None) => None,
            Ok(Some(frame)) => send(&mut self.ws, frame)
                .await
                .err()
                .map(|_| CloseReason::TransportError),
            Err(reason) => Some(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the caller was handed: (event, stamp).
    type Seen = Vec<(String, Option<Stamp>)>;

    fn feed(r: &mut Reader, text: &str, seen: &mut Seen) -> Step {
        r.text(text, &mut |ev: Event<'_>| {
            let e = ev.received.expect("Pusher events always read");
            assert!(!ev.acked, "Pusher has no client acks");
            seen.push((e.event.to_owned(), e.stamp));
        })
    }

    /// A server event, encoded by the gateway's own encoder.
    fn event(channel: Option<&str>, data: &str) -> String {
        let mut out = String::new();
        protocol::encode_event(&mut out, "load", channel, data);
        out
    }

    fn server(text: &str) -> ServerMessage {
        protocol::decode_server(text).unwrap()
    }

    #[test]
    fn the_url_names_the_app_key_and_protocol_7() {
        assert_eq!(
            url_path("/app/", "k1"),
            format!(
                "/app/k1?protocol=7&client=pushgate-load&version={}&flash=false",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn a_public_subscription_is_what_pusher_js_sends_and_the_gateway_reads() {
        let frame = subscribe_frame("r3");
        assert_eq!(
            protocol::decode(&frame).unwrap(),
            ClientMessage::Subscribe {
                channel: "r3".into(),
                auth: Some(String::new()),
                channel_data: None
            }
        );
    }

    #[test]
    fn connection_established_gives_the_socket_id_and_activity_timeout() {
        let mut out = String::new();
        protocol::encode_connection_established(&mut out, "12.34", 120);
        assert_eq!(
            established(&server(&out)).unwrap(),
            ("12.34".to_owned(), Duration::from_secs(120))
        );
        let mut out = String::new();
        protocol::encode_error(&mut out, Some(4001), "app key \"x\" does not exist");
        let e = established(&server(&out)).unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains("4001"), "{e}");
        let mut out = String::new();
        protocol::encode_pong(&mut out);
        assert!(matches!(
            established(&server(&out)),
            Err(ConnectError::Protocol(_))
        ));
    }

    #[test]
    fn an_event_is_delivered_with_the_stamp_in_its_string_data() {
        let mut r = Reader::new(Duration::from_secs(120));
        let mut seen = Seen::new();
        assert_eq!(
            feed(&mut r, &event(Some("r1"), r#"{"t":5,"seq":6}"#), &mut seen),
            Ok(None)
        );
        assert_eq!(
            feed(
                &mut r,
                &event(None, r#"{"t":7,"seq":8,"pad":"xx"}"#),
                &mut seen
            ),
            Ok(None)
        );
        assert_eq!(feed(&mut r, &event(None, "plain"), &mut seen), Ok(None));
        assert_eq!(
            seen,
            vec![
                ("load".to_owned(), Some(Stamp { t: 5, seq: 6 })),
                ("load".to_owned(), Some(Stamp { t: 7, seq: 8 })),
                ("load".to_owned(), None),
            ]
        );
    }

    #[test]
    fn pings_are_answered_and_protocol_events_reach_nobody() {
        let mut r = Reader::new(Duration::from_secs(120));
        let mut seen = Seen::new();
        let mut ping = String::new();
        protocol::encode_ping(&mut ping);
        let pong = feed(&mut r, &ping, &mut seen).unwrap().unwrap();
        assert_eq!(protocol::decode(&pong).unwrap(), ClientMessage::Pong);
        let mut out = String::new();
        protocol::encode_subscription_succeeded(&mut out, "r1");
        assert_eq!(feed(&mut r, &out, &mut seen), Ok(None));
        let mut out = String::new();
        protocol::encode_error(&mut out, None, "client event refused");
        assert_eq!(feed(&mut r, &out, &mut seen), Ok(None));
        assert!(seen.is_empty());
    }

    #[test]
    fn silence_is_pinged_and_an_unanswered_ping_ends_the_session() {
        let mut r = Reader::new(Duration::from_secs(600));
        assert_eq!(
            r.wait(),
            CLIENT_ACTIVITY_TIMEOUT,
            "pusher-js's 120 s at most"
        );
        let ping = r.idle().unwrap();
        assert_eq!(protocol::decode(&ping).unwrap(), ClientMessage::Ping);
        assert_eq!(r.wait(), PONG_TIMEOUT);
        let mut seen = Seen::new();
        let mut pong = String::new();
        protocol::encode_pong(&mut pong);
        assert_eq!(feed(&mut r, &pong, &mut seen), Ok(None));
        assert!(r.idle().is_ok(), "answered: the next silence pings again");
        assert_eq!(r.idle(), Err(CloseReason::HeartbeatTimeout));
    }

    #[test]
    fn frames_that_are_not_the_protocol_end_the_session() {
        for text in [
            "",
            "nope",
            "[1]",
            r#"{"data":"x"}"#,
            r#"{"event":"e","channel":2}"#,
        ] {
            let mut seen = Seen::new();
            assert_eq!(
                feed(&mut Reader::new(Duration::from_secs(1)), text, &mut seen),
                Err(CloseReason::ProtocolError),
                "{text:?}"
            );
        }
    }
}
