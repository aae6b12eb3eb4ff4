//! Pusher Channels protocol 7 frames, channel names and socket ids (protocols.md §5).
//!
//! Pure: no I/O, no async. Every frame is a JSON object `{event, channel?, data}` in a
//! text message. The server sends `data` as a JSON *string* (double encoding: pusher-js
//! parses it again); clients send `data` as an object, which [`decode`] also accepts as
//! a string holding an object. Encoders append to a `String` the caller owns, so a push
//! is encoded once and shared.

use serde_json::{Map, Value};

use crate::frontend::JsonError;

/// The protocol versions served. pusher-js 8 and the mobile SDKs send 7; 5 and 6 differ
/// from it only in what the server may leave out, which this server always sends.
pub const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

/// Longest channel name (the server SDKs' limit).
pub const MAX_CHANNEL_LEN: usize = 200;
/// Longest event name.
pub const MAX_EVENT_LEN: usize = 200;
/// Largest `data` of an event, client event or HTTP API trigger (Pusher's 10 KB).
pub const MAX_DATA_BYTES: usize = 10 * 1024;
/// Longest presence member id (Pusher's limit).
pub const MAX_USER_ID_LEN: usize = 128;
/// Largest presence `user_info`, as compact JSON (Pusher's 1 KB).
pub const MAX_USER_INFO_BYTES: usize = 1024;

/// The channel pusher-js subscribes after a sign-in; events on it reach `pusher.user`.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";
pub const PRIVATE_PREFIX: &str = "private-";
pub const ENCRYPTED_PREFIX: &str = "private-encrypted-";
pub const PRESENCE_PREFIX: &str = "presence-";
/// Events clients may send to each other start with this.
pub const CLIENT_EVENT_PREFIX: &str = "client-";

/// Event names of the protocol itself: a push may not use them.
pub fn is_reserved_event(event: &str) -> bool {
    event.starts_with("pusher:") || event.starts_with("pusher_internal:")
}

/// `pusher:error` codes and WebSocket close codes. 4000-4099: the client must not
/// reconnect unchanged; 4100-4199: reconnect after a pause; 4200-4299: reconnect at once.
pub mod code {
    /// The app key names no app.
    pub const APP_NOT_FOUND: u16 = 4001;
    /// The app has as many connections as it may.
    pub const OVER_QUOTA: u16 = 4004;
    /// The `protocol` query parameter names a version this server does not speak.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// No `protocol` query parameter.
    pub const NO_PROTOCOL: u16 = 4008;
    /// A signature did not verify (channel auth, sign-in), or the app ended the
    /// connection.
    pub const UNAUTHORIZED: u16 = 4009;
    /// The server is over capacity (the connection was too slow to keep): back off.
    pub const OVER_CAPACITY: u16 = 4100;
    /// Reconnect at once (this node is shutting down).
    pub const RECONNECT: u16 = 4200;
    /// The client did not answer a ping.
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    /// A client event was refused (rate limit, size).
    pub const CLIENT_EVENT_REJECTED: u16 = 4301;
}

/// What a channel's name makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    /// `private-`: subscribing needs a signature.
    Private,
    /// `private-encrypted-`: signed like private; the server relays the ciphertext.
    Encrypted,
    /// `presence-`: signed, with `channel_data` naming the member.
    Presence,
    /// `#server-to-user-<id>`: events to a signed-in user.
    ServerToUser(String),
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("a channel name is 1 to {MAX_CHANNEL_LEN} characters")]
    Length,
    #[error("a channel name may only hold A-Z a-z 0-9 _ - = @ , . ;")]
    Characters,
}

/// Classifies a channel name, refusing what Pusher refuses:
/// `^[A-Za-z0-9_\-=@,.;]+$`, at most 200 characters, or `#server-to-user-<id>`.
pub fn channel_kind(name: &str) -> Result<ChannelKind, ChannelNameError> {
    if let Some(user) = name.strip_prefix(SERVER_TO_USER_PREFIX) {
        if user.is_empty() || name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::Length);
        }
        return Ok(ChannelKind::ServerToUser(user.to_owned()));
    }
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelNameError::Length);
    }
    if !name.bytes().all(is_channel_byte) {
        return Err(ChannelNameError::Characters);
    }
    Ok(if name.starts_with(ENCRYPTED_PREFIX) {
        ChannelKind::Encrypted
    } else if name.starts_with(PRIVATE_PREFIX) {
        ChannelKind::Private
    } else if name.starts_with(PRESENCE_PREFIX) {
        ChannelKind::Presence
    } else {
        ChannelKind::Public
    })
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'@' | b',' | b'.' | b';')
}

