//! Phoenix Channels codec for serializer V2 (`vsn=2.0.0`), the only format the `phoenix`
//! npm client 1.7 and 1.8 speaks by default (protocols.md §6), plus the JSON envelopes of
//! the long-poll transport and the two small parsers the handshake needs (`vsn`, the 1.8
//! `authToken` subprotocol).
//!
//! Pure: no I/O, no async. A text frame is the JSON array
//! `[join_ref, ref, topic, event, payload]`; a binary frame starts with a one-byte kind and
//! one-byte lengths, so its strings are at most 255 bytes. Encoders append to a `String`
//! (or `Vec<u8>`) so that a push is encoded once into a buffer the caller owns and shares.

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::Value;

/// The `vsn` query parameter phoenix.js sends (`DEFAULT_VSN`), and the one we answer to.
/// Without `vsn` the Phoenix server falls back to `1.0.0`, the V1 object format, which
/// this codec does not speak.
pub const VSN: &str = "2.0.0";

/// The topic of socket-level messages: the heartbeat and its reply. No channel lives on it.
pub const TOPIC_PHOENIX: &str = "phoenix";

/// Client → server: join a topic; its `ref` becomes the channel's `join_ref`.
pub const EVENT_JOIN: &str = "phx_join";
/// Client → server: leave a topic; answered by a `phx_reply` ok, then `phx_close`.
pub const EVENT_LEAVE: &str = "phx_leave";
/// Server → client: the answer to a client message with a `ref`, payload
/// `{"status":…,"response":…}`.
pub const EVENT_REPLY: &str = "phx_reply";
/// Server → client: the channel died; the client rejoins with backoff.
pub const EVENT_ERROR: &str = "phx_error";
/// Server → client: the channel closed for good; the client drops the channel object.
pub const EVENT_CLOSE: &str = "phx_close";
/// Client → server on [`TOPIC_PHOENIX`], every 30 s by default; answered by an ok reply.
pub const EVENT_HEARTBEAT: &str = "heartbeat";
/// Server → client: the full presence list after a join (phoenix.js `Presence`).
pub const EVENT_PRESENCE_STATE: &str = "presence_state";
/// Server → client: presence joins and leaves since the last state or diff.
pub const EVENT_PRESENCE_DIFF: &str = "presence_diff";

/// phoenix.js turns every `phx_reply` into a channel event named `chan_reply_<ref>`, which
/// resolves the pending push with that ref. A server event of that name would resolve the
/// push too, as if it were its reply.
pub const CLIENT_REPLY_EVENT_PREFIX: &str = "chan_reply_";

/// The prefix of the 1.8 `authToken` subprotocol: `Sec-WebSocket-Protocol: phoenix,
/// base64url.bearer.phx.<token>`. Despite the name the token is *standard* base64 with the
/// `=` padding removed (`btoa(token).replace(/=/g, "")`).
pub const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// The subprotocol a server must select (echo in `Sec-WebSocket-Protocol`) when the client
/// sent an auth token: browsers and the `ws` library fail the handshake when a requested
/// subprotocol list gets no answer ("Server sent no subprotocol").
pub const SUBPROTOCOL_PHOENIX: &str = "phoenix";

/// Most bytes in a topic. Binary frames carry lengths in one byte, and the client refuses
/// longer fields there, so a longer topic could never travel in both forms.
pub const MAX_TOPIC_BYTES: usize = 255;
/// Most bytes in an event name, for the same reason as [`MAX_TOPIC_BYTES`].
pub const MAX_EVENT_BYTES: usize = 255;
/// Most bytes in a `join_ref` or `ref`. The client's refs are short decimal counters.
pub const MAX_REF_BYTES: usize = 255;

/// Most frames phoenix.js 1.8 puts in one long-poll POST (`MAX_LONGPOLL_BATCH_SIZE`); it
/// splits larger batches. The Phoenix server silently drops frames beyond it, but 1.7
/// clients send any number in one POST, so [`decode_poll_body`] does not enforce it.
pub const MAX_POLL_BATCH: usize = 100;

/// Long-poll `status` values. The HTTP status is always 200: phoenix.js ignores it and reads
/// `status` from the JSON body, and a body that is not JSON counts as a network error.
pub mod poll_status {
    /// GET: messages follow. POST: every frame was handled.
    pub const OK: u16 = 200;
    /// GET: the poll window passed with nothing to send; the client polls again.
    pub const NO_CONTENT: u16 = 204;
    /// POST: the server did not handle a frame within the poll window; the client errors
    /// and reconnects.
    pub const REQUEST_TIMEOUT: u16 = 408;
    /// GET without a (valid) token: a new session, with its token; the client opens. With
    /// a token the client already held (1.8): the session is gone, the client reconnects.
    /// POST with an unknown token: the session is gone.
    pub const GONE: u16 = 410;
    /// GET: the connect was refused; the client closes (code 1008) and reconnects later.
    pub const FORBIDDEN: u16 = 403;
    /// GET: the client errors and reconnects (code 1011).
    pub const INTERNAL_ERROR: u16 = 500;
}

/// Whether the server must keep `event` out of the events a backend may push.
///
/// Reserved are the names either end gives a meaning to, in any topic:
/// - every `phx_` name: `phx_join`/`phx_leave` are the client's channel commands and
///   `phx_reply`/`phx_error`/`phx_close` drive the client's channel state; Phoenix owns the
///   prefix, so later additions are covered too;
/// - `heartbeat`: special only on topic `phoenix`, but reserving it everywhere keeps a
///   backend event from reading as one in logs and tools, at no cost;
/// - `presence_state` and `presence_diff`: phoenix.js `Presence` applies them to its list,
///   and the gateway sends them itself;
/// - `chan_reply_<anything>`: see [`CLIENT_REPLY_EVENT_PREFIX`]; such a push would resolve
///   the client's pending push with the same ref.
pub fn is_reserved_event(event: &str) -> bool {
    event.starts_with("phx_")
        || event.starts_with(CLIENT_REPLY_EVENT_PREFIX)
        || matches!(
            event,
            EVENT_HEARTBEAT | EVENT_PRESENCE_STATE | EVENT_PRESENCE_DIFF
        )
}

