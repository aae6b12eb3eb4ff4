//! Phoenix V2 frames: text and binary decoding never panic; a decoded text frame encodes
//! (with `encode_message`) to text that decodes to the same message; a decoded binary push
//! keeps its payload bytes; long-poll bodies split into frames without panicking. The
//! `Sec-WebSocket-Protocol` header: reading the auth token never panics, and a token read
//! is found again in a header that offers only it (as phoenix.js writes it: standard
//! base64 without padding).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pushgate::frontend::phoenix::codec::{
    auth_token_from_protocols, decode, decode_binary, decode_poll_body, encode_message,
    offers_phoenix_subprotocol, Payload, AUTH_TOKEN_PREFIX,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(message) = decode(text) {
            let Payload::Json(payload) = &message.payload else {
                panic!("text frame {text:?} decoded to a binary payload");
            };
            let mut encoded = String::new();
            encode_message(
                &mut encoded,
                message.join_ref.as_deref(),
                message.r#ref.as_deref(),
                &message.topic,
                &message.event,
                payload,
            );
            let again = decode(&encoded)
                .unwrap_or_else(|e| panic!("re-encoded {encoded:?} failed to decode: {e}"));
            assert_eq!(again, message);
        }
    }

    if let Ok(header) = std::str::from_utf8(data) {
        let _ = offers_phoenix_subprotocol(header);
        if let Ok(Some(token)) = auth_token_from_protocols(header) {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&token);
            let again = format!("phoenix, {AUTH_TOKEN_PREFIX}{encoded}");
            assert_eq!(auth_token_from_protocols(&again), Ok(Some(token)));
            assert!(offers_phoenix_subprotocol(&again));
        }
    }

    let frame = Bytes::copy_from_slice(data);
    if let Ok(message) = decode_binary(&frame) {
        let Payload::Binary(payload) = &message.payload else {
            panic!("binary frame decoded to a JSON payload");
        };
        assert!(data.ends_with(payload));
    }

    for ndjson in [true, false] {
        for frame in decode_poll_body(data, ndjson) {
            let _ = frame;
        }
    }
});
