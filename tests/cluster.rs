//! Three gateway processes sharing one real `redis-server`, driven over HTTP and raw
//! Socket.IO: pushes, socket lookup, acks and Redis faults, as a user of a cluster
//! sees them.

mod common;

use common::{eventually, in_an_hour, token, Gateway, RawSocket, Redis};
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "cluster-test-secret";

struct Cluster {
    redis: Redis,
    nodes: Vec<Gateway>,
}

fn start_node(redis: &Redis, id: &str) -> Gateway {
    Gateway::start(&[
        ("PUSHGATE_REDIS_URL", &redis.url()),
        ("PUSHGATE_NODE_ID", id),
        ("PUSHGATE_JWT_SECRET", SECRET),
        ("PUSHGATE_REGISTRY_TTL_MS", "3000"),
    ])
}

impl Cluster {
    fn start() -> Cluster {
        let redis = Redis::start();
        let nodes = ["n1", "n2", "n3"]
            .iter()
            .map(|id| start_node(&redis, id))
            .collect();
        Cluster { redis, nodes }
    }

    /// Connects `user` (with `rooms`) to node `i` and waits until every node can
    /// reach it (the registry shows a socket only after its node subscribed).
    async fn connect(&self, i: usize, user: &str, rooms: &[&str]) -> RawSocket {
        let t = token(
            SECRET,
            json!({"sub": user, "exp": in_an_hour(), "rooms": rooms}),
        );
        let s = RawSocket::connect(&self.nodes[i], Some(json!({ "token": t })))
            .await
            .unwrap();
        let other = &self.nodes[(i + 1) % self.nodes.len()];
        let path = format!("/v1/sockets/{}", s.sid);
        eventually(5, "the socket is registered", || async {
            other.get(&path).await.0 == 200
        })
        .await;
        s
    }
}

