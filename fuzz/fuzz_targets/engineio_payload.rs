//! Polling bodies: decoding never panics, and the packets decoded before the first error
//! survive re-encoding as a polling GET body (decode → append → decode is equal).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::frontend::socketio::engineio::{
    append_binary_record, append_text_record, decode_payload, encode_text, Packet,
};

fuzz_target!(|body: &str| {
    let decoded: Vec<Packet<'_>> = decode_payload(body).map_while(Result::ok).collect();

    let mut encoded = Vec::new();
    for packet in &decoded {
        match packet {
            Packet::Binary(bytes) => append_binary_record(&mut encoded, bytes),
            other => {
                let mut text = String::new();
                encode_text(other, &mut text);
                append_text_record(&mut encoded, &text);
            }
        }
    }
    let Ok(encoded) = String::from_utf8(encoded) else {
        panic!("a polling body built from text records is UTF-8");
    };
    if decoded.is_empty() {
        assert!(encoded.is_empty());
        return;
    }
    let again: Vec<Packet<'_>> = decode_payload(&encoded)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("re-encoded body {encoded:?} failed to decode: {e}"));
    assert_eq!(again, decoded);
});
