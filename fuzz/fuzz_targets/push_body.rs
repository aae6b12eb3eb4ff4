//! HTTP push bodies (`POST /v1/push` and `/v1/push/batch`), validated as the API and
//! the push service do: the body as JSON, `Push::from_json` / `push::batch_from_json`,
//! then every frontend's `check` (`Codecs::check`). Never panics, and:
//!
//! - an accepted push keeps the rules every protocol shares (event 1 to 200 bytes,
//!   non-empty names, `users` non-empty without duplicates, ack timeout in range, no
//!   explicit default namespace);
//! - an accepted push written back as a request body is accepted as the same push;
//! - a batch is accepted iff `pushes` is a list of 1 to `max` pushes that are each
//!   accepted alone, and a refused one names the first refused push with its error;
//! - a push every frontend accepted is encoded by each of them (`check` promises that
//!   `encode` cannot fail) into frames that the protocol's own decoder reads back as
//!   that push: Socket.IO's event, namespace, ack id, data and attachments (and no
//!   placeholder the client would fill that the codec did not write), Phoenix's
//!   topic, event, ack ref and payload, Pusher's event, channel and data text.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pushgate::codec::{Codecs, PushCodec};
use pushgate::connection::Frame;
use pushgate::frontend::phoenix::PhoenixCodec;
use pushgate::frontend::pusher::protocol::{decode_server, SERVER_TO_USER_PREFIX};
use pushgate::frontend::pusher::PusherCodec;
use pushgate::frontend::socketio::packet::{extract_binary, Assembled, Assembler, PacketKind};
use pushgate::frontend::socketio::SocketIoCodec;
use pushgate::push::{
    batch_from_json, Push, Target, DEFAULT_SCOPE, MAX_ACK_TIMEOUT_MS, MAX_EVENT_LEN,
};
use serde_json::{json, Value};

/// A small batch limit, so that the fuzzer reaches both sides of it.
const MAX_BATCH: usize = 4;
/// An ack id for the encodings of ack-tracked pushes.
const ACK_ID: u64 = 4_294_967_311;
/// The gateway's own decoders stop at serde_json's 128 levels of nesting; browsers do
/// not, and a frontend wraps the data one or two levels deeper. Data nested deeper than
/// this is encoded but not decoded back.
const DECODE_DEPTH: usize = 100;

fuzz_target!(|body: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let codecs = codecs();

    if let Ok(push) = Push::from_json(value.clone()) {
        keeps_the_shared_rules(&push);
        let again = Push::from_json(
            serde_json::from_slice(&serde_json::to_vec(&request_body(&push)).unwrap()).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{push:?} written back is refused: {e}"));
        assert_same(&again, &push);
        if codecs.check(&push).is_ok() {
            every_frontend_encodes(&push);
        }
    }

    let list = value.get("pushes").and_then(Value::as_array).cloned();
    match batch_from_json(value, MAX_BATCH) {
        Ok(pushes) => {
            let list = list.expect("an accepted batch has a list of pushes");
            assert_eq!(pushes.len(), list.len());
            assert!((1..=MAX_BATCH).contains(&pushes.len()));
            for (p, v) in pushes.iter().zip(list) {
                let alone = Push::from_json(v).expect("each push of a batch is valid alone");
                assert_same(p, &alone);
            }
        }
        Err((Some(i), e)) => {
            let list = list.expect("a push index names a push in a list");
            assert!((1..=MAX_BATCH).contains(&list.len()) && i < list.len());
            for v in &list[..i] {
                assert!(
                    Push::from_json(v.clone()).is_ok(),
                    "an earlier push was refused"
                );
            }
            assert_eq!(Push::from_json(list[i].clone()).err(), Some(e));
        }
        Err((None, _)) => {
            assert!(list.is_none_or(|l| l.is_empty() || l.len() > MAX_BATCH));
        }
    }
});

/// The codecs of a node serving every frontend (Pusher only registers with apps
/// configured; with it, every check applies).
fn codecs() -> Codecs {
    let mut codecs = Codecs::new();
    codecs.register(Arc::new(SocketIoCodec));
    codecs.register(Arc::new(PhoenixCodec));
    codecs.register(Arc::new(PusherCodec));
    codecs
}

