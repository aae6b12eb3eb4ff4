//! Socket.IO v5 packet codec (the default `socket.io-parser` format), the binary attachment
//! [`Assembler`], and [`extract_binary`] for `$binary` values in HTTP pushes
//! (protocols.md §2).
//!
//! Pure: no I/O, no async. The text form is
//! `<type>[<attachments>-][<nsp>,][<ack id>][<JSON payload>]`, and every Socket.IO packet
//! travels inside an Engine.IO message, so the encoders here write the Engine.IO `4` too
//! (`42["foo"]`), while [`decode`] takes the text *after* that `4`.

use std::fmt::Write as _;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

/// Most binary attachments one packet may announce. It is `socket.io-parser`'s default
/// `maxAttachments`, enforced by the server *and* by `socket.io-client`'s decoder, so a
/// packet with more would be refused at either end (§2.1).
pub const MAX_ATTACHMENTS: usize = 10;

/// Event names that have a meaning of their own on the client or server, and so may not be
/// sent in an EVENT (§2.1).
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Lenient standard base64, as in `engineio`: Node decodes with `Buffer.from(s, "base64")`,
/// which does not insist on padding, and HTTP callers often drop it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The seven Socket.IO packet types; the discriminant is the wire digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

impl PacketKind {
    /// The kind a wire digit names, if any.
    pub fn from_digit(digit: u8) -> Option<Self> {
        Some(match digit {
            b'0' => PacketKind::Connect,
            b'1' => PacketKind::Disconnect,
            b'2' => PacketKind::Event,
            b'3' => PacketKind::Ack,
            b'4' => PacketKind::ConnectError,
            b'5' => PacketKind::BinaryEvent,
            b'6' => PacketKind::BinaryAck,
            _ => return None,
        })
    }

    /// The wire digit.
    pub fn digit(self) -> char {
        char::from(b'0' + self as u8)
    }

    /// Whether binary attachments follow the packet (and its header has the `<n>-` count).
    pub fn is_binary(self) -> bool {
        matches!(self, PacketKind::BinaryEvent | PacketKind::BinaryAck)
    }
}

/// A decoded Socket.IO packet (the text part; binary attachments come separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub kind: PacketKind,
    /// The namespace; `/` when the packet names none.
    pub nsp: String,
    /// The ack id: the sender wants an ACK with this id back.
    pub id: Option<u64>,
    /// How many binary messages follow; more than 0 only for BinaryEvent/BinaryAck.
    pub attachments: usize,
    /// The payload, with `{"_placeholder":true,"num":i}` left in place of binary values.
    pub data: Option<Value>,
}

/// Why a text message is not a valid Socket.IO packet, or why a binary message came at the
/// wrong time. Any of these is a parse error, and the server closes the connection (§2.1).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// The `<n>-` of a binary packet is missing, not a number, or 0.
    #[error("illegal attachment count")]
    BadAttachmentCount,
    #[error("too many attachments (the limit is {MAX_ATTACHMENTS})")]
    TooManyAttachments,
    /// The ack id does not fit in a u64.
    #[error("ack id out of range")]
    BadAckId,
    #[error("payload is not valid JSON")]
    InvalidJson(#[source] JsonError),
    #[error("invalid payload for {kind:?}: expected {expected}")]
    InvalidPayload {
        kind: PacketKind,
        expected: &'static str,
    },
    #[error("event name {0:?} is reserved")]
    ReservedEvent(String),
    /// A `{"_placeholder":true,…}` whose `num` names no announced attachment.
    #[error("placeholder does not name one of the {attachments} attachments")]
    BadPlaceholder { attachments: usize },
    /// A text message arrived while a binary packet still awaited attachments.
    #[error("text message while {missing} binary attachment(s) are still awaited")]
    UnexpectedText { missing: usize },
    /// A binary message arrived with no binary packet awaiting it.
    #[error("binary message with no binary packet awaiting attachments")]
    UnexpectedBinary,
}

pub use crate::frontend::JsonError;

/// Decodes the Socket.IO packet carried in one Engine.IO text message (the text after the
/// Engine.IO `4`).
///
/// Follows `socket.io-parser`'s decoder (§2.1): the attachment count runs to a mandatory
/// `-` and must be 1..=10; the namespace runs from a leading `/` to the first `,` or to the
/// end of input (`/custom` and `/custom,` are both valid); the ack id is the run of digits
/// after it; JSON follows and must suit the kind. Where the reference parser lets a missing
/// payload through (EVENT, ACK, CONNECT_ERROR), this one refuses it, as the spec's
/// validity rules do: no client sends those without one.
pub fn decode(text: &str) -> Result<Packet, DecodeError> {
    let (&type_byte, _) = text.as_bytes().split_first().ok_or(DecodeError::Empty)?;
    let Some(kind) = PacketKind::from_digit(type_byte) else {
        let first = text.chars().next().unwrap_or_default();
        return Err(DecodeError::UnknownType(first));
    };
    // The type is one ASCII byte, so 1 is a character boundary.
    let mut rest = &text[1..];

    let mut attachments = 0;
    if kind.is_binary() {
        let (count, after) = split_digits(rest);
        rest = after
            .strip_prefix('-')
            .ok_or(DecodeError::BadAttachmentCount)?;
        if count.is_empty() {
            return Err(DecodeError::BadAttachmentCount);
        }
        // All digits, so parsing fails only on overflow: far too many either way.
        attachments = count.parse().map_err(|_| DecodeError::TooManyAttachments)?;
        if attachments == 0 {
            return Err(DecodeError::BadAttachmentCount);
        }
        if attachments > MAX_ATTACHMENTS {
            return Err(DecodeError::TooManyAttachments);
        }
    }

    let nsp = if rest.starts_with('/') {
        let (nsp, after) = rest.split_once(',').unwrap_or((rest, ""));
        rest = after;
        nsp
    } else {
        "/"
    };

    let (digits, after) = split_digits(rest);
    rest = after;
    let id = if digits.is_empty() {
        None
    } else {
        Some(digits.parse().map_err(|_| DecodeError::BadAckId)?)
    };

    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str(rest).map_err(|e| DecodeError::InvalidJson(JsonError(e)))?)
    };
    check_payload(kind, data.as_ref())?;

    Ok(Packet {
        kind,
        nsp: nsp.to_owned(),
        id,
        attachments,
        data,
    })
}

