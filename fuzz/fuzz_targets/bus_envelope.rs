//! Bus envelopes: what a node decodes from a Redis pub/sub message (MessagePack,
//! `Envelope::decode`). Decoding never panics and refuses with a reason; a decoded
//! envelope is this version's and decode → encode → decode is equal; a push envelope
//! becomes a push (`into_push`) exactly when its data is JSON text, and that push
//! travels again (`PushEnvelope::of`) as the same envelope.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use pushgate::bus::{DecodeError, Envelope, Message, PushEnvelope, WireTarget, VERSION};

fuzz_target!(|bytes: &[u8]| {
    let envelope = match Envelope::decode(bytes) {
        Ok(e) => e,
        Err(DecodeError::UnknownVersion(v)) => {
            assert_ne!(v, u64::from(VERSION));
            return;
        }
        Err(DecodeError::Undecodable) => return,
    };
    assert_eq!(envelope.v, VERSION);
    let encoded = envelope.encode();
    let again = Envelope::decode(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded {envelope:?} does not decode: {e}"));
    assert_eq!(again, envelope);

    let Message::Push(env) = envelope.m else {
        return;
    };
    let data_is_json = env
        .data
        .as_deref()
        .is_none_or(|d| serde_json::from_str::<serde_json::Value>(d).is_ok());
    let now_ms = env.accepted_ms.saturating_add(250);
    let Some(push) = env.clone().into_push(now_ms) else {
        assert!(!data_is_json, "a push with JSON data was dropped");
        return;
    };
    assert!(
        data_is_json,
        "a push with data that is not JSON was delivered"
    );
    assert!(push.accepted_at <= std::time::Instant::now());

    let mut sent = PushEnvelope::of(&push, &env.origin, env.accepted_ms);
    assert_eq!(sent.len(), 1, "one target, one envelope");
    let (target, back) = sent.remove(0);
    assert_eq!(target, back.target);
    assert_eq!(target, env.target);
    assert!(matches!(
        target,
        WireTarget::All | WireTarget::User(_) | WireTarget::Room(_) | WireTarget::Socket(_)
    ));
    assert_eq!(back.id, env.id);
    assert_eq!(back.origin, env.origin);
    assert_eq!(back.event, env.event);
    // Data travels as JSON text: the same JSON, written compactly.
    let json = |d: &Option<String>| {
        d.as_deref()
            .map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap())
    };
    assert_eq!(json(&back.data), json(&env.data));
    assert_eq!(back.scope, env.scope);
    // `except` is a set once delivered.
    let set = |v: &[String]| v.iter().cloned().collect::<HashSet<_>>();
    assert_eq!(set(&back.except), set(&env.except));
    assert_eq!(back.except.len(), set(&env.except).len());
    assert_eq!(back.ack_ms, env.ack_ms);
    assert_eq!(back.accepted_ms, env.accepted_ms);
    assert_eq!(back.sender, env.sender);
});