fn keeps_the_shared_rules(push: &Push) {
    assert!((1..=MAX_EVENT_LEN).contains(&push.event.len()));
    match &push.target {
        Target::All => {}
        Target::User(u) => assert!(!u.as_str().is_empty()),
        Target::Room(r) => assert!(!r.as_str().is_empty()),
        Target::Socket(s) => assert!(!s.as_str().is_empty()),
        Target::Users(users) => {
            assert!(!users.is_empty());
            let distinct: std::collections::HashSet<_> = users.iter().collect();
            assert_eq!(distinct.len(), users.len(), "duplicate users kept");
            assert!(users.iter().all(|u| !u.as_str().is_empty()));
        }
    }
    if let Some(ack) = push.ack {
        assert!((1..=MAX_ACK_TIMEOUT_MS).contains(&(ack.as_millis() as u64)));
    }
    if let Some(scope) = &push.scope {
        assert!(!scope.is_empty() && &**scope != DEFAULT_SCOPE);
    }
    assert!(push.except.iter().all(|s| !s.as_str().is_empty()));
    assert!(push.sender.is_none());
}

/// The request body that asks for `push`.
fn request_body(push: &Push) -> Value {
    let to = match &push.target {
        Target::All => json!({"all": true}),
        Target::User(u) => json!({"user": u.as_str()}),
        Target::Users(us) => json!({"users": us.iter().map(|u| u.as_str()).collect::<Vec<_>>()}),
        Target::Room(r) => json!({"room": r.as_str()}),
        Target::Socket(s) => json!({"socket": s.as_str()}),
    };
    let mut body = json!({"to": to, "event": push.event, "wait": push.wait});
    if let Some(data) = &push.data {
        body["data"] = data.clone();
    }
    if let Some(scope) = &push.scope {
        body["namespace"] = json!(&**scope);
    }
    if !push.except.is_empty() {
        body["except"] = push.except.iter().map(|s| json!(s.as_str())).collect();
    }
    if let Some(ack) = push.ack {
        body["ack"] = json!({"timeout_ms": ack.as_millis() as u64});
    }
    body
}

fn assert_same(a: &Push, b: &Push) {
    assert_eq!(a.target, b.target);
    assert_eq!(a.event, b.event);
    assert_eq!(a.data, b.data);
    assert_eq!(a.scope, b.scope);
    assert_eq!(a.except, b.except);
    assert_eq!(a.ack, b.ack);
    assert_eq!(a.wait, b.wait);
    assert_eq!(a.sender, b.sender);
}

fn every_frontend_encodes(push: &Push) {
    let decodable = push.data.as_ref().is_none_or(|d| depth(d) <= DECODE_DEPTH);
    for ack_id in [None, Some(ACK_ID)] {
        let frames = SocketIoCodec.encode(push, ack_id);
        if decodable {
            socketio_reads(push, ack_id, &frames);
        }
        let frames = PhoenixCodec.encode(push, ack_id);
        if decodable {
            phoenix_reads(push, ack_id, &frames);
        }
        let frames = PusherCodec.encode(push, ack_id);
        let channel = match &push.target {
            Target::Room(_) => Channel::Room,
            Target::User(u) => Channel::User(u.as_str()),
            _ => Channel::None,
        };
        if decodable {
            pusher_reads(push, channel, &frames);
        }
        if let Target::Users(users) = &push.target {
            for user in users {
                let frames = PusherCodec.encode_for_user(push, user, ack_id);
                if decodable {
                    pusher_reads(push, Channel::User(user.as_str()), &frames);
                }
            }
        }
    }
}

fn text(frame: &Frame) -> &str {
    match frame {
        Frame::Text(t) => t.as_str(),
        Frame::Binary(_) => panic!("a binary frame where text was expected"),
    }
}