/// Splits `text` after its leading ASCII digits.
fn split_digits(text: &str) -> (&str, &str) {
    let end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    // Digits are ASCII, so `end` is a character boundary.
    text.split_at(end)
}

/// The payload validity rules of §2.1 (`isPayloadValid` in `socket.io-parser`).
fn check_payload(kind: PacketKind, data: Option<&Value>) -> Result<(), DecodeError> {
    let invalid = |expected| Err(DecodeError::InvalidPayload { kind, expected });
    match kind {
        PacketKind::Connect => match data {
            None | Some(Value::Object(_)) => Ok(()),
            Some(_) => invalid("an object or nothing"),
        },
        PacketKind::Disconnect => match data {
            None => Ok(()),
            Some(_) => invalid("no payload"),
        },
        PacketKind::Event | PacketKind::BinaryEvent => {
            match data.and_then(Value::as_array).and_then(|a| a.first()) {
                Some(Value::Number(_)) => Ok(()),
                Some(Value::String(name)) if RESERVED_EVENTS.contains(&name.as_str()) => {
                    Err(DecodeError::ReservedEvent(name.clone()))
                }
                Some(Value::String(_)) => Ok(()),
                _ => invalid("a non-empty array starting with an event name or number"),
            }
        }
        PacketKind::Ack | PacketKind::BinaryAck => match data {
            Some(Value::Array(_)) => Ok(()),
            _ => invalid("an array"),
        },
        PacketKind::ConnectError => match data {
            Some(Value::Object(_) | Value::String(_)) => Ok(()),
            _ => invalid("an object or a string"),
        },
    }
}

/// Encodes a packet as the full Engine.IO message text, including the leading Engine.IO
/// `4` (e.g. `42/admin,12["a",1]`). The namespace is written only when it is not `/`.
///
/// The inverse of [`decode`] for every packet `decode` returns. A binary kind always gets
/// its `<n>-` count, so a hand-built one with `attachments == 0` does not decode back.
pub fn encode(packet: &Packet) -> String {
    let mut out = String::new();
    push_header(
        &mut out,
        packet.kind,
        packet.attachments,
        &packet.nsp,
        packet.id,
    );
    if let Some(data) = &packet.data {
        push_json(&mut out, data);
    }
    out
}

/// Fast path used once per push: writes `4` + `2` (or `5<n>-` when `attachments > 0`) +
/// `<nsp>,` (when not `/`) + `<id>` (when `Some`) + `["<event>",<arg>]` (or `["<event>"]`
/// when `arg` is `None`), appending to `out` without building a `Value`.
///
/// The text is encoded once and shared by every receiving connection, so the only
/// allocation is `out`'s own growth.
pub fn encode_event(
    out: &mut String,
    nsp: &str,
    id: Option<u64>,
    attachments: usize,
    event: &str,
    arg: Option<&Value>,
) {
    let kind = if attachments > 0 {
        PacketKind::BinaryEvent
    } else {
        PacketKind::Event
    };
    push_header(out, kind, attachments, nsp, id);
    out.push('[');
    push_json(out, event);
    if let Some(arg) = arg {
        out.push(',');
        push_json(out, arg);
    }
    out.push(']');
}

/// Appends an EVENT as [`encode_event`] does, with `offset` as a last string argument:
/// the connection state recovery offset, which socket.io-client keeps from the last
/// argument of every event without an ack id and sends back when it reconnects
/// (§2.3). Listeners see it as an extra argument, as with socket.io's own recovery.
pub fn encode_recoverable_event(
    out: &mut String,
    nsp: &str,
    attachments: usize,
    event: &str,
    arg: Option<&Value>,
    offset: &str,
) {
    encode_event(out, nsp, None, attachments, event, arg);
    out.pop();
    out.push(',');
    push_json(out, offset);
    out.push(']');
}

/// Appends the CONNECT reply of a socket with connection state recovery:
/// `40{"sid":"…","pid":"…"}`. The client sets `recovered` when `pid` is the one it
/// sent back.
pub fn encode_connect_with_pid(out: &mut String, nsp: &str, sid: &str, pid: &str) {
    encode_connect(out, nsp, sid);
    out.pop();
    out.push_str(",\"pid\":");
    push_json(out, pid);
    out.push('}');
}

/// Appends `40{"sid":"…"}` (with `/nsp,` when not `/`): the CONNECT reply. The client
/// accepts it only if `sid` is present (§2.3).
pub fn encode_connect(out: &mut String, nsp: &str, sid: &str) {
    push_header(out, PacketKind::Connect, 0, nsp, None);
    out.push_str("{\"sid\":");
    push_json(out, sid);
    out.push('}');
}

/// Appends `44{"message":"…","data":…}`, with `data` omitted when `None`, as Node omits an
/// undefined `data` (§2.3).
pub fn encode_connect_error(out: &mut String, nsp: &str, message: &str, data: Option<&Value>) {
    push_header(out, PacketKind::ConnectError, 0, nsp, None);
    out.push_str("{\"message\":");
    push_json(out, message);
    if let Some(data) = data {
        out.push_str(",\"data\":");
        push_json(out, data);
    }
    out.push('}');
}

