//! Pusher webhooks: `channel_occupied`, `channel_vacated`, `member_added`,
//! `member_removed` and `client_event`, POSTed to each app's URL as Pusher sends them.
//!
//! - **Once per cluster.** Occupancy and presence events come from the presence core's
//!   [`Watcher`]: on a single node from `presence::local`, in a cluster from the one
//!   registry write whose atomic script result showed the change (a room index going
//!   from 0 to 1 socket or back, a member's first or last connection). The node that
//!   made that write sends the webhook; the others hear nothing. A client event is
//!   sent by the node its sender is connected to.
//! - **Signed and batched as Pusher does.** The body is `{"time_ms", "events": [...]}`
//!   with up to [`MAX_BATCH`] events that were waiting; `X-Pusher-Key` is the app key
//!   and `X-Pusher-Signature` the hex HMAC-SHA256 of the body with the app secret, so
//!   the server SDKs' `webhook(request).isValid()` accepts it.
//! - **Bounded and retried.** Each app has a queue of [`QUEUE`] events and one task
//!   that sends them in order. A batch whose request fails (a network error, no
//!   answer within [`REQUEST_TIMEOUT`], or any status but 2xx) is sent again after
//!   [`FIRST_RETRY`], doubling up to [`MAX_RETRY_WAIT`], [`ATTEMPTS`] times in all,
//!   then given up. Events that find the queue full are dropped. Both are counted
//!   (`pushgate_webhook_dropped_total{reason}`) and logged; every request is counted by
//!   outcome and timed.
//! - What is lost: events queued on a node that dies, and those given up.
//!
//! Knows nothing of Redis or the hub: the stores tell it through [`Watcher`], the
//! connections through [`Webhooks::client_event`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

use super::{signature, App};
use crate::id::RoomName;
use crate::metrics::Metrics;
use crate::presence::{Change, Watcher};

/// Events one app's queue holds while its receiver is slow or down.
pub const QUEUE: usize = 10_000;
/// Events in one request at most.
pub const MAX_BATCH: usize = 100;
/// How long the sender waits after the first event of a batch for more to join it.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// How long a receiver has to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before the first retry; it doubles after each failure.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// Attempts per batch before it is given up (waits of 0.25 s to 16 s: about 32 s).
pub const ATTEMPTS: u32 = 8;

/// The webhooks of every app that names a URL.
pub struct Webhooks {
    hooks: Vec<Hook>,
    metrics: Arc<Metrics>,
}

/// One app's webhook.
struct Hook {
    app: Arc<App>,
    queue: mpsc::Sender<Value>,
    /// Events queued or in flight, for [`Webhooks::flush`].
    pending: Arc<Pending>,
    /// Set while events are being dropped for a full queue, so a long overflow logs
    /// once when it starts and once when it ends.
    overflowing: AtomicBool,
}

#[derive(Default)]
struct Pending {
    n: AtomicUsize,
    idle: Notify,
}

impl Pending {
    fn done(&self, n: usize) {
        if self.n.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }
}

impl Webhooks {
    /// Starts one sending task per app with a webhook URL; `None` when no app has one.
    pub fn start(apps: &[Arc<App>], metrics: Arc<Metrics>) -> Option<Arc<Self>> {
        if apps.iter().all(|a| a.config.webhook.is_none()) {
            return None;
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| tracing::error!(error = %e, "webhook client not built: no webhooks"))
            .ok()?;
        let hooks: Vec<Hook> = apps
            .iter()
            .filter_map(|app| {
                let url = app.config.webhook.clone()?;
                let (tx, rx) = mpsc::channel(QUEUE);
                let pending = Arc::new(Pending::default());
                let sender = Sender {
                    app: app.clone(),
                    url,
                    client: client.clone(),
                    pending: pending.clone(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(sender.run(rx));
                tracing::info!(app = %app.config.id, "pusher webhooks enabled");
                Some(Hook {
                    app: app.clone(),
                    queue: tx,
                    pending,
                    overflowing: AtomicBool::new(false),
                })
            })
            .collect();
        (!hooks.is_empty()).then(|| Arc::new(Self { hooks, metrics }))
    }

    /// The hook of the app whose channel `room` is, with that channel.
    fn hook_of<'a>(&self, room: &'a str) -> Option<(&Hook, std::borrow::Cow<'a, str>)> {
        self.hooks
            .iter()
            .find_map(|h| h.app.channel_of(room).map(|c| (h, c)))
    }

    fn queue(&self, hook: &Hook, name: &'static str, event: Value) {
        hook.pending.n.fetch_add(1, Ordering::AcqRel);
        match hook.queue.try_send(event) {
            Ok(()) => {
                self.metrics.webhook_events.with_label_values(&[name]).inc();
                self.metrics.webhook_queued.inc();
                if hook.overflowing.swap(false, Ordering::AcqRel) {
                    tracing::info!(app = %hook.app.config.id, "webhook queue accepts events again");
                }
            }
            Err(_) => {
                hook.pending.done(1);
                self.metrics
                    .webhook_dropped
                    .with_label_values(&["queue_full"])
                    .inc();
                if !hook.overflowing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        app = %hook.app.config.id,
                        capacity = QUEUE,
                        "webhook queue full: events are dropped until the receiver catches up"
                    );
                }
            }
        }
    }

    /// A client event `event` with `data` (as the other subscribers got it) on
    /// `channel` of `app`, from the connection `socket_id` (its Pusher id) and, on a
    /// presence channel, the member `user_id`.
    pub fn client_event(
        &self,
        app: &App,
        channel: &str,
        event: &str,
        data: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) {
        let Some(hook) = self.hooks.iter().find(|h| h.app.config.id == app.config.id) else {
            return;
        };
        let mut e = json!({
            "name": "client_event",
            "channel": channel,
            "event": event,
            "data": data,
            "socket_id": socket_id,
        });
        if let Some(id) = user_id {
            e["user_id"] = id.into();
        }
        self.queue(hook, "client_event", e);
    }

    /// Waits until every queued event was sent or given up, at most `grace`.
    pub async fn flush(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for h in &self.hooks {
            loop {
                let idle = h.pending.idle.notified();
                let left = h.pending.n.load(Ordering::Acquire);
                if left == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, idle).await.is_err() {
                    tracing::warn!(app = %h.app.config.id, events = left, "webhook events not sent before shutdown");
                    break;
                }
            }
        }
    }
}

