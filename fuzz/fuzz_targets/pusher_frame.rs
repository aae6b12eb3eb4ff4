//! Pusher protocol 7 client frames: decoding never panics, and a decoded frame encodes
//! (as a client would send it) to text that decodes to the same message. Channel names
//! and socket ids: classifying never panics, and a Pusher socket id made from a
//! pushgate one maps back to it. Server frames (as the load generator reads them):
//! decoding never panics and an event re-encodes to itself. Presence `channel_data`
//! and `user_data`: reading never
//! panics, and a member read has an id and info within Pusher's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::frontend::pusher::protocol::{
    channel_kind, decode, decode_server, encode_client, encode_client_event, is_socket_id,
    parse_channel_data, parse_user_data, pusher_socket_id, socket_of, MAX_USER_ID_LEN,
    MAX_USER_INFO_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = decode(text) {
        let mut encoded = String::new();
        encode_client(&mut encoded, &message);
        let again = decode(&encoded)
            .unwrap_or_else(|e| panic!("re-encoded {encoded:?} failed to decode: {e}"));
        assert_eq!(again, message);
    }
    let _ = channel_kind(text);
    // A server frame as the load generator reads it: an event re-encoded from what was
    // read decodes to the same event, channel, sender and data.
    if let Ok(m) = decode_server(text) {
        let _ = m.data_json();
        if let (Some(channel), serde_json::Value::String(data)) = (&m.channel, &m.data) {
            let mut out = String::new();
            encode_client_event(&mut out, &m.event, channel, data, m.user_id.as_deref());
            let again = decode_server(&out).expect("an encoded event decodes");
            assert_eq!(again, m);
        }
    }
    if let Some(id) = pusher_socket_id(text) {
        assert!(is_socket_id(&id), "{id:?}");
        assert_eq!(socket_of(&id).as_deref(), Some(text));
    }
    if let Some(socket) = socket_of(text) {
        assert_eq!(pusher_socket_id(&socket).as_deref(), Some(text));
    }
    for member in [parse_channel_data(text), parse_user_data(text)]
        .into_iter()
        .flatten()
    {
        assert!(!member.user_id.is_empty());
        assert!(member.user_id.chars().count() <= MAX_USER_ID_LEN);
        if let Some(info) = &member.user_info {
            assert!(info.len() <= MAX_USER_INFO_BYTES);
            serde_json::from_str::<serde_json::Value>(info).expect("info is JSON");
        }
    }
});