/// Whether `name` is a channel a client may subscribe to by name (not the user channel).
pub fn is_channel_name(name: &str) -> bool {
    !name.starts_with(SERVER_TO_USER_PREFIX) && channel_kind(name).is_ok()
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        /// `<key>:<hex signature>`; pusher-js sends `""` for public channels.
        auth: Option<String>,
        /// Presence channels: the JSON text naming the member.
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    /// `pusher:signin`: `user_data` is JSON text with at least `id`, signed as
    /// `<socket_id>::user::<user_data>`.
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-` event for the other subscribers of `channel`.
    ClientEvent {
        event: String,
        channel: String,
        data: Value,
    },
    /// Any other event: `pusher:` events this server does not know, or names clients
    /// may not send.
    Other {
        event: String,
    },
}

/// Why a client frame was refused; the answer is a `pusher:error`.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    Json(#[source] JsonError),
    #[error("a message is a JSON object")]
    NotAnObject,
    #[error("a message names its event in \"event\", a string of 1 to {MAX_EVENT_LEN} characters")]
    Event,
    #[error("{event} needs {field} as {what}")]
    Field {
        event: &'static str,
        field: &'static str,
        what: &'static str,
    },
    #[error("a client event needs \"channel\", a string")]
    ClientEventChannel,
}

/// Decodes one text frame from a client.
pub fn decode(text: &str) -> Result<ClientMessage, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(JsonError(e)))?;
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let event = match obj.remove("event") {
        Some(Value::String(e)) if !e.is_empty() && e.len() <= MAX_EVENT_LEN => e,
        _ => return Err(DecodeError::Event),
    };
    let data = obj.remove("data");
    Ok(match event.as_str() {
        "pusher:ping" => ClientMessage::Ping,
        "pusher:pong" => ClientMessage::Pong,
        "pusher:subscribe" => {
            const E: &str = "pusher:subscribe";
            let mut data = object(data, E)?;
            ClientMessage::Subscribe {
                channel: string(&mut data, E, "channel")?,
                auth: optional_string(&mut data, E, "auth")?,
                channel_data: optional_string(&mut data, E, "channel_data")?,
            }
        }
        "pusher:unsubscribe" => {
            const E: &str = "pusher:unsubscribe";
            let mut data = object(data, E)?;
            ClientMessage::Unsubscribe {
                channel: string(&mut data, E, "channel")?,
            }
        }
        "pusher:signin" => {
            const E: &str = "pusher:signin";
            let mut data = object(data, E)?;
            ClientMessage::Signin {
                auth: string(&mut data, E, "auth")?,
                user_data: string(&mut data, E, "user_data")?,
            }
        }
        e if e.starts_with(CLIENT_EVENT_PREFIX) => {
            let Some(Value::String(channel)) = obj.remove("channel") else {
                return Err(DecodeError::ClientEventChannel);
            };
            ClientMessage::ClientEvent {
                event,
                channel,
                data: data.unwrap_or(Value::Null),
            }
        }
        _ => ClientMessage::Other { event },
    })
}

/// A message from the server, as a client reads it (the load generator, tests).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerMessage {
    pub event: String,
    pub channel: Option<String>,
    /// `data` as sent: a JSON string for events (double encoding), an object for
    /// `pusher:error`, ping and pong; `Null` when absent.
    pub data: Value,
    /// The sender of a client event on a presence channel.
    pub user_id: Option<String>,
}

impl ServerMessage {
    /// `data` as JSON: a string's JSON text parsed (a string that is not JSON stays a
    /// string), any other value as it is.
    pub fn data_json(&self) -> Value {
        match &self.data {
            Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| self.data.clone()),
            other => other.clone(),
        }
    }
}

/// Decodes one text frame from the server: `{"event", "channel"?, "data"?, "user_id"?}`.
pub fn decode_server(text: &str) -> Result<ServerMessage, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(JsonError(e)))?;
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::NotAnObject);
    };
    let event = match obj.remove("event") {
        Some(Value::String(e)) if !e.is_empty() && e.len() <= MAX_EVENT_LEN => e,
        _ => return Err(DecodeError::Event),
    };
    let text_field = |v: Option<Value>, field: &'static str| match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::Field {
            event: "a server message",
            field,
            what: "a string",
        }),
    };
    Ok(ServerMessage {
        channel: text_field(obj.remove("channel"), "channel")?,
        user_id: text_field(obj.remove("user_id"), "user_id")?,
        data: obj.remove("data").unwrap_or(Value::Null),
        event,
    })
}

/// A protocol event's `data`: an object, or a string holding one (some clients encode
/// it twice, as the server does).
fn object(data: Option<Value>, event: &'static str) -> Result<Map<String, Value>, DecodeError> {
    let refused = DecodeError::Field {
        event,
        field: "data",
        what: "an object",
    };
    match data {
        Some(Value::Object(o)) => Ok(o),
        Some(Value::String(s)) => match serde_json::from_str(&s) {
            Ok(Value::Object(o)) => Ok(o),
            _ => Err(refused),
        },
        _ => Err(refused),
    }
}

fn string(
    data: &mut Map<String, Value>,
    event: &'static str,
    field: &'static str,
) -> Result<String, DecodeError> {
    optional_string(data, event, field)?.ok_or(DecodeError::Field {
        event,
        field,
        what: "a string",
    })
}

fn optional_string(
    data: &mut Map<String, Value>,
    event: &'static str,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    match data.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::Field {
            event,
            field,
            what: "a string",
        }),
    }
}

/// Encodes `message` as a client sends it (pusher-js's shape): what [`decode`] reads
/// back to the same message. Used by tests, the fuzz target and the load generator.
pub fn encode_client(out: &mut String, message: &ClientMessage) {
    let mut data = Map::new();
    let (event, channel) = match message {
        ClientMessage::Ping => ("pusher:ping", None),
        ClientMessage::Pong => ("pusher:pong", None),
        ClientMessage::Subscribe {
            channel,
            auth,
            channel_data,
        } => {
            data.insert("channel".into(), Value::String(channel.clone()));
            if let Some(a) = auth {
                data.insert("auth".into(), Value::String(a.clone()));
            }
            if let Some(c) = channel_data {
                data.insert("channel_data".into(), Value::String(c.clone()));
            }
            ("pusher:subscribe", None)
        }
        ClientMessage::Unsubscribe { channel } => {
            data.insert("channel".into(), Value::String(channel.clone()));
            ("pusher:unsubscribe", None)
        }
        ClientMessage::Signin { auth, user_data } => {
            data.insert("auth".into(), Value::String(auth.clone()));
            data.insert("user_data".into(), Value::String(user_data.clone()));
            ("pusher:signin", None)
        }
        ClientMessage::ClientEvent {
            event,
            channel,
            data: d,
        } => {
            let mut obj = Map::new();
            obj.insert("event".into(), Value::String(event.clone()));
            obj.insert("channel".into(), Value::String(channel.clone()));
            obj.insert("data".into(), d.clone());
            out.push_str(&Value::Object(obj).to_string());
            return;
        }
        ClientMessage::Other { event } => (event.as_str(), None::<&str>),
    };
    let mut obj = Map::new();
    obj.insert("event".into(), Value::String(event.to_owned()));
    if let Some(c) = channel {
        obj.insert("channel".into(), Value::String(c.to_owned()));
    }
    obj.insert("data".into(), Value::Object(data));
    out.push_str(&Value::Object(obj).to_string());
}

/// A presence member as a client's `channel_data` (or a sign-in's `user_data`) names
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberData {
    /// The member's id: a string, or an integer written in decimal (Laravel sends
    /// numbers).
    pub user_id: String,
    /// `user_info` as compact JSON text; `None` when absent or null.
    pub user_info: Option<String>,
}

/// Why `channel_data` (or `user_data`) names no member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberDataError {
    #[error("{0} must be JSON text of an object")]
    NotAnObject(&'static str),
    #[error("{0} needs {1}: a string of 1 to {MAX_USER_ID_LEN} characters, or an integer")]
    UserId(&'static str, &'static str),
    #[error("user_info is larger than {MAX_USER_INFO_BYTES} bytes")]
    UserInfoTooLarge,
}

/// Reads a presence subscription's `channel_data`: `{"user_id", "user_info"?}`.
pub fn parse_channel_data(text: &str) -> Result<MemberData, MemberDataError> {
    member_data(text, "channel_data", "user_id")
}

/// Reads a sign-in's `user_data` as a presence member: `{"id", "user_info"?}` (how
/// pusher-js subscribes to a presence channel when the auth answer has no
/// `channel_data`).
pub fn parse_user_data(text: &str) -> Result<MemberData, MemberDataError> {
    member_data(text, "user_data", "id")
}

fn member_data(
    text: &str,
    what: &'static str,
    id_field: &'static str,
) -> Result<MemberData, MemberDataError> {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(text) else {
        return Err(MemberDataError::NotAnObject(what));
    };
    let user_id = match obj.remove(id_field) {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_USER_ID_LEN => s,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        _ => return Err(MemberDataError::UserId(what, id_field)),
    };
    let user_info = match obj.remove("user_info") {
        None | Some(Value::Null) => None,
        Some(info) => {
            let text = info.to_string();
            if text.len() > MAX_USER_INFO_BYTES {
                return Err(MemberDataError::UserInfoTooLarge);
            }
            Some(text)
        }
    };
    Ok(MemberData { user_id, user_info })
}

/// Appends `s` as a JSON string literal.
fn push_str(out: &mut String, s: &str) {
    // Serializing a str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// An event with `data_text` (JSON text, or any text) as its string `data`:
/// `{"event":…,"channel":…,"data":"…"}`. `channel` is omitted when `None`.
pub fn encode_event(out: &mut String, event: &str, channel: Option<&str>, data_text: &str) {
    out.push_str("{\"event\":");
    push_str(out, event);
    if let Some(c) = channel {
        out.push_str(",\"channel\":");
        push_str(out, c);
    }
    out.push_str(",\"data\":");
    push_str(out, data_text);
    out.push('}');
}

/// The first server message: the socket id and the activity timeout in seconds.
pub fn encode_connection_established(out: &mut String, socket_id: &str, activity_timeout: u64) {
    let data = serde_json::json!({"socket_id": socket_id, "activity_timeout": activity_timeout});
    encode_event(
        out,
        "pusher:connection_established",
        None,
        &data.to_string(),
    );
}

/// `pusher:error` with `{"code":…,"message":…}` as an object, as the protocol's docs
/// show it; `code` null for errors that ask the client to change nothing.
pub fn encode_error(out: &mut String, code: Option<u16>, message: &str) {
    let data = serde_json::json!({"code": code, "message": message});
    out.push_str("{\"event\":\"pusher:error\",\"data\":");
    out.push_str(&data.to_string());
    out.push('}');
}

pub fn encode_ping(out: &mut String) {
    out.push_str(r#"{"event":"pusher:ping","data":{}}"#);
}

pub fn encode_pong(out: &mut String) {
    out.push_str(r#"{"event":"pusher:pong","data":{}}"#);
}

/// The data of a `member_added` for a member without `user_info`, and its `hash`
/// entry: an empty object, so `member.info.name` reads `undefined` rather than throw.
const NO_INFO: &str = "{}";

/// `pusher_internal:subscription_succeeded` on a presence channel: its members as
/// `{"presence": {"ids", "hash", "count"}}`, each member once (`members` is in the
/// order to list them; a repeated id is skipped), `info` as JSON text.
pub fn encode_presence_succeeded<'a>(
    out: &mut String,
    channel: &str,
    members: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) {
    let mut ids = String::from("[");
    let mut hash = String::from("{");
    let mut seen = std::collections::HashSet::new();
    for (id, info) in members {
        if !seen.insert(id) {
            continue;
        }
        if seen.len() > 1 {
            ids.push(',');
            hash.push(',');
        }
        push_str(&mut ids, id);
        push_str(&mut hash, id);
        hash.push(':');
        hash.push_str(info.unwrap_or(NO_INFO));
    }
    ids.push(']');
    hash.push('}');
    let data = format!(
        r#"{{"presence":{{"ids":{ids},"hash":{hash},"count":{}}}}}"#,
        seen.len()
    );
    encode_event(
        out,
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &data,
    );
}

/// `pusher_internal:member_added`: a member's first connection subscribed.
pub fn encode_member_added(out: &mut String, channel: &str, user_id: &str, info: Option<&str>) {
    let mut data = String::from(r#"{"user_id":"#);
    push_str(&mut data, user_id);
    data.push_str(r#","user_info":"#);
    data.push_str(info.unwrap_or(NO_INFO));
    data.push('}');
    encode_event(out, "pusher_internal:member_added", Some(channel), &data);
}

/// `pusher_internal:member_removed`: a member's last connection left.
pub fn encode_member_removed(out: &mut String, channel: &str, user_id: &str) {
    let mut data = String::from(r#"{"user_id":"#);
    push_str(&mut data, user_id);
    data.push('}');
    encode_event(out, "pusher_internal:member_removed", Some(channel), &data);
}

/// A client event as the other subscribers get it: [`encode_event`] plus, on a
/// presence channel, the sender's `user_id` (pusher-js hands it to the callback as
/// `metadata.user_id`).
pub fn encode_client_event(
    out: &mut String,
    event: &str,
    channel: &str,
    data_text: &str,
    user_id: Option<&str>,
) {
    encode_event(out, event, Some(channel), data_text);
    if let Some(id) = user_id {
        out.pop();
        out.push_str(",\"user_id\":");
        push_str(out, id);
        out.push('}');
    }
}

pub fn encode_subscription_succeeded(out: &mut String, channel: &str) {
    encode_event(
        out,
        "pusher_internal:subscription_succeeded",
        Some(channel),
        "{}",
    );
}

/// `pusher:subscription_error` on `channel`: pusher-js hands it to the channel's
/// `pusher:subscription_error` binding.
pub fn encode_subscription_error(
    out: &mut String,
    channel: &str,
    kind: &str,
    error: &str,
    status: u16,
) {
    let data = serde_json::json!({"type": kind, "error": error, "status": status});
    encode_event(
        out,
        "pusher:subscription_error",
        Some(channel),
        &data.to_string(),
    );
}

pub fn encode_signin_success(out: &mut String, user_data: &str) {
    let data = serde_json::json!({ "user_data": user_data });
    encode_event(out, "pusher:signin_success", None, &data.to_string());
}

/// The characters a node id may hold (`id::NodeId::parse`), each written as two digits
/// (10 + its index) in a Pusher socket id.
const NODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-";

/// The Pusher form (`^\d+\.\d+$`, which the server SDKs check) of a pushgate socket id
/// `<node>.<digits>`: the node id two digits per character, then the same digits. The
/// mapping is reversible ([`socket_of`]), so a Pusher id from the HTTP API names its
/// node without a lookup. `None` when `socket` is not of that shape.
pub fn pusher_socket_id(socket: &str) -> Option<String> {
    let (node, digits) = socket.split_once('.')?;
    if node.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut out = String::with_capacity(node.len() * 2 + 1 + digits.len());
    for b in node.bytes() {
        let i = NODE_ALPHABET.iter().position(|&c| c == b)?;
        out.push_str(&(10 + i).to_string());
    }
    out.push('.');
    out.push_str(digits);
    Some(out)
}

/// The pushgate socket id behind a Pusher socket id made by [`pusher_socket_id`];
/// `None` for anything else (a Pusher id of another server names no socket here).
pub fn socket_of(pusher_id: &str) -> Option<String> {
    let (codes, digits) = pusher_id.split_once('.')?;
    if codes.is_empty()
        || codes.len() % 2 != 0
        || digits.is_empty()
        || !pusher_id.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        || digits.contains('.')
    {
        return None;
    }
    let mut out = String::with_capacity(codes.len() / 2 + 1 + digits.len());
    for pair in codes.as_bytes().chunks(2) {
        let n = usize::from(pair[0] - b'0') * 10 + usize::from(pair[1] - b'0');
        let c = *NODE_ALPHABET.get(n.checked_sub(10)?)?;
        out.push(char::from(c));
    }
    out.push('.');
    out.push_str(digits);
    Some(out)
}

/// Whether `id` has the shape of a Pusher socket id.
pub fn is_socket_id(id: &str) -> bool {
    id.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_frames_decode_as_pusher_js_sends_them() {
        assert_eq!(
            decode(r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"public-1"}}"#),
            Ok(ClientMessage::Subscribe {
                channel: "public-1".into(),
                auth: Some(String::new()),
                channel_data: None
            })
        );
        assert_eq!(
            decode(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            decode(r#"{"event":"client-typing","data":{"a":1},"channel":"private-a"}"#),
            Ok(ClientMessage::ClientEvent {
                event: "client-typing".into(),
                channel: "private-a".into(),
                data: json!({"a": 1})
            })
        );
        assert_eq!(
            decode(
                r#"{"event":"pusher:signin","data":{"auth":"k:ab","user_data":"{\"id\":\"1\"}"}}"#
            ),
            Ok(ClientMessage::Signin {
                auth: "k:ab".into(),
                user_data: r#"{"id":"1"}"#.into()
            })
        );
        assert_eq!(
            decode(r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"c\"}"}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "c".into()
            }),
            "data encoded twice is read too"
        );
        assert_eq!(
            decode(r#"{"event":"pusher:cache_miss","data":{}}"#),
            Ok(ClientMessage::Other {
                event: "pusher:cache_miss".into()
            })
        );
    }

    #[test]
    fn malformed_client_frames_say_what_is_wrong() {
        assert!(matches!(decode("nope"), Err(DecodeError::Json(_))));
        assert_eq!(decode("[1]"), Err(DecodeError::NotAnObject));
        assert_eq!(decode(r#"{"data":{}}"#), Err(DecodeError::Event));
        assert_eq!(decode(r#"{"event":""}"#), Err(DecodeError::Event));
        assert!(matches!(
            decode(r#"{"event":"pusher:subscribe","data":{"channel":7}}"#),
            Err(DecodeError::Field {
                field: "channel",
                ..
            })
        ));
        assert!(matches!(
            decode(r#"{"event":"pusher:subscribe"}"#),
            Err(DecodeError::Field { field: "data", .. })
        ));
        assert_eq!(
            decode(r#"{"event":"client-x","data":{}}"#),
            Err(DecodeError::ClientEventChannel)
        );
    }

    #[test]
    fn every_client_message_round_trips() {
        for m in [
            ClientMessage::Ping,
            ClientMessage::Pong,
            ClientMessage::Subscribe {
                channel: "presence-a".into(),
                auth: Some("k:1".into()),
                channel_data: Some("{}".into()),
            },
            ClientMessage::Unsubscribe {
                channel: "c".into(),
            },
            ClientMessage::Signin {
                auth: "k:2".into(),
                user_data: "{\"id\":\"u\"}".into(),
            },
            ClientMessage::ClientEvent {
                event: "client-a".into(),
                channel: "private-b".into(),
                data: json!([1, "x"]),
            },
            ClientMessage::Other {
                event: "nonsense".into(),
            },
        ] {
            let mut out = String::new();
            encode_client(&mut out, &m);
            assert_eq!(decode(&out), Ok(m), "{out}");
        }
    }

    #[test]
    fn server_frames_carry_data_as_a_json_string() {
        let mut out = String::new();
        encode_event(&mut out, "e", Some("c"), r#"{"a":"\"q\""}"#);
        assert_eq!(
            out,
            r#"{"event":"e","channel":"c","data":"{\"a\":\"\\\"q\\\"\"}"}"#
        );
        let back: Value = serde_json::from_str(&out).unwrap();
        let data: Value = serde_json::from_str(back["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"a": "\"q\""}));

        let mut out = String::new();
        encode_connection_established(&mut out, "12.34", 120);
        let v: Value = serde_json::from_str(&out).unwrap();
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"socket_id": "12.34", "activity_timeout": 120}));

        let mut out = String::new();
        encode_error(&mut out, Some(4001), "no app");
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"event": "pusher:error", "data": {"code": 4001, "message": "no app"}})
        );
    }

    #[test]
    fn channel_names_follow_pushers_rules() {
        assert_eq!(channel_kind("news"), Ok(ChannelKind::Public));
        assert_eq!(
            channel_kind("private-a=b@c,d.e;f_g"),
            Ok(ChannelKind::Private)
        );
        assert_eq!(
            channel_kind("private-encrypted-x"),
            Ok(ChannelKind::Encrypted)
        );
        assert_eq!(channel_kind("presence-room"), Ok(ChannelKind::Presence));
        assert_eq!(
            channel_kind("#server-to-user-u:1"),
            Ok(ChannelKind::ServerToUser("u:1".into()))
        );
        assert_eq!(channel_kind(""), Err(ChannelNameError::Length));
        assert_eq!(
            channel_kind(&"a".repeat(201)),
            Err(ChannelNameError::Length)
        );
        assert_eq!(channel_kind("chat:1"), Err(ChannelNameError::Characters));
        assert_eq!(channel_kind("a b"), Err(ChannelNameError::Characters));
        assert!(!is_channel_name("#server-to-user-u"));
        assert!(is_channel_name("private-x"));
    }

    #[test]
    fn pusher_socket_ids_are_digits_and_name_their_node() {
        let id = pusher_socket_id("gw-1.0123456789").unwrap();
        assert!(is_socket_id(&id), "{id}");
        assert_eq!(socket_of(&id).as_deref(), Some("gw-1.0123456789"));
        let every = std::str::from_utf8(NODE_ALPHABET).unwrap();
        let id = pusher_socket_id(&format!("{every}.7")).unwrap();
        assert_eq!(socket_of(&id), Some(format!("{every}.7")));
        assert_eq!(pusher_socket_id("node.abc"), None, "random part not digits");
        assert_eq!(pusher_socket_id("no:de.1"), None);
        assert_eq!(socket_of("123.456"), None, "odd number of code digits");
        assert_eq!(socket_of("0912.4"), None, "code below 10");
        assert_eq!(socket_of("99.4"), None, "code past the alphabet");
        assert_eq!(socket_of("12.4.5"), None);
        assert!(!is_socket_id("1.") && !is_socket_id("a.1") && !is_socket_id("12"));
    }

    #[test]
    fn channel_data_names_a_member_with_optional_info() {
        assert_eq!(
            parse_channel_data(r#"{"user_id":"u1","user_info":{"name": "Ann"}}"#),
            Ok(MemberData {
                user_id: "u1".into(),
                user_info: Some(r#"{"name":"Ann"}"#.into())
            }),
            "info is kept as compact JSON"
        );
        assert_eq!(
            parse_channel_data(r#"{"user_id":42,"user_info":null}"#),
            Ok(MemberData {
                user_id: "42".into(),
                user_info: None
            }),
            "Laravel's integer ids are written in decimal"
        );
        assert_eq!(
            parse_user_data(r#"{"id":"u2","user_info":[1]}"#).unwrap(),
            MemberData {
                user_id: "u2".into(),
                user_info: Some("[1]".into())
            }
        );
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"user_id":""}"#,
            r#"{"user_id":1.5}"#,
            r#"{"user_id":true}"#,
        ] {
            assert!(parse_channel_data(bad).is_err(), "{bad}");
        }
        let long = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(MAX_USER_ID_LEN + 1));
        assert!(matches!(
            parse_channel_data(&long),
            Err(MemberDataError::UserId(..))
        ));
        let big = format!(
            r#"{{"user_id":"u","user_info":"{}"}}"#,
            "x".repeat(MAX_USER_INFO_BYTES)
        );
        assert_eq!(
            parse_channel_data(&big),
            Err(MemberDataError::UserInfoTooLarge)
        );
        assert!(parse_channel_data(r#"{"user_id":"u"}"#).is_ok());
    }

    /// The data of a server frame, parsed from its JSON string.
    fn data_of(frame: &str) -> (Value, Value) {
        let v: Value = serde_json::from_str(frame).unwrap();
        let data = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        (v, data)
    }

    #[test]
    fn presence_frames_are_what_pusher_js_reads() {
        let mut out = String::new();
        encode_presence_succeeded(
            &mut out,
            "presence-a",
            [
                ("u1", Some(r#"{"n":1}"#)),
                ("u2", None),
                ("u1", Some(r#"{"n":1}"#)),
            ],
        );
        let (frame, data) = data_of(&out);
        assert_eq!(frame["event"], "pusher_internal:subscription_succeeded");
        assert_eq!(frame["channel"], "presence-a");
        assert_eq!(
            data,
            json!({"presence": {"ids": ["u1", "u2"], "hash": {"u1": {"n": 1}, "u2": {}}, "count": 2}}),
            "a member with two connections is listed once"
        );
        let mut out = String::new();
        encode_presence_succeeded(&mut out, "presence-empty", std::iter::empty());
        assert_eq!(
            data_of(&out).1,
            json!({"presence": {"ids": [], "hash": {}, "count": 0}})
        );

        let mut out = String::new();
        encode_member_added(&mut out, "presence-a", "u\"3", Some("[1,2]"));
        let (frame, data) = data_of(&out);
        assert_eq!(frame["event"], "pusher_internal:member_added");
        assert_eq!(data, json!({"user_id": "u\"3", "user_info": [1, 2]}));
        let mut out = String::new();
        encode_member_added(&mut out, "presence-a", "u4", None);
        assert_eq!(data_of(&out).1, json!({"user_id": "u4", "user_info": {}}));

        let mut out = String::new();
        encode_member_removed(&mut out, "presence-a", "u1");
        let (frame, data) = data_of(&out);
        assert_eq!(frame["event"], "pusher_internal:member_removed");
        assert_eq!(data, json!({"user_id": "u1"}));
    }

    #[test]
    fn a_client_event_on_a_presence_channel_names_its_sender() {
        let mut out = String::new();
        encode_client_event(&mut out, "client-x", "presence-a", r#"{"a":1}"#, Some("u1"));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"event": "client-x", "channel": "presence-a", "data": "{\"a\":1}", "user_id": "u1"})
        );
        let mut plain = String::new();
        encode_client_event(&mut plain, "client-x", "private-a", "d", None);
        let v: Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(
            v,
            json!({"event": "client-x", "channel": "private-a", "data": "d"})
        );
    }

    #[test]
    fn server_frames_decode_as_a_client_reads_them() {
        let mut out = String::new();
        encode_client_event(&mut out, "client-x", "presence-a", r#"{"a":1}"#, Some("u1"));
        let m = decode_server(&out).unwrap();
        assert_eq!(
            (m.event.as_str(), m.channel.as_deref(), m.user_id.as_deref()),
            ("client-x", Some("presence-a"), Some("u1"))
        );
        assert_eq!(m.data_json(), json!({"a": 1}));
        let mut out = String::new();
        encode_connection_established(&mut out, "1.2", 120);
        assert_eq!(
            decode_server(&out).unwrap().data_json(),
            json!({"socket_id": "1.2", "activity_timeout": 120})
        );
        let mut out = String::new();
        encode_error(&mut out, Some(4001), "no");
        let m = decode_server(&out).unwrap();
        assert_eq!(m.data, json!({"code": 4001, "message": "no"}));
        assert_eq!(m.channel, None);
        let mut out = String::new();
        encode_ping(&mut out);
        assert_eq!(decode_server(&out).unwrap().event, "pusher:ping");
        let mut out = String::new();
        encode_event(&mut out, "e", None, "not json");
        assert_eq!(decode_server(&out).unwrap().data_json(), json!("not json"));
        assert!(decode_server("[]").is_err());
        assert!(decode_server(r#"{"event":"e","channel":1}"#).is_err());
        assert!(decode_server(r#"{"data":"x"}"#).is_err());
    }
}