/// Appends `41` (with `/nsp,` when not `/`).
pub fn encode_disconnect(out: &mut String, nsp: &str) {
    push_header(out, PacketKind::Disconnect, 0, nsp, None);
}

/// Appends `43<id>[args…]`, or `46<n>-…` when `attachments > 0`; `args` is the JSON array
/// of ack arguments. The reply must carry the request's id and namespace (§2.3).
pub fn encode_ack(out: &mut String, nsp: &str, id: u64, attachments: usize, args: &Value) {
    let kind = if attachments > 0 {
        PacketKind::BinaryAck
    } else {
        PacketKind::Ack
    };
    push_header(out, kind, attachments, nsp, Some(id));
    push_json(out, args);
}

/// Writes `4<type>[<n>-][<nsp>,][<id>]`.
fn push_header(out: &mut String, kind: PacketKind, attachments: usize, nsp: &str, id: Option<u64>) {
    out.push('4');
    out.push(kind.digit());
    // Writing to a String cannot fail.
    if kind.is_binary() {
        let _ = write!(out, "{attachments}-");
    }
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        let _ = write!(out, "{id}");
    }
}

/// Appends `value` as JSON to `out` without an intermediate buffer: the String's bytes are
/// lent to `serde_json` as a `Vec<u8>` and taken back, which moves no data.
fn push_json<T: serde::Serialize + ?Sized>(out: &mut String, value: &T) {
    let mut bytes = std::mem::take(out).into_bytes();
    let start = bytes.len();
    // Strings and `Value`s (whose keys are strings) always serialise, and serde_json writes
    // UTF-8; the fallbacks only keep this total.
    if serde_json::to_writer(&mut bytes, value).is_err() {
        bytes.truncate(start);
    }
    *out = String::from_utf8(bytes).unwrap_or_else(|e| {
        let mut bytes = e.into_bytes();
        bytes.truncate(start);
        String::from_utf8(bytes).unwrap_or_default()
    });
}

/// Reassembles binary packets: a BinaryEvent/BinaryAck header is followed by exactly
/// `attachments` binary Engine.IO messages, in order, and nothing else in between (§2.1).
/// One per Engine.IO connection, fed in arrival order.
#[derive(Debug, Default)]
pub struct Assembler {
    /// The binary packet whose attachments are being collected, if any.
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    packet: Packet,
    /// Attachments received so far; complete when `packet.attachments` long.
    attachments: Vec<Bytes>,
}

/// What the [`Assembler`] made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// A whole packet, with its attachments in order (empty for non-binary packets).
    Complete(Packet, Vec<Bytes>),
    /// A binary packet still awaits attachments.
    NeedMore,
}

impl Assembler {
    /// A text message: decodes it; a non-binary packet is complete at once; a binary header
    /// starts collection. A text message while attachments are still awaited is an error,
    /// as in `socket.io-parser` ("got plaintext data when reconstructing a packet").
    ///
    /// After any error the pending packet is dropped; the caller closes the connection.
    pub fn push_text(&mut self, text: &str) -> Result<Assembled, DecodeError> {
        if let Some(pending) = self.pending.take() {
            return Err(DecodeError::UnexpectedText {
                missing: pending.packet.attachments - pending.attachments.len(),
            });
        }
        let packet = decode(text)?;
        if packet.attachments == 0 {
            return Ok(Assembled::Complete(packet, Vec::new()));
        }
        if let Some(data) = &packet.data {
            check_placeholders(data, packet.attachments)?;
        }
        self.pending = Some(Pending {
            attachments: Vec::with_capacity(packet.attachments),
            packet,
        });
        Ok(Assembled::NeedMore)
    }

