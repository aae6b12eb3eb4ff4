//! Small `pushgate-load` runs against the real `pushgate` binary on a free port: the tool
//! really speaks each protocol to the gateway, counts every delivery and ack, and the
//! gateway's own metrics agree on which frontend the connections used.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const SECRET: &str = "runs-secret";

/// The gateway binary of this workspace, built with the same profile as the tool.
/// `cargo test --workspace` has built it already (the build below is then a no-op);
/// `cargo test -p pushgate-load` has not, and a stale binary must not be measured.
fn gateway_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_pushgate-load"))
            .parent()
            .expect("the tool binary lives in a directory")
            .to_owned();
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(p) => p.to_owned(),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "pushgate", "--bin", "pushgate"])
            .args(["--profile", &profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the gateway");
        assert!(status.success(), "cargo build of the gateway failed");
        let bin = dir.join("pushgate");
        assert!(bin.exists(), "no gateway binary at {}", bin.display());
        bin
    })
}

/// A gateway process on 127.0.0.1:0, killed on drop.
struct Gateway {
    child: Child,
    addr: String,
}

impl Gateway {
    fn start(env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(gateway_binary());
        cmd.env_clear()
            .env("PUSHGATE_LISTEN", "127.0.0.1:0")
            .env("PUSHGATE_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start pushgate");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the gateway announces its address");
        Gateway { child, addr }
    }

    /// `GET /metrics` over a plain socket.
    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(&self.addr).expect("connect to the gateway");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .expect("send the request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the answer");
        text
    }

    /// The value of one series in `/metrics`, 0 when absent.
    fn series(&self, name_and_labels: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the tool against `gw` with `args` and returns its JSON results.
fn run_load(gw: &Gateway, name: &str, args: &[&str]) -> Value {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "pushgate-load-runs-{}-{stamp}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a results directory");
    let out = dir.join("results.json");
    let output = Command::new(env!("CARGO_BIN_EXE_pushgate-load"))
        .args(["--quiet", "--target", &gw.addr, "--jwt-secret", SECRET])
        .arg("--out")
        .arg(&out)
        .args(args)
        .output()
        .expect("run pushgate-load");
    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "pushgate-load failed:\n{summary}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("the results file");
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_str(&text).expect("the results are JSON")
}

fn n(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} in {v}"))
}

/// Every connection up to the end, every expected delivery received once.
fn assert_every_delivery(r: &Value, connections: u64) {
    assert_eq!(n(r, "/connections/established"), connections, "{r}");
    assert_eq!(n(r, "/connections/closed_during_run"), 0, "{r}");
    assert!(n(r, "/pushes/accepted") > 0, "{r}");
    assert_eq!(n(r, "/pushes/rejected"), 0, "{r}");
    let expected = n(r, "/deliveries/expected");
    assert!(expected > 0, "{r}");
    assert_eq!(n(r, "/deliveries/received"), expected, "{r}");
    for zero in [
        "lost",
        "duplicates",
        "unexpected",
        "bad_payload",
        "other_events",
    ] {
        assert_eq!(n(r, &format!("/deliveries/{zero}")), 0, "{zero}: {r}");
    }
    assert_eq!(n(r, "/latency/count"), expected, "{r}");
}

