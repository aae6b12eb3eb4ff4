//! Every Prometheus metric of the gateway, named and registered in one place.
//!
//! Label sets are bounded: frontends, reasons, target kinds, outcomes and route
//! templates — never a user id, room name or socket id. Hot-path series (deliveries,
//! write latency) are resolved once here so the fan-out never looks a label up.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use crate::id::Frontend;

/// Latency buckets from 100 µs to 10 s: local writes take microseconds, a slow client
/// or a long poll that is not pending can take seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub connects: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub connect_errors: IntCounterVec,
    pub pushes: IntCounterVec,
    pub deliveries: IntCounterVec,
    pub delivery_failures: IntCounterVec,
    pub acks: IntCounterVec,
    pub push_write_seconds: Histogram,
    pub queue_overflows: IntCounterVec,
    pub client_joins: IntCounterVec,
    pub client_events: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    /// Connections on the listener that ended with an HTTP error rather than a close,
    /// by `reason` (`HTTP_CONNECTION_ERROR_REASONS`): what scanners and broken clients
    /// send, which reaches no route and so no other metric.
    pub http_connection_errors: IntCounterVec,
    /// Cluster bus: PUBLISH of a push, from first envelope sent to last answer.
    pub bus_publish_seconds: Histogram,
    /// Cluster bus messages by `direction` (`in`, `out`) and channel `kind`
    /// (`broadcast`, `user`, `room`, `inbox`).
    pub bus_messages: IntCounterVec,
    /// Bus messages skipped, by `reason` (`unknown_version`, `undecodable`, `lagged`).
    pub bus_dropped: IntCounterVec,
    /// Channels this node is subscribed to, by `kind`.
    pub bus_subscriptions: IntGaugeVec,
    /// Reconnections to Redis (either connection).
    pub bus_reconnects: IntCounter,
    /// 1 while both Redis connections are up.
    pub bus_up: IntGauge,
    /// Registry commands that failed, by `op` (`write`, `refresh`, `read`).
    pub registry_errors: IntCounterVec,
    /// Dead nodes whose registry entries this node removed.
    pub registry_cleanups: IntCounter,
    /// Registry operations that failed and were queued to be applied again.
    pub registry_retried_ops: IntCounter,
    /// Times this node rewrote all of its registry entries (O(connections)).
    pub registry_reconciles: IntCounter,
    /// Connection state recovery attempts, by `outcome` (`recovered`, `not_found`,
    /// `partial`, `error`).
    pub recovery: IntCounterVec,
    /// Missed pushes replayed to recovered sessions.
    pub recovery_replayed: IntCounter,
    /// Nodes with a live lease, as this node last saw them.
    pub cluster_nodes: IntGauge,
    /// Requests of sessions held by other nodes, forwarded to them, by `frontend`,
    /// `kind` (`poll`, `upgrade`) and `outcome` (`ok`, `no_owner`, `timeout`,
    /// `failed`).
    pub cluster_forwards: IntCounterVec,
    /// WebSockets of other nodes' sessions piped through this node now.
    pub cluster_forwarded_websockets: IntGauge,
    /// Connections entering (`join`) or leaving (`leave`) presence rooms, counted
    /// where the presence store applied them.
    pub presence_changes: IntCounterVec,
    /// Presence diffs handed to connections (once per member per diff).
    pub presence_deliveries: IntCounter,
    /// Events this node published to the event stream, by `type` (built only while
    /// someone reads: see `crate::events`).
    pub events: IntCounterVec,
    /// Open `GET /v1/events` streams on this node.
    pub events_readers: IntGauge,
    /// Event stream readers dropped, by `reason` (`slow`: a full queue).
    pub events_readers_dropped: IntCounterVec,
    /// Events not sent to readers on other nodes, by `reason` (`queue_full`,
    /// `unavailable`).
    pub events_dropped: IntCounterVec,
    /// Connections, requests and pushes refused by a limit, by `limit` (the limits
    /// module's names; it starts every series at 0).
    pub limit_refusals: IntCounterVec,
    /// Each limit's configured value by `limit` (0 = no limit; rates per second).
    pub limit: IntGaugeVec,
    /// Connections admitted that have not authenticated yet (Engine.IO sessions
    /// without a namespace).
    pub pending_connections: IntGauge,
    /// Ack-tracked pushes accepted on this node whose report is not final yet.
    pub pending_acked_pushes: IntGauge,
    /// Entries of the per-address token-bucket tables, by `table` (`connect_rate`,
    /// `api_rate`).
    pub limit_addresses: IntGaugeVec,
    /// Entries those tables forgot before they refilled, to stay bounded, by `table`.
    pub limit_address_evictions: IntCounterVec,
    /// Pusher webhook events queued, by `event` (the webhook's event name).
    pub webhook_events: IntCounterVec,
    /// Pusher webhook requests, by `outcome` (`ok`, `http_error`, `network_error`).
    pub webhook_requests: IntCounterVec,
    /// Pusher webhook events given up, by `reason` (`queue_full`, `gave_up`).
    pub webhook_dropped: IntCounterVec,
    /// Pusher webhook events queued or being sent.
    pub webhook_queued: IntGauge,
    /// Time of one webhook request, answered or not.
    pub webhook_request_seconds: Histogram,
    /// Resolved series for each frontend's hot path, by [`Frontend::index`].
    frontends: [FrontendSeries; Frontend::COUNT],
}

