//! The node's listener over raw TCP: long polls on its small path, everything else
//! (API calls, unusual requests) handed to hyper on the same connection, pipelining,
//! and a held poll released when its client goes away.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use pushgate::config::{Config, Flags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A single node on a free port; stops when the sender is dropped.
async fn node() -> (SocketAddr, oneshot::Sender<()>) {
    let env: HashMap<String, String> = HashMap::new();
    let config = Config::resolve(Flags::default(), |k| env.get(k).cloned(), None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(pushgate::server::run(config, listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// One response read off `stream`: status, headers (lowercase names), body. Reads
/// exactly the response (content-length or chunked), so the next one can follow.
async fn response(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
) -> (u16, HashMap<String, String>, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = r.parse(pending).unwrap() {
            let status = r.code.unwrap();
            let map: HashMap<String, String> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let body = if let Some(n) = map.get("content-length") {
                let n: usize = n.parse().unwrap();
                while pending.len() < len + n {
                    read(stream, pending, deadline).await;
                }
                let body = String::from_utf8(pending[len..len + n].to_vec()).unwrap();
                pending.drain(..len + n);
                body
            } else {
                assert_eq!(
                    map.get("transfer-encoding").map(String::as_str),
                    Some("chunked"),
                    "{map:?}"
                );
                pending.drain(..len);
                let mut body = String::new();
                loop {
                    let at = loop {
                        if let Some(at) = pending.windows(2).position(|w| w == b"\r\n") {
                            break at;
                        }
                        read(stream, pending, deadline).await;
                    };
                    let size =
                        usize::from_str_radix(std::str::from_utf8(&pending[..at]).unwrap(), 16)
                            .unwrap();
                    while pending.len() < at + 2 + size + 2 {
                        read(stream, pending, deadline).await;
                    }
                    body.push_str(std::str::from_utf8(&pending[at + 2..at + 2 + size]).unwrap());
                    pending.drain(..at + 2 + size + 2);
                    if size == 0 {
                        break body;
                    }
                }
            };
            return (status, map, body);
        }
        read(stream, pending, deadline).await;
    }
}

async fn read(stream: &mut TcpStream, pending: &mut Vec<u8>, deadline: tokio::time::Instant) {
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
        .await
        .expect("a response within 10 s")
        .unwrap();
    assert!(n > 0, "the connection closed before the response ended");
    pending.extend_from_slice(&chunk[..n]);
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Opens a polling session on `stream` and connects it to `/`: its sid and socket id.
async fn session(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (String, String) {
    stream
        .write_all(get("/socket.io/?EIO=4&transport=polling").as_bytes())
        .await
        .unwrap();
    let (status, _, body) = response(stream, pending).await;
    assert_eq!(status, 200, "{body}");
    let open: serde_json::Value = serde_json::from_str(&body[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap().to_owned();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    stream
        .write_all(post(&path, "40").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(stream, pending).await.2, "ok");
    stream.write_all(get(&path).as_bytes()).await.unwrap();
    let (_, _, body) = response(stream, pending).await;
    let connect: serde_json::Value =
        serde_json::from_str(body.strip_prefix("40").unwrap()).unwrap();
    (sid, connect["sid"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn polls_and_api_calls_share_one_keep_alive_connection() {
    let (addr, _stop) = node().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    let (sid, socket) = session(&mut stream, &mut pending).await;

    // An API call on the same connection: hyper serves the rest of it.
    stream
        .write_all(get(&format!("/v1/sockets/{socket}")).as_bytes())
        .await
        .unwrap();
    let (status, headers, body) = response(&mut stream, &mut pending).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"].starts_with("application/json"),
        "{headers:?}"
    );
    assert!(body.contains(r#""transport":"polling""#), "{body}");

    // Polls go on, through hyper now: a push reaches the held poll.
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    stream.write_all(get(&path).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pushed = reqwest::Client::new()
        .post(format!("http://{addr}/v1/push"))
        .json(&serde_json::json!({"to": {"socket": socket}, "event": "e", "data": 1, "wait": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 200);
    let (status, _, body) = response(&mut stream, &mut pending).await;
    assert_eq!((status, body.as_str()), (200, r#"42["e",1]"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order() {
    let (addr, _stop) = node().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    let two = format!(
        "{}{}",
        get("/socket.io/?EIO=4&transport=polling"),
        get("/socket.io/?EIO=4&transport=polling&sid=nope")
    );
    stream.write_all(two.as_bytes()).await.unwrap();
    let (first, headers, body) = response(&mut stream, &mut pending).await;
    assert_eq!(first, 200);
    assert!(body.starts_with("0{\"sid\":"), "{body}");
    assert_eq!(headers["content-type"], "text/plain; charset=UTF-8");
    assert!(headers.contains_key("date"), "{headers:?}");
    let (second, _, body) = response(&mut stream, &mut pending).await;
    assert_eq!(second, 400);
    assert_eq!(body, r#"{"code":1,"message":"Session ID unknown"}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_poll_whose_client_went_away_is_released() {
    let (addr, _stop) = node().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    let (sid, socket) = session(&mut stream, &mut pending).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    stream.write_all(get(&path).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Had the first poll stayed pending, this one would be an overlapping GET (400,
    // session closed). It is held, and the push arrives on it.
    let mut again = TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    again.write_all(get(&path).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    reqwest::Client::new()
        .post(format!("http://{addr}/v1/push"))
        .json(&serde_json::json!({"to": {"socket": socket}, "event": "e", "data": 2}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = response(&mut again, &mut pending).await;
    assert_eq!((status, body.as_str()), (200, r#"42["e",2]"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn unusual_requests_on_the_transport_path_are_served_by_hyper() {
    let (addr, _stop) = node().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    let (sid, _) = session(&mut stream, &mut pending).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");

    // A chunked POST.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n3\r\n0\r\n\r\n"
    );
    stream.write_all(chunked.as_bytes()).await.unwrap();
    assert_eq!(response(&mut stream, &mut pending).await.2, "ok");

    // A head larger than the fast path reads.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let big = format!(
        "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(10_000)
    );
    stream.write_all(big.as_bytes()).await.unwrap();
    let (status, _, body) = response(&mut stream, &mut pending).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("0{"), "{body}");

    // HTTP/1.0.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = response(&mut stream, &mut pending).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("0{"), "{body}");

    // Not HTTP at all: hyper's 400.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"\x01\x02 nonsense\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = response(&mut stream, &mut pending).await;
    assert_eq!(status, 400);
}

/// `pushgate_http_connection_errors_total` for `reason` on `addr`'s /metrics; `None`
/// when the series is not exported.
async fn connection_errors(addr: SocketAddr, reason: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::metric_in(
        &text,
        "pushgate_http_connection_errors_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

/// Waits up to 10 s for the count of `reason` to read `want`: a connection's error is
/// counted once hyper has ended it, just after its answer was written.
async fn connection_errors_reach(addr: SocketAddr, reason: &str, want: f64) {
    let what = format!("{reason} connection errors reach {want}");
    common::eventually(10, &what, || async {
        connection_errors(addr, reason).await == Some(want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_oversized_heads_are_refused_and_counted_by_reason() {
    let (addr, _stop) = node().await;
    assert_eq!(connection_errors(addr, "malformed").await, Some(0.0));
    assert_eq!(connection_errors(addr, "too_large").await, Some(0.0));

    // What a scanner sends: a TLS ClientHello's first bytes to a plain HTTP port.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut stream, &mut Vec::new()).await.0, 400);
    connection_errors_reach(addr, "malformed", 1.0).await;

    // A head larger than any client needs: 431, and the connection is closed.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(1 << 20)
    );
    // The node answers 431 before it has read it all and closes: the write may fail,
    // and the unread rest may reset the connection before the answer is read.
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    if !answer.is_empty() {
        let head = String::from_utf8_lossy(&answer);
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    }
    connection_errors_reach(addr, "too_large", 1.0).await;
    assert_eq!(connection_errors(addr, "malformed").await, Some(1.0));
}
