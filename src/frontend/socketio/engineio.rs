//! Engine.IO v4 packet and polling-payload codec (protocols.md §1).
//!
//! Pure: no I/O, no async. The transports (WebSocket and long-polling) hand this module the
//! text they received and get back [`Packet`]s that borrow from it; on the way out they ask it
//! for wire text. Everything an input can do is reported as a [`DecodeError`]; nothing panics.
//!
//! Wire facts this module relies on (§1.2):
//! - a text packet is one ASCII type digit `0`–`6` followed by UTF-8 data;
//! - a WebSocket carries one packet per frame, and a *binary* frame is a message with raw
//!   bytes and no type byte (the caller turns it into [`Packet::Binary`] itself);
//! - a polling body joins packets with the record separator `0x1E`, and writes a binary
//!   message as `b` + standard base64 with no `4` in front. v4 has no length prefix.

use std::borrow::Cow;
use std::iter::FusedIterator;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

/// Separates the records of a polling body. v4 replaced v3's `<len>:` prefixes with this
/// ASCII "record separator", which cannot appear in a packet's JSON text unescaped (§1.2).
pub const RECORD_SEPARATOR: char = '\u{1e}';

/// Standard-alphabet base64 (what `engine.io-client` and Node's `Buffer` write), padded on
/// output. Decoding accepts missing padding too: Node decodes `b` records with the lenient
/// `Buffer.from(s, "base64")`, so a client that omits `=` still works against Node.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A decoded Engine.IO packet, borrowing from the input where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{...}`: the handshake, server to client only, but decodable so tests can read it.
    Open(&'a str),
    /// `1`: closes the transport or session.
    Close,
    /// `2` or `2probe`: the data after the digit. In v4 only the server pings, except for
    /// the `2probe` that opens an upgrade (§1.3, §1.4).
    Ping(&'a str),
    /// `3` or `3probe`: the data after the digit.
    Pong(&'a str),
    /// `4...`: a text message; the data after the `4` (a Socket.IO packet).
    Message(&'a str),
    /// A binary message. From a polling record `b<base64>` it is decoded (`Owned`); a
    /// WebSocket binary frame is a binary message as-is, so callers wrap it `Borrowed`.
    Binary(Cow<'a, [u8]>),
    /// `5`: completes an upgrade to WebSocket.
    Upgrade,
    /// `6`: ends a pending poll during an upgrade.
    Noop,
}

/// Why a frame or polling record is not an Engine.IO packet. Any of these is a parser
/// error, and the session is closed (§1.3).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A frame or record with no type digit (also an empty polling body, or two separators
    /// in a row).
    #[error("empty packet")]
    Empty,
    /// The first character is not one of the seven type digits nor the `b` of a binary
    /// record.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A `b` record whose data is not standard base64.
    #[error("binary record is not valid base64")]
    BadBase64(#[source] base64::DecodeError),
}

/// Decodes one text WebSocket frame or one polling record (text form).
///
/// A leading `b` is a base64 binary message, as in Node's `decodePacket`, which applies the
/// same rule to WebSocket text frames and polling records. Data after the digit of `1`,
/// `5` and `6` is ignored, as Node ignores it.
pub fn decode_text(frame: &str) -> Result<Packet<'_>, DecodeError> {
    let mut chars = frame.chars();
    let kind = chars.next().ok_or(DecodeError::Empty)?;
    let data = chars.as_str();
    Ok(match kind {
        '0' => Packet::Open(data),
        '1' => Packet::Close,
        '2' => Packet::Ping(data),
        '3' => Packet::Pong(data),
        '4' => Packet::Message(data),
        '5' => Packet::Upgrade,
        '6' => Packet::Noop,
        'b' => Packet::Binary(Cow::Owned(
            BASE64.decode(data).map_err(DecodeError::BadBase64)?,
        )),
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// Decodes a polling POST body: records separated by `0x1E`; a record starting with `b` is a
/// base64 binary message (§1.2).
///
/// The iterator yields one item per record and stops after the first error, as Node's
/// `decodePayload` does: the rest of a body after a bad record is not trusted.
pub fn decode_payload(body: &str) -> Payload<'_> {
    Payload { rest: Some(body) }
}

/// The packets of a polling body; see [`decode_payload`].
#[derive(Debug, Clone)]
pub struct Payload<'a> {
    /// The records not yet decoded; `None` once the last record or an error was yielded.
    rest: Option<&'a str>,
}

impl<'a> Iterator for Payload<'a> {
    type Item = Result<Packet<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest?;
        let (record, tail) = match rest.split_once(RECORD_SEPARATOR) {
            Some((record, tail)) => (record, Some(tail)),
            None => (rest, None),
        };
        let decoded = decode_text(record);
        self.rest = if decoded.is_ok() { tail } else { None };
        Some(decoded)
    }
}

impl FusedIterator for Payload<'_> {}

/// Appends one text packet (already in wire form, e.g. `42["a"]` or `2`) to a polling GET
/// body, adding the `0x1E` separator when `out` is not empty.
pub fn append_text_record(out: &mut Vec<u8>, packet_text: &str) {
    push_separator(out);
    out.extend_from_slice(packet_text.as_bytes());
}

/// Appends one binary message as `b<standard base64>` to a polling GET body, with the
/// separator rule of [`append_text_record`]. v4 never returns raw binary to a poll (§1.2).
pub fn append_binary_record(out: &mut Vec<u8>, bytes: &[u8]) {
    push_separator(out);
    out.push(b'b');
    let start = out.len();
    // Encode in place: this runs once per binary attachment per polling client.
    if let Some(len) = base64::encoded_len(bytes.len(), true) {
        out.resize(start + len, 0);
        if BASE64.encode_slice(bytes, &mut out[start..]).is_ok() {
            return;
        }
        out.truncate(start);
    }
    // Not reachable (the length is exact); kept so that no input can make this panic.
    out.extend_from_slice(BASE64.encode(bytes).as_bytes());
}

/// Writes the record separator unless `out` is the start of a body.
fn push_separator(out: &mut Vec<u8>) {
    if !out.is_empty() {
        let mut buf = [0; 1];
        out.extend_from_slice(RECORD_SEPARATOR.encode_utf8(&mut buf).as_bytes());
    }
}

/// Appends the wire text of a packet to `out`: the inverse of [`decode_text`].
///
/// [`Packet::Binary`] has no WebSocket text form, so it is written in polling record form,
/// `b<base64>`, which [`decode_text`] reads back.
pub fn encode_text(packet: &Packet<'_>, out: &mut String) {
    let (digit, data) = match packet {
        Packet::Open(data) => ('0', *data),
        Packet::Close => ('1', ""),
        Packet::Ping(data) => ('2', *data),
        Packet::Pong(data) => ('3', *data),
        Packet::Message(data) => ('4', *data),
        Packet::Upgrade => ('5', ""),
        Packet::Noop => ('6', ""),
        Packet::Binary(bytes) => {
            out.push('b');
            BASE64.encode_string(bytes, out);
            return;
        }
    };
    out.push(digit);
    out.push_str(data);
}

/// The open packet's JSON payload (§1.1). The conformance suites check that it has exactly
/// these keys (`have.all.keys`), so nothing may be added here.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenPacket<'a> {
    /// The session id: secret, since anyone who knows it can use the polling session.
    pub sid: &'a str,
    /// `["websocket"]` for a polling session, `[]` for a WebSocket session (§3.11).
    pub upgrades: &'a [&'a str],
    /// Milliseconds between server pings.
    pub ping_interval: u64,
    /// Milliseconds a ping may go unanswered.
    pub ping_timeout: u64,
    /// The largest payload the server accepts, in bytes (Node's `maxHttpBufferSize`).
    pub max_payload: u64,
}

impl OpenPacket<'_> {
    /// `0{"sid":…,"upgrades":[…],"pingInterval":…,"pingTimeout":…,"maxPayload":…}`.
    pub fn to_text(&self) -> String {
        let mut bytes = vec![b'0'];
        // Strings and integers always serialise, and serde_json writes UTF-8, so neither
        // step can fail; the fallbacks only keep this function total.
        if serde_json::to_writer(&mut bytes, self).is_err() {
            bytes.truncate(1);
        }
        String::from_utf8(bytes).unwrap_or_else(|_| String::from("0"))
    }
}

