//! The gateway binary, driven over HTTP and raw Engine.IO/Socket.IO: configuration,
//! delivery, acks, API errors and shutdown, as a user of the binary sees them.

mod common;

use std::time::Duration;

use common::{in_an_hour, run_to_exit, token, Gateway, RawSocket};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[test]
fn a_malformed_redis_url_stops_the_process_and_names_the_setting() {
    let (status, stderr) = run_to_exit(&[("PUSHGATE_REDIS_URL", "not a url")]);
    assert!(!status.success());
    assert!(stderr.contains("PUSHGATE_REDIS_URL"), "{stderr}");
}

#[test]
fn a_redis_url_with_a_wrong_scheme_stops_the_process_with_one_message() {
    let (status, stderr) = run_to_exit(&[("PUSHGATE_REDIS_URL", "http://x")]);
    assert!(!status.success());
    assert!(stderr.contains("PUSHGATE_REDIS_URL"), "{stderr}");
    assert!(stderr.contains("unsupported scheme"), "{stderr}");
    assert_eq!(stderr.matches("unsupported scheme").count(), 1, "{stderr}");
}

#[test]
fn a_bad_setting_stops_the_process_and_names_the_setting() {
    let (status, stderr) = run_to_exit(&[("PUSHGATE_PING_INTERVAL_MS", "soon")]);
    assert!(!status.success());
    assert!(stderr.contains("PUSHGATE_PING_INTERVAL_MS"), "{stderr}");
}

#[tokio::test]
async fn the_log_names_the_address_and_the_mode() {
    let gw = Gateway::start(&[]);
    let log = gw.log();
    assert!(log.contains(&format!("listening on {}", gw.addr)), "{log}");
    assert!(log.contains("single node"), "{log}");
}

#[tokio::test]
async fn a_single_node_exports_no_bus_metrics_but_every_known_counter_at_zero() {
    let gw = Gateway::start(&[]);
    let text = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("pushgate_bus_"), "{text}");
    assert!(!text.contains("pushgate_registry_"), "{text}");
    assert!(
        text.contains(r#"pushgate_disconnects_total{frontend="socketio",reason="slow_client"} 0"#),
        "{text}"
    );
}

