//! The push driver: `POST`s stamped pushes to the push API at a fixed rate and keeps a
//! record of each (target, send time, outcome) for the delivery accounting.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use pushgate::frontend::pusher::signature;

use crate::limits::PUSH_CONCURRENCY;
use crate::payload;
use crate::scenario::{PushApi, PushTo, PusherApp, Scenario};
use crate::stats;

/// The addressee of one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    All,
    User(u64),
    Room(u64),
}

impl Target {
    pub fn json(self) -> serde_json::Value {
        match self {
            Target::All => serde_json::json!({ "all": true }),
            Target::User(u) => serde_json::json!({ "user": format!("u{u}") }),
            Target::Room(r) => serde_json::json!({ "room": format!("r{r}") }),
        }
    }
}

/// One push as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    pub seq: u64,
    pub target: Target,
    pub sent_ns: u64,
    /// HTTP status, or None when the request itself failed.
    pub status: Option<u16>,
}

impl PushRecord {
    /// The API took the push (2xx): its deliveries are expected.
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Sums of the reports the API returned (with `wait`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSums {
    pub reports: u64,
    pub sockets: u64,
    pub delivered: u64,
    pub acked: u64,
    pub timed_out: u64,
    pub failed: u64,
}

#[derive(Deserialize)]
struct PushAnswer {
    report: Option<ApiReport>,
}

#[derive(Deserialize)]
struct ApiReport {
    #[serde(default)]
    sockets: u64,
    #[serde(default)]
    delivered: u64,
    #[serde(default)]
    acked: u64,
    #[serde(default)]
    timed_out: u64,
    #[serde(default)]
    failed: u64,
}

/// Everything the push driver records. Shared with the progress display.
pub struct PushLog {
    pub sent: AtomicU64,
    pub accepted: AtomicU64,
    // std mutexes: one short critical section per push answer, never across an await.
    records: Mutex<Vec<PushRecord>>,
    /// Status (or "transport") → count, and one sample error.
    errors: Mutex<BTreeMap<String, (u64, String)>>,
    sums: Mutex<ReportSums>,
    /// Request → response time of the push API, µs.
    api_latency: Mutex<Histogram<u64>>,
}

impl Default for PushLog {
    fn default() -> Self {
        PushLog {
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
            errors: Mutex::new(BTreeMap::new()),
            sums: Mutex::new(ReportSums::default()),
            api_latency: Mutex::new(stats::new_hist()),
        }
    }
}

impl PushLog {
    pub fn records(&self) -> Vec<PushRecord> {
        let mut r = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        r.sort_by_key(|r| r.seq);
        r
    }

    pub fn errors(&self) -> BTreeMap<String, (u64, String)> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn sums(&self) -> ReportSums {
        *self.sums.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn api_latency(&self) -> Histogram<u64> {
        self.api_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn error(&self, key: String, sample: String) {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert((0, sample))
            .0 += 1;
    }
}

/// Picks the addressee of the next push.
pub fn pick(sc: &Scenario, rng: &mut impl Rng) -> Target {
    match sc.push {
        PushTo::All | PushTo::None => Target::All,
        PushTo::User => Target::User(rng.random_range(0..sc.users)),
        PushTo::Room => Target::Room(rng.random_range(0..sc.rooms)),
    }
}

/// The request body of push `seq`.
pub fn body(sc: &Scenario, target: Target, seq: u64, t: u64) -> serde_json::Value {
    let mut b = serde_json::json!({
        "to": target.json(),
        "event": sc.event,
        "data": payload::push_data(t, seq, sc.pad),
    });
    if let Some(ms) = sc.ack_timeout_ms {
        b["ack"] = serde_json::json!({ "timeout_ms": ms });
    }
    if sc.wait {
        b["wait"] = serde_json::Value::Bool(true);
    }
    b
}

/// The Pusher HTTP API event of push `seq` to room `r<k>` (a channel): `{name, channel,
/// data}` with the data as JSON text, as the server SDKs send it.
pub fn pusher_body(sc: &Scenario, target: Target, seq: u64, t: u64) -> String {
    let channel = match target {
        Target::Room(r) => format!("r{r}"),
        // Refused by the scenario: the Pusher API addresses channels only.
        Target::All | Target::User(_) => String::new(),
    };
    serde_json::json!({
        "name": sc.event,
        "channel": channel,
        "data": payload::push_data(t, seq, sc.pad).to_string(),
    })
    .to_string()
}

/// `url` (`http://host:port/apps/<id>/events`) with the query that signs `body` for
/// `app` at unix time `timestamp`, as the Pusher server SDKs sign a request (the
/// gateway's own `signature` module computes it).
pub fn pusher_signed_url(url: &str, app: &PusherApp, body: &str, timestamp: u64) -> String {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/");
    let mut params = vec![
        ("auth_key".to_owned(), app.key.clone()),
        ("auth_timestamp".to_owned(), timestamp.to_string()),
        ("auth_version".to_owned(), "1.0".to_owned()),
        ("body_md5".to_owned(), signature::body_md5(body.as_bytes())),
    ];
    let sig = signature::sign(
        &app.secret,
        &signature::request_message("POST", path, &params),
    );
    params.push(("auth_signature".to_owned(), sig));
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('&', "%26").replace('=', "%3D")))
        .collect();
    format!("{url}?{}", query.join("&"))
}

/// Pushes at `sc.push_rate` for `sc.duration` (or until `stop`), then waits for the
/// answers still outstanding (at most the request timeout).
pub async fn run(sc: Arc<Scenario>, log: Arc<PushLog>, stop: CancellationToken) {
    let timeout = Duration::from_secs(30) + Duration::from_millis(sc.ack_timeout_ms.unwrap_or(0));
    let http = match reqwest::Client::builder()
        .pool_max_idle_per_host(PUSH_CONCURRENCY)
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            log.error("client".into(), e.to_string());
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(PUSH_CONCURRENCY));
    let start = Instant::now();
    let end = start + sc.duration;
    // StdRng, not the thread-local one: this future moves between threads.
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut seq: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(seq as f64 / sc.push_rate);
        if due >= end || seq >= stats::MAX_SEQ {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        // When every permit is out the API is slower than the rate: the achieved rate
        // drops (and shows in the report) rather than requests piling up.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let target = pick(&sc, &mut rng);
        let url = sc.push_urls[(seq % sc.push_urls.len() as u64) as usize].clone();
        let (http, log, sc2) = (http.clone(), log.clone(), sc.clone());
        let this = seq;
        tokio::spawn(async move {
            let t = payload::unix_ns();
            let (url, text) = match sc2.push_api {
                PushApi::V1 => (url, body(&sc2, target, this, t).to_string()),
                PushApi::Pusher => {
                    let text = pusher_body(&sc2, target, this, t);
                    let at = t / 1_000_000_000;
                    (pusher_signed_url(&url, &sc2.pusher_app, &text, at), text)
                }
            };
            let mut req = http.post(&url).header("content-type", "application/json");
            if let Some(k) = &sc2.api_key {
                req = req.bearer_auth(k);
            }
            let req = req.body(text);
            log.sent.fetch_add(1, Relaxed);
            let answer = req.send().await;
            let took = stats::latency_us(t, payload::unix_ns());
            let status = match answer {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    if (200..300).contains(&status) {
                        log.accepted.fetch_add(1, Relaxed);
                        log.api_latency
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .saturating_record(took);
                        if let Ok(PushAnswer { report: Some(r) }) = serde_json::from_str(&text) {
                            let mut s = log.sums.lock().unwrap_or_else(|e| e.into_inner());
                            s.reports += 1;
                            s.sockets += r.sockets;
                            s.delivered += r.delivered;
                            s.acked += r.acked;
                            s.timed_out += r.timed_out;
                            s.failed += r.failed;
                        }
                    } else {
                        let sample: String = text.chars().take(300).collect();
                        log.error(format!("http {status}"), sample);
                    }
                    Some(status)
                }
                Err(e) => {
                    log.error("transport".into(), format!("{url}: {e}"));
                    None
                }
            };
            log.records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(PushRecord {
                    seq: this,
                    target,
                    sent_ns: t,
                    status,
                });
            drop(permit);
        });
        seq += 1;
    }
    // Outstanding answers: every permit back means every request is done.
    let _ = tokio::time::timeout(timeout, permits.acquire_many(PUSH_CONCURRENCY as u32)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Settings;

    fn scenario(args: Settings) -> Scenario {
        Scenario::resolve(args).unwrap()
    }

    #[test]
    fn body_carries_target_stamp_and_options() {
        let sc = scenario(Settings {
            ack_timeout_ms: Some(2500),
            wait: Some(true),
            ..Settings::default()
        });
        let b = body(&sc, Target::User(7), 3, 99);
        assert_eq!(
            b,
            serde_json::json!({
                "to": {"user": "u7"}, "event": "load", "data": {"t": 99, "seq": 3},
                "ack": {"timeout_ms": 2500}, "wait": true
            })
        );
        let sc = scenario(Settings::default());
        let b = body(&sc, Target::All, 0, 1);
        assert_eq!(b["to"], serde_json::json!({"all": true}));
        assert!(b.get("ack").is_none() && b.get("wait").is_none());
        assert_eq!(Target::Room(2).json(), serde_json::json!({"room": "r2"}));
    }

    #[test]
    fn a_pusher_api_push_is_signed_as_the_gateway_checks_it() {
        let sc = scenario(Settings {
            protocol: Some(crate::client::Protocol::Pusher),
            push: Some(PushTo::Room),
            push_api: Some(PushApi::Pusher),
            rooms: Some(2),
            pad: Some(3),
            ..Settings::default()
        });
        let text = pusher_body(&sc, Target::Room(1), 4, 9);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            serde_json::json!({"name": "load", "channel": "r1",
                               "data": r#"{"pad":"xxx","seq":4,"t":9}"#})
        );
        assert_eq!(sc.push_urls, ["http://127.0.0.1:3000/apps/load-app/events"]);
        let url = pusher_signed_url(&sc.push_urls[0], &sc.pusher_app, &text, 1_700_000_000);
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, sc.push_urls[0]);
        let params: Vec<(String, String)> = form_pairs(query);
        assert_eq!(
            signature::check_request(
                "load-key",
                "load-secret",
                "POST",
                "/apps/load-app/events",
                &params,
                text.as_bytes(),
                1_700_000_100,
            ),
            Ok(())
        );
    }

    fn form_pairs(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace("%26", "&").replace("%3D", "=")))
            .collect()
    }

    #[test]
    fn picked_targets_stay_in_range() {
        let sc = scenario(Settings {
            push: Some(PushTo::Room),
            rooms: Some(3),
            jwt_secret: Some("k".into()),
            ..Settings::default()
        });
        let mut rng = rand::rng();
        for _ in 0..100 {
            match pick(&sc, &mut rng) {
                Target::Room(r) => assert!(r < 3),
                t => panic!("{t:?}"),
            }
        }
    }

    #[test]
    fn only_2xx_is_accepted() {
        let r = |status| PushRecord {
            seq: 0,
            target: Target::All,
            sent_ns: 0,
            status,
        };
        assert!(r(Some(202)).accepted());
        assert!(r(Some(200)).accepted());
        assert!(!r(Some(503)).accepted());
        assert!(!r(None).accepted());
    }
}
