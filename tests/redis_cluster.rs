//! Gateways on a real Redis Cluster (3 primaries, 3 replicas): sharded pub/sub, exact
//! reports, the registry across shards, and a primary failing over under load.

mod common;

use common::{eventually, in_an_hour, token, Gateway, RawSocket, RedisCluster};
use serde_json::{json, Value};

const SECRET: &str = "redis-cluster-test-secret";

fn start_node(redis: &RedisCluster, id: &str) -> Gateway {
    Gateway::start(&[
        ("PUSHGATE_REDIS_URL", &redis.url()),
        ("PUSHGATE_NODE_ID", id),
        ("PUSHGATE_JWT_SECRET", SECRET),
        // Shorter than a failover takes: leases lapse meanwhile, and must not make
        // live nodes dead.
        ("PUSHGATE_REGISTRY_TTL_MS", "3000"),
    ])
}

async fn connect(nodes: &[Gateway], i: usize, user: &str, rooms: &[&str]) -> RawSocket {
    let t = token(
        SECRET,
        json!({"sub": user, "exp": in_an_hour(), "rooms": rooms}),
    );
    let s = RawSocket::connect(&nodes[i], Some(json!({ "token": t })))
        .await
        .unwrap();
    let other = &nodes[(i + 1) % nodes.len()];
    let path = format!("/v1/sockets/{}", s.sid);
    eventually(10, "the socket is registered", || async {
        other.get(&path).await.0 == 200
    })
    .await;
    s
}