/// Whether the client's `vsn` query parameter selects serializer V2: `2.0.<patch>`, as the
/// Phoenix server's `~> 2.0.0` requirement accepts (pre-releases excluded). A missing `vsn`
/// means 1.0.0 to Phoenix, so the caller refuses it.
pub fn is_supported_vsn(vsn: &str) -> bool {
    vsn.strip_prefix("2.0.").is_some_and(|patch| {
        !patch.is_empty()
            && patch.bytes().all(|b| b.is_ascii_digit())
            && (patch == "0" || !patch.starts_with('0'))
    })
}

/// A message from the client, text or binary.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The channel's join ref: the `ref` of the `phx_join` that opened it. `None` on
    /// socket-level messages (the heartbeat).
    pub join_ref: Option<String>,
    /// The message's own ref; a reply must carry it back. `None` when no reply is wanted.
    pub r#ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// A message's payload: JSON from a text frame, raw bytes from a binary frame (phoenix.js
/// sends an `ArrayBuffer` payload as a binary frame).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Usually an object; phoenix.js sends `{}` when the caller gave nothing.
    Json(Value),
    Binary(Bytes),
}

/// Why a frame or long-poll body is not valid. Any of these is a protocol error: phoenix.js
/// never sends such a frame, so the server closes the connection.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("frame is not valid JSON")]
    NotJson(#[source] JsonError),
    #[error("frame is not a JSON array")]
    NotAnArray,
    /// The Phoenix server ignores elements past the fifth; phoenix.js sends exactly five.
    #[error("frame must have 5 elements, got {got}")]
    WrongArity { got: usize },
    #[error("{field} must be a string or null")]
    RefNotString { field: &'static str },
    #[error("{field} is {len} bytes, more than {MAX_REF_BYTES}")]
    RefTooLong { field: &'static str, len: usize },
    #[error("topic must be a string")]
    TopicNotString,
    #[error("topic is empty")]
    EmptyTopic,
    #[error("topic is {len} bytes, more than {MAX_TOPIC_BYTES}")]
    TopicTooLong { len: usize },
    #[error("event must be a string")]
    EventNotString,
    #[error("event is empty")]
    EmptyEvent,
    #[error("event is {len} bytes, more than {MAX_EVENT_BYTES}")]
    EventTooLong { len: usize },
    #[error("binary frame is empty")]
    EmptyBinary,
    /// Kind 1 (reply) and 2 (broadcast) exist, but only the server sends them.
    #[error("binary frame kind {0} is not a client push (0)")]
    UnsupportedKind(u8),
    #[error("binary frame is truncated: needs {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    #[error("{field} is not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("long-poll line is neither a JSON frame nor valid base64")]
    BadBase64,
}

pub use crate::frontend::JsonError;

/// Decodes a client text frame `[join_ref, ref, topic, event, payload]`.
///
/// Stricter than the Phoenix server, which checks nothing but the arity (and accepts more
/// than five elements): refs must be strings or null, topic and event non-empty strings of
/// at most 255 bytes. phoenix.js always sends that shape, so anything else is a broken or
/// hostile client. The strings are moved out of the parsed JSON, not copied.
pub fn decode(text: &str) -> Result<Message, DecodeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(JsonError(e)))?;
    let Value::Array(items) = value else {
        return Err(DecodeError::NotAnArray);
    };
    let [join_ref, r#ref, topic, event, payload] = <[Value; 5]>::try_from(items)
        .map_err(|items| DecodeError::WrongArity { got: items.len() })?;
    let join_ref = json_ref(join_ref, "join_ref")?;
    let r#ref = json_ref(r#ref, "ref")?;
    let Value::String(topic) = topic else {
        return Err(DecodeError::TopicNotString);
    };
    let Value::String(event) = event else {
        return Err(DecodeError::EventNotString);
    };
    check_topic(&topic)?;
    check_event(&event)?;
    Ok(Message {
        join_ref,
        r#ref,
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

/// A ref from a text frame: a string or null. phoenix.js refs are decimal strings
/// (`"1"`, `"2"`, …); numbers are refused rather than coerced, as the reply must carry back
/// exactly what was sent and the client compares with `===`.
fn json_ref(value: Value, field: &'static str) -> Result<Option<String>, DecodeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.len() > MAX_REF_BYTES => Err(DecodeError::RefTooLong {
            field,
            len: s.len(),
        }),
        Value::String(s) => Ok(Some(s)),
        _ => Err(DecodeError::RefNotString { field }),
    }
}

fn check_topic(topic: &str) -> Result<(), DecodeError> {
    match topic.len() {
        0 => Err(DecodeError::EmptyTopic),
        len if len > MAX_TOPIC_BYTES => Err(DecodeError::TopicTooLong { len }),
        _ => Ok(()),
    }
}

fn check_event(event: &str) -> Result<(), DecodeError> {
    match event.len() {
        0 => Err(DecodeError::EmptyEvent),
        len if len > MAX_EVENT_BYTES => Err(DecodeError::EventTooLong { len }),
        _ => Ok(()),
    }
}

/// Binary frame kinds (the first byte).
pub mod binary_kind {
    /// Client → server: `[0, join_ref_len, ref_len, topic_len, event_len, …, payload]`.
    /// Server → client, the same kind has no ref: `[0, join_ref_len, topic_len, event_len, …]`.
    pub const PUSH: u8 = 0;
    /// Server → client: `[1, join_ref_len, ref_len, topic_len, status_len, …, response]`.
    pub const REPLY: u8 = 1;
    /// Server → client: `[2, topic_len, event_len, topic, event, payload]`.
    pub const BROADCAST: u8 = 2;
}

/// Decodes a client binary frame: kind 0,
/// `[0, join_ref_len, ref_len, topic_len, event_len, join_ref, ref, topic, event, payload…]`.
///
/// The payload is a slice of `frame` (no copy). An empty ref is `None`: the server side of
/// the format writes a missing ref as an empty string. (phoenix.js itself never sends one;
/// a `null` join_ref would reach the wire as the four bytes `null`, via `TextEncoder`.)
pub fn decode_binary(frame: &Bytes) -> Result<Message, DecodeError> {
    const HEADER: usize = 5;
    let (&kind, _) = frame.split_first().ok_or(DecodeError::EmptyBinary)?;
    if kind != binary_kind::PUSH {
        return Err(DecodeError::UnsupportedKind(kind));
    }
    if frame.len() < HEADER {
        return Err(DecodeError::Truncated {
            needed: HEADER,
            got: frame.len(),
        });
    }
    let lens = [frame[1], frame[2], frame[3], frame[4]].map(usize::from);
    let needed = HEADER + lens.iter().sum::<usize>();
    if frame.len() < needed {
        return Err(DecodeError::Truncated {
            needed,
            got: frame.len(),
        });
    }
    let mut at = HEADER;
    let mut field = |len: usize, name: &'static str| {
        let bytes = &frame[at..at + len];
        at += len;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8 { field: name })
    };
    let join_ref = field(lens[0], "join_ref")?;
    let r#ref = field(lens[1], "ref")?;
    let topic = field(lens[2], "topic")?;
    let event = field(lens[3], "event")?;
    check_topic(&topic)?;
    check_event(&event)?;
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(Message {
        join_ref: non_empty(join_ref),
        r#ref: non_empty(r#ref),
        topic,
        event,
        payload: Payload::Binary(frame.slice(needed..)),
    })
}

