//! Socket.IO packet text: decoding never panics; decode → encode → decode is equal; the
//! `encode_event`/`encode_ack` fast paths write what `encode` writes for the same packet;
//! `extract_binary` never panics on the decoded payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::frontend::socketio::packet::{
    decode, encode, encode_ack, encode_event, extract_binary, PacketKind,
};

fuzz_target!(|text: &str| {
    let Ok(packet) = decode(text) else {
        return;
    };
    let encoded = encode(&packet);
    let Some(inner) = encoded.strip_prefix('4') else {
        panic!("encoded packet {encoded:?} lacks the Engine.IO message digit");
    };
    let again =
        decode(inner).unwrap_or_else(|e| panic!("re-encoded {encoded:?} failed to decode: {e}"));
    assert_eq!(again, packet);

    match (packet.kind, &packet.data) {
        (PacketKind::Event | PacketKind::BinaryEvent, Some(serde_json::Value::Array(items))) => {
            if let (Some(serde_json::Value::String(event)), true) =
                (items.first(), items.len() <= 2)
            {
                let mut fast = String::new();
                encode_event(
                    &mut fast,
                    &packet.nsp,
                    packet.id,
                    packet.attachments,
                    event,
                    items.get(1),
                );
                assert_eq!(fast, encoded);
            }
        }
        (PacketKind::Ack | PacketKind::BinaryAck, Some(args)) => {
            if let Some(id) = packet.id {
                let mut fast = String::new();
                encode_ack(&mut fast, &packet.nsp, id, packet.attachments, args);
                assert_eq!(fast, encoded);
            }
        }
        _ => {}
    }

    if let Some(mut data) = packet.data {
        if let Ok(found) = extract_binary(&mut data) {
            assert!(found.len() <= pushgate::frontend::socketio::packet::MAX_ATTACHMENTS);
        }
    }
});