fn socketio_reads(push: &Push, ack_id: Option<u64>, frames: &[Frame]) {
    let (first, rest) = frames.split_first().expect("at least one frame");
    let message = text(first).strip_prefix('4').expect("an Engine.IO message");
    let mut expected = push.data.clone();
    let binaries = expected
        .as_mut()
        .map(|d| extract_binary(d).expect("check accepted the markers"))
        .unwrap_or_default();
    assert_eq!(
        rest.len(),
        binaries.len(),
        "one binary frame per attachment"
    );

    let mut assembler = Assembler::default();
    let mut result = assembler
        .push_text(message)
        .unwrap_or_else(|e| panic!("encoded {message:?} does not decode: {e}"));
    for frame in rest {
        let Frame::Binary(bytes) = frame else {
            panic!("an attachment sent as text");
        };
        assert_eq!(result, Assembled::NeedMore);
        result = assembler
            .push_binary(bytes.clone())
            .unwrap_or_else(|e| panic!("attachment refused: {e}"));
    }
    let Assembled::Complete(packet, attachments) = result else {
        panic!("a packet still awaits attachments");
    };
    let kind = if binaries.is_empty() {
        PacketKind::Event
    } else {
        PacketKind::BinaryEvent
    };
    assert_eq!(packet.kind, kind);
    assert_eq!(packet.nsp, push.scope());
    assert_eq!(packet.id, ack_id);
    assert_eq!(attachments, binaries);
    let mut args = vec![json!(push.event)];
    args.extend(expected);
    let data = packet.data.expect("an event has data");
    assert_eq!(data, Value::Array(args));
    // The client replaces every `{"_placeholder": true}` object of a binary packet by
    // an attachment, or fails the packet: only the codec's own may be there.
    if !attachments.is_empty() {
        let mut nums = Vec::new();
        placeholders(&data, &mut nums);
        let written: Vec<u64> = (0..attachments.len() as u64).collect();
        assert_eq!(nums, written, "placeholders the codec did not write");
    }
}

/// The `num` of every object a Socket.IO client reconstructs as an attachment
/// (`_placeholder` is `true`), in document order; `u64::MAX` for one without a valid
/// `num`.
fn placeholders(value: &Value, out: &mut Vec<u64>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| placeholders(v, out)),
        Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => {
            out.push(map.get("num").and_then(Value::as_u64).unwrap_or(u64::MAX))
        }
        Value::Object(map) => map.values().for_each(|v| placeholders(v, out)),
        _ => {}
    }
}

fn phoenix_reads(push: &Push, ack_id: Option<u64>, frames: &[Frame]) {
    let [frame] = frames else {
        panic!("Phoenix sends one frame per push, got {}", frames.len());
    };
    let value: Value = serde_json::from_str(text(frame)).expect("a Phoenix frame is JSON");
    let topic = match &push.target {
        Target::Room(r) => r.as_str(),
        _ => "pushgate",
    };
    let payload = match &push.data {
        Some(v @ Value::Object(_)) => v.clone(),
        None => json!({}),
        Some(other) => json!({"value": other}),
    };
    let join_ref = Value::Null;
    let r#ref = ack_id.map_or(Value::Null, |id| json!(id.to_string()));
    assert_eq!(value, json!([join_ref, r#ref, topic, push.event, payload]));
}

enum Channel<'a> {
    None,
    Room,
    User(&'a str),
}

fn pusher_reads(push: &Push, channel: Channel<'_>, frames: &[Frame]) {
    let [frame] = frames else {
        panic!("Pusher sends one frame per push, got {}", frames.len());
    };
    let m = decode_server(text(frame))
        .unwrap_or_else(|e| panic!("Pusher frame {frame:?} does not decode: {e}"));
    assert_eq!(m.event, push.event);
    assert_eq!(m.user_id, None);
    let data = match &push.data {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".to_owned(),
    };
    assert_eq!(m.data, Value::String(data));
    match channel {
        Channel::None => assert_eq!(m.channel, None),
        Channel::Room => assert!(m.channel.is_some()),
        Channel::User(user) => {
            let channel = m.channel.expect("a user push names its channel");
            let id = channel
                .strip_prefix(SERVER_TO_USER_PREFIX)
                .expect("a user's channel");
            assert!(user.ends_with(id), "{user:?} pushed to {channel:?}");
        }
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
