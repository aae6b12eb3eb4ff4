//! The Phoenix Channels client (serializer v2), over WebSocket, behaving as phoenix.js
//! does where the gateway can tell: `/socket/websocket?vsn=2.0.0&token=…` (or 1.8's
//! `authToken` subprotocol), refs from one counter per socket starting at `"1"`, a
//! `phx_join` per topic whose ref becomes the channel's join ref, and a heartbeat
//! `[null, ref, "phoenix", "heartbeat", {}]` every 30 s, the socket closed when the
//! previous one is still unanswered.
//!
//! Every connection joins `pushgate` (pushes to all, to its user, to itself) and, when it
//! has one, its room's topic. A push arrives as `[null, ref, topic, event, payload]`; a
//! non-null `ref` asks for an ack, sent as `[join_ref, ref, topic, "pushgate:ack",
//! {"ref": "<ref>"}]`. Frames are read and written with the gateway's own
//! `frontend::phoenix::codec`. [`Channels`] is the pure part; [`handshake`] and
//! [`Session::run`] do the I/O around it.

use std::time::Duration;

use base64::Engine as _;
use pushgate::frontend::phoenix::codec::{self, Message as Frame, Payload};
use pushgate::frontend::phoenix::{ACK_EVENT, TOPIC_PUSHGATE};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::{next_text, send, ws_config, ClientConfig, CloseReason, ConnectError, Event};
use super::{Identity, TokenPlace, Ws};
use crate::payload::ReceivedEvent;

/// phoenix.js's `heartbeatIntervalMs`; the gateway closes a socket silent for 60 s.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// One topic of the connection.
#[derive(Debug)]
struct Channel {
    topic: String,
    /// The ref of the `phx_join` that opened it; every later message on it carries it.
    join_ref: String,
    /// The join was answered ok.
    joined: bool,
}

/// A frame's outcome: a frame to send (`Ok(Some)`), nothing (`Ok(None)`), or the end of
/// the session.
pub type Step = Result<Option<String>, CloseReason>;

/// The client side of a Phoenix socket without the socket: refs, joins, heartbeats,
/// pushes and acks.
#[derive(Debug)]
pub struct Channels {
    /// The last ref handed out (phoenix.js: one counter per socket, first ref `"1"`).
    last_ref: u64,
    channels: Vec<Channel>,
    /// The ref of the heartbeat sent and not yet answered.
    pending_heartbeat: Option<String>,
    /// Acknowledge pushes that carry a ref.
    ack: bool,
}

impl Channels {
    /// A socket about to join `topics`, and the `phx_join` frames that do it.
    pub fn new(topics: &[&str], ack: bool) -> (Self, Vec<String>) {
        let mut c = Channels {
            last_ref: 0,
            channels: Vec::with_capacity(topics.len()),
            pending_heartbeat: None,
            ack,
        };
        let mut joins = Vec::with_capacity(topics.len());
        for topic in topics {
            let join_ref = c.next_ref();
            let mut out = String::new();
            codec::encode_message(
                &mut out,
                Some(&join_ref),
                Some(&join_ref),
                topic,
                codec::EVENT_JOIN,
                &json!({}),
            );
            joins.push(out);
            c.channels.push(Channel {
                topic: (*topic).to_owned(),
                join_ref,
                joined: false,
            });
        }
        (c, joins)
    }

    fn next_ref(&mut self) -> String {
        self.last_ref += 1;
        self.last_ref.to_string()
    }

    /// Every join was answered ok.
    pub fn all_joined(&self) -> bool {
        self.channels.iter().all(|c| c.joined)
    }

    /// During the handshake: whether `m` is the reply to one of the joins (an ok marks
    /// that channel joined); a refused join refuses the connection with its reason.
    pub fn join_reply(&mut self, m: &Frame) -> Result<bool, ConnectError> {
        if m.event != codec::EVENT_REPLY {
            return Ok(false);
        }
        let Some(ch) = self.channels.iter_mut().find(|c| {
            !c.joined && c.topic == m.topic && m.r#ref.as_deref() == Some(c.join_ref.as_str())
        }) else {
            return Ok(false);
        };
        let Payload::Json(payload) = &m.payload else {
            return Err(ConnectError::Protocol(format!(
                "binary reply to the join of {}",
                ch.topic
            )));
        };
        if payload.get("status").and_then(Value::as_str) == Some("ok") {
            ch.joined = true;
            return Ok(true);
        }
        let reason = payload
            .pointer("/response/reason")
            .and_then(Value::as_str)
            .map_or_else(|| payload.to_string(), str::to_owned);
        Err(ConnectError::Refused(format!(
            "join {}: {reason}",
            ch.topic
        )))
    }