    /// A binary message: the next attachment of the pending packet. One with no pending
    /// packet is an error ("got binary data when not reconstructing a packet").
    pub fn push_binary(&mut self, bytes: Bytes) -> Result<Assembled, DecodeError> {
        let Some(mut pending) = self.pending.take() else {
            return Err(DecodeError::UnexpectedBinary);
        };
        pending.attachments.push(bytes);
        if pending.attachments.len() < pending.packet.attachments {
            self.pending = Some(pending);
            return Ok(Assembled::NeedMore);
        }
        Ok(Assembled::Complete(pending.packet, pending.attachments))
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// Checks that every `{"_placeholder":true,…}` in `data` has an integer `num` below
/// `attachments`, as `socket.io-parser`'s reconstruction does ("illegal attachments").
/// Iterative, so that no nesting depth can exhaust the stack.
fn check_placeholders(data: &Value, attachments: usize) -> Result<(), DecodeError> {
    let mut stack = vec![data];
    while let Some(node) = stack.pop() {
        match node {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.get("_placeholder") == Some(&Value::Bool(true)) {
                    let num = map.get("num").and_then(Value::as_u64);
                    if num.is_none_or(|n| n >= attachments as u64) {
                        return Err(DecodeError::BadPlaceholder { attachments });
                    }
                } else {
                    stack.extend(map.values());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why the `$binary` values of an HTTP push cannot be sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BinaryError {
    /// The `$binary` string (counted from 0 in document order) is not standard base64.
    #[error("\"$binary\" value {index} is not valid base64")]
    BadBase64 {
        index: usize,
        #[source]
        source: base64::DecodeError,
    },
    /// More binary values than a client's decoder accepts in one packet.
    #[error("more than {MAX_ATTACHMENTS} \"$binary\" values in one push")]
    TooMany,
    /// An object with `"_placeholder": true` beside `$binary` values: in a packet with
    /// attachments the client takes every such object for an attachment, so it would
    /// receive the wrong bytes there, or drop the connection when its `num` names none.
    #[error("an object with \"_placeholder\": true cannot travel beside \"$binary\" values")]
    Placeholder,
}

/// Replaces every JSON object of exactly the form `{"$binary": "<standard base64>"}` inside
/// `value` (any depth) with `{"_placeholder":true,"num":i}`, returning the decoded bytes in
/// order (`i` indexes the result). Used once per HTTP push so that the client receives real
/// binary (a `Buffer`/`ArrayBuffer`): a packet with attachments is sent as BINARY_EVENT, one
/// without as a plain EVENT (§2.1).
///
/// Objects with other keys, or whose `$binary` is not a string, are left alone. More than
/// [`MAX_ATTACHMENTS`] values are refused, since `socket.io-client` would refuse the packet,
/// and so is an object of the caller's with `"_placeholder": true` beside them, which the
/// client would take for one of the attachments (`socket.io-parser`'s `reconstructPacket`
/// replaces every such object, or fails the packet). Without `$binary` values the packet is
/// a plain EVENT, which the client does not reconstruct, so such an object is left alone.
/// On error `value` may be partly rewritten.
pub fn extract_binary(value: &mut Value) -> Result<Vec<Bytes>, BinaryError> {
    let mut found = Vec::new();
    // Whether the caller's data has an object the client would read as a placeholder.
    let mut lookalike = false;
    let mut stack = vec![value];
    while let Some(node) = stack.pop() {
        if let Some(encoded) = binary_form(node) {
            let index = found.len();
            if index == MAX_ATTACHMENTS {
                return Err(BinaryError::TooMany);
            }
            let bytes = BASE64
                .decode(encoded)
                .map_err(|source| BinaryError::BadBase64 { index, source })?;
            found.push(Bytes::from(bytes));
            *node = placeholder(index);
            continue;
        }
        // Children are pushed in reverse so that they are visited in document order.
        match node {
            Value::Array(items) => stack.extend(items.iter_mut().rev()),
            Value::Object(map) => {
                lookalike |= map.get("_placeholder") == Some(&Value::Bool(true));
                stack.extend(map.values_mut().rev())
            }
            _ => {}
        }
    }
    if lookalike && !found.is_empty() {
        return Err(BinaryError::Placeholder);
    }
    Ok(found)
}

/// The base64 text of a `{"$binary": "…"}` object.
fn binary_form(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get("$binary")?.as_str(),
        _ => None,
    }
}

/// `{"_placeholder":true,"num":num}`, as `socket.io-parser`'s `deconstructPacket` writes it.
fn placeholder(num: usize) -> Value {
    let mut map = Map::with_capacity(2);
    map.insert("_placeholder".to_owned(), Value::Bool(true));
    map.insert("num".to_owned(), Value::from(num));
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Decodes a wire frame as the server sees it: the text after the Engine.IO `4`.
    fn decode_wire(frame: &str) -> Result<Packet, DecodeError> {
        decode(frame.strip_prefix('4').expect("an Engine.IO message"))
    }

    fn packet(kind: PacketKind, nsp: &str, id: Option<u64>, data: Option<Value>) -> Packet {
        Packet {
            kind,
            nsp: nsp.to_owned(),
            id,
            attachments: 0,
            data,
        }
    }

    fn assert_round_trip(frame: &str) {
        let decoded = decode_wire(frame).expect("valid frame");
        assert_eq!(encode(&decoded), frame);
    }

    // §2.2 wire examples, one test each.

    #[test]
    fn bare_connect_is_connect_to_root() {
        assert_eq!(
            decode_wire("40"),
            Ok(packet(PacketKind::Connect, "/", None, None))
        );
        assert_round_trip("40");
    }

    #[test]
    fn connect_with_auth_carries_the_object() {
        assert_eq!(
            decode_wire("40{\"token\":\"123\"}"),
            Ok(packet(
                PacketKind::Connect,
                "/",
                None,
                Some(json!({"token": "123"}))
            ))
        );
        assert_round_trip("40{\"token\":\"123\"}");
    }

    #[test]
    fn connect_to_custom_namespace_with_auth() {
        assert_eq!(
            decode_wire("40/admin,{\"token\":\"x\"}"),
            Ok(packet(
                PacketKind::Connect,
                "/admin",
                None,
                Some(json!({"token": "x"}))
            ))
        );
        assert_round_trip("40/admin,{\"token\":\"x\"}");
    }

    #[test]
    fn connect_reply_carries_the_sid() {
        let mut out = String::new();
        encode_connect(&mut out, "/", "wZX3oN0bSVIhsaknAAAI");
        assert_eq!(out, "40{\"sid\":\"wZX3oN0bSVIhsaknAAAI\"}");
        assert_eq!(
            decode_wire(&out),
            Ok(packet(
                PacketKind::Connect,
                "/",
                None,
                Some(json!({"sid": "wZX3oN0bSVIhsaknAAAI"}))
            ))
        );
    }

    #[test]
    fn connect_reply_on_custom_namespace_names_it() {
        let mut out = String::new();
        encode_connect(&mut out, "/admin", "oSO0OpakMV_3jnilAAAA");
        assert_eq!(out, "40/admin,{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}");
    }

    #[test]
    fn connect_error_carries_the_message() {
        let mut out = String::new();
        encode_connect_error(&mut out, "/", "Not authorized", None);
        assert_eq!(out, "44{\"message\":\"Not authorized\"}");
        assert_round_trip(&out);
    }

    #[test]
    fn connect_error_for_unknown_namespace_names_it() {
        let mut out = String::new();
        encode_connect_error(&mut out, "/random", "Invalid namespace", None);
        assert_eq!(out, "44/random,{\"message\":\"Invalid namespace\"}");
    }

    #[test]
    fn connect_error_includes_data_when_given() {
        let mut out = String::new();
        encode_connect_error(
            &mut out,
            "/",
            "token \"expired\"",
            Some(&json!({"code": "expired"})),
        );
        assert_eq!(
            out,
            "44{\"message\":\"token \\\"expired\\\"\",\"data\":{\"code\":\"expired\"}}"
        );
        assert_eq!(
            decode_wire(&out).map(|p| p.data),
            Ok(Some(
                json!({"message": "token \"expired\"", "data": {"code": "expired"}})
            ))
        );
    }

    #[test]
    fn event_carries_name_and_arguments() {
        assert_eq!(
            decode_wire("42[\"hello\",\"world\"]"),
            Ok(packet(
                PacketKind::Event,
                "/",
                None,
                Some(json!(["hello", "world"]))
            ))
        );
        assert_round_trip("42[\"hello\",\"world\"]");
    }

    #[test]
    fn event_on_custom_namespace() {
        assert_eq!(
            decode_wire("42/admin,[\"bar\"]"),
            Ok(packet(
                PacketKind::Event,
                "/admin",
                None,
                Some(json!(["bar"]))
            ))
        );
        assert_round_trip("42/admin,[\"bar\"]");
    }

    #[test]
    fn event_asking_for_an_ack_carries_its_id() {
        assert_eq!(
            decode_wire("4212[\"foo\"]"),
            Ok(packet(
                PacketKind::Event,
                "/",
                Some(12),
                Some(json!(["foo"]))
            ))
        );
        assert_round_trip("4212[\"foo\"]");
    }

    #[test]
    fn ack_carries_id_and_arguments() {
        assert_eq!(
            decode_wire("4312[\"bar\"]"),
            Ok(packet(PacketKind::Ack, "/", Some(12), Some(json!(["bar"]))))
        );
        assert_round_trip("4312[\"bar\"]");
    }

    #[test]
    fn ack_on_custom_namespace() {
        assert_eq!(
            decode_wire("43/admin,13[\"bar\"]"),
            Ok(packet(
                PacketKind::Ack,
                "/admin",
                Some(13),
                Some(json!(["bar"]))
            ))
        );
        assert_round_trip("43/admin,13[\"bar\"]");
    }

    #[test]
    fn binary_ack_carries_count_id_and_placeholders() {
        let frame = "461-15[\"bar\",{\"_placeholder\":true,\"num\":0}]";
        assert_eq!(
            decode_wire(frame),
            Ok(Packet {
                kind: PacketKind::BinaryAck,
                nsp: "/".into(),
                id: Some(15),
                attachments: 1,
                data: Some(json!(["bar", {"_placeholder": true, "num": 0}])),
            })
        );
        assert_round_trip(frame);
    }

    #[test]
    fn disconnect_from_root() {
        assert_eq!(
            decode_wire("41"),
            Ok(packet(PacketKind::Disconnect, "/", None, None))
        );
        let mut out = String::new();
        encode_disconnect(&mut out, "/");
        assert_eq!(out, "41");
    }

    #[test]
    fn disconnect_from_custom_namespace() {
        assert_eq!(
            decode_wire("41/admin,"),
            Ok(packet(PacketKind::Disconnect, "/admin", None, None))
        );
        let mut out = String::new();
        encode_disconnect(&mut out, "/admin");
        assert_eq!(out, "41/admin,");
    }

    // §2.1 decoder rules.

    #[test]
    fn namespace_runs_to_the_end_when_there_is_no_comma() {
        assert_eq!(
            decode("0/custom"),
            Ok(packet(PacketKind::Connect, "/custom", None, None))
        );
        assert_eq!(decode("0/custom"), decode("0/custom,"));
    }

    #[test]
    fn namespace_stops_at_the_first_comma() {
        assert_eq!(
            decode("2/a,[\"x,y\"]"),
            Ok(packet(PacketKind::Event, "/a", None, Some(json!(["x,y"]))))
        );
    }

    #[test]
    fn root_namespace_is_not_written() {
        let p = packet(PacketKind::Event, "/", Some(1), Some(json!(["a"])));
        assert_eq!(encode(&p), "421[\"a\"]");
    }

    #[test]
    fn every_packet_type_digit_decodes() {
        let frames = [
            ("0", PacketKind::Connect),
            ("1", PacketKind::Disconnect),
            ("2[\"a\"]", PacketKind::Event),
            ("3[]", PacketKind::Ack),
            ("4\"no\"", PacketKind::ConnectError),
            ("51-[\"a\"]", PacketKind::BinaryEvent),
            ("61-[]", PacketKind::BinaryAck),
        ];
        for (text, kind) in frames {
            assert_eq!(decode(text).map(|p| p.kind), Ok(kind), "{text}");
            assert_eq!(kind.digit(), char::from(text.as_bytes()[0]));
        }
    }

    #[test]
    fn empty_text_is_an_error() {
        assert_eq!(decode(""), Err(DecodeError::Empty));
    }

    #[test]
    fn unknown_packet_type_is_an_error() {
        assert_eq!(decode("abc"), Err(DecodeError::UnknownType('a')));
        assert_eq!(decode("7"), Err(DecodeError::UnknownType('7')));
        assert_eq!(decode("ü"), Err(DecodeError::UnknownType('ü')));
    }

    #[test]
    fn ack_id_is_the_digits_after_the_namespace() {
        assert_eq!(decode("3/a,007[]").map(|p| p.id), Ok(Some(7)));
        assert_eq!(
            decode("318446744073709551615[]").map(|p| p.id),
            Ok(Some(u64::MAX))
        );
    }

    #[test]
    fn ack_id_that_overflows_is_an_error() {
        assert_eq!(
            decode("218446744073709551616[\"a\"]"),
            Err(DecodeError::BadAckId)
        );
    }

    #[test]
    fn bad_ack_id_fails_as_invalid_json() {
        assert!(matches!(
            decode("2abc[\"a\"]"),
            Err(DecodeError::InvalidJson(_))
        ));
    }

    #[test]
    fn attachment_count_needs_its_dash() {
        assert_eq!(decode("51[\"a\"]"), Err(DecodeError::BadAttachmentCount));
        assert_eq!(decode("5"), Err(DecodeError::BadAttachmentCount));
    }

    #[test]
    fn attachment_count_must_be_a_number_of_at_least_one() {
        assert_eq!(decode("5-[\"a\"]"), Err(DecodeError::BadAttachmentCount));
        assert_eq!(decode("50-[\"a\"]"), Err(DecodeError::BadAttachmentCount));
        assert_eq!(decode("5x-[\"a\"]"), Err(DecodeError::BadAttachmentCount));
    }

    #[test]
    fn attachment_count_is_limited_to_ten() {
        assert_eq!(decode("510-[\"a\"]").map(|p| p.attachments), Ok(10));
        assert_eq!(decode("511-[\"a\"]"), Err(DecodeError::TooManyAttachments));
        assert_eq!(
            decode("699999999999999999999999-[]"),
            Err(DecodeError::TooManyAttachments)
        );
    }

    #[test]
    fn attachment_count_is_read_only_for_binary_kinds() {
        assert!(matches!(
            decode("21-[\"a\"]"),
            Err(DecodeError::InvalidJson(_))
        ));
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(matches!(
            decode("2[\"a\""),
            Err(DecodeError::InvalidJson(_))
        ));
        assert!(matches!(
            decode("2[\"a\"]x"),
            Err(DecodeError::InvalidJson(_))
        ));
    }

    #[test]
    fn connect_payload_must_be_an_object() {
        for text in ["0[]", "0\"x\"", "0null", "0true"] {
            assert!(
                matches!(decode(text), Err(DecodeError::InvalidPayload { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn disconnect_must_have_no_payload() {
        assert_eq!(
            decode("1{}"),
            Err(DecodeError::InvalidPayload {
                kind: PacketKind::Disconnect,
                expected: "no payload"
            })
        );
    }

    #[test]
    fn event_payload_must_be_an_array() {
        for text in ["2{}", "2\"a\"", "2", "51-{}"] {
            assert!(
                matches!(decode(text), Err(DecodeError::InvalidPayload { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn event_payload_must_not_be_empty() {
        assert!(matches!(
            decode("2[]"),
            Err(DecodeError::InvalidPayload { .. })
        ));
    }

    #[test]
    fn event_name_may_be_a_string_or_a_number() {
        assert!(decode("2[\"a\",1]").is_ok());
        assert!(decode("2[1]").is_ok());
        for text in ["2[null]", "2[{}]", "2[[\"a\"]]", "2[true]"] {
            assert!(
                matches!(decode(text), Err(DecodeError::InvalidPayload { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn reserved_event_names_are_refused() {
        for name in RESERVED_EVENTS {
            assert_eq!(
                decode(&format!("2[\"{name}\"]")),
                Err(DecodeError::ReservedEvent(name.to_owned()))
            );
            assert_eq!(
                decode(&format!("51-[\"{name}\"]")),
                Err(DecodeError::ReservedEvent(name.to_owned()))
            );
        }
        assert!(decode("2[\"Connect\"]").is_ok());
    }

    #[test]
    fn ack_payload_must_be_an_array_and_may_be_empty() {
        assert!(decode("31[]").is_ok());
        assert!(decode("61-1[]").is_ok());
        for text in ["31{}", "31", "31\"a\""] {
            assert!(
                matches!(decode(text), Err(DecodeError::InvalidPayload { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn connect_error_payload_is_an_object_or_a_string() {
        assert!(decode("4{\"message\":\"m\"}").is_ok());
        assert!(decode("4\"m\"").is_ok());
        for text in ["4", "4[]", "41"] {
            assert!(
                matches!(decode(text), Err(DecodeError::InvalidPayload { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn decode_errors_read_as_sentences() {
        assert_eq!(
            decode("2[]").map_err(|e| e.to_string()),
            Err("invalid payload for Event: expected a non-empty array starting with an event name or number".into())
        );
        assert_eq!(
            DecodeError::ReservedEvent("connect".into()).to_string(),
            "event name \"connect\" is reserved"
        );
    }

    // Encoders.

    #[test]
    fn encode_event_writes_name_and_argument() {
        let mut out = String::new();
        encode_event(
            &mut out,
            "/",
            None,
            0,
            "notice",
            Some(&json!({"text": "hi"})),
        );
        assert_eq!(out, "42[\"notice\",{\"text\":\"hi\"}]");
    }

    #[test]
    fn encode_event_without_argument_sends_the_name_alone() {
        let mut out = String::new();
        encode_event(&mut out, "/", None, 0, "ping", None);
        let mut rec = String::new();
        encode_recoverable_event(&mut rec, "/a", 0, "e", Some(&json!({"n": 1})), "n1.ff");
        assert_eq!(rec, r#"42/a,["e",{"n":1},"n1.ff"]"#);
        let mut rec = String::new();
        encode_recoverable_event(&mut rec, "/", 0, "e", None, "n1.ff");
        assert_eq!(rec, r#"42["e","n1.ff"]"#);
        let mut c = String::new();
        encode_connect_with_pid(&mut c, "/", "n1.s", "n1.s~ab");
        assert_eq!(c, r#"40{"sid":"n1.s","pid":"n1.s~ab"}"#);
        assert_eq!(out, "42[\"ping\"]");
    }

    #[test]
    fn encode_event_escapes_the_event_name() {
        let mut out = String::new();
        encode_event(&mut out, "/", None, 0, "a\"b\\c\n", None);
        assert_eq!(out, "42[\"a\\\"b\\\\c\\n\"]");
        assert_eq!(
            decode_wire(&out).map(|p| p.data),
            Ok(Some(json!(["a\"b\\c\n"])))
        );
    }

    #[test]
    fn encode_event_with_namespace_id_and_attachments_is_a_binary_event() {
        let mut out = String::new();
        let arg = json!({"file": {"_placeholder": true, "num": 0}});
        encode_event(&mut out, "/admin", Some(7), 1, "upload", Some(&arg));
        assert_eq!(
            out,
            "451-/admin,7[\"upload\",{\"file\":{\"_placeholder\":true,\"num\":0}}]"
        );
        assert_eq!(
            decode_wire(&out),
            Ok(Packet {
                kind: PacketKind::BinaryEvent,
                nsp: "/admin".into(),
                id: Some(7),
                attachments: 1,
                data: Some(json!(["upload", arg])),
            })
        );
    }

    #[test]
    fn encode_event_appends_to_what_out_holds() {
        let mut out = String::from("x");
        encode_event(&mut out, "/", None, 0, "a", Some(&json!(1)));
        assert_eq!(out, "x42[\"a\",1]");
    }

    #[test]
    fn encode_event_matches_encode_of_the_same_packet() {
        let arg = json!([1, "two", {"three": null}]);
        let mut fast = String::new();
        encode_event(&mut fast, "/n", Some(3), 0, "ev", Some(&arg));
        let p = packet(PacketKind::Event, "/n", Some(3), Some(json!(["ev", arg])));
        assert_eq!(fast, encode(&p));
    }

    #[test]
    fn encode_ack_writes_id_and_arguments() {
        let mut out = String::new();
        encode_ack(&mut out, "/", 12, 0, &json!(["bar"]));
        assert_eq!(out, "4312[\"bar\"]");
        let mut out = String::new();
        encode_ack(&mut out, "/admin", 13, 0, &json!([]));
        assert_eq!(out, "43/admin,13[]");
    }

    #[test]
    fn encode_ack_with_attachments_is_a_binary_ack() {
        let mut out = String::new();
        encode_ack(
            &mut out,
            "/",
            789,
            2,
            &json!([{"_placeholder": true, "num": 0}, {"_placeholder": true, "num": 1}]),
        );
        assert_eq!(
            out,
            "462-789[{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]"
        );
    }

    #[test]
    fn decode_then_encode_reproduces_canonical_frames() {
        for frame in [
            "40",
            "41",
            "42[1]",
            "42/a/b,99[\"x\",{\"y\":[1.5,-2,null,true]}]",
            "4399[]",
            "452-[\"message-back\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
            "462-789[{\"_placeholder\":true,\"num\":0}]",
            "44\"plain\"",
        ] {
            assert_round_trip(frame);
        }
    }

    #[test]
    fn non_canonical_frames_encode_to_an_equal_packet() {
        for text in [
            "0/custom",
            "2007[\"a\"]",
            "2 [\"a\" , 1 ] ",
            "0{\"a\":1,\"a\":2}",
        ] {
            let first = decode(text).expect("valid");
            let again = decode_wire(&encode(&first)).expect("re-encoded is valid");
            assert_eq!(again, first, "{text}");
        }
    }

    // Assembler.

    #[test]
    fn assembler_completes_a_text_packet_at_once() {
        let mut assembler = Assembler::default();
        assert_eq!(
            assembler.push_text("2[\"a\"]"),
            Ok(Assembled::Complete(
                packet(PacketKind::Event, "/", None, Some(json!(["a"]))),
                vec![]
            ))
        );
        assert!(!assembler.is_pending());
    }

    #[test]
    fn assembler_collects_attachments_in_order() {
        let mut assembler = Assembler::default();
        let header = "52-[\"message-back\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]";
        assert_eq!(assembler.push_text(header), Ok(Assembled::NeedMore));
        assert!(assembler.is_pending());
        assert_eq!(
            assembler.push_binary(Bytes::from_static(&[1])),
            Ok(Assembled::NeedMore)
        );
        let Ok(Assembled::Complete(p, attachments)) =
            assembler.push_binary(Bytes::from_static(&[2, 3]))
        else {
            panic!("expected a complete packet");
        };
        assert_eq!(p.kind, PacketKind::BinaryEvent);
        assert_eq!(p.attachments, 2);
        assert_eq!(
            attachments,
            vec![Bytes::from_static(&[1]), Bytes::from_static(&[2, 3])]
        );
        assert!(!assembler.is_pending());
        assert!(matches!(
            assembler.push_text("3[]"),
            Ok(Assembled::Complete(_, _))
        ));
    }

    #[test]
    fn assembler_refuses_text_while_attachments_are_awaited() {
        let mut assembler = Assembler::default();
        assert_eq!(
            assembler.push_text("62-5[{\"_placeholder\":true,\"num\":0}]"),
            Ok(Assembled::NeedMore)
        );
        assembler
            .push_binary(Bytes::from_static(b"x"))
            .expect("first attachment");
        assert_eq!(
            assembler.push_text("2[\"a\"]"),
            Err(DecodeError::UnexpectedText { missing: 1 })
        );
        assert!(!assembler.is_pending());
    }

    #[test]
    fn assembler_refuses_binary_without_a_binary_packet() {
        let mut assembler = Assembler::default();
        assert_eq!(
            assembler.push_binary(Bytes::from_static(b"x")),
            Err(DecodeError::UnexpectedBinary)
        );
        assembler.push_text("2[\"a\"]").expect("text packet");
        assert_eq!(
            assembler.push_binary(Bytes::from_static(b"x")),
            Err(DecodeError::UnexpectedBinary)
        );
    }

    #[test]
    fn assembler_refuses_placeholders_beyond_the_count() {
        let mut assembler = Assembler::default();
        for header in [
            "51-[\"a\",{\"_placeholder\":true,\"num\":1}]",
            "51-[\"a\",{\"_placeholder\":true,\"num\":-1}]",
            "51-[\"a\",{\"_placeholder\":true,\"num\":0.5}]",
            "51-[\"a\",{\"_placeholder\":true}]",
            "51-[\"a\",{\"x\":[{\"_placeholder\":true,\"num\":\"0\"}]}]",
        ] {
            assert_eq!(
                assembler.push_text(header),
                Err(DecodeError::BadPlaceholder { attachments: 1 }),
                "{header}"
            );
            assert!(!assembler.is_pending());
        }
    }

    #[test]
    fn assembler_passes_decode_errors_through() {
        let mut assembler = Assembler::default();
        assert_eq!(
            assembler.push_text("511-[\"a\"]"),
            Err(DecodeError::TooManyAttachments)
        );
        assert!(!assembler.is_pending());
    }

    // extract_binary.

    #[test]
    fn binary_values_become_numbered_placeholders_in_document_order() {
        let mut value = json!({
            "a": {"$binary": "AQID"},
            "b": [{"$binary": "BA=="}, {"c": {"$binary": ""}}],
        });
        let found = extract_binary(&mut value).expect("valid base64");
        assert_eq!(
            found,
            vec![
                Bytes::from_static(&[1, 2, 3]),
                Bytes::from_static(&[4]),
                Bytes::new()
            ]
        );
        assert_eq!(
            value,
            json!({
                "a": {"_placeholder": true, "num": 0},
                "b": [{"_placeholder": true, "num": 1}, {"c": {"_placeholder": true, "num": 2}}],
            })
        );
    }

    #[test]
    fn top_level_binary_value_is_replaced() {
        let mut value = json!({"$binary": "AQIDBA"});
        assert_eq!(
            extract_binary(&mut value),
            Ok(vec![Bytes::from_static(&[1, 2, 3, 4])])
        );
        assert_eq!(value, json!({"_placeholder": true, "num": 0}));
    }

    #[test]
    fn objects_not_exactly_of_the_binary_form_are_left_alone() {
        let original = json!([
            {"$binary": "AQID", "other": 1},
            {"$binary": 5},
            {"$binary": null},
            {"binary": "AQID"},
            "$binary",
        ]);
        let mut value = original.clone();
        assert_eq!(extract_binary(&mut value), Ok(vec![]));
        assert_eq!(value, original);
    }

    #[test]
    fn bad_base64_in_a_binary_value_is_an_error() {
        let mut value = json!([{"$binary": "AQID"}, {"$binary": "not base64!"}]);
        assert!(matches!(
            extract_binary(&mut value),
            Err(BinaryError::BadBase64 { index: 1, .. })
        ));
    }

    #[test]
    fn more_than_ten_binary_values_are_refused() {
        let mut ten = json!(vec![json!({"$binary": "AA=="}); 10]);
        assert_eq!(extract_binary(&mut ten).map(|b| b.len()), Ok(10));
        let mut eleven = json!(vec![json!({"$binary": "AA=="}); 11]);
        assert_eq!(extract_binary(&mut eleven), Err(BinaryError::TooMany));
    }

    #[test]
    fn a_placeholder_of_the_callers_beside_binary_values_is_refused() {
        // Found by the push_body fuzz target: the client would fill `p` with the
        // attachment (num 0) or fail the whole packet (num 5, which the assembler
        // refuses too).
        for num in [0, 5] {
            let mut value =
                json!({"a": {"$binary": "AQID"}, "p": {"_placeholder": true, "num": num}});
            assert_eq!(extract_binary(&mut value), Err(BinaryError::Placeholder));
        }
        let mut nested = json!([[{"$binary": ""}], {"x": [{"_placeholder": true}]}]);
        assert_eq!(extract_binary(&mut nested), Err(BinaryError::Placeholder));
        // Without binary values the packet is a plain EVENT: nothing is reconstructed.
        let original = json!({"p": {"_placeholder": true, "num": 0}});
        let mut value = original.clone();
        assert_eq!(extract_binary(&mut value), Ok(vec![]));
        assert_eq!(value, original);
        // `_placeholder` that is not `true` is the caller's own business.
        let mut value = json!({"a": {"$binary": "AQID"}, "p": {"_placeholder": "yes"}});
        assert_eq!(extract_binary(&mut value).map(|b| b.len()), Ok(1));
    }

    #[test]
    fn extracted_push_encodes_as_a_binary_event_the_assembler_accepts() {
        let mut data = json!({"img": {"$binary": "AQID"}});
        let attachments = extract_binary(&mut data).expect("valid");
        let mut out = String::new();
        encode_event(&mut out, "/", None, attachments.len(), "pic", Some(&data));
        let mut assembler = Assembler::default();
        assert_eq!(assembler.push_text(&out[1..]), Ok(Assembled::NeedMore));
        let Ok(Assembled::Complete(p, got)) = assembler.push_binary(attachments[0].clone()) else {
            panic!("expected a complete packet");
        };
        assert_eq!(
            p.data,
            Some(json!(["pic", {"img": {"_placeholder": true, "num": 0}}]))
        );
        assert_eq!(got, attachments);
    }

    #[test]
    fn deeply_nested_values_do_not_exhaust_the_stack() {
        let mut value = json!({"$binary": "AA=="});
        for _ in 0..100_000 {
            value = Value::Array(vec![value]);
        }
        assert_eq!(extract_binary(&mut value).map(|b| b.len()), Ok(1));
        assert_eq!(check_placeholders(&value, 1), Ok(()));
        // Drop iteratively too: serde_json's recursive drop would overflow the test stack.
        let mut node = value;
        while let Value::Array(mut items) = node {
            node = items.pop().unwrap_or(Value::Null);
        }
    }
}