/// One frontend's per-delivery series, resolved once.
pub struct FrontendSeries {
    pub connections: IntGauge,
    pub deliveries: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let connections = reg!(IntGaugeVec::new(
            Opts::new("pushgate_connections", "Open client connections."),
            &["frontend"]
        ));
        let deliveries = reg!(counter(
            "pushgate_deliveries_total",
            "Pushes handed to a connection's outbound queue.",
            &["frontend"]
        ));
        let frontends = Frontend::ALL.map(|f| FrontendSeries {
            connections: connections.with_label_values(&[f.as_str()]),
            deliveries: deliveries.with_label_values(&[f.as_str()]),
        });
        let metrics = Self {
            connects: reg!(counter(
                "pushgate_connects_total",
                "Client connections accepted.",
                &["frontend"]
            )),
            disconnects: reg!(counter(
                "pushgate_disconnects_total",
                "Client connections ended, by reason.",
                &["frontend", "reason"]
            )),
            connect_errors: reg!(counter(
                "pushgate_connect_errors_total",
                "Connection attempts refused, by reason.",
                &["frontend", "reason"]
            )),
            pushes: reg!(counter(
                "pushgate_pushes_total",
                "Pushes accepted, by target kind.",
                &["target"]
            )),
            delivery_failures: reg!(counter(
                "pushgate_delivery_failures_total",
                "Deliveries that could not be queued.",
                &["reason"]
            )),
            acks: reg!(counter(
                "pushgate_acks_total",
                "Ack-tracked deliveries by outcome.",
                &["outcome"]
            )),
            push_write_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "pushgate_push_write_seconds",
                    "From push accepted to its frame written to the client's transport."
                )
                .buckets(LATENCY_BUCKETS.to_vec())
            )),
            queue_overflows: reg!(counter(
                "pushgate_queue_overflows_total",
                "Connections whose outbound queue filled up (disconnected as slow).",
                &["frontend"]
            )),
            client_joins: reg!(counter(
                "pushgate_client_joins_total",
                "Client-initiated room joins and leaves.",
                &["op", "outcome"]
            )),
            client_events: reg!(counter(
                "pushgate_client_events_total",
                "Events and acks sent by clients.",
                &["kind"]
            )),
            http_requests: reg!(counter(
                "pushgate_http_requests_total",
                "HTTP API requests by route and status.",
                &["route", "status"]
            )),
            http_request_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "pushgate_http_request_seconds",
                    "HTTP API request duration."
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"]
            )),
            http_connection_errors: reg!(counter(
                "pushgate_http_connection_errors_total",
                "Listener connections that ended with an HTTP error, by reason.",
                &["reason"]
            )),
            bus_publish_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "pushgate_bus_publish_seconds",
                    "Cluster bus: time to PUBLISH one push (all its envelopes)."
                )
                .buckets(LATENCY_BUCKETS.to_vec())
            )),
            bus_messages: reg!(counter(
                "pushgate_bus_messages_total",
                "Cluster bus messages by direction and channel kind.",
                &["direction", "kind"]
            )),
            bus_dropped: reg!(counter(
                "pushgate_bus_messages_dropped_total",
                "Cluster bus messages skipped, by reason.",
                &["reason"]
            )),
            bus_subscriptions: reg!(IntGaugeVec::new(
                Opts::new(
                    "pushgate_bus_subscriptions",
                    "Cluster bus channels this node is subscribed to, by kind."
                ),
                &["kind"]
            )),
            bus_reconnects: reg!(IntCounter::new(
                "pushgate_bus_reconnects_total",
                "Reconnections to Redis."
            )),
            bus_up: reg!(IntGauge::new(
                "pushgate_bus_up",
                "1 while the node's Redis connections are up (cluster mode)."
            )),
            registry_errors: reg!(counter(
                "pushgate_registry_errors_total",
                "Cluster registry commands that failed, by operation.",
                &["op"]
            )),
            registry_cleanups: reg!(IntCounter::new(
                "pushgate_registry_cleanups_total",
                "Dead nodes whose registry entries this node removed."
            )),
            registry_reconciles: reg!(IntCounter::new(
                "pushgate_registry_reconciles_total",
                "Times this node made its registry entries match its hub whole."
            )),
            registry_retried_ops: reg!(IntCounter::new(
                "pushgate_registry_retried_ops_total",
                "Registry operations that failed and were queued to be applied again."
            )),
            recovery: reg!(counter(
                "pushgate_recovery_total",
                "Connection state recovery attempts, by outcome.",
                &["outcome"]
            )),
            recovery_replayed: reg!(IntCounter::new(
                "pushgate_recovery_replayed_total",
                "Missed pushes replayed to recovered sessions."
            )),
            cluster_nodes: reg!(IntGauge::new(
                "pushgate_cluster_nodes",
                "Nodes with a live lease in the cluster registry, as this node last saw them."
            )),
            cluster_forwards: reg!(counter(
                "pushgate_cluster_forwards_total",
                "Requests of sessions held by other nodes, forwarded to them, by outcome.",
                &["frontend", "kind", "outcome"]
            )),
            cluster_forwarded_websockets: reg!(IntGauge::new(
                "pushgate_cluster_forwarded_websockets",
                "WebSockets of other nodes' sessions piped through this node."
            )),
            presence_changes: reg!(counter(
                "pushgate_presence_changes_total",
                "Connections entering or leaving presence rooms.",
                &["change"]
            )),
            presence_deliveries: reg!(IntCounter::new(
                "pushgate_presence_deliveries_total",
                "Presence diffs handed to connections."
            )),
            events: reg!(counter(
                "pushgate_events_total",
                "Events published to the event stream (GET /v1/events), by type.",
                &["type"]
            )),
            events_readers: reg!(IntGauge::new(
                "pushgate_events_readers",
                "Open event streams (GET /v1/events) on this node."
            )),
            events_readers_dropped: reg!(counter(
                "pushgate_events_readers_dropped_total",
                "Event stream readers dropped because they fell behind, by reason.",
                &["reason"]
            )),
            events_dropped: reg!(counter(
                "pushgate_events_dropped_total",
                "Events not sent to readers on other nodes, by reason.",
                &["reason"]
            )),
            limit_refusals: reg!(counter(
                "pushgate_limit_refusals_total",
                "Connections, requests and pushes refused by a limit, by limit.",
                &["limit"]
            )),
            limit: reg!(IntGaugeVec::new(
                Opts::new(
                    "pushgate_limit",
                    "Configured value of each limit (0 = no limit; rates per second)."
                ),
                &["limit"]
            )),
            pending_connections: reg!(IntGauge::new(
                "pushgate_pending_connections",
                "Connections admitted that have not authenticated yet."
            )),
            pending_acked_pushes: reg!(IntGauge::new(
                "pushgate_pending_acked_pushes",
                "Ack-tracked pushes accepted on this node whose report is not final."
            )),
            limit_addresses: reg!(IntGaugeVec::new(
                Opts::new(
                    "pushgate_limit_addresses",
                    "Entries of the per-address token-bucket tables, by table."
                ),
                &["table"]
            )),
            limit_address_evictions: reg!(counter(
                "pushgate_limit_address_evictions_total",
                "Token buckets forgotten before they refilled, to keep the tables bounded.",
                &["table"]
            )),
            webhook_events: reg!(counter(
                "pushgate_webhook_events_total",
                "Pusher webhook events queued, by event.",
                &["event"]
            )),
            webhook_requests: reg!(counter(
                "pushgate_webhook_requests_total",
                "Pusher webhook requests, by outcome.",
                &["outcome"]
            )),
            webhook_dropped: reg!(counter(
                "pushgate_webhook_dropped_total",
                "Pusher webhook events given up, by reason.",
                &["reason"]
            )),
            webhook_queued: reg!(IntGauge::new(
                "pushgate_webhook_queued",
                "Pusher webhook events queued or being sent."
            )),
            webhook_request_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "pushgate_webhook_request_seconds",
                    "Pusher webhook request duration, answered or not."
                )
                .buckets(LATENCY_BUCKETS.to_vec())
            )),
            connections,
            deliveries,
            frontends,
            registry,
        };
        metrics.start_known_series_at_zero();
        metrics
    }

    /// The Prometheus text exposition of every metric.
    /// A queued frame is being written now: the push-to-write histogram (protocol
    /// frames, which have no `pushed_at`, are not observed).
    pub fn observe_write(&self, pushed_at: Option<std::time::Instant>, now: std::time::Instant) {
        if let Some(at) = pushed_at {
            self.push_write_seconds
                .observe(now.saturating_duration_since(at).as_secs_f64());
        }
    }

    /// One frontend's resolved series.
    pub fn frontend(&self, f: Frontend) -> &FrontendSeries {
        &self.frontends[f.index()]
    }

    /// Open connections over every frontend.
    pub fn connections_total(&self) -> i64 {
        self.frontends.iter().map(|f| f.connections.get()).sum()
    }

    /// Open connections per frontend (every frontend, 0 included), as `GET /v1/nodes`
    /// shows them.
    pub fn connections_by_frontend(&self) -> std::collections::BTreeMap<&'static str, i64> {
        Frontend::ALL
            .into_iter()
            .map(|f| (f.as_str(), self.frontend(f).connections.get()))
            .collect()
    }

    pub fn render(&self) -> String {
        self.render_for(true)
    }

    /// The exposition for a node with (`with_bus`) or without a Redis bus. Without
    /// one, the bus and registry families are left out: a single node exporting
    /// `pushgate_bus_up 0` would read as an outage to any alert on it.
    pub fn render_for(&self, with_bus: bool) -> String {
        let mut families = self.registry.gather();
        if !with_bus {
            families.retain(|f| !BUS_FAMILY_PREFIXES.iter().any(|p| f.name().starts_with(p)));
        }
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Creates every series whose label values are known in advance, at 0, so each
    /// exists from the first scrape: a dashboard panel or an alert over a counter that
    /// was never incremented would otherwise say "No data" on a healthy node, and
    /// `rate()` would miss the first increment. Label values the code may use but that
    /// are not listed here still work; they only appear at their first use.
    fn start_known_series_at_zero(&self) {
        for f in Frontend::ALL.map(Frontend::as_str) {
            self.connects.with_label_values(&[f]);
            self.queue_overflows.with_label_values(&[f]);
            for reason in DISCONNECT_REASONS {
                self.disconnects.with_label_values(&[f, reason]);
            }
            for reason in CONNECT_ERROR_REASONS {
                self.connect_errors.with_label_values(&[f, reason]);
            }
        }
        for reason in PUSHER_CONNECT_ERROR_REASONS {
            self.connect_errors
                .with_label_values(&[Frontend::Pusher.as_str(), reason]);
        }
        for target in PUSH_TARGETS {
            self.pushes.with_label_values(&[target]);
        }
        for outcome in ["recovered", "not_found", "partial", "error"] {
            self.recovery.with_label_values(&[outcome]);
        }
        for reason in DELIVERY_FAILURE_REASONS {
            self.delivery_failures.with_label_values(&[reason]);
        }
        for outcome in ACK_OUTCOMES {
            self.acks.with_label_values(&[outcome]);
        }
        for op in ["join", "leave"] {
            for outcome in ["ok", "refused"] {
                self.client_joins.with_label_values(&[op, outcome]);
            }
        }
        for kind in CLIENT_EVENT_KINDS {
            self.client_events.with_label_values(&[kind]);
        }
        // Every scrape is a request to /metrics: its series exist before it counts one.
        self.http_requests.with_label_values(&["/metrics", "200"]);
        self.http_request_seconds.with_label_values(&["/metrics"]);
        for reason in HTTP_CONNECTION_ERROR_REASONS {
            self.http_connection_errors.with_label_values(&[reason]);
        }
        for direction in ["in", "out"] {
            for kind in BUS_CHANNEL_KINDS {
                self.bus_messages.with_label_values(&[direction, kind]);
            }
        }
        for kind in BUS_CHANNEL_KINDS {
            self.bus_subscriptions.with_label_values(&[kind]);
        }
        for reason in BUS_DROP_REASONS {
            self.bus_dropped.with_label_values(&[reason]);
        }
        for op in REGISTRY_OPS {
            self.registry_errors.with_label_values(&[op]);
        }
        for change in ["join", "leave"] {
            self.presence_changes.with_label_values(&[change]);
        }
        for kind in EVENT_TYPES {
            self.events.with_label_values(&[kind]);
        }
        self.events_readers_dropped.with_label_values(&["slow"]);
        for reason in EVENTS_DROP_REASONS {
            self.events_dropped.with_label_values(&[reason]);
        }
        // The limits' own series (`pushgate_limit`, refusals) are started by
        // `Limits::new`, which knows them; metrics stays below limits.
        for table in LIMIT_TABLES {
            self.limit_addresses.with_label_values(&[table]);
            self.limit_address_evictions.with_label_values(&[table]);
        }
        for f in Frontend::ALL.map(Frontend::as_str) {
            for kind in FORWARD_KINDS {
                for outcome in FORWARD_OUTCOMES {
                    self.cluster_forwards.with_label_values(&[f, kind, outcome]);
                }
            }
        }
        for event in WEBHOOK_EVENTS {
            self.webhook_events.with_label_values(&[event]);
        }
        for outcome in WEBHOOK_OUTCOMES {
            self.webhook_requests.with_label_values(&[outcome]);
        }
        for reason in WEBHOOK_DROP_REASONS {
            self.webhook_dropped.with_label_values(&[reason]);
        }
    }
}