/// Answers the next event's ack; returns the event frame.
async fn ack_next(s: &mut RawSocket) -> String {
    let frame = s.next().await;
    let rest = frame.strip_prefix("42").expect("an event with an ack id");
    let id: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    assert!(!id.is_empty(), "{frame} asks for an ack");
    s.send(&format!("43{id}[]")).await;
    frame
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_on_a_redis_cluster_deliver_everywhere_and_report_exactly() {
    let redis = RedisCluster::start();
    let nodes = [start_node(&redis, "n1"), start_node(&redis, "n2")];
    let mut alice = connect(&nodes, 0, "alice", &["team", "presence-lobby"]).await;
    let mut bob = connect(&nodes, 1, "bob", &["team", "presence-lobby"]).await;

    // A user and a socket on the other node: their channels are sharded, and the
    // report counts the node that delivered.
    let (mut via, mut target) = (&nodes[1], &mut alice);
    for (to, event) in [
        (json!({"user": "alice"}), "to-alice"),
        (json!({"socket": bob.sid}), "to-bob"),
    ] {
        let url = via.url("/v1/push");
        let pending = tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"to": to, "event": event, "ack": {"timeout_ms": 5000}, "wait": true}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        });
        assert!(ack_next(target).await.contains(event));
        let r = pending.await.unwrap();
        assert_eq!(
            r["report"],
            json!({"sockets": 1, "delivered": 1, "acked": 1, "timed_out": 0, "failed": 0}),
            "{r}"
        );
        (via, target) = (&nodes[0], &mut bob);
    }
    // Exact reports for every kind of target, acked by clients on both nodes.
    for (to, n) in [
        (json!({"all": true}), 2),
        (json!({"room": "team"}), 2),
        (json!({"users": ["alice", "bob", "nobody"]}), 2),
    ] {
        let nodes = &nodes;
        let pending = tokio::spawn({
            let url = nodes[0].url("/v1/push");
            async move {
                reqwest::Client::new()
                    .post(url)
                    .json(
                        &json!({"to": to, "event": "e", "ack": {"timeout_ms": 5000}, "wait": true}),
                    )
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        });
        ack_next(&mut alice).await;
        ack_next(&mut bob).await;
        let r = pending.await.unwrap();
        assert_eq!(
            r["report"],
            json!({"sockets": n, "delivered": n, "acked": n, "timed_out": 0, "failed": 0}),
            "{r}"
        );
    }
    // The registry answers across shards.
    let (_, u) = nodes[0].get("/v1/users/bob").await;
    assert_eq!(u["sockets"][0]["node"], "n2", "{u}");
    let (_, room) = nodes[1].get("/v1/rooms/team").await;
    assert_eq!(room["count"], 2, "{room}");
    let (_, p) = nodes[0].get("/v1/rooms/presence-lobby/presence").await;
    assert_eq!(p["count"], 2, "{p}");
    let (_, n) = nodes[0].get("/v1/nodes").await;
    assert_eq!(n["nodes"].as_array().map(Vec::len), Some(2), "{n}");
    // Every channel is sharded: nothing on the classic pub/sub.
    for node in &redis.nodes {
        let classic = node.cmd(&[b"PUBSUB", b"CHANNELS"]);
        assert!(classic.starts_with("*0"), "classic channels: {classic}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_primary_killed_under_load_fails_over_and_no_accepted_push_is_lost() {
    let mut redis = RedisCluster::start();
    let nodes = [start_node(&redis, "n1"), start_node(&redis, "n2")];
    let mut alice = connect(&nodes, 1, "alice", &[]).await;
    // The shard that carries alice's channel is the one that fails.
    let victim = redis.primary_of("pushgate:u:alice");

    // Alice acks whatever arrives and counts it.
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let reader = tokio::spawn(async move {
        loop {
            // The pushes stop when the load ends; so does this reader.
            let Ok(frame) =
                tokio::time::timeout(std::time::Duration::from_secs(8), ack_next(&mut alice)).await
            else {
                return;
            };
            let seq: u64 = frame
                .split("\"seq\":")
                .nth(1)
                .and_then(|r| r.split(['}', ',']).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
            if got_tx.send(seq).is_err() {
                return;
            }
        }
    });

    // Pushes to alice through n1, one after another, while the primary dies.
    let url = nodes[0].url("/v1/push");
    let ready = nodes[0].url("/readyz");
    let load = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let (mut accepted, mut refused, mut unready) = (Vec::new(), 0u32, 0u32);
        let start = std::time::Instant::now();
        let mut seq = 0u64;
        while start.elapsed() < std::time::Duration::from_secs(20) {
            seq += 1;
            let r = http
                .post(&url)
                .json(
                    &json!({"to": {"user": "alice"}, "event": "n", "data": {"seq": seq},
                              "ack": {"timeout_ms": 3000}, "wait": true}),
                )
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            match status {
                200 => accepted.push((seq, body["report"].clone())),
                503 => refused += 1,
                other => panic!("push {seq}: {other} {body}"),
            }
            if http.get(&ready).send().await.unwrap().status() == 503 {
                unready += 1;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        (accepted, refused, unready)
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    redis.nodes[victim].kill();
    let dead = redis.nodes[victim].port;
    let (accepted, refused, unready) = load.await.unwrap();
    redis.wait_healthy(&[dead]);

    // Nothing accepted was lost: alice got every push answered 200, and its report
    // says so. What was in flight at the failure may have had its way back cut with
    // the shard: an ack (the report says timed_out, never acked), or n2's whole
    // delivery report (the report says unknown, never 0 sockets).
    let mut got = std::collections::HashSet::new();
    while let Ok(seq) = got_rx.try_recv() {
        got.insert(seq);
    }
    let (mut unacked, mut unknown) = (0, 0);
    for (seq, report) in &accepted {
        assert!(
            got.contains(seq),
            "push {seq} was accepted but alice never got it"
        );
        if report["unknown"] == json!(1) {
            assert_eq!(report["delivered"], json!(0), "push {seq}: {report}");
            unknown += 1;
            continue;
        }
        assert_eq!(
            (&report["sockets"], &report["delivered"], &report["failed"]),
            (&json!(1), &json!(1), &json!(0)),
            "push {seq}: {report}"
        );
        match (report["acked"].as_u64(), report["timed_out"].as_u64()) {
            (Some(1), Some(0)) => {}
            (Some(0), Some(1)) => unacked += 1,
            _ => panic!("push {seq}: {report}"),
        }
    }
    assert!(
        unacked + unknown <= 2,
        "{unacked} acks and {unknown} reports lost: only those in flight at the failure may be"
    );
    assert!(
        refused > 0,
        "the failover was never seen: every push was accepted"
    );
    assert!(unready > 0, "/readyz never said 503 during the failover");
    assert!(
        accepted.last().is_some_and(|(seq, _)| *seq > 1),
        "pushes are accepted again after the failover (accepted {}, refused {refused})",
        accepted.len()
    );
    eventually(10, "ready again", || async {
        nodes[0].get("/readyz").await.0 == 200 && nodes[1].get("/readyz").await.0 == 200
    })
    .await;
    reader.abort();
}