/// Pushes `body` through node `gw` with `wait`, and returns the report.
async fn push(gw: &Gateway, mut body: Value) -> Value {
    body["wait"] = json!(true);
    let (status, answer) = gw.post("/v1/push", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["report"].clone()
}

/// Asserts that `s` got exactly the events `expected` (in order) and nothing else
/// since: a sentinel pushed to it through another node must come right after.
async fn got_exactly(gw: &Gateway, s: &mut RawSocket, expected: &[&str]) {
    for e in expected {
        let frame = s.next().await;
        assert!(
            frame.starts_with(&format!("42[\"{e}\"")),
            "{} expected {e}, got {frame}",
            s.sid
        );
    }
    push(gw, json!({"to": {"socket": s.sid}, "event": "sentinel"})).await;
    let frame = s.next().await;
    assert_eq!(
        frame, "42[\"sentinel\"]",
        "{} got something unexpected",
        s.sid
    );
}

fn report(sockets: u64, delivered: u64, acked: u64, timed_out: u64) -> Value {
    json!({"sockets": sockets, "delivered": delivered, "acked": acked,
           "timed_out": timed_out, "failed": 0})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_through_any_node_reaches_exactly_the_right_sockets_on_every_node() {
    let c = Cluster::start();
    let mut alice1 = c.connect(0, "alice", &["team"]).await;
    let mut alice2 = c.connect(1, "alice", &[]).await;
    let mut bob = c.connect(2, "bob", &["team"]).await;
    let mut dave = c.connect(1, "dave", &[]).await;
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);

    let r = push(n1, json!({"to": {"all": true}, "event": "all"})).await;
    assert_eq!(r, report(4, 4, 0, 0));
    let r = push(n2, json!({"to": {"user": "alice"}, "event": "user"})).await;
    assert_eq!(r, report(2, 2, 0, 0));
    let r = push(n3, json!({"to": {"room": "team"}, "event": "room"})).await;
    assert_eq!(r, report(2, 2, 0, 0));
    let r = push(n3, json!({"to": {"socket": dave.sid}, "event": "socket"})).await;
    assert_eq!(r, report(1, 1, 0, 0));
    let r = push(
        n1,
        json!({"to": {"users": ["alice", "bob"]}, "event": "users", "except": [alice2.sid]}),
    )
    .await;
    assert_eq!(r, report(2, 2, 0, 0));
    let r = push(n2, json!({"to": {"user": "nobody"}, "event": "none"})).await;
    assert_eq!(r, report(0, 0, 0, 0));

    got_exactly(n3, &mut alice1, &["all", "user", "room", "users"]).await;
    got_exactly(n3, &mut alice2, &["all", "user"]).await;
    got_exactly(n1, &mut bob, &["all", "room", "users"]).await;
    got_exactly(n1, &mut dave, &["all", "socket"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_subscribes_only_to_the_users_and_rooms_it_holds() {
    let c = Cluster::start();
    let alice1 = c.connect(0, "alice", &["team"]).await;
    let _alice2 = c.connect(1, "alice", &[]).await;
    assert_eq!(c.redis.numsub("pushgate:u:alice"), 2);
    assert_eq!(c.redis.numsub("pushgate:r:team"), 1);
    assert_eq!(c.redis.numsub("pushgate:b"), 2, "n3 holds no socket");
    assert_eq!(
        c.redis.numsub("pushgate:n:n3"),
        1,
        "every node has an inbox"
    );

    // Room traffic reaches only the node with a member.
    for _ in 0..3 {
        push(&c.nodes[2], json!({"to": {"room": "team"}, "event": "e"})).await;
    }
    let nodes = &c.nodes;
    let room_in = |i: usize| async move {
        nodes[i]
            .metric(
                "pushgate_bus_messages_total",
                &["direction=\"in\"", "kind=\"room\""],
            )
            .await
    };
    assert_eq!(room_in(0).await, 3.0);
    assert_eq!(room_in(1).await, 0.0);
    assert_eq!(room_in(2).await, 0.0);
    assert_eq!(
        c.nodes[2]
            .metric(
                "pushgate_bus_messages_total",
                &["direction=\"out\"", "kind=\"room\""]
            )
            .await,
        3.0,
        "one PUBLISH per room push"
    );

    // The last member leaving unsubscribes.
    drop(alice1);
    eventually(5, "n1 unsubscribed from the room", || async {
        c.redis.numsub("pushgate:r:team") == 0 && c.redis.numsub("pushgate:u:alice") == 1
    })
    .await;
    assert!(
        c.nodes[0]
            .metric("pushgate_bus_subscriptions", &["kind=\"inbox\""])
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sockets_are_found_and_managed_from_any_node() {
    let c = Cluster::start();
    let mut alice1 = c.connect(0, "alice", &[]).await;
    let mut alice2 = c.connect(1, "alice", &[]).await;
    let mut bob = c.connect(2, "bob", &[]).await;
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);

    let (status, s) = n3.get(&format!("/v1/sockets/{}", alice1.sid)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (s["node"].as_str(), s["user"].as_str()),
        (Some("n1"), Some("alice"))
    );
    assert_eq!(s["transport"], "websocket");
    let (_, u) = n3.get("/v1/users/alice").await;
    let mut ids: Vec<&str> = u["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![alice1.sid.as_str(), alice2.sid.as_str()];
    want.sort();
    assert_eq!(ids, want);

    // Join a socket of n1 and one of n3 to a room through n2; a push reaches both.
    let (status, j) = n2
        .post(
            "/v1/rooms/ops/join",
            json!({"sockets": [alice1.sid, bob.sid]}),
        )
        .await;
    assert_eq!((status, j["sockets"].as_u64()), (200, Some(2)));
    let (_, room) = n1.get("/v1/rooms/ops").await;
    assert_eq!(room["count"], 2, "{room}");
    let r = push(n2, json!({"to": {"room": "ops"}, "event": "ops"})).await;
    assert_eq!(r["delivered"], 2);
    let (_, l) = n1
        .post("/v1/rooms/ops/leave", json!({"sockets": [bob.sid]}))
        .await;
    assert_eq!(l["sockets"], 1);
    let r = push(n2, json!({"to": {"room": "ops"}, "event": "ops2"})).await;
    assert_eq!(r["delivered"], 1);
    got_exactly(n3, &mut alice1, &["ops", "ops2"]).await;
    got_exactly(n1, &mut bob, &["ops"]).await;

    // Join by user across nodes.
    let (_, j) = n3
        .post("/v1/rooms/fans/join", json!({"user": "alice"}))
        .await;
    assert_eq!(j["sockets"], 2);

    // Nodes.
    let (_, nodes) = n1.get("/v1/nodes").await;
    let ids: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["n1", "n2", "n3"]);

    // Disconnect a socket of n3 through n1, then every socket of alice through n3.
    let (status, d) = n1.delete(&format!("/v1/sockets/{}", bob.sid)).await;
    assert_eq!((status, d["disconnected"].as_u64()), (200, Some(1)));
    assert_eq!(bob.next().await, "41");
    let (status, _) = n1.delete(&format!("/v1/sockets/{}", bob.sid)).await;
    assert_eq!(status, 404);
    let (_, d) = n3.delete("/v1/users/alice/sockets").await;
    assert_eq!(d["disconnected"], 2);
    assert_eq!(alice1.next().await, "41");
    assert_eq!(alice2.next().await, "41");
    eventually(5, "alice is gone everywhere", || async {
        n2.get("/v1/users/alice").await.1["sockets"] == json!([])
    })
    .await;
    let (status, _) = n2.get("/v1/sockets/n1.doesnotexist00").await;
    assert_eq!(status, 404);
}

/// Answers the next event's ack when `ack` is true; returns the event frame.
async fn receive(s: &mut RawSocket, ack: bool) -> String {
    let frame = s.next().await;
    let rest = frame.strip_prefix("42").expect("an event");
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    assert!(!digits.is_empty(), "an ack id: {frame}");
    if ack {
        s.send(&format!("43{digits}[]")).await;
    }
    frame
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_from_clients_on_two_nodes_arrive_in_one_report_readable_from_any_node() {
    let c = Cluster::start();
    let mut a1 = c.connect(0, "alice", &[]).await;
    let mut a2 = c.connect(1, "alice", &[]).await;
    let url = c.nodes[2].url("/v1/push");
    let call = |timeout: u64| {
        let url = url.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"to": {"user": "alice"}, "event": "n", "ack": {"timeout_ms": timeout}, "wait": true}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };

    let pending = call(5000);
    receive(&mut a1, true).await;
    receive(&mut a2, true).await;
    let answer = pending.await.unwrap();
    assert_eq!(answer["report"], report(2, 2, 2, 0));
    let id = answer["id"].as_str().unwrap().to_owned();
    eventually(5, "the report is readable from another node", || async {
        let (status, r) = c.nodes[0].get(&format!("/v1/pushes/{id}")).await;
        status == 200 && r["state"] == "final" && r["report"] == report(2, 2, 2, 0)
    })
    .await;

    let pending = call(500);
    receive(&mut a1, true).await;
    receive(&mut a2, false).await;
    assert_eq!(pending.await.unwrap()["report"], report(2, 2, 1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_turns_into_timed_out_and_its_sockets_leave_the_registry() {
    let mut c = Cluster::start();
    let mut a1 = c.connect(0, "alice", &[]).await;
    let mut a3 = c.connect(2, "alice", &["team"]).await;
    let (status, accepted) = c.nodes[1]
        .post(
            "/v1/push",
            json!({"to": {"user": "alice"}, "event": "n", "ack": {"timeout_ms": 1500}}),
        )
        .await;
    assert_eq!(status, 202);
    let report_path = format!("/v1/pushes/{}", accepted["id"].as_str().unwrap());
    receive(&mut a1, true).await;
    receive(&mut a3, false).await;
    // Both nodes reported their deliveries; then n3 dies before its client acks.
    eventually(5, "both deliveries reported", || async {
        c.nodes[1].get(&report_path).await.1["report"]["delivered"] == 2
    })
    .await;
    c.nodes[2].kill();
    eventually(5, "the report is final at the deadline", || async {
        let (_, r) = c.nodes[1].get(&report_path).await;
        r["state"] == "final" && r["report"] == report(2, 2, 1, 1)
    })
    .await;

    let path = format!("/v1/sockets/{}", a3.sid);
    eventually(10, "the killed node's socket expired", || async {
        c.nodes[0].get(&path).await.0 == 404
    })
    .await;
    let (_, u) = c.nodes[1].get("/v1/users/alice").await;
    assert_eq!(u["sockets"].as_array().unwrap().len(), 1, "{u}");
    let (_, room) = c.nodes[0].get("/v1/rooms/team").await;
    assert_eq!(room["count"], 0, "{room}");
    eventually(10, "the killed node left /v1/nodes", || async {
        c.nodes[0].get("/v1/nodes").await.1["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_writes_that_time_out_are_retried_without_rewriting_the_node() {
    let c = Cluster::start();
    let _a = c.connect(0, "alice", &[]).await;
    let reconciles = || c.nodes[0].metric("pushgate_registry_reconciles_total", &[]);
    let at_start = reconciles().await;
    assert!(at_start >= 1.0, "the node wrote itself whole once at start");

    // An overloaded Redis: every command times out (after 2 s) while a socket connects.
    c.redis.freeze();
    let t = token(SECRET, json!({"sub": "bob", "exp": in_an_hour()}));
    let b = RawSocket::connect(&c.nodes[0], Some(json!({ "token": t })))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    c.redis.resume();
    let path = format!("/v1/sockets/{}", b.sid);
    eventually(10, "the socket's failed write is applied again", || async {
        c.nodes[1].get(&path).await.0 == 200
    })
    .await;
    assert!(
        c.nodes[0]
            .metric("pushgate_registry_retried_ops_total", &[])
            .await
            >= 1.0
    );

    // Its connections to the same Redis server dropped and made again: nothing of
    // Redis was lost, so nothing is rewritten either.
    let before = c.nodes[0]
        .metric("pushgate_bus_reconnects_total", &[])
        .await;
    for kind in ["normal", "pubsub"] {
        c.redis.cmd(&[b"CLIENT", b"KILL", b"TYPE", kind.as_bytes()]);
    }
    // Three connections: publisher and registry (normal), subscriber (pubsub).
    eventually(10, "reconnected", || async {
        c.nodes[0]
            .metric("pushgate_bus_reconnects_total", &[])
            .await
            >= before + 3.0
            && c.nodes[0].get("/readyz").await.0 == 200
            && c.nodes[1].get("/readyz").await.0 == 200
    })
    .await;
    let r = push(
        &c.nodes[1],
        json!({"to": {"user": "bob"}, "event": "after"}),
    )
    .await;
    assert_eq!(r["delivered"], 1, "{r}");
    assert_eq!(
        reconciles().await,
        at_start,
        "a reconnect to the same server rewrote the node whole"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_keeps_every_client_and_the_cluster_delivers_again() {
    let mut c = Cluster::start();
    let mut a1 = c.connect(0, "alice", &["team"]).await;
    let mut b2 = c.connect(1, "bob", &[]).await;
    let port = c.redis.port;

    c.redis.kill();
    for n in &c.nodes {
        eventually(5, "not ready while Redis is down", || async {
            n.get("/readyz").await.0 == 503
        })
        .await;
    }
    let (status, err) = c.nodes[0]
        .post("/v1/push", json!({"to": {"all": true}, "event": "lost"}))
        .await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "unavailable");
    assert_eq!(c.nodes[0].metric("pushgate_bus_up", &[]).await, 0.0);
    // Clients stay connected: their node still knows them.
    assert_eq!(
        c.nodes[0].get(&format!("/v1/sockets/{}", a1.sid)).await.0,
        200
    );

    c.redis = Redis::start_on(port); // empty
    for n in &c.nodes {
        eventually(10, "ready again", || async {
            n.get("/readyz").await.0 == 200
        })
        .await;
    }
    // Re-registered and re-subscribed.
    let path = format!("/v1/sockets/{}", a1.sid);
    eventually(5, "re-registered", || async {
        c.nodes[2].get(&path).await.0 == 200
    })
    .await;
    assert_eq!(c.redis.numsub("pushgate:r:team"), 1);
    assert_eq!(c.redis.numsub("pushgate:u:bob"), 1);
    let r = push(
        &c.nodes[2],
        json!({"to": {"room": "team"}, "event": "again"}),
    )
    .await;
    assert_eq!(r["delivered"], 1);
    let r = push(
        &c.nodes[0],
        json!({"to": {"user": "bob"}, "event": "again"}),
    )
    .await;
    assert_eq!(r["delivered"], 1);
    got_exactly(&c.nodes[1], &mut a1, &["again"]).await;
    got_exactly(&c.nodes[2], &mut b2, &["again"]).await;
    assert!(
        c.nodes[0]
            .metric("pushgate_bus_reconnects_total", &[])
            .await
            >= 1.0
    );
    assert_eq!(c.nodes[0].metric("pushgate_bus_up", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_foreign_versions_on_the_bus_are_counted_and_skipped() {
    let c = Cluster::start();
    let mut a = c.connect(0, "alice", &[]).await;
    c.redis
        .cmd(&[b"PUBLISH", b"pushgate:u:alice", b"\xc1 not msgpack"]);
    let mut future = pushgate::bus::Envelope::new(pushgate::bus::Message::Done {
        request: 1,
        n: 1,
        refused: Vec::new(),
    });
    future.v = pushgate::bus::VERSION + 1;
    c.redis
        .cmd(&[b"PUBLISH", b"pushgate:n:n1", &future.encode()]);
    let r = push(
        &c.nodes[1],
        json!({"to": {"user": "alice"}, "event": "still"}),
    )
    .await;
    assert_eq!(r["delivered"], 1);
    got_exactly(&c.nodes[2], &mut a, &["still"]).await;
    let n1 = &c.nodes[0];
    assert_eq!(
        n1.metric(
            "pushgate_bus_messages_dropped_total",
            &["reason=\"undecodable\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        n1.metric(
            "pushgate_bus_messages_dropped_total",
            &["reason=\"unknown_version\""]
        )
        .await,
        1.0
    );
}

/// `total_commands_processed` of the test's Redis.
fn redis_commands(redis: &Redis) -> u64 {
    redis
        .cmd(&[b"INFO", b"stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats answers total_commands_processed")
}

/// Commands Redis processed during `window` while nothing changed.
async fn idle_commands(redis: &Redis, window: std::time::Duration) -> u64 {
    let before = redis_commands(redis);
    tokio::time::sleep(window).await;
    redis_commands(redis) - before - 1
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_registry_work_does_not_grow_with_connections() {
    let redis = Redis::start();
    // A short TTL makes the lease task run every 200 ms, so a window sees many periods.
    let env = |id: &'static str| {
        Gateway::start(&[
            ("PUSHGATE_REDIS_URL", &redis.url()),
            ("PUSHGATE_NODE_ID", id),
            ("PUSHGATE_REGISTRY_TTL_MS", "1200"),
        ])
    };
    let (n1, n2) = (env("n1"), env("n2"));
    let window = std::time::Duration::from_millis(2400);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let empty = idle_commands(&redis, window).await;

    let mut sockets = Vec::new();
    for i in 0..300 {
        let gw = if i % 2 == 0 { &n1 } else { &n2 };
        sockets.push(RawSocket::connect(gw, None).await.unwrap());
    }
    eventually(10, "every socket is counted in /v1/nodes", || async {
        n1.get("/v1/nodes").await.1["nodes"]
            .as_array()
            .is_some_and(|n| {
                n.iter()
                    .map(|n| n["connections"].as_u64().unwrap())
                    .sum::<u64>()
                    == 300
            })
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let busy = idle_commands(&redis, window).await;
    // The same lease refreshes and scans, whatever the connection count: a rewrite of
    // each socket per period would be thousands of commands here.
    assert!(
        empty > 0 && busy <= empty + empty / 4,
        "idle Redis commands: {empty} with no sockets, {busy} with 300"
    );
    drop(sockets);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nodes_presence_members_leave_and_one_survivor_removes_its_entries() {
    let mut c = Cluster::start();
    let _alice = c.connect(0, "alice", &["presence-lobby"]).await;
    let carol = c.connect(2, "carol", &["presence-lobby"]).await;
    let _carol2 = c.connect(1, "carol", &["presence-lobby"]).await;
    let path = "/v1/rooms/presence-lobby/presence";
    let (status, p) = c.nodes[1].get(path).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        p,
        json!({"room": "presence-lobby", "count": 2, "members": [
            {"user": "alice", "connections": 1}, {"user": "carol", "connections": 2}]})
    );
    let (_, count) = c.nodes[0].get(&format!("{path}?members=false")).await;
    assert_eq!(count, json!({"room": "presence-lobby", "count": 2}));
    let (_, nodes) = c.nodes[0].get("/v1/nodes").await;
    let n3 = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "n3")
        .cloned()
        .unwrap();
    assert_eq!(n3["frontends"]["socketio"], 1, "{nodes}");

    c.nodes[2].kill();
    eventually(10, "carol has one connection left", || async {
        c.nodes[0].get(path).await.1["members"]
            == json!([{"user": "alice", "connections": 1}, {"user": "carol", "connections": 1}])
    })
    .await;
    // One survivor removed every entry of the dead node, and only one did.
    let key = format!("pushgate:s:{}", carol.sid);
    eventually(10, "the dead node's entries are gone", || async {
        c.redis.cmd(&[b"EXISTS", key.as_bytes()]).trim() == ":0"
            && c.redis.cmd(&[b"HEXISTS", b"pushgate:nodes", b"n3"]).trim() == ":0"
    })
    .await;
    let cleanups = c.nodes[0]
        .metric("pushgate_registry_cleanups_total", &[])
        .await
        + c.nodes[1]
            .metric("pushgate_registry_cleanups_total", &[])
            .await;
    assert_eq!(cleanups, 1.0);
    let (_, count) = c.nodes[1].get(&format!("{path}?members=false")).await;
    assert_eq!(count["count"], 2, "carol is still there through n2");
    let (status, e) = c.nodes[1].get("/v1/rooms/lobby/presence").await;
    assert_eq!(status, 400, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_restarted_with_its_id_forgets_its_previous_runs_sockets() {
    let mut c = Cluster::start();
    let old = c.connect(0, "alice", &["presence-x"]).await;
    c.nodes[0].kill();
    c.nodes[0] = start_node(&c.redis, "n1");
    let path = format!("/v1/sockets/{}", old.sid);
    eventually(5, "the old run's socket is gone at once", || async {
        c.nodes[1].get(&path).await.0 == 404
            && c.nodes[1]
                .get("/v1/rooms/presence-x/presence?members=false")
                .await
                .1["count"]
                == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_push_that_fails_part_way_names_the_users_it_did_not_reach() {
    let redis = Redis::start();
    // The accepting node's Redis user may not publish on bob's channel: that PUBLISH
    // fails while the others succeed, as when Redis fails part way through.
    let acl = redis.cmd(&[
        b"ACL",
        b"SETUSER",
        b"partial",
        b"on",
        b">pw",
        b"~*",
        b"+@all",
        b"resetchannels",
        b"&pushgate:n:*",
        b"&pushgate:b",
        b"&pushgate:r:*",
        b"&pushgate:e*",
        b"&pushgate:u:alice",
    ]);
    assert!(acl.starts_with("+OK"), "{acl}");
    let url = format!("redis://partial:pw@127.0.0.1:{}", redis.port);
    let origin = Gateway::start(&[
        ("PUSHGATE_REDIS_URL", &url),
        ("PUSHGATE_NODE_ID", "n1"),
        ("PUSHGATE_JWT_SECRET", SECRET),
    ]);
    let holder = start_node(&redis, "n2");
    let nodes = [origin, holder];
    let c = |user: &str| token(SECRET, json!({"sub": user, "exp": in_an_hour()}));
    let mut alice = RawSocket::connect(&nodes[1], Some(json!({"token": c("alice")})))
        .await
        .unwrap();
    let mut bob = RawSocket::connect(&nodes[1], Some(json!({"token": c("bob")})))
        .await
        .unwrap();
    eventually(5, "both are registered", || async {
        nodes[0].get("/v1/users/bob").await.1["sockets"]
            .as_array()
            .is_some_and(|s| s.len() == 1)
    })
    .await;

    let (status, body) = nodes[0]
        .post(
            "/v1/push",
            json!({"to": {"users": ["alice", "bob"]}, "event": "half", "wait": true}),
        )
        .await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(body["failed_users"], json!(["bob"]));
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(body["report"]["delivered"], 1, "alice got it: {body}");
    assert!(alice.next().await.starts_with("42[\"half\""));

    // A batch answers each push: accepted whole, in part, or not at all.
    let (status, body) = nodes[0]
        .post(
            "/v1/push/batch",
            json!({"pushes": [
                {"to": {"user": "alice"}, "event": "one"},
                {"to": {"users": ["bob", "alice"]}, "event": "two"},
                {"to": {"user": "bob"}, "event": "three"},
            ]}),
        )
        .await;
    assert_eq!(status, 207, "{body}");
    let r = &body["results"];
    assert!(
        r[0]["id"].is_string() && r[0].get("error").is_none(),
        "{body}"
    );
    assert_eq!(r[1]["failed_users"], json!(["bob"]), "{body}");
    assert!(r[1]["id"].is_string(), "{body}");
    assert_eq!(r[2]["error"]["code"], "unavailable", "{body}");
    assert!(r[2].get("id").is_none(), "{body}");
    // Bob got nothing at all; a push through the other node reaches him.
    let (status, _) = nodes[1]
        .post(
            "/v1/push",
            json!({"to": {"user": "bob"}, "event": "retry", "wait": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(bob.next().await.starts_with("42[\"retry\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_report_is_readable_from_any_node() {
    let c = Cluster::start();
    let mut a1 = c.connect(0, "alice", &[]).await;
    let _a2 = c.connect(1, "alice", &[]).await;
    let (status, accepted) = c.nodes[2]
        .post(
            "/v1/push",
            json!({"to": {"user": "alice"}, "event": "n", "ack": {"timeout_ms": 3000}}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("n3."),
        "a push id names the node that accepted it: {id}"
    );
    receive(&mut a1, true).await;
    // a2 does not ack: the report stays pending until the timeout, and every node
    // reads it from n3 meanwhile.
    let path = format!("/v1/pushes/{id}");
    eventually(5, "n1 and n2 read the pending report from n3", || async {
        let mut all = true;
        for n in &c.nodes[..2] {
            let (status, r) = n.get(&path).await;
            all &= status == 200 && r["state"] == "pending" && r["report"] == report(2, 2, 1, 0);
        }
        all
    })
    .await;
    eventually(10, "final everywhere after the timeout", || async {
        let (_, r) = c.nodes[0].get(&path).await;
        r["state"] == "final" && r["report"] == report(2, 2, 1, 1)
    })
    .await;
    let (status, _) = c.nodes[1]
        .get("/v1/pushes/n3.0123456789abcdef0123456789abcdef")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sockets_of_a_node_that_never_reports_are_counted_unknown() {
    let c = Cluster::start();
    let _a1 = c.connect(0, "alice", &["team"]).await;
    let _a2 = c.connect(1, "alice", &["team"]).await;
    let _b2 = c.connect(1, "bob", &["team"]).await;
    // n2 receives the push (its subscription is open) but never reports.
    c.nodes[1].freeze();
    let (status, body) = c.nodes[2]
        .post(
            "/v1/push",
            json!({"to": {"room": "team"}, "event": "e", "wait": true}),
        )
        .await;
    c.nodes[1].resume();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["report"],
        json!({"sockets": 1, "delivered": 1, "acked": 0, "timed_out": 0, "failed": 0, "unknown": 2}),
        "n1's socket delivered, n2's two sockets unknown"
    );
}

/// Acked pushes sent at a steady rate while Redis is killed (SIGKILL) and restarted
/// empty: each is refused with 503 or accepted, and every accepted one gets a final
/// report whose counts add up — acked, or reported not delivered — readable from the
/// other node. None is silently lost. (`loadtest/bench/faults.sh redis-kill` is the
/// same at a larger size.)
#[tokio::test(flavor = "multi_thread")]
async fn acked_pushes_across_a_redis_kill_end_acked_or_reported_not_delivered() {
    use futures_util::{SinkExt, StreamExt};
    use std::time::{Duration, Instant};
    use tokio_tungstenite::tungstenite::Message;

    const USERS: usize = 8;
    const PUSHES: usize = 400; // one every 20 ms: 8 s
    let redis = Redis::start();
    let nodes = vec![start_node(&redis, "n1"), start_node(&redis, "n2")];
    let mut c = Cluster { redis, nodes };
    // One socket per user, half on each node, each acking every event it gets.
    let mut ackers = Vec::new();
    for i in 0..USERS {
        let mut s = c.connect(i % 2, &format!("u{i}"), &[]).await;
        ackers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = s.ws.next().await {
                let Message::Text(t) = msg else { continue };
                let answer = if t.as_str() == "2" {
                    "3".to_owned()
                } else if let Some(rest) = t.strip_prefix("42") {
                    let id: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                    format!("43{id}[]")
                } else {
                    continue;
                };
                if s.ws.send(Message::text(answer)).await.is_err() {
                    break;
                }
            }
        }));
    }

    let http = reqwest::Client::new();
    let port = c.redis.port;
    let start = Instant::now();
    let mut calls = Vec::new();
    let (mut killed, mut restarted) = (false, false);
    for i in 0..PUSHES {
        tokio::time::sleep_until((start + Duration::from_millis(20 * i as u64)).into()).await;
        if !killed && start.elapsed() >= Duration::from_secs(2) {
            c.redis.kill();
            killed = true;
        }
        if killed && !restarted && start.elapsed() >= Duration::from_secs(4) {
            c.redis = Redis::start_on(port);
            restarted = true;
        }
        let (http, url) = (http.clone(), c.nodes[i % 2].url("/v1/push"));
        let body = json!({"to": {"user": format!("u{}", i % USERS)}, "event": "n",
                          "data": i, "ack": {"timeout_ms": 1000}});
        calls.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&body)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match r {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    (i, status, v["id"].as_str().map(str::to_owned))
                }
                Err(_) => (i, 0, None),
            }
        }));
    }
    let mut accepted = Vec::new();
    let (mut refused, mut other) = (0, Vec::new());
    for call in calls {
        match call.await.unwrap() {
            (i, 202, Some(id)) => accepted.push((i, id)),
            (_, 503, _) => refused += 1,
            (i, status, _) => other.push((i, status)),
        }
    }
    assert!(other.is_empty(), "answers other than 202 or 503: {other:?}");
    assert!(refused > 0, "some pushes were refused while Redis was down");
    // Push i is sent at i × 20 ms: before 100 Redis was up, from 200 on it was back.
    assert!(
        accepted.iter().any(|(i, _)| *i < 100) && accepted.iter().any(|(i, _)| *i >= 200),
        "pushes were accepted before the kill and after the restart"
    );

    // Every accepted push: a final report, read from the node that did not accept it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut acked, mut not_delivered) = (0, 0);
    for (i, id) in &accepted {
        let path = format!("/v1/pushes/{id}");
        let report = loop {
            let (status, r) = c.nodes[(i + 1) % 2].get(&path).await;
            if status == 200 && r["state"] == "final" {
                break r["report"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "push {i} ({id}) accepted, but no final report: {status} {r}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let n = |k: &str| report[k].as_u64().unwrap_or(0);
        assert_eq!(
            n("delivered") + n("failed"),
            n("sockets"),
            "push {i}: {report}"
        );
        assert_eq!(
            n("acked") + n("timed_out") + n("unackable"),
            n("delivered"),
            "push {i}: {report}"
        );
        assert_eq!(
            n("sockets") + n("unknown"),
            1,
            "push {i} names its one socket: {report}"
        );
        if n("acked") == 1 {
            acked += 1;
        } else {
            not_delivered += 1;
        }
    }
    assert!(acked > 0, "{acked} acked, {not_delivered} not delivered");
    for a in ackers {
        a.abort();
    }
}