/// The Engine.IO request query: `EIO`, `transport`, `sid`, and the optional `token`
/// pushgate reads (§1.1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    /// `EIO`: must be `"4"`; anything else is refused as an unsupported version.
    pub eio: Option<String>,
    /// `transport`: `polling` or `websocket`.
    pub transport: Option<String>,
    /// `sid`: present once the session exists.
    pub sid: Option<String>,
    /// `token`: a connection token passed on the URL instead of in the CONNECT auth.
    pub token: Option<String>,
}

/// Parses a raw URL query string (with or without its leading `?`), percent-decoding and
/// reading `+` as a space. Unknown keys (the `t` cache-buster, custom parameters) are
/// ignored; a later duplicate wins. Never fails: invalid UTF-8 is replaced, and a missing
/// key is `None`, for the caller to answer with the right [`ErrorCode`].
pub fn parse_query(raw: &str) -> Query {
    let raw = raw.strip_prefix('?').unwrap_or(raw);
    let mut query = Query::default();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let slot = match key.as_ref() {
            "EIO" => &mut query.eio,
            "transport" => &mut query.transport,
            "sid" => &mut query.sid,
            "token" => &mut query.token,
            _ => continue,
        };
        *slot = Some(value.into_owned());
    }
    query
}

/// The protocol's error answers (§1.5), sent as an HTTP body `{"code":N,"message":"…"}`.
/// The codes and messages are those of engine.io 6, which clients and suites compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `transport` missing or not `polling`/`websocket`.
    TransportUnknown = 0,
    /// A `sid` that names no live session.
    UnknownSid = 1,
    /// A handshake (no `sid`) that is not a GET.
    BadHandshakeMethod = 2,
    /// WebSocket without Upgrade headers, transport mismatch, bad origin.
    BadRequest = 3,
    /// The request was refused by policy (HTTP 403, unlike the others).
    Forbidden = 4,
    /// `EIO` missing or not `4`.
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    /// The message engine.io sends with this code.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::TransportUnknown => "Transport unknown",
            ErrorCode::UnknownSid => "Session ID unknown",
            ErrorCode::BadHandshakeMethod => "Bad handshake method",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// `{"code":N,"message":"…"}`. The messages are fixed ASCII with nothing to escape.
    pub fn to_json(self) -> String {
        format!(
            "{{\"code\":{},\"message\":\"{}\"}}",
            self as u8,
            self.message()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(body: &str) -> Vec<Result<Packet<'_>, DecodeError>> {
        decode_payload(body).collect()
    }

    #[test]
    fn each_type_digit_decodes_to_its_packet() {
        assert_eq!(
            decode_text("0{\"sid\":\"x\"}"),
            Ok(Packet::Open("{\"sid\":\"x\"}"))
        );
        assert_eq!(decode_text("1"), Ok(Packet::Close));
        assert_eq!(decode_text("2"), Ok(Packet::Ping("")));
        assert_eq!(decode_text("3"), Ok(Packet::Pong("")));
        assert_eq!(decode_text("4hello"), Ok(Packet::Message("hello")));
        assert_eq!(decode_text("5"), Ok(Packet::Upgrade));
        assert_eq!(decode_text("6"), Ok(Packet::Noop));
    }

    #[test]
    fn probe_ping_and_pong_keep_their_data() {
        assert_eq!(decode_text("2probe"), Ok(Packet::Ping("probe")));
        assert_eq!(decode_text("3probe"), Ok(Packet::Pong("probe")));
    }

    #[test]
    fn message_data_is_utf8_after_the_digit() {
        assert_eq!(decode_text("4"), Ok(Packet::Message("")));
        assert_eq!(decode_text("4héllo ✓"), Ok(Packet::Message("héllo ✓")));
        assert_eq!(
            decode_text("42[\"a\",1]"),
            Ok(Packet::Message("2[\"a\",1]"))
        );
    }

    #[test]
    fn data_after_close_upgrade_and_noop_is_ignored_like_node() {
        assert_eq!(decode_text("1abc"), Ok(Packet::Close));
        assert_eq!(decode_text("5x"), Ok(Packet::Upgrade));
        assert_eq!(decode_text("6x"), Ok(Packet::Noop));
    }

    #[test]
    fn empty_frame_is_an_error() {
        assert_eq!(decode_text(""), Err(DecodeError::Empty));
    }

    #[test]
    fn unknown_type_digit_is_an_error() {
        assert_eq!(decode_text("7"), Err(DecodeError::UnknownType('7')));
        assert_eq!(decode_text("abc"), Err(DecodeError::UnknownType('a')));
        assert_eq!(decode_text("é4"), Err(DecodeError::UnknownType('é')));
    }

    #[test]
    fn binary_record_is_standard_base64_after_b() {
        assert_eq!(
            decode_text("bAQIDBA=="),
            Ok(Packet::Binary(Cow::Owned(vec![1, 2, 3, 4])))
        );
        assert_eq!(decode_text("b"), Ok(Packet::Binary(Cow::Owned(vec![]))));
        assert_eq!(
            decode_text("b+/8="),
            Ok(Packet::Binary(Cow::Owned(vec![0xfb, 0xff])))
        );
    }

    #[test]
    fn binary_record_without_padding_is_accepted_like_node() {
        assert_eq!(
            decode_text("bAQIDBA"),
            Ok(Packet::Binary(Cow::Owned(vec![1, 2, 3, 4])))
        );
    }

    #[test]
    fn binary_record_with_bad_base64_is_an_error() {
        assert!(matches!(
            decode_text("b!!!"),
            Err(DecodeError::BadBase64(_))
        ));
        assert!(matches!(
            decode_text("bAQIDBA=x"),
            Err(DecodeError::BadBase64(_))
        ));
    }

    #[test]
    fn polling_payload_splits_on_record_separator() {
        assert_eq!(
            decode_all("4hello\u{1e}bAQIDBA==\u{1e}2probe"),
            vec![
                Ok(Packet::Message("hello")),
                Ok(Packet::Binary(Cow::Owned(vec![1, 2, 3, 4]))),
                Ok(Packet::Ping("probe")),
            ]
        );
    }

    #[test]
    fn polling_payload_with_one_record_yields_one_packet() {
        assert_eq!(decode_all("1"), vec![Ok(Packet::Close)]);
    }

    #[test]
    fn polling_payload_has_no_v3_length_prefix() {
        // A v3 body `6:4hello` is not the message "hello" in v4.
        assert_eq!(decode_all("6:4hello"), vec![Ok(Packet::Noop)]);
        assert_eq!(decode_all("2:40"), vec![Ok(Packet::Ping(":40"))]);
    }

    #[test]
    fn empty_polling_payload_is_an_error() {
        assert_eq!(decode_all(""), vec![Err(DecodeError::Empty)]);
    }

    #[test]
    fn polling_payload_stops_after_the_first_bad_record() {
        assert_eq!(
            decode_all("4a\u{1e}\u{1e}4b"),
            vec![Ok(Packet::Message("a")), Err(DecodeError::Empty)]
        );
        assert_eq!(
            decode_all("4a\u{1e}abc\u{1e}4b"),
            vec![Ok(Packet::Message("a")), Err(DecodeError::UnknownType('a'))]
        );
        assert_eq!(
            decode_all("4a\u{1e}"),
            vec![Ok(Packet::Message("a")), Err(DecodeError::Empty)]
        );
    }

    #[test]
    fn polling_payload_iterator_is_fused() {
        let mut payload = decode_payload("x\u{1e}4a");
        assert!(matches!(payload.next(), Some(Err(_))));
        assert_eq!(payload.next(), None);
        assert_eq!(payload.next(), None);
    }

    #[test]
    fn text_records_are_joined_with_the_separator() {
        let mut body = Vec::new();
        append_text_record(&mut body, "2");
        append_text_record(&mut body, "42[\"a\"]");
        assert_eq!(body, b"2\x1e42[\"a\"]");
    }

    #[test]
    fn first_record_has_no_leading_separator() {
        let mut body = Vec::new();
        append_text_record(&mut body, "6");
        assert_eq!(body, b"6");
    }

    #[test]
    fn binary_record_is_b_and_padded_standard_base64_without_a_4() {
        let mut body = Vec::new();
        append_text_record(&mut body, "4hello");
        append_binary_record(&mut body, &[1, 2, 3, 4]);
        assert_eq!(body, b"4hello\x1ebAQIDBA==");
        let mut alone = Vec::new();
        append_binary_record(&mut alone, &[0xfb, 0xff]);
        assert_eq!(alone, b"b+/8=");
        let mut empty = Vec::new();
        append_binary_record(&mut empty, &[]);
        assert_eq!(empty, b"b");
    }

    #[test]
    fn appended_body_decodes_back_to_the_same_packets() {
        let mut body = Vec::new();
        append_text_record(&mut body, "451-[\"x\",{\"_placeholder\":true,\"num\":0}]");
        append_binary_record(&mut body, &[0, 255, 7]);
        append_text_record(&mut body, "3");
        let text = String::from_utf8(body).expect("appended records are UTF-8");
        assert_eq!(
            decode_all(&text),
            vec![
                Ok(Packet::Message(
                    "51-[\"x\",{\"_placeholder\":true,\"num\":0}]"
                )),
                Ok(Packet::Binary(Cow::Owned(vec![0, 255, 7]))),
                Ok(Packet::Pong("")),
            ]
        );
    }

    #[test]
    fn encode_text_is_the_inverse_of_decode_text() {
        for frame in [
            "0{}", "1", "2", "2probe", "3probe", "4", "4hi", "5", "6", "bAQID",
        ] {
            let packet = decode_text(frame).expect("valid frame");
            let mut out = String::new();
            encode_text(&packet, &mut out);
            assert_eq!(out, frame);
            assert_eq!(decode_text(&out), Ok(packet));
        }
    }

    #[test]
    fn binary_packet_encodes_in_record_form() {
        let mut out = String::from("x");
        encode_text(&Packet::Binary(Cow::Borrowed(&[1, 2, 3, 4])), &mut out);
        assert_eq!(out, "xbAQIDBA==");
    }

    #[test]
    fn open_packet_has_exactly_the_five_keys() {
        let open = OpenPacket {
            sid: "lv_VI97HAXpY6yYWAAAC",
            upgrades: &["websocket"],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: 1_000_000,
        };
        assert_eq!(
            open.to_text(),
            "0{\"sid\":\"lv_VI97HAXpY6yYWAAAC\",\"upgrades\":[\"websocket\"],\
             \"pingInterval\":25000,\"pingTimeout\":20000,\"maxPayload\":1000000}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&open.to_text()[1..]).expect("open JSON");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "maxPayload",
                "pingInterval",
                "pingTimeout",
                "sid",
                "upgrades"
            ]
        );
    }

    #[test]
    fn websocket_open_packet_offers_no_upgrades() {
        let open = OpenPacket {
            sid: "s",
            upgrades: &[],
            ping_interval: 300,
            ping_timeout: 200,
            max_payload: 10,
        };
        assert_eq!(
            open.to_text(),
            "0{\"sid\":\"s\",\"upgrades\":[],\"pingInterval\":300,\"pingTimeout\":200,\"maxPayload\":10}"
        );
        assert_eq!(
            decode_text(&open.to_text()),
            Ok(Packet::Open(
                "{\"sid\":\"s\",\"upgrades\":[],\"pingInterval\":300,\"pingTimeout\":200,\"maxPayload\":10}"
            ))
        );
    }

    #[test]
    fn query_reads_eio_transport_sid_and_token() {
        assert_eq!(
            parse_query("EIO=4&transport=polling&t=N8hyd6w&sid=abc&token=x.y.z"),
            Query {
                eio: Some("4".into()),
                transport: Some("polling".into()),
                sid: Some("abc".into()),
                token: Some("x.y.z".into()),
            }
        );
    }

    #[test]
    fn query_percent_decodes_and_reads_plus_as_space() {
        let query = parse_query("?token=a%2Bb+c%3D&transport=web%73ocket");
        assert_eq!(query.token.as_deref(), Some("a+b c="));
        assert_eq!(query.transport.as_deref(), Some("websocket"));
    }

    #[test]
    fn query_later_duplicate_wins() {
        assert_eq!(parse_query("EIO=3&EIO=4").eio.as_deref(), Some("4"));
    }

    #[test]
    fn query_without_the_mandatory_keys_leaves_them_none() {
        assert_eq!(parse_query(""), Query::default());
        assert_eq!(parse_query("t=1&foo=bar&&="), Query::default());
        assert_eq!(parse_query("EIO").eio.as_deref(), Some(""));
    }

    #[test]
    fn query_keys_are_case_sensitive() {
        assert_eq!(parse_query("eio=4&Transport=polling"), Query::default());
    }

    #[test]
    fn query_with_invalid_percent_encoding_does_not_fail() {
        let query = parse_query("sid=%FF%&token=%zz");
        assert_eq!(query.sid.as_deref(), Some("\u{fffd}%"));
        assert_eq!(query.token.as_deref(), Some("%zz"));
    }

    #[test]
    fn error_codes_carry_engine_io_messages() {
        let expected = [
            (ErrorCode::TransportUnknown, 0, "Transport unknown"),
            (ErrorCode::UnknownSid, 1, "Session ID unknown"),
            (ErrorCode::BadHandshakeMethod, 2, "Bad handshake method"),
            (ErrorCode::BadRequest, 3, "Bad request"),
            (ErrorCode::Forbidden, 4, "Forbidden"),
            (
                ErrorCode::UnsupportedProtocolVersion,
                5,
                "Unsupported protocol version",
            ),
        ];
        for (code, number, message) in expected {
            assert_eq!(code as u8, number);
            assert_eq!(code.message(), message);
        }
    }

    #[test]
    fn error_code_json_is_code_and_message() {
        assert_eq!(
            ErrorCode::UnknownSid.to_json(),
            "{\"code\":1,\"message\":\"Session ID unknown\"}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&ErrorCode::UnsupportedProtocolVersion.to_json()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"code": 5, "message": "Unsupported protocol version"})
        );
    }
}