    /// A text frame of the established session.
    pub fn text(&mut self, text: &str, on_event: &mut impl FnMut(Event<'_>)) -> Step {
        let m = codec::decode(text).map_err(|_| CloseReason::ProtocolError)?;
        let Payload::Json(payload) = &m.payload else {
            // A text frame always decodes to a JSON payload.
            return Err(CloseReason::ProtocolError);
        };
        match m.event.as_str() {
            codec::EVENT_REPLY => {
                if m.topic == codec::TOPIC_PHOENIX
                    && m.r#ref.is_some()
                    && m.r#ref == self.pending_heartbeat
                {
                    self.pending_heartbeat = None;
                }
                // Replies to acks (and late join replies) need nothing.
                Ok(None)
            }
            codec::EVENT_CLOSE | codec::EVENT_ERROR => {
                if self.channels.iter().any(|c| c.topic == m.topic) {
                    Err(CloseReason::ChannelClosed)
                } else {
                    Ok(None)
                }
            }
            _ => {
                let ack_ref = m.r#ref.as_deref().filter(|_| self.ack);
                on_event(Event {
                    received: Ok(ReceivedEvent::from_phoenix(&m.event, payload)),
                    acked: ack_ref.is_some(),
                });
                Ok(ack_ref.map(|r| self.ack_frame(&m.topic, r)))
            }
        }
    }

    /// `[join_ref, ref, topic, "pushgate:ack", {"ref": ack_ref}]`, as
    /// `channel.push("pushgate:ack", {ref})` sends it.
    fn ack_frame(&mut self, topic: &str, ack_ref: &str) -> String {
        let r = self.next_ref();
        let join_ref = self
            .channels
            .iter()
            .find(|c| c.topic == topic)
            .map(|c| c.join_ref.as_str());
        let mut out = String::new();
        codec::encode_message(
            &mut out,
            join_ref,
            Some(&r),
            topic,
            ACK_EVENT,
            &json!({ "ref": ack_ref }),
        );
        out
    }

    /// The heartbeat is due: its frame, or the end of the session when the previous one
    /// is still unanswered.
    pub fn beat(&mut self) -> Result<String, CloseReason> {
        if self.pending_heartbeat.is_some() {
            return Err(CloseReason::HeartbeatTimeout);
        }
        let r = self.next_ref();
        let mut out = String::new();
        codec::encode_message(
            &mut out,
            None,
            Some(&r),
            codec::TOPIC_PHOENIX,
            codec::EVENT_HEARTBEAT,
            &json!({}),
        );
        self.pending_heartbeat = Some(r);
        Ok(out)
    }
}

/// An established Phoenix socket whose channels are joined.
pub struct Session {
    ws: Ws,
    channels: Channels,
    /// Frames that arrived during the handshake after a join was answered (a push on a
    /// channel already joined): handled first by [`Session::run`].
    early: Vec<Utf8Bytes>,
    heartbeat: Duration,
}

/// The `Sec-WebSocket-Protocol` of phoenix 1.8's `authToken`: `phoenix` and the token in
/// standard base64 without padding (what `btoa(token).replace(/=/g, "")` gives).
pub fn auth_token_protocols(token: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(token);
    format!(
        "{}, {}{encoded}",
        codec::SUBPROTOCOL_PHOENIX,
        codec::AUTH_TOKEN_PREFIX
    )
}

/// Upgrades `stream` on `cfg.path` with `vsn=2.0.0` and the token, then joins
/// `pushgate` and the room's topic and waits for both replies.
pub(super) async fn handshake(
    stream: TcpStream,
    target: std::net::SocketAddr,
    who: Identity<'_>,
    cfg: &ClientConfig,
) -> Result<Session, ConnectError> {
    let mut url = format!("ws://{target}{}?vsn={}", cfg.path, codec::VSN);
    let mut protocols = None;
    match (who.token, cfg.token_in) {
        (Some(t), TokenPlace::Query) => {
            url.push_str("&token=");
            url.push_str(t);
        }
        (Some(t), TokenPlace::Auth) => protocols = Some(auth_token_protocols(t)),
        (None, _) => {}
    }
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(ConnectError::Upgrade)?;
    if let Some(p) = protocols {
        let value = HeaderValue::from_str(&p)
            .map_err(|e| ConnectError::Protocol(format!("authToken header: {e}")))?;
        request
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
            .await
            .map_err(upgrade_error)?;

    let mut topics = vec![TOPIC_PUSHGATE];
    topics.extend(who.room);
    let (mut channels, joins) = Channels::new(&topics, cfg.ack);
    for join in joins {
        send(&mut ws, join)
            .await
            .map_err(|_| ConnectError::Closed)?;
    }
    let mut early = Vec::new();
    while !channels.all_joined() {
        let text = next_text(&mut ws).await?;
        let m = codec::decode(&text)
            .map_err(|e| ConnectError::Protocol(format!("{e}: {}", text.as_str())))?;
        if !channels.join_reply(&m)? {
            early.push(text);
        }
    }
    Ok(Session {
        ws,
        channels,
        early,
        heartbeat: cfg.heartbeat,
    })
}

/// Phoenix refuses a bad token with a bare 403 on the upgrade: that is a refusal, not a
/// transport failure.
fn upgrade_error(e: tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(response) if response.status() == StatusCode::FORBIDDEN => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            ConnectError::Refused(format!("HTTP 403 {}", body.trim()))
        }
        e => ConnectError::Upgrade(e),
    }
}