/// Families exported only by a node with a Redis bus (see [`Metrics::render_for`]).
const BUS_FAMILY_PREFIXES: &[&str] = &["pushgate_bus_", "pushgate_registry_", "pushgate_cluster_"];

// Label values known in advance, started at 0 by `start_known_series_at_zero`. Each
// list mirrors the code that uses the values (named on each); a test below checks the
// ones that have an enum.
/// `crate::connection::CloseReason::as_str`.
const DISCONNECT_REASONS: &[&str] = &[
    "client",
    "transport_close",
    "transport_error",
    "ping_timeout",
    "connect_timeout",
    "protocol_error",
    "too_large",
    "slow_client",
    "kicked",
    "over_quota",
    "shutdown",
];
/// `crate::auth::AuthError::code` and the Socket.IO handler's refusals.
const CONNECT_ERROR_REASONS: &[&str] = &[
    "missing_token",
    "expired_token",
    "bad_signature",
    "invalid_token",
    "invalid_namespace",
    "duplicate",
    // Connection tokens (`crate::auth::AuthError::code`).
    "bad_algorithm",
    "not_yet_valid",
    "bad_audience",
    "bad_issuer",
    "rooms",
    // The Origin allow-list (`PUSHGATE_ALLOWED_ORIGINS`).
    "origin",
    // Connection limits (the limits module's names).
    "node_connections",
    "ip_connections",
    "user_connections",
    "pending_connections",
    "connect_rate",
];
/// The token-bucket tables of `crate::limits`.
const LIMIT_TABLES: &[&str] = &["connect_rate", "api_rate"];
/// `crate::push::Target`'s `target` label.
const PUSH_TARGETS: &[&str] = &["all", "user", "users", "room", "socket"];
/// The hub's failed enqueues.
const DELIVERY_FAILURE_REASONS: &[&str] = &["queue_full", "closed"];
/// The delivery tracker's ack outcomes.
const ACK_OUTCOMES: &[&str] = &["acked", "timed_out"];
/// The Pusher frontend's refusals before a connection opens (`Refusal::reason`).
const PUSHER_CONNECT_ERROR_REASONS: &[&str] = &[
    "no_protocol",
    "unsupported_protocol",
    "unknown_app",
    "over_quota",
];
/// The frontends' client events: joins, leaves, acks and unknown messages of all;
/// Pusher's client events and sign-ins, accepted and refused.
const CLIENT_EVENT_KINDS: &[&str] = &[
    "join",
    "leave",
    "ack",
    "unknown",
    "client_event",
    "client_event_refused",
    "signin",
    "signin_refused",
];
/// The Redis bus's channel kinds.
const BUS_CHANNEL_KINDS: &[&str] = &["broadcast", "user", "room", "inbox", "events"];
/// `crate::events::Event::kind`.
const EVENT_TYPES: &[&str] = &[
    "connected",
    "disconnected",
    "joined",
    "left",
    "pushed",
    "report",
];
/// Why the event stream's bus path dropped events (`crate::events`, `bus/redis/events.rs`).
const EVENTS_DROP_REASONS: &[&str] = &["queue_full", "unavailable"];
/// The Pusher webhook events (`frontend::pusher::webhook`).
const WEBHOOK_EVENTS: &[&str] = &[
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];
/// The outcomes of a webhook request.
const WEBHOOK_OUTCOMES: &[&str] = &["ok", "http_error", "network_error"];
/// Why webhook events were given up.
const WEBHOOK_DROP_REASONS: &[&str] = &["queue_full", "gave_up"];
/// `crate::bus::envelope::DecodeError::reason`, and `lagged`.
const BUS_DROP_REASONS: &[&str] = &["unknown_version", "undecodable", "lagged"];
/// Why a listener connection ended with an error: `malformed` (not HTTP/1.x; answered
/// 400), `too_large` (a head over the limit; 431), `incomplete` (closed within a
/// request), `io` (the socket failed, e.g. reset), `other`.
pub const HTTP_CONNECTION_ERROR_REASONS: &[&str] =
    &["malformed", "too_large", "incomplete", "io", "other"];