#[test]
fn phoenix_room_pushes_are_all_delivered_and_acked_while_heartbeats_keep_sockets_open() {
    // A socket silent for 1 s is closed by the gateway: only heartbeats (every 300 ms
    // here) keep the sockets through the 2 s hold.
    let gw = Gateway::start(&[("PUSHGATE_PHOENIX_TIMEOUT_MS", "1000")]);
    let r = run_load(
        &gw,
        "phoenix-room",
        &[
            "--protocol",
            "phoenix",
            "--heartbeat",
            "300ms",
            "-n",
            "30",
            "--rooms",
            "3",
            "--push",
            "room",
            "--push-rate",
            "10",
            "--hold",
            "2s",
            "--duration",
            "2s",
            "--ack-timeout-ms",
            "3000",
            "--wait",
        ],
    );
    assert_eq!(r["scenario"]["protocol"], "phoenix");
    assert_every_delivery(&r, 30);
    let delivered = n(&r, "/deliveries/received");
    assert_eq!(n(&r, "/acks/client_sent"), delivered, "{r}");
    assert_eq!(n(&r, "/acks/server/delivered"), delivered, "{r}");
    assert_eq!(n(&r, "/acks/server/acked"), delivered, "{r}");
    assert_eq!(n(&r, "/acks/server/timed_out"), 0, "{r}");
    // The gateway saw Phoenix sockets, joins of both topics, and Phoenix acks.
    assert_eq!(
        gw.series(r#"pushgate_connects_total{frontend="phoenix"}"#),
        30
    );
    assert_eq!(
        gw.series(r#"pushgate_connects_total{frontend="socketio"}"#),
        0
    );
    assert_eq!(
        gw.series(r#"pushgate_client_joins_total{op="join",outcome="ok"}"#),
        60
    );
    assert_eq!(
        gw.series(r#"pushgate_deliveries_total{frontend="phoenix"}"#),
        delivered
    );
    assert_eq!(
        gw.series(r#"pushgate_acks_total{outcome="acked"}"#),
        delivered
    );
}

#[test]
fn phoenix_pushes_to_all_and_to_users_arrive_on_the_pushgate_topic() {
    let gw = Gateway::start(&[]);
    // phoenix 1.8's authToken (the Sec-WebSocket-Protocol header) for the broadcast run.
    let all = run_load(
        &gw,
        "phoenix-all",
        &[
            "--protocol",
            "phoenix",
            "--token-in",
            "auth",
            "-n",
            "20",
            "--push",
            "all",
            "--push-rate",
            "10",
            "--hold",
            "200ms",
            "--duration",
            "1s",
        ],
    );
    assert_every_delivery(&all, 20);
    assert_eq!(
        n(&all, "/deliveries/expected"),
        20 * n(&all, "/pushes/accepted"),
        "a broadcast reaches every socket: {all}"
    );
    let users = run_load(
        &gw,
        "phoenix-user",
        &[
            "--protocol",
            "phoenix",
            "-n",
            "20",
            "--users",
            "7",
            "--push",
            "user",
            "--push-rate",
            "20",
            "--hold",
            "200ms",
            "--duration",
            "1s",
        ],
    );
    assert_every_delivery(&users, 20);
    assert_eq!(
        gw.series(r#"pushgate_connects_total{frontend="phoenix"}"#),
        40
    );
}

#[test]
fn socketio_pushes_are_all_delivered_and_acked_through_the_library_codecs() {
    let gw = Gateway::start(&[]);
    let r = run_load(
        &gw,
        "socketio-room",
        &[
            "-n",
            "30",
            "--rooms",
            "3",
            "--push",
            "room",
            "--push-rate",
            "10",
            "--hold",
            "200ms",
            "--duration",
            "2s",
            "--ack-timeout-ms",
            "3000",
            "--wait",
        ],
    );
    assert_eq!(r["scenario"]["protocol"], "socketio");
    assert_every_delivery(&r, 30);
    let delivered = n(&r, "/deliveries/received");
    assert_eq!(n(&r, "/acks/server/acked"), delivered, "{r}");
    assert_eq!(
        gw.series(r#"pushgate_connects_total{frontend="socketio"}"#),
        30
    );
    assert_eq!(
        gw.series(r#"pushgate_connects_total{frontend="phoenix"}"#),
        0
    );
}

#[test]
fn a_phoenix_token_signed_with_another_secret_is_reported_as_refused() {
    let gw = Gateway::start(&[]);
    let output = Command::new(env!("CARGO_BIN_EXE_pushgate-load"))
        .args([
            "--quiet",
            "--target",
            &gw.addr,
            "--jwt-secret",
            "not-the-secret",
        ])
        .args(["--protocol", "phoenix", "-n", "3", "--push-rate", "0"])
        .args(["--hold", "100ms"])
        .output()
        .expect("run pushgate-load");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("3 failed"), "{summary}");
    assert!(summary.contains("failed Auth x3"), "{summary}");
    assert!(summary.contains("HTTP 403"), "{summary}");
}

#[test]
fn pusher_channel_pushes_through_v1_and_the_pusher_api_are_all_delivered_while_pings_keep_sockets_open(
) {
    // The gateway pings a connection silent for 1 s and announces 1 s, so the client
    // pings too: both kinds of ping are answered through the 2 s hold.
    let gw = Gateway::start(&[
        ("PUSHGATE_PUSHER_APPS", "load-app:load-key:load-secret"),
        ("PUSHGATE_PUSHER_ACTIVITY_TIMEOUT_MS", "1000"),
        ("PUSHGATE_PUSHER_PONG_TIMEOUT_MS", "1000"),
    ]);
    let common = [
        "--protocol",
        "pusher",
        "-n",
        "30",
        "--rooms",
        "3",
        "--push",
        "room",
        "--push-rate",
        "10",
        "--hold",
        "2s",
        "--duration",
        "2s",
    ];
    let v1 = run_load(&gw, "pusher-v1", &common);
    assert_eq!(v1["scenario"]["protocol"], "pusher");
    assert_every_delivery(&v1, 30);
    let mut api_args = common.to_vec();
    api_args.extend(["--push-api", "pusher"]);
    let api = run_load(&gw, "pusher-api", &api_args);
    assert_eq!(api["scenario"]["push_api"], "pusher");
    assert_every_delivery(&api, 30);
    assert_eq!(
        gw.series(r#"pushgate_connects_total{frontend="pusher"}"#),
        60
    );
    assert_eq!(
        gw.series(r#"pushgate_client_joins_total{op="join",outcome="ok"}"#),
        60,
        "each connection subscribed to its room's channel"
    );
    assert_eq!(
        gw.series(r#"pushgate_http_requests_total{route="/apps/{app_id}/events",status="200"}"#),
        n(&api, "/pushes/accepted"),
        "every Pusher API push was signed as the gateway checks it"
    );
    assert_eq!(
        gw.series(r#"pushgate_disconnects_total{frontend="pusher",reason="ping_timeout"}"#),
        0
    );
}

#[test]
fn a_pusher_app_key_the_server_does_not_know_is_reported_as_refused() {
    let gw = Gateway::start(&[("PUSHGATE_PUSHER_APPS", "load-app:load-key:load-secret")]);
    let output = Command::new(env!("CARGO_BIN_EXE_pushgate-load"))
        .args(["--quiet", "--target", &gw.addr])
        .args(["--protocol", "pusher", "--pusher-app", "x:other-key:s"])
        .args(["-n", "3", "--push-rate", "0", "--hold", "100ms"])
        .output()
        .expect("run pushgate-load");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("3 failed"), "{summary}");
    assert!(summary.contains("4001"), "{summary}");
}