#[tokio::test]
async fn an_acked_room_push_reports_the_ack_of_the_socket_that_got_it() {
    let secret = "test-secret";
    let gw = Gateway::start(&[("PUSHGATE_JWT_SECRET", secret)]);
    let t = token(
        secret,
        json!({"sub": "alice", "exp": in_an_hour(), "rooms": ["team"]}),
    );
    let mut alice = RawSocket::connect(&gw, Some(json!({ "token": t })))
        .await
        .unwrap();
    let t = token(secret, json!({"sub": "bob", "exp": in_an_hour()}));
    let mut bob = RawSocket::connect(&gw, Some(json!({ "token": t })))
        .await
        .unwrap();

    let push = tokio::spawn({
        let url = gw.url("/v1/push");
        async move {
            reqwest::Client::new()
                .post(url)
                .json(
                    &json!({"to": {"room": "team"}, "event": "notice", "data": {"n": 1},
                              "ack": {"timeout_ms": 5000}, "wait": true}),
                )
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    });
    let frame = alice.next().await;
    let rest = frame.strip_prefix("42").expect("an event packet");
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    assert!(!digits.is_empty(), "the event carries an ack id: {frame}");
    assert_eq!(&rest[digits.len()..], r#"["notice",{"n":1}]"#);
    alice.send(&format!("43{digits}[]")).await;

    let body = push.await.unwrap();
    assert_eq!(
        body["report"],
        json!({"sockets": 1, "delivered": 1, "acked": 1, "timed_out": 0, "failed": 0})
    );
    // Bob is not in the room: the next thing he gets is a push to him.
    let (status, _) = gw
        .post(
            "/v1/push",
            json!({"to": {"user": "bob"}, "event": "only-bob"}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(bob.next().await, r#"42["only-bob"]"#);
}

#[tokio::test]
async fn a_socket_that_never_acks_is_counted_timed_out_in_the_stored_report() {
    let gw = Gateway::start(&[]);
    let mut s = RawSocket::connect(&gw, None).await.unwrap();
    let (status, body) = gw
        .post(
            "/v1/push",
            json!({"to": {"socket": s.sid}, "event": "e", "ack": {"timeout_ms": 300}}),
        )
        .await;
    assert_eq!(status, 202);
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(s.next().await.starts_with("42"));
    let (_, pending) = gw.get(&format!("/v1/pushes/{id}")).await;
    assert_eq!(pending["state"], "pending");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, done) = gw.get(&format!("/v1/pushes/{id}")).await;
    assert_eq!(done["state"], "final");
    assert_eq!(done["report"]["timed_out"], 1);
    assert_eq!(done["report"]["acked"], 0);
}

#[tokio::test]
async fn a_bad_token_gets_a_connect_error_that_says_why() {
    let gw = Gateway::start(&[("PUSHGATE_JWT_SECRET", "right")]);
    let forged = token("wrong", json!({"sub": "mallory", "exp": in_an_hour()}));
    let err = RawSocket::connect(&gw, Some(json!({ "token": forged })))
        .await
        .err()
        .unwrap();
    assert!(err.starts_with("44{"), "{err}");
    assert!(err.contains("signature"), "{err}");
    let err = RawSocket::connect(&gw, None).await.err().unwrap();
    assert!(
        err.contains("missing") && err.contains("missing_token"),
        "{err}"
    );
}

#[tokio::test]
async fn polling_delivers_queued_pushes_in_one_payload() {
    let gw = Gateway::start(&[]);
    let http = reqwest::Client::new();
    let open = http
        .get(gw.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: serde_json::Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let sid = open["sid"].as_str().unwrap();
    let url = gw.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let ok = http.post(&url).body("40").send().await.unwrap();
    assert_eq!(ok.text().await.unwrap(), "ok");
    let connected = http.get(&url).send().await.unwrap().text().await.unwrap();
    let socket: serde_json::Value =
        serde_json::from_str(connected.strip_prefix("40").unwrap()).unwrap();
    for n in [1, 2] {
        let (status, _) = gw
            .post(
                "/v1/push",
                json!({"to": {"socket": socket["sid"]}, "event": "e", "data": n}),
            )
            .await;
        assert_eq!(status, 202);
    }
    let body = http.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(body, "42[\"e\",1]\u{1e}42[\"e\",2]");
}

#[tokio::test]
async fn api_errors_are_json_with_a_code_and_a_message() {
    let gw = Gateway::start(&[
        ("PUSHGATE_API_KEYS", "k1"),
        ("PUSHGATE_MAX_BODY_BYTES", "256"),
    ]);
    let http = reqwest::Client::new();
    let call = |body: String, key: Option<&str>| {
        let mut r = http.post(gw.url("/v1/push")).body(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let r = r.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let good = json!({"to": {"all": true}, "event": "e"}).to_string();
    for (body, key, status) in [
        (good.clone(), None, 401),
        (good.clone(), Some("k2"), 401),
        ("{not json".to_owned(), Some("k1"), 400),
        (
            json!({"to": {"group": "g"}, "event": "e"}).to_string(),
            Some("k1"),
            400,
        ),
        (json!({"to": {"all": true}}).to_string(), Some("k1"), 400),
        (
            json!({"to": {"all": true}, "event": "e", "data": "x".repeat(400)}).to_string(),
            Some("k1"),
            413,
        ),
        (good, Some("k1"), 202),
    ] {
        let (got, body) = call(body, key).await;
        assert_eq!(got, status, "{body}");
        if status >= 400 {
            assert!(
                body["error"]["code"].is_string() && body["error"]["message"].is_string(),
                "{body}"
            );
        }
    }
    let r = http
        .get(gw.url("/v1/sockets/nope"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn sigterm_closes_clients_so_they_reconnect_and_exits_zero() {
    let mut gw = Gateway::start(&[("PUSHGATE_SHUTDOWN_TIMEOUT_MS", "500")]);
    let mut s = RawSocket::connect(&gw, None).await.unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.terminate();
        (status, gw)
    });
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Text(t))) => assert_ne!(
                &*t, "41",
                "no Socket.IO disconnect: the client must reconnect"
            ),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    let (status, gw) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}\n{}", gw.log());
}