/// What the session's loop woke up for.
enum Wake {
    Stop,
    Beat,
    Frame(Option<Result<Message, tungstenite::Error>>),
}

impl Session {
    /// Reads until the server closes or `stop` fires, beating every `heartbeat`; see
    /// [`Channels`].
    pub async fn run(
        mut self,
        stop: &CancellationToken,
        mut on_event: impl FnMut(Event<'_>),
    ) -> CloseReason {
        use futures_util::StreamExt;
        for text in std::mem::take(&mut self.early) {
            let step = self.channels.text(text.as_str(), &mut on_event);
            if let Some(reason) = self.answer(step).await {
                return reason;
            }
        }
        let start = tokio::time::Instant::now() + self.heartbeat;
        let mut beat = tokio::time::interval_at(start, self.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                biased;
                _ = stop.cancelled() => Wake::Stop,
                _ = beat.tick() => Wake::Beat,
                msg = self.ws.next() => Wake::Frame(msg),
            };
            let step = match wake {
                Wake::Stop => return CloseReason::Stopped,
                Wake::Beat => self.channels.beat().map(Some),
                Wake::Frame(None | Some(Ok(Message::Close(_)))) => {
                    return CloseReason::TransportClose
                }
                Wake::Frame(Some(Err(_))) => return CloseReason::TransportError,
                Wake::Frame(Some(Ok(Message::Text(t)))) => {
                    self.channels.text(t.as_str(), &mut on_event)
                }
                // pushgate sends Phoenix frames as text; a binary one is not its protocol.
                Wake::Frame(Some(Ok(Message::Binary(_)))) => Err(CloseReason::ProtocolError),
                // WebSocket ping/pong: tungstenite answers pings itself.
                Wake::Frame(Some(Ok(_))) => continue,
            };
            if let Some(reason) = self.answer(step).await {
                return reason;
            }
        }
    }

    /// Sends the frame a step asks for; the reason the session ends, if it does.
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
    use crate::payload::Stamp;

    /// What the caller was handed: (event, stamp, acked).
    type Seen = Vec<(String, Option<Stamp>, bool)>;

