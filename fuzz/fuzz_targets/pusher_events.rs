//! Pusher HTTP API event bodies (`POST /apps/{id}/events` and each entry of
//! `batch_events`), validated by `pusher::http::event` for the first app and for a
//! further one (prefixed rooms and users). Never panics, and an accepted event:
//!
//! - names 1 to 100 valid channels and becomes one push per channel, with the event's
//!   name, its data string (within Pusher's size limit) and the app's scope;
//! - once every frontend accepted its push, reaches Pusher clients as the same event,
//!   with the same data text, on the very channel it was triggered on.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use pushgate::codec::{Codecs, PushCodec};
use pushgate::config::PusherApp;
use pushgate::connection::Frame;
use pushgate::frontend::phoenix::PhoenixCodec;
use pushgate::frontend::pusher::http::{event, MAX_CHANNELS_PER_EVENT};
use pushgate::frontend::pusher::protocol::{channel_kind, decode_server, MAX_DATA_BYTES};
use pushgate::frontend::pusher::{App, PusherCodec};
use pushgate::frontend::socketio::SocketIoCodec;
use pushgate::push::Target;
use serde_json::Value;

fn apps() -> &'static [App; 2] {
    static APPS: OnceLock<[App; 2]> = OnceLock::new();
    APPS.get_or_init(|| {
        let app = |id: &str| PusherApp {
            id: id.into(),
            key: format!("key{id}"),
            secret: format!("secret{id}"),
            webhook: None,
        };
        [App::new(app("1"), true), App::new(app("2"), false)]
    })
}

fn codecs() -> &'static Codecs {
    static CODECS: OnceLock<Codecs> = OnceLock::new();
    CODECS.get_or_init(|| {
        let mut codecs = Codecs::new();
        codecs.register(Arc::new(SocketIoCodec));
        codecs.register(Arc::new(PhoenixCodec));
        codecs.register(Arc::new(PusherCodec));
        codecs
    })
}

fuzz_target!(|body: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    for app in apps() {
        for batch in [false, true] {
            if let Ok(e) = event(app, value.clone(), batch) {
                accepted(app, &value, &e.pushes, &e.channels);
            }
        }
    }
});

fn accepted(app: &App, body: &Value, pushes: &[pushgate::push::Push], channels: &[String]) {
    assert!((1..=MAX_CHANNELS_PER_EVENT).contains(&channels.len()));
    assert_eq!(pushes.len(), channels.len());
    let name = body["name"].as_str().expect("an accepted event has a name");
    let data = body["data"].as_str().expect("an accepted event has data");
    assert!(data.len() <= MAX_DATA_BYTES);
    for (push, channel) in pushes.iter().zip(channels) {
        assert!(channel_kind(channel).is_ok(), "{channel:?}");
        assert!(matches!(push.target, Target::Room(_) | Target::User(_)));
        assert_eq!(push.event, name);
        assert_eq!(push.data, Some(Value::String(data.to_owned())));
        assert_eq!(push.scope, app.scope());
        if codecs().check(push).is_err() {
            continue;
        }
        let frames = PusherCodec.encode(push, None);
        let [Frame::Text(text)] = &frames[..] else {
            panic!("Pusher sends one text frame per push: {frames:?}");
        };
        let m = decode_server(text.as_str())
            .unwrap_or_else(|e| panic!("Pusher frame {text:?} does not decode: {e}"));
        assert_eq!(m.event, name);
        assert_eq!(m.data, Value::String(data.to_owned()));
        assert_eq!(
            m.channel.as_deref(),
            Some(channel.as_str()),
            "triggered on {channel:?}, delivered on {:?}",
            m.channel
        );
    }
}
