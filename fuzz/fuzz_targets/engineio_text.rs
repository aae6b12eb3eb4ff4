//! Single WebSocket text frames and query strings: decoding never panics, and
//! decode → encode → decode is equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::frontend::socketio::engineio::{decode_text, encode_text, parse_query};

fuzz_target!(|frame: &str| {
    let _ = parse_query(frame);

    let Ok(packet) = decode_text(frame) else {
        return;
    };
    let mut encoded = String::new();
    encode_text(&packet, &mut encoded);
    let again = decode_text(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded frame {encoded:?} failed to decode: {e}"));
    assert_eq!(again, packet);
});