    fn feed(c: &mut Channels, text: &str, seen: &mut Seen) -> Step {
        c.text(text, &mut |ev: Event<'_>| {
            let r = ev.received.expect("Phoenix payloads always read");
            seen.push((r.event.to_owned(), r.stamp, ev.acked));
        })
    }

    /// A server push, encoded by the gateway's own encoder.
    fn push(topic: &str, ack_ref: Option<u64>, data: Value) -> String {
        let mut out = String::new();
        codec::encode_push(&mut out, topic, "load", ack_ref, &data);
        out
    }

    fn reply(join_ref: Option<&str>, r: &str, topic: &str, status: &str, response: Value) -> Frame {
        let mut out = String::new();
        codec::encode_reply(&mut out, join_ref, Some(r), topic, status, &response);
        codec::decode(&out).expect("a reply the codec reads back")
    }

    /// Channels for `pushgate` and `r3`, both joined.
    fn joined(ack: bool) -> Channels {
        let (mut c, _) = Channels::new(&["pushgate", "r3"], ack);
        assert_eq!(
            c.join_reply(&reply(Some("1"), "1", "pushgate", "ok", json!({}))),
            Ok(true)
        );
        assert_eq!(
            c.join_reply(&reply(Some("2"), "2", "r3", "ok", json!({}))),
            Ok(true)
        );
        assert!(c.all_joined());
        c
    }

    impl PartialEq for ConnectError {
        fn eq(&self, other: &Self) -> bool {
            self.to_string() == other.to_string()
        }
    }

    #[test]
    fn each_topic_is_joined_with_its_own_ref_as_join_ref() {
        let (c, joins) = Channels::new(&["pushgate", "r3"], true);
        assert_eq!(
            joins,
            vec![
                r#"["1","1","pushgate","phx_join",{}]"#,
                r#"["2","2","r3","phx_join",{}]"#
            ]
        );
        assert!(!c.all_joined());
    }

    #[test]
    fn only_an_ok_reply_with_the_join_ref_completes_a_join() {
        let (mut c, _) = Channels::new(&["pushgate"], true);
        // Another ref, another topic, another event: not the answer.
        assert_eq!(
            c.join_reply(&reply(Some("9"), "9", "pushgate", "ok", json!({}))),
            Ok(false)
        );
        assert_eq!(
            c.join_reply(&reply(Some("1"), "1", "other", "ok", json!({}))),
            Ok(false)
        );
        let not_a_reply = codec::decode(&push("pushgate", Some(1), json!({}))).unwrap();
        assert_eq!(c.join_reply(&not_a_reply), Ok(false));
        assert!(!c.all_joined());
        let ok = reply(
            Some("1"),
            "1",
            "pushgate",
            "ok",
            json!({"socket_id": "n.x"}),
        );
        assert_eq!(c.join_reply(&ok), Ok(true));
        assert!(c.all_joined());
    }

    #[test]
    fn a_refused_join_refuses_the_connection_with_its_reason() {
        let (mut c, _) = Channels::new(&["pushgate", "r3"], true);
        let refused = reply(
            Some("2"),
            "2",
            "r3",
            "error",
            json!({"reason": "unauthorized"}),
        );
        assert_eq!(
            c.join_reply(&refused),
            Err(ConnectError::Refused("join r3: unauthorized".into()))
        );
    }

    #[test]
    fn a_push_without_a_ref_is_delivered_and_not_acked() {
        let mut c = joined(true);
        let mut seen = Seen::new();
        let step = feed(
            &mut c,
            &push("pushgate", None, json!({"t": 5, "seq": 6})),
            &mut seen,
        );
        assert_eq!(step, Ok(None));
        assert_eq!(
            seen,
            vec![("load".to_owned(), Some(Stamp { t: 5, seq: 6 }), false)]
        );
    }

    #[test]
    fn a_push_with_a_ref_is_acked_on_its_channel_with_the_next_ref() {
        let mut c = joined(true);
        let mut seen = Seen::new();
        let step = feed(
            &mut c,
            &push("r3", Some(17), json!({"t": 1, "seq": 2})),
            &mut seen,
        );
        assert_eq!(
            step,
            Ok(Some(
                r#"["2","3","r3","pushgate:ack",{"ref":"17"}]"#.to_owned()
            ))
        );
        let step = feed(&mut c, &push("pushgate", Some(18), json!({})), &mut seen);
        assert_eq!(
            step,
            Ok(Some(
                r#"["1","4","pushgate","pushgate:ack",{"ref":"18"}]"#.to_owned()
            ))
        );
        assert_eq!(
            seen,
            vec![
                ("load".to_owned(), Some(Stamp { t: 1, seq: 2 }), true),
                ("load".to_owned(), None, true),
            ]
        );
    }

    #[test]
    fn with_client_acks_off_a_ref_is_delivered_but_not_answered() {
        let mut c = joined(false);
        let mut seen = Seen::new();
        let step = feed(
            &mut c,
            &push("pushgate", Some(3), json!({"t": 1, "seq": 2})),
            &mut seen,
        );
        assert_eq!(step, Ok(None));
        assert_eq!(
            seen,
            vec![("load".to_owned(), Some(Stamp { t: 1, seq: 2 }), false)]
        );
    }

    #[test]
    fn replies_to_acks_reach_nobody() {
        let mut c = joined(true);
        let mut seen = Seen::new();
        let mut out = String::new();
        codec::encode_reply(&mut out, Some("1"), Some("4"), "pushgate", "ok", &json!({}));
        assert_eq!(feed(&mut c, &out, &mut seen), Ok(None));
        assert!(seen.is_empty());
    }

    #[test]
    fn a_heartbeat_unanswered_at_the_next_one_ends_the_session() {
        let mut c = joined(true);
        let mut seen = Seen::new();
        assert_eq!(
            c.beat(),
            Ok(r#"[null,"3","phoenix","heartbeat",{}]"#.to_owned())
        );
        // A reply with another ref, or on another topic, is not the heartbeat's.
        let mut other = String::new();
        codec::encode_reply(&mut other, None, Some("3"), "pushgate", "ok", &json!({}));
        assert_eq!(feed(&mut c, &other, &mut seen), Ok(None));
        assert_eq!(c.beat(), Err(CloseReason::HeartbeatTimeout));
    }

    #[test]
    fn an_answered_heartbeat_lets_the_next_one_go() {
        let mut c = joined(true);
        let mut seen = Seen::new();
        c.beat().unwrap();
        let mut out = String::new();
        codec::encode_reply(&mut out, None, Some("3"), "phoenix", "ok", &json!({}));
        assert_eq!(feed(&mut c, &out, &mut seen), Ok(None));
        assert_eq!(
            c.beat(),
            Ok(r#"[null,"4","phoenix","heartbeat",{}]"#.to_owned())
        );
        assert!(seen.is_empty());
    }

    #[test]
    fn a_closed_or_errored_channel_ends_the_session() {
        for event in ["phx_close", "phx_error"] {
            let mut c = joined(true);
            let mut seen = Seen::new();
            let mut out = String::new();
            codec::encode_message(&mut out, Some("2"), Some("2"), "r3", event, &json!({}));
            assert_eq!(
                feed(&mut c, &out, &mut seen),
                Err(CloseReason::ChannelClosed),
                "{event}"
            );
            let mut out = String::new();
            codec::encode_message(&mut out, None, None, "elsewhere", event, &json!({}));
            assert_eq!(feed(&mut joined(true), &out, &mut seen), Ok(None));
        }
    }

    #[test]
    fn frames_the_codec_refuses_end_the_session_as_protocol_errors() {
        for text in [
            "",
            "nope",
            r#"{"a":1}"#,
            r#"[null,null,"t","e"]"#,
            r#"[1,null,"t","e",{}]"#,
        ] {
            let mut seen = Seen::new();
            assert_eq!(
                feed(&mut joined(true), text, &mut seen),
                Err(CloseReason::ProtocolError),
                "{text:?}"
            );
            assert!(seen.is_empty());
        }
    }

    #[test]
    fn the_auth_token_travels_as_the_gateway_reads_it() {
        let header = auth_token_protocols("a.b.c");
        assert_eq!(header, "phoenix, base64url.bearer.phx.YS5iLmM");
        assert!(codec::offers_phoenix_subprotocol(&header));
        assert_eq!(
            codec::auth_token_from_protocols(&header),
            Ok(Some(b"a.b.c".to_vec()))
        );
    }
}