/// Appends the text frame `[join_ref, ref, topic, event, payload]`, nulls for `None` refs.
///
/// The inverse of [`decode`] for every message with a JSON payload it returns.
pub fn encode_message(
    out: &mut String,
    join_ref: Option<&str>,
    r#ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) {
    push_head(out, join_ref, r#ref, topic, event);
    push_value(out, payload);
    out.push(']');
}

/// Appends `[join_ref, ref, topic, "phx_reply", {"status":…,"response":…}]`.
///
/// phoenix.js matches a reply by `ref` (its pending push, or the pending heartbeat) and by
/// topic plus `join_ref` (null or the channel's current one); `status` selects the push's
/// `receive("ok" | "error" | …)` hooks, which get `response`. A heartbeat's reply is
/// `encode_reply(out, None, Some(ref), "phoenix", "ok", &json!({}))`.
pub fn encode_reply(
    out: &mut String,
    join_ref: Option<&str>,
    r#ref: Option<&str>,
    topic: &str,
    status: &str,
    response: &Value,
) {
    push_head(out, join_ref, r#ref, topic, EVENT_REPLY);
    out.push_str("{\"status\":");
    push_str(out, status);
    out.push_str(",\"response\":");
    push_value(out, response);
    out.push_str("}]");
}

/// Appends a gateway push `[null, "<ack_ref>" | null, topic, event, payload]`: encoded once,
/// shared by every connection joined to `topic`.
///
/// `join_ref` is null so one frame fits every connection (phoenix.js delivers a message
/// with a null `join_ref` to the channel joined on the topic, whatever its join). The
/// client's `channel.on(event, (payload, ref, joinRef) => …)` sees `ack_ref` as `ref`, a
/// string, which it sends back to ack. Note that the client's own refs are decimal strings
/// from one counter, and any incoming frame whose ref equals its pending heartbeat ref
/// counts as the heartbeat's reply; an ack ref that collides is harmless (the heartbeat is
/// taken as answered early) but the caller may want to keep ack refs distinct.
pub fn encode_push(
    out: &mut String,
    topic: &str,
    event: &str,
    ack_ref: Option<u64>,
    payload: &Value,
) {
    out.push_str("[null,");
    match ack_ref {
        // Writing to a String cannot fail.
        Some(id) => {
            let _ = write!(out, "\"{id}\",");
        }
        None => out.push_str("null,"),
    }
    push_str(out, topic);
    out.push(',');
    push_str(out, event);
    out.push(',');
    push_value(out, payload);
    out.push(']');
}

/// A string too long for a binary frame's one-byte length.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} is {len} bytes; a binary frame allows at most 255")]
pub struct FieldTooLong {
    pub field: &'static str,
    pub len: usize,
}

/// Appends a server binary push to one channel (kind 0 without a ref, as the Phoenix
/// serializer writes and phoenix.js reads it): `[0, join_ref_len, topic_len, event_len,
/// join_ref, topic, event, payload]`. phoenix.js hands the channel the payload as an
/// `ArrayBuffer`. Nothing is written on error.
pub fn encode_binary_push(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<(), FieldTooLong> {
    let join_ref = join_ref.unwrap_or("");
    let lens = [
        len_byte(join_ref, "join_ref")?,
        len_byte(topic, "topic")?,
        len_byte(event, "event")?,
    ];
    push_binary(
        out,
        binary_kind::PUSH,
        &lens,
        &[join_ref, topic, event],
        payload,
    );
    Ok(())
}

/// Appends a server binary reply: `[1, join_ref_len, ref_len, topic_len, status_len,
/// join_ref, ref, topic, status, response]`; phoenix.js turns it into a `phx_reply` with
/// `{status, response: ArrayBuffer}`. Nothing is written on error.
pub fn encode_binary_reply(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    r#ref: Option<&str>,
    topic: &str,
    status: &str,
    response: &[u8],
) -> Result<(), FieldTooLong> {
    let join_ref = join_ref.unwrap_or("");
    let r#ref = r#ref.unwrap_or("");
    let lens = [
        len_byte(join_ref, "join_ref")?,
        len_byte(r#ref, "ref")?,
        len_byte(topic, "topic")?,
        len_byte(status, "status")?,
    ];
    push_binary(
        out,
        binary_kind::REPLY,
        &lens,
        &[join_ref, r#ref, topic, status],
        response,
    );
    Ok(())
}

/// Appends a server binary broadcast: `[2, topic_len, event_len, topic, event, payload]`,
/// which phoenix.js delivers with null refs. Nothing is written on error.
pub fn encode_binary_broadcast(
    out: &mut Vec<u8>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<(), FieldTooLong> {
    let lens = [len_byte(topic, "topic")?, len_byte(event, "event")?];
    push_binary(out, binary_kind::BROADCAST, &lens, &[topic, event], payload);
    Ok(())
}

fn len_byte(s: &str, field: &'static str) -> Result<u8, FieldTooLong> {
    u8::try_from(s.len()).map_err(|_| FieldTooLong {
        field,
        len: s.len(),
    })
}

fn push_binary(out: &mut Vec<u8>, kind: u8, lens: &[u8], fields: &[&str], payload: &[u8]) {
    out.reserve(1 + lens.len() + fields.iter().map(|f| f.len()).sum::<usize>() + payload.len());
    out.push(kind);
    out.extend_from_slice(lens);
    for field in fields {
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(payload);
}

/// Whether a long-poll POST's `Content-Type` announces a newline-delimited batch, as
/// phoenix.js 1.7 and 1.8 always send (`application/x-ndjson`, no parameters). Phoenix
/// compares the header exactly; this ignores case and parameters.
pub fn is_ndjson(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("");
    media.trim().eq_ignore_ascii_case("application/x-ndjson")
}

/// Decodes a long-poll POST body into the frames it carries, lazily, in order.
///
/// With `ndjson` (see [`is_ndjson`]) the body is one frame per line (`\n` or `\r\n`): a line
/// starting with `[` is a text frame, any other is a binary frame in standard base64 (what
/// phoenix.js makes of an `ArrayBuffer` with `btoa`). Empty lines carry no frame and are
/// skipped, so a trailing newline is harmless. Without `ndjson` the whole body is one text
/// frame (older clients). The number of frames is not limited here: see [`MAX_POLL_BATCH`].
pub fn decode_poll_body(body: &[u8], ndjson: bool) -> PollBody<'_> {
    PollBody {
        rest: Some(body),
        ndjson,
    }
}

/// The frames of a long-poll POST body; see [`decode_poll_body`].
#[derive(Debug, Clone)]
pub struct PollBody<'a> {
    /// What is left to read; `None` once the last frame was yielded.
    rest: Option<&'a [u8]>,
    ndjson: bool,
}

impl Iterator for PollBody<'_> {
    type Item = Result<Message, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.ndjson {
            let body = self.rest.take()?;
            return Some(text_frame(body).and_then(decode));
        }
        loop {
            let rest = self.rest?;
            let line = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.rest = Some(&rest[end + 1..]);
                    &rest[..end]
                }
                None => {
                    self.rest = None;
                    rest
                }
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            return Some(if line.starts_with(b"[") {
                text_frame(line).and_then(decode)
            } else {
                base64_decode(line)
                    .ok_or(DecodeError::BadBase64)
                    .and_then(|bytes| decode_binary(&Bytes::from(bytes)))
            });
        }
    }
}

fn text_frame(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8 { field: "frame" })
}

/// Appends a long-poll GET answer `{"status":…,"token":"…","messages":["<frame>",…]}`,
/// each message an already encoded text frame embedded as a JSON string.
///
/// Every GET answer must carry the token, including 204 and 410: phoenix.js replaces its
/// token with whatever the answer holds, and polls without one start a new session.
pub fn encode_poll_response<I>(out: &mut String, status: u16, token: &str, messages: I)
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    // Writing to a String cannot fail.
    let _ = write!(out, "{{\"status\":{status},\"token\":");
    push_str(out, token);
    out.push_str(",\"messages\":[");
    for (i, message) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, message.as_ref());
    }
    out.push_str("]}");
}

