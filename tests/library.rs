//! The library entry point, as an embedder (and the load tool) uses it:
//! `server::run(config, listener, shutdown)` serves every frontend and the API on a
//! listener the caller bound, and returns once the shutdown future resolved and the
//! node shut down in order.

use std::collections::HashMap;
use std::time::Duration;

use pushgate::config::{Config, Flags};
use serde_json::json;
use tokio::net::TcpListener;

fn config() -> Config {
    let env: HashMap<String, String> = HashMap::new();
    Config::resolve(Flags::default(), |k| env.get(k).cloned(), None).expect("defaults are valid")
}

#[tokio::test(flavor = "multi_thread")]
async fn run_serves_the_api_and_phoenix_until_its_shutdown_future_resolves() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(pushgate::server::run(config(), listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // A Phoenix client on the pushgate topic gets a push sent through the API.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/socket/websocket?vsn=2.0.0"))
            .await
            .unwrap();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(r#"["1","1","pushgate","phx_join",{}]"#))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(reply.contains(r#""status":"ok""#), "{reply}");
    let r: serde_json::Value = http
        .post(format!("{base}/v1/push"))
        .json(&json!({"to": {"all": true}, "event": "hello", "data": {"n": 1}, "wait": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["report"]["delivered"], 1, "{r}");
    let frame = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(frame.as_str(), r#"[null,null,"pushgate","hello",{"n":1}]"#);

    stop.send(()).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the shutdown closes the connection");
    match closed {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let result = tokio::time::timeout(Duration::from_secs(20), node)
        .await
        .expect("run returns after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