/// The registry's failing operations.
const REGISTRY_OPS: &[&str] = &["write", "refresh", "read"];
/// `crate::transport::forward`'s request kinds and outcomes.
const FORWARD_KINDS: &[&str] = &["poll", "upgrade"];
const FORWARD_OUTCOMES: &[&str] = &["ok", "no_owner", "timeout", "failed"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_label_values_are_exported_at_zero_before_first_use() {
        let text = Metrics::new().render();
        for series in [
            r#"pushgate_disconnects_total{frontend="socketio",reason="slow_client"} 0"#,
            r#"pushgate_connect_errors_total{frontend="socketio",reason="expired_token"} 0"#,
            r#"pushgate_delivery_failures_total{reason="queue_full"} 0"#,
            r#"pushgate_delivery_failures_total{reason="closed"} 0"#,
            r#"pushgate_acks_total{outcome="timed_out"} 0"#,
            r#"pushgate_pushes_total{target="users"} 0"#,
            r#"pushgate_queue_overflows_total{frontend="socketio"} 0"#,
            r#"pushgate_client_joins_total{op="leave",outcome="refused"} 0"#,
            r#"pushgate_client_events_total{kind="unknown"} 0"#,
            r#"pushgate_http_requests_total{route="/metrics",status="200"} 0"#,
            r#"pushgate_bus_messages_total{direction="in",kind="broadcast"} 0"#,
            r#"pushgate_bus_messages_dropped_total{reason="lagged"} 0"#,
            r#"pushgate_registry_errors_total{op="refresh"} 0"#,
            r#"pushgate_disconnects_total{frontend="phoenix",reason="too_large"} 0"#,
            r#"pushgate_presence_changes_total{change="leave"} 0"#,
            r#"pushgate_events_total{type="connected"} 0"#,
            r#"pushgate_events_total{type="report"} 0"#,
            r#"pushgate_events_readers 0"#,
            r#"pushgate_events_readers_dropped_total{reason="slow"} 0"#,
            r#"pushgate_events_dropped_total{reason="queue_full"} 0"#,
            r#"pushgate_bus_messages_total{direction="out",kind="events"} 0"#,
            r#"pushgate_connections{frontend="pusher"} 0"#,
            r#"pushgate_deliveries_total{frontend="pusher"} 0"#,
            r#"pushgate_connect_errors_total{frontend="pusher",reason="unknown_app"} 0"#,
            r#"pushgate_disconnects_total{frontend="pusher",reason="ping_timeout"} 0"#,
            r#"pushgate_client_events_total{kind="client_event_refused"} 0"#,
            r#"pushgate_cluster_forwards_total{frontend="phoenix",kind="poll",outcome="no_owner"} 0"#,
            r#"pushgate_cluster_forwarded_websockets 0"#,
            r#"pushgate_webhook_events_total{event="member_added"} 0"#,
            r#"pushgate_webhook_requests_total{outcome="http_error"} 0"#,
            r#"pushgate_webhook_dropped_total{reason="queue_full"} 0"#,
            r#"pushgate_webhook_queued 0"#,
        ] {
            assert!(text.contains(series), "missing {series}");
        }
    }

    #[test]
    fn the_disconnect_reasons_started_at_zero_are_the_close_reasons() {
        use crate::connection::CloseReason::*;
        for r in [
            Client,
            TransportClose,
            TransportError,
            PingTimeout,
            ConnectTimeout,
            ProtocolError,
            TooLarge,
            SlowClient,
            Kicked,
            OverQuota,
            Shutdown,
        ] {
            assert!(DISCONNECT_REASONS.contains(&r.as_str()), "{}", r.as_str());
        }
    }

    #[test]
    fn a_node_without_a_bus_exports_no_bus_metrics() {
        let m = Metrics::new();
        m.registry_errors.with_label_values(&["write"]).inc();
        let single = m.render_for(false);
        assert!(!single.contains("pushgate_bus_"), "{single}");
        assert!(!single.contains("pushgate_registry_"), "{single}");
        assert!(single.contains("pushgate_connections"), "{single}");
        let cluster = m.render_for(true);
        assert!(cluster.contains("pushgate_bus_up 0"), "{cluster}");
        assert!(
            cluster.contains("pushgate_registry_errors_total"),
            "{cluster}"
        );
    }

    #[test]
    fn rendered_text_names_every_metric_of_the_readme() {
        let m = Metrics::new();
        m.pushes.with_label_values(&["room"]).inc();
        m.acks.with_label_values(&["acked"]).inc();
        m.disconnects
            .with_label_values(&[Frontend::SocketIo.as_str(), "client"])
            .inc();
        m.connect_errors
            .with_label_values(&[Frontend::SocketIo.as_str(), "expired_token"])
            .inc();
        m.delivery_failures.with_label_values(&["closed"]).inc();
        m.queue_overflows
            .with_label_values(&[Frontend::SocketIo.as_str()])
            .inc();
        m.client_joins.with_label_values(&["join", "ok"]).inc();
        m.client_events.with_label_values(&["ack"]).inc();
        m.http_requests
            .with_label_values(&["/v1/push", "200"])
            .inc();
        m.http_request_seconds
            .with_label_values(&["/v1/push"])
            .observe(0.01);
        m.connects
            .with_label_values(&[Frontend::SocketIo.as_str()])
            .inc();
        m.frontend(Frontend::SocketIo).deliveries.inc();
        m.push_write_seconds.observe(0.001);
        m.bus_publish_seconds.observe(0.001);
        m.bus_messages.with_label_values(&["in", "room"]).inc();
        m.bus_dropped.with_label_values(&["undecodable"]).inc();
        m.bus_subscriptions.with_label_values(&["user"]).set(1);
        m.bus_reconnects.inc();
        m.registry_errors.with_label_values(&["write"]).inc();
        let text = m.render();
        for name in [
            "pushgate_connections",
            "pushgate_connects_total",
            "pushgate_disconnects_total",
            "pushgate_connect_errors_total",
            "pushgate_pushes_total",
            "pushgate_deliveries_total",
            "pushgate_delivery_failures_total",
            "pushgate_acks_total",
            "pushgate_push_write_seconds_bucket",
            "pushgate_queue_overflows_total",
            "pushgate_client_joins_total",
            "pushgate_client_events_total",
            "pushgate_http_requests_total",
            "pushgate_http_request_seconds_bucket",
            "pushgate_bus_publish_seconds_bucket",
            "pushgate_bus_messages_total",
            "pushgate_bus_messages_dropped_total",
            "pushgate_bus_subscriptions",
            "pushgate_bus_reconnects_total",
            "pushgate_bus_up",
            "pushgate_registry_errors_total",
            "pushgate_events_total",
            "pushgate_events_readers",
            "pushgate_events_readers_dropped_total",
            "pushgate_events_dropped_total",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