/// Appends `{"status":…}`: the answer to a POST (200, 408, 410) and to a refused GET (403),
/// as Phoenix sends them.
pub fn encode_poll_status(out: &mut String, status: u16) {
    let _ = write!(out, "{{\"status\":{status}}}");
}

/// The 1.8 `authToken` from a `Sec-WebSocket-Protocol` request header (the values joined
/// with `,` when the header is repeated): the raw token bytes, or `None` when the header
/// holds no `base64url.bearer.phx.` entry or more than one (Phoenix then sees no token).
/// `Err(BadBase64)` when the one entry does not decode.
///
/// The server must then answer with `Sec-WebSocket-Protocol: phoenix` (see
/// [`offers_phoenix_subprotocol`]), or the client fails the handshake.
pub fn auth_token_from_protocols(header: &str) -> Result<Option<Vec<u8>>, DecodeError> {
    let mut tokens = protocol_list(header).filter_map(|p| p.strip_prefix(AUTH_TOKEN_PREFIX));
    match (tokens.next(), tokens.next()) {
        (Some(encoded), None) => base64_decode(encoded.as_bytes())
            .map(Some)
            .ok_or(DecodeError::BadBase64),
        _ => Ok(None),
    }
}

/// Whether a `Sec-WebSocket-Protocol` request header offers the `phoenix` subprotocol,
/// which phoenix.js 1.8 always lists before its auth token.
pub fn offers_phoenix_subprotocol(header: &str) -> bool {
    protocol_list(header).any(|p| p == SUBPROTOCOL_PHOENIX)
}