impl Watcher for Webhooks {
    fn watches(&self, room: &str) -> bool {
        self.hook_of(room).is_some()
    }

    fn occupancy(&self, room: &RoomName, occupied: bool) {
        let Some((hook, channel)) = self.hook_of(room.as_str()) else {
            return;
        };
        let name = if occupied {
            "channel_occupied"
        } else {
            "channel_vacated"
        };
        self.queue(hook, name, json!({"name": name, "channel": channel}));
    }

    fn presence(&self, room: &RoomName, change: &Change, join: bool) {
        if !change.edge {
            return;
        }
        let Some((hook, channel)) = self.hook_of(room.as_str()) else {
            return;
        };
        let name = if join {
            "member_added"
        } else {
            "member_removed"
        };
        let user_id = hook.app.user_id(&change.meta.key);
        self.queue(
            hook,
            name,
            json!({"name": name, "channel": channel, "user_id": user_id}),
        );
    }
}

/// The body of one webhook request and its signature header.
pub fn body(time_ms: u64, events: &[Value], secret: &str) -> (String, String) {
    let body = json!({"time_ms": time_ms, "events": events}).to_string();
    let signature = signature::sign(secret, &body);
    (body, signature)
}

/// The wait before attempt `attempt` (2, 3, …) of a batch.
pub fn retry_wait(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(2).min(16);
    (FIRST_RETRY * 2u32.pow(doublings)).min(MAX_RETRY_WAIT)
}

/// One app's sending task.
struct Sender {
    app: Arc<App>,
    url: String,
    client: reqwest::Client,
    pending: Arc<Pending>,
    metrics: Arc<Metrics>,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Value>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            if batch.len() < MAX_BATCH {
                tokio::time::sleep(BATCH_WINDOW).await;
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
            }
            self.send(&batch).await;
            let n = batch.len();
            batch.clear();
            self.metrics.webhook_queued.sub(n as i64);
            self.pending.done(n);
        }
    }

    /// Sends one batch, retrying with backoff; gives it up after [`ATTEMPTS`].
    async fn send(&self, events: &[Value]) {
        let (body, sig) = body(crate::id::now_ms(), events, &self.app.config.secret);
        let app = self.app.config.id.as_str();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(retry_wait(attempt)).await;
            }
            let start = Instant::now();
            let answer = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-Pusher-Key", &self.app.config.key)
                .header("X-Pusher-Signature", &sig)
                .body(body.clone())
                .send()
                .await;
            self.metrics
                .webhook_request_seconds
                .observe(start.elapsed().as_secs_f64());
            let failure = match answer {
                Ok(r) if r.status().is_success() => {
                    self.metrics
                        .webhook_requests
                        .with_label_values(&["ok"])
                        .inc();
                    tracing::debug!(app, events = events.len(), attempt, "webhook sent");
                    return;
                }
                Ok(r) => {
                    self.metrics
                        .webhook_requests
                        .with_label_values(&["http_error"])
                        .inc();
                    format!("the receiver answered {}", r.status())
                }
                Err(e) => {
                    self.metrics
                        .webhook_requests
                        .with_label_values(&["network_error"])
                        .inc();
                    format!("no answer: {e}")
                }
            };
            tracing::warn!(
                app,
                events = events.len(),
                attempt,
                of = ATTEMPTS,
                failure,
                "webhook request failed"
            );
        }
        self.metrics
            .webhook_dropped
            .with_label_values(&["gave_up"])
            .inc_by(events.len() as u64);
        tracing::error!(
            app,
            events = events.len(),
            attempts = ATTEMPTS,
            "webhook events given up"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_signed_as_the_sdks_verify_it() {
        let events = vec![json!({"name": "channel_occupied", "channel": "c"})];
        let (body, sig) = body(1_700_000_000_000, &events, "app-secret");
        assert_eq!(
            body,
            r#"{"events":[{"channel":"c","name":"channel_occupied"}],"time_ms":1700000000000}"#
        );
        assert_eq!(sig, signature::sign("app-secret", &body));
        assert!(signature::verify("app-secret", &body, &sig));
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(retry_wait(2), Duration::from_millis(250));
        assert_eq!(retry_wait(3), Duration::from_millis(500));
        assert_eq!(retry_wait(8), Duration::from_secs(16));
        assert_eq!(retry_wait(9), MAX_RETRY_WAIT);
        assert_eq!(retry_wait(40), MAX_RETRY_WAIT);
        let total: Duration = (2..=ATTEMPTS).map(retry_wait).sum();
        assert!(total < Duration::from_secs(60), "{total:?}");
    }
}