/// The comma-separated entries of a header, trimmed, empty ones dropped
/// (`Plug.Conn.Utils.list`).
fn protocol_list(header: &str) -> impl Iterator<Item = &str> {
    header.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// Decodes standard base64 (`+`, `/`), padded or not, as `btoa` writes it and as the
/// `authToken` subprotocol carries it with the padding stripped. `None` on any other byte,
/// on misplaced padding or on an impossible length.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn sextet(b: u8) -> Option<u32> {
        Some(u32::from(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let data = match input {
        [rest @ .., b'=', b'='] | [rest @ .., b'='] if input.len() % 4 == 0 => rest,
        _ => input,
    };
    if data.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for &b in chunk {
            acc = (acc << 6) | sextet(b)?;
        }
        // Left-align the chunk's bits in 24, then keep the whole bytes it holds.
        acc <<= 6 * (4 - chunk.len() as u32);
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Writes `[join_ref,ref,topic,event,` (refs as strings or null).
fn push_head(
    out: &mut String,
    join_ref: Option<&str>,
    r#ref: Option<&str>,
    topic: &str,
    event: &str,
) {
    out.push('[');
    for r in [join_ref, r#ref] {
        match r {
            Some(r) => push_str(out, r),
            None => out.push_str("null"),
        }
        out.push(',');
    }
    push_str(out, topic);
    out.push(',');
    push_str(out, event);
    out.push(',');
}

/// Appends `s` as a JSON string, escaped by serde_json.
fn push_str(out: &mut String, s: &str) {
    with_bytes(out, |bytes| serde_json::to_writer(bytes, s));
}

/// Appends `value` as JSON.
fn push_value(out: &mut String, value: &Value) {
    with_bytes(out, |bytes| serde_json::to_writer(bytes, value));
}

/// Lends `out`'s bytes to `write` as a `Vec<u8>` and takes them back, which moves no data:
/// serde_json appends without an intermediate buffer.
fn with_bytes(out: &mut String, write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>) {
    let mut bytes = std::mem::take(out).into_bytes();
    let start = bytes.len();
    // Strings and `Value`s (whose keys are strings) always serialise, and serde_json writes
    // UTF-8; the fallbacks only keep this total.
    if write(&mut bytes).is_err() {
        bytes.truncate(start);
    }
    *out = String::from_utf8(bytes).unwrap_or_else(|e| {
        let mut bytes = e.into_bytes();
        bytes.truncate(start);
        String::from_utf8(bytes).unwrap_or_default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(
        join_ref: Option<&str>,
        r: Option<&str>,
        topic: &str,
        event: &str,
        p: Value,
    ) -> Message {
        Message {
            join_ref: join_ref.map(str::to_owned),
            r#ref: r.map(str::to_owned),
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: Payload::Json(p),
        }
    }

    fn encoded(m: &Message) -> String {
        let Payload::Json(payload) = &m.payload else {
            panic!("binary payload");
        };
        let mut out = String::new();
        encode_message(
            &mut out,
            m.join_ref.as_deref(),
            m.r#ref.as_deref(),
            &m.topic,
            &m.event,
            payload,
        );
        out
    }

    /// `[0, lens…, join_ref, ref, topic, event, payload]` as phoenix.js `binaryEncode` writes.
    fn client_binary(join_ref: &str, r: &str, topic: &str, event: &str, payload: &[u8]) -> Bytes {
        let mut out = vec![0, join_ref.len() as u8, r.len() as u8, topic.len() as u8];
        out.push(event.len() as u8);
        for f in [join_ref, r, topic, event] {
            out.extend_from_slice(f.as_bytes());
        }
        out.extend_from_slice(payload);
        Bytes::from(out)
    }

    #[test]
    fn join_decodes_with_refs_topic_event_and_params() {
        assert_eq!(
            decode(r#"["3","3","room:lobby","phx_join",{"token":"t"}]"#),
            Ok(text(
                Some("3"),
                Some("3"),
                "room:lobby",
                "phx_join",
                json!({"token": "t"})
            ))
        );
    }

    #[test]
    fn heartbeat_decodes_with_a_null_join_ref() {
        assert_eq!(
            decode(r#"[null,"5","phoenix","heartbeat",{}]"#),
            Ok(text(None, Some("5"), "phoenix", "heartbeat", json!({})))
        );
    }

    #[test]
    fn payload_may_be_any_json() {
        for p in ["null", "[1,2]", "\"s\"", "1.5"] {
            let m = decode(&format!(r#"["1","2","t","e",{p}]"#)).unwrap();
            assert_eq!(m.payload, Payload::Json(serde_json::from_str(p).unwrap()));
        }
    }

    #[test]
    fn non_json_is_an_error() {
        for bad in ["", "[", "nope", r#"["1","2","t","e",{}]x"#] {
            assert!(matches!(decode(bad), Err(DecodeError::NotJson(_))), "{bad}");
        }
    }

    #[test]
    fn a_frame_must_be_an_array() {
        assert_eq!(decode(r#"{"topic":"t"}"#), Err(DecodeError::NotAnArray));
        assert_eq!(decode("\"x\""), Err(DecodeError::NotAnArray));
    }

    #[test]
    fn a_frame_must_have_exactly_five_elements() {
        assert_eq!(decode("[]"), Err(DecodeError::WrongArity { got: 0 }));
        assert_eq!(
            decode(r#"["1","2","t","e"]"#),
            Err(DecodeError::WrongArity { got: 4 })
        );
        assert_eq!(
            decode(r#"["1","2","t","e",{},1]"#),
            Err(DecodeError::WrongArity { got: 6 })
        );
    }

    #[test]
    fn refs_must_be_strings_or_null() {
        assert_eq!(
            decode(r#"[1,"2","t","e",{}]"#),
            Err(DecodeError::RefNotString { field: "join_ref" })
        );
        assert_eq!(
            decode(r#"["1",2,"t","e",{}]"#),
            Err(DecodeError::RefNotString { field: "ref" })
        );
        assert_eq!(
            decode(r#"["1",{},"t","e",{}]"#),
            Err(DecodeError::RefNotString { field: "ref" })
        );
    }

    #[test]
    fn refs_longer_than_255_bytes_are_refused() {
        let long = "1".repeat(256);
        assert_eq!(
            decode(&format!(r#"["{long}","2","t","e",{{}}]"#)),
            Err(DecodeError::RefTooLong {
                field: "join_ref",
                len: 256
            })
        );
        let ok = "1".repeat(255);
        assert!(decode(&format!(r#"["1","{ok}","t","e",{{}}]"#)).is_ok());
    }

    #[test]
    fn topic_must_be_a_non_empty_string_of_at_most_255_bytes() {
        assert_eq!(
            decode(r#"["1","2",7,"e",{}]"#),
            Err(DecodeError::TopicNotString)
        );
        assert_eq!(
            decode(r#"["1","2",null,"e",{}]"#),
            Err(DecodeError::TopicNotString)
        );
        assert_eq!(
            decode(r#"["1","2","","e",{}]"#),
            Err(DecodeError::EmptyTopic)
        );
        // 128 two-byte characters: the limit counts bytes, not characters.
        let long = "é".repeat(128);
        assert_eq!(
            decode(&format!(r#"["1","2","{long}","e",{{}}]"#)),
            Err(DecodeError::TopicTooLong { len: 256 })
        );
    }

    #[test]
    fn event_must_be_a_non_empty_string_of_at_most_255_bytes() {
        assert_eq!(
            decode(r#"["1","2","t",false,{}]"#),
            Err(DecodeError::EventNotString)
        );
        assert_eq!(
            decode(r#"["1","2","t","",{}]"#),
            Err(DecodeError::EmptyEvent)
        );
        let long = "e".repeat(256);
        assert_eq!(
            decode(&format!(r#"["1","2","t","{long}",{{}}]"#)),
            Err(DecodeError::EventTooLong { len: 256 })
        );
    }

    #[test]
    fn decode_errors_read_as_sentences() {
        assert_eq!(
            DecodeError::WrongArity { got: 3 }.to_string(),
            "frame must have 5 elements, got 3"
        );
        assert_eq!(
            DecodeError::RefNotString { field: "ref" }.to_string(),
            "ref must be a string or null"
        );
        assert_eq!(
            DecodeError::Truncated { needed: 9, got: 7 }.to_string(),
            "binary frame is truncated: needs 9 bytes, got 7"
        );
    }

    #[test]
    fn encode_message_writes_the_five_element_array() {
        let mut out = String::new();
        encode_message(
            &mut out,
            Some("3"),
            None,
            "room:lobby",
            "new_msg",
            &json!({"body": "hi"}),
        );
        assert_eq!(out, r#"["3",null,"room:lobby","new_msg",{"body":"hi"}]"#);
    }

    #[test]
    fn encode_message_appends_to_what_out_holds() {
        let mut out = String::from("x");
        encode_message(&mut out, None, None, "t", "e", &json!({}));
        assert_eq!(out, r#"x[null,null,"t","e",{}]"#);
    }

    #[test]
    fn odd_topics_and_events_are_escaped_and_round_trip() {
        for (topic, event) in [
            ("room:\"quoted\"", "back\\slash"),
            ("line\nbreak\ttab", "nul\u{0}ctl\u{1f}"),
            ("ünï:cödé", "emoji 🎉"),
            ("sep\u{2028}arator", "</script>"),
        ] {
            let m = text(Some("1"), Some("2"), topic, event, json!({"k": topic}));
            let out = encoded(&m);
            assert!(!out.contains('\n'), "{out}");
            assert_eq!(decode(&out), Ok(m));
        }
    }

    #[test]
    fn decode_then_encode_reproduces_canonical_frames() {
        for frame in [
            r#"["3","3","room:lobby","phx_join",{}]"#,
            r#"[null,"5","phoenix","heartbeat",{}]"#,
            r#"["3","7","room:lobby","pushgate:ack",{"id":"a1"}]"#,
            r#"[null,null,"t","e",[1,{"a":null}]]"#,
        ] {
            assert_eq!(encoded(&decode(frame).unwrap()), frame);
        }
    }

    #[test]
    fn non_canonical_frames_encode_to_an_equal_message() {
        let m = decode(" [ \"1\" , null , \"t\\u0041\" , \"e\" , { \"a\" : 1 } ] ").unwrap();
        assert_eq!(m.topic, "tA");
        assert_eq!(decode(&encoded(&m)), Ok(m));
    }

    #[test]
    fn encode_reply_wraps_status_and_response() {
        let mut out = String::new();
        encode_reply(
            &mut out,
            Some("3"),
            Some("3"),
            "room:lobby",
            "ok",
            &json!({"a": 1}),
        );
        assert_eq!(
            out,
            r#"["3","3","room:lobby","phx_reply",{"status":"ok","response":{"a":1}}]"#
        );
    }

    #[test]
    fn heartbeat_reply_has_a_null_join_ref_and_an_empty_response() {
        let mut out = String::new();
        encode_reply(&mut out, None, Some("5"), TOPIC_PHOENIX, "ok", &json!({}));
        assert_eq!(
            out,
            r#"[null,"5","phoenix","phx_reply",{"status":"ok","response":{}}]"#
        );
    }

    #[test]
    fn encode_reply_escapes_the_status() {
        let mut out = String::new();
        encode_reply(&mut out, None, None, "t", "e\"r", &json!(null));
        assert_eq!(
            out,
            r#"[null,null,"t","phx_reply",{"status":"e\"r","response":null}]"#
        );
    }

    #[test]
    fn encode_push_writes_the_ack_ref_as_a_string() {
        let mut out = String::new();
        encode_push(&mut out, "room:a", "news", Some(42), &json!({"x": 1}));
        assert_eq!(out, r#"[null,"42","room:a","news",{"x":1}]"#);
        let m = decode(&out).unwrap();
        assert_eq!(m.r#ref.as_deref(), Some("42"));
        assert_eq!(m.join_ref, None);
    }

    #[test]
    fn encode_push_without_ack_has_null_refs() {
        let mut out = String::new();
        encode_push(&mut out, "user:7", "ev\"il", None, &json!([]));
        assert_eq!(out, r#"[null,null,"user:7","ev\"il",[]]"#);
    }

    #[test]
    fn reserved_events_are_the_phx_heartbeat_presence_and_client_reply_names() {
        for e in [
            EVENT_JOIN,
            EVENT_LEAVE,
            EVENT_REPLY,
            EVENT_ERROR,
            EVENT_CLOSE,
            "phx_future",
            EVENT_HEARTBEAT,
            EVENT_PRESENCE_STATE,
            EVENT_PRESENCE_DIFF,
            "chan_reply_12",
        ] {
            assert!(is_reserved_event(e), "{e}");
        }
        for e in [
            "news",
            "phx",
            "heartbeats",
            "presence",
            "chan_reply",
            "pushgate:ack",
        ] {
            assert!(!is_reserved_event(e), "{e}");
        }
    }

    #[test]
    fn only_vsn_2_0_x_is_supported() {
        for v in ["2.0.0", "2.0.1", "2.0.10"] {
            assert!(is_supported_vsn(v), "{v}");
        }
        for v in [
            "",
            "1.0.0",
            "2.0",
            "2.1.0",
            "2.0.0-rc.1",
            "2.0.01",
            "3.0.0",
            "2.0.x",
        ] {
            assert!(!is_supported_vsn(v), "{v}");
        }
    }

    #[test]
    fn binary_push_decodes_with_a_zero_copy_payload() {
        let frame = client_binary("3", "7", "room:lobby", "upload", &[0, 255, 1]);
        let m = decode_binary(&frame).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("3"));
        assert_eq!(m.r#ref.as_deref(), Some("7"));
        assert_eq!(m.topic, "room:lobby");
        assert_eq!(m.event, "upload");
        let Payload::Binary(payload) = &m.payload else {
            panic!("not binary");
        };
        assert_eq!(&payload[..], &[0, 255, 1]);
        assert_eq!(payload.as_ptr(), frame[frame.len() - 3..].as_ptr());
    }

    #[test]
    fn binary_push_may_have_an_empty_payload_and_empty_refs() {
        let m = decode_binary(&client_binary("", "", "t", "e", &[])).unwrap();
        assert_eq!((m.join_ref, m.r#ref), (None, None));
        assert_eq!(m.payload, Payload::Binary(Bytes::new()));
    }

    #[test]
    fn binary_frames_other_than_a_push_are_refused() {
        assert_eq!(decode_binary(&Bytes::new()), Err(DecodeError::EmptyBinary));
        for kind in [1u8, 2, 3, 255] {
            assert_eq!(
                decode_binary(&Bytes::from(vec![kind, 0, 0, 1, 1, b't', b'e'])),
                Err(DecodeError::UnsupportedKind(kind))
            );
        }
    }

    #[test]
    fn truncated_binary_frames_are_refused() {
        let frame = client_binary("3", "7", "topic", "event", &[]);
        for cut in 1..frame.len() {
            let short = frame.slice(..cut);
            let needed = if cut < 5 { 5 } else { frame.len() };
            assert_eq!(
                decode_binary(&short),
                Err(DecodeError::Truncated { needed, got: cut }),
                "cut at {cut}"
            );
        }
        assert!(decode_binary(&frame).is_ok());
    }

    #[test]
    fn binary_strings_must_be_utf8_and_topic_event_non_empty() {
        let mut bytes = client_binary("3", "7", "t", "e", b"p").to_vec();
        bytes[7] = 0xff; // the topic byte
        assert_eq!(
            decode_binary(&Bytes::from(bytes)),
            Err(DecodeError::NotUtf8 { field: "topic" })
        );
        assert_eq!(
            decode_binary(&client_binary("3", "7", "", "e", b"")),
            Err(DecodeError::EmptyTopic)
        );
        assert_eq!(
            decode_binary(&client_binary("3", "7", "t", "", b"")),
            Err(DecodeError::EmptyEvent)
        );
    }

    #[test]
    fn binary_server_frames_have_the_layouts_phoenix_js_reads() {
        let mut out = Vec::new();
        encode_binary_push(&mut out, Some("3"), "t", "ev", b"P").unwrap();
        assert_eq!(out, b"\x00\x01\x01\x023tevP");

        out.clear();
        encode_binary_reply(&mut out, Some("3"), Some("9"), "t", "ok", b"R").unwrap();
        assert_eq!(out, b"\x01\x01\x01\x01\x0239tokR");

        out.clear();
        encode_binary_broadcast(&mut out, "t", "ev", b"B").unwrap();
        assert_eq!(out, b"\x02\x01\x02tevB");
    }

    #[test]
    fn binary_server_frames_refuse_fields_over_255_bytes_and_write_nothing() {
        let long = "t".repeat(256);
        let mut out = vec![9];
        assert_eq!(
            encode_binary_broadcast(&mut out, &long, "e", b""),
            Err(FieldTooLong {
                field: "topic",
                len: 256
            })
        );
        assert_eq!(
            encode_binary_reply(&mut out, None, Some(&long), "t", "ok", b""),
            Err(FieldTooLong {
                field: "ref",
                len: 256
            })
        );
        assert_eq!(out, [9]);
    }

    #[test]
    fn poll_response_embeds_frames_as_json_strings() {
        let mut a = String::new();
        encode_push(&mut a, "t", "e", Some(1), &json!({"q": "\"x\""}));
        let mut out = String::new();
        encode_poll_response(&mut out, poll_status::OK, "tok+/=", [a.as_str(), "[1]"]);
        let parsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            parsed,
            json!({"status": 200, "token": "tok+/=", "messages": [a, "[1]"]})
        );
    }

    #[test]
    fn poll_response_without_messages_has_an_empty_list() {
        let mut out = String::new();
        encode_poll_response(&mut out, poll_status::GONE, "t", [] as [&str; 0]);
        assert_eq!(out, r#"{"status":410,"token":"t","messages":[]}"#);
        out.clear();
        encode_poll_response(&mut out, poll_status::NO_CONTENT, "t", Vec::<String>::new());
        assert_eq!(out, r#"{"status":204,"token":"t","messages":[]}"#);
    }

    #[test]
    fn poll_status_is_a_bare_status_object() {
        let mut out = String::new();
        encode_poll_status(&mut out, poll_status::FORBIDDEN);
        assert_eq!(out, r#"{"status":403}"#);
    }

    #[test]
    fn ndjson_content_type_ignores_case_and_parameters() {
        assert!(is_ndjson("application/x-ndjson"));
        assert!(is_ndjson("Application/X-NDJSON; charset=UTF-8"));
        assert!(!is_ndjson("application/json"));
        assert!(!is_ndjson(""));
    }

    #[test]
    fn ndjson_poll_body_yields_one_frame_per_line() {
        let body =
            b"[\"1\",\"1\",\"t\",\"phx_join\",{}]\n[null,\"2\",\"phoenix\",\"heartbeat\",{}]";
        let frames: Vec<_> = decode_poll_body(body, true).collect();
        assert_eq!(
            frames,
            vec![
                Ok(text(Some("1"), Some("1"), "t", "phx_join", json!({}))),
                Ok(text(None, Some("2"), "phoenix", "heartbeat", json!({}))),
            ]
        );
    }

    #[test]
    fn ndjson_poll_body_accepts_crlf_and_skips_empty_lines() {
        let body = b"[\"1\",\"1\",\"t\",\"e\",{}]\r\n\r\n[\"1\",\"2\",\"t\",\"e\",{}]\n";
        let refs: Vec<_> = decode_poll_body(body, true)
            .map(|m| m.unwrap().r#ref.unwrap())
            .collect();
        assert_eq!(refs, ["1", "2"]);
        assert_eq!(decode_poll_body(b"", true).count(), 0);
    }

    #[test]
    fn ndjson_poll_body_lines_not_starting_with_a_bracket_are_base64_binary_frames() {
        let frame = client_binary("3", "7", "t", "e", &[1, 2, 3]);
        // btoa of the frame's bytes, as phoenix.js longpoll.js sends it.
        let line = "AAEBAQEzN3RlAQID";
        assert_eq!(base64_decode(line.as_bytes()).as_deref(), Some(&frame[..]));
        let body = format!("{line}\n[\"3\",\"8\",\"t\",\"e\",{{}}]");
        let frames: Vec<_> = decode_poll_body(body.as_bytes(), true).collect();
        assert_eq!(frames[0], decode_binary(&frame));
        assert_eq!(frames[1].as_ref().unwrap().r#ref.as_deref(), Some("8"));
    }

    #[test]
    fn a_long_poll_post_recorded_from_phoenix_js_1_8_16_decodes() {
        // channel.push("up", ArrayBuffer [1,2,3]) then channel.push("j", {a: 1}), batched.
        let body = b"AAEBBgIzNHJvb206YXVwAQID\n[\"3\",\"5\",\"room:a\",\"j\",{\"a\":1}]";
        let frames: Vec<_> = decode_poll_body(body, is_ndjson("application/x-ndjson")).collect();
        let bin = Message {
            join_ref: Some("3".into()),
            r#ref: Some("4".into()),
            topic: "room:a".into(),
            event: "up".into(),
            payload: Payload::Binary(Bytes::from_static(&[1, 2, 3])),
        };
        assert_eq!(
            frames,
            vec![
                Ok(bin),
                Ok(text(Some("3"), Some("5"), "room:a", "j", json!({"a": 1})))
            ]
        );
    }

    #[test]
    fn ndjson_poll_body_reports_each_bad_line_and_continues() {
        let body = b"!!!\n[\"1\",\"2\",\"t\",\"e\",{}]\n[1]\n\xff[";
        let frames: Vec<_> = decode_poll_body(body, true).collect();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0], Err(DecodeError::BadBase64));
        assert!(frames[1].is_ok());
        assert_eq!(frames[2], Err(DecodeError::WrongArity { got: 1 }));
        assert_eq!(frames[3], Err(DecodeError::BadBase64));
    }

    #[test]
    fn non_ndjson_poll_body_is_one_text_frame() {
        let body = b"[\"1\",\"2\",\"t\",\"e\",{\"a\":\"x\\ny\"}]";
        let frames: Vec<_> = decode_poll_body(body, false).collect();
        assert_eq!(
            frames,
            vec![Ok(text(
                Some("1"),
                Some("2"),
                "t",
                "e",
                json!({"a": "x\ny"})
            ))]
        );
        assert_eq!(
            decode_poll_body(b"\xff", false).collect::<Vec<_>>(),
            vec![Err(DecodeError::NotUtf8 { field: "frame" })]
        );
    }

    #[test]
    fn base64_accepts_padded_and_unpadded_standard_alphabet_only() {
        assert_eq!(base64_decode(b"").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode(b"YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode(b"YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode(b"YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode(b"YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(base64_decode(b"+/8=").as_deref(), Some(&[0xfb, 0xff][..]));
        for bad in [&b"Y"[..], b"YQ=", b"Y===", b"-_8=", b"YQ==YQ==", b"Y Q="] {
            assert_eq!(base64_decode(bad), None, "{:?}", std::str::from_utf8(bad));
        }
    }

    #[test]
    fn auth_token_is_read_from_the_bearer_subprotocol() {
        // btoa("my token?>") with "=" removed: standard alphabet, so "+" and "/" appear.
        assert_eq!(
            auth_token_from_protocols("phoenix, base64url.bearer.phx.bXkgdG9rZW4/Pg"),
            Ok(Some(b"my token?>".to_vec()))
        );
        assert_eq!(auth_token_from_protocols("phoenix"), Ok(None));
        assert_eq!(auth_token_from_protocols(""), Ok(None));
        assert_eq!(
            auth_token_from_protocols("base64url.bearer.phx.YQ,base64url.bearer.phx.Yg"),
            Ok(None)
        );
        assert_eq!(
            auth_token_from_protocols("phoenix, base64url.bearer.phx.***"),
            Err(DecodeError::BadBase64)
        );
    }

    #[test]
    fn phoenix_subprotocol_must_be_offered_as_a_whole_entry() {
        assert!(offers_phoenix_subprotocol(
            "phoenix, base64url.bearer.phx.YQ"
        ));
        assert!(offers_phoenix_subprotocol(" x ,phoenix"));
        assert!(!offers_phoenix_subprotocol("phoenix2"));
        assert!(!offers_phoenix_subprotocol(""));
    }

    #[test]
    fn deeply_nested_payloads_are_an_error_not_a_stack_overflow() {
        let deep = format!(
            r#"["1","2","t","e",{}{}]"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(matches!(decode(&deep), Err(DecodeError::NotJson(_))));
    }
}
