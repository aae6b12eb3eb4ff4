//! The push service: checks a push against every frontend, opens its record in the
//! delivery tracker, hands it to the bus, and answers with its id (and, when asked,
//! its final report).

use std::sync::Arc;

use crate::bus::{Bus, BusError, Published};
use crate::codec::{Codecs, Refused};
use crate::delivery::{Report, Tracker, REPORT_TIMEOUT};
use crate::events::{Event, Events};
use crate::id::{NodeId, PushId, UserId};
use crate::metrics::Metrics;
use crate::push::Push;

/// Why a push was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A frontend cannot carry it (HTTP 400); nothing was sent.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The bus did not take it (HTTP 503); nothing was delivered, the caller may retry.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A limit refused it (ack-tracked pushes pending on this node: HTTP 503 with
    /// `Retry-After`); nothing was sent, the caller may retry.
    #[error(transparent)]
    Limit(#[from] crate::limits::Refused),
}

/// What the caller gets back for an accepted push.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: PushId,
    /// The final report, present when the caller asked to wait.
    pub report: Option<Report>,
    /// Of a push to several users, those it could not be handed to the bus for (the
    /// others got it; the report counts only them): a retry should name only these.
    pub refused: Vec<UserId>,
}

/// Sends pushes through the bus and keeps their reports in the tracker.
pub struct PushService {
    /// This node: the prefix of every push id it accepts.
    node: NodeId,
    bus: Arc<dyn Bus>,
    /// Every frontend's codec, to refuse what one of them cannot carry.
    codecs: Codecs,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    /// The event stream, told of every accepted push.
    events: Option<Arc<Events>>,
    /// Connection state recovery is on: pushes without an ack are recorded.
    recovery: bool,
}

impl PushService {
    pub fn new(
        node: NodeId,
        bus: Arc<dyn Bus>,
        codecs: Codecs,
        tracker: Arc<Tracker>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            node,
            bus,
            codecs,
            tracker,
            metrics,
            events: None,
            recovery: false,
        }
    }

    /// The same service, marking every push without an ack recoverable (the bus
    /// records them for connection state recovery).
    pub fn with_recovery(mut self, on: bool) -> Self {
        self.recovery = on;
        self
    }

    /// The same service, telling `events` of every push it accepts.
    pub fn with_events(mut self, events: Arc<Events>) -> Self {
        self.events = Some(events);
        self
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// Refuses a push that some frontend cannot carry (also used to check a whole
    /// batch before any of it is sent).
    pub fn check(&self, push: &Push) -> Result<(), Refused> {
        self.codecs.check(push).inspect_err(|r| {
            tracing::debug!(frontend = r.frontend, error = %r.message, "push refused");
        })
    }

    /// Hands the push to the bus. An error means nothing was delivered and the caller
    /// may retry; a returned id means the push was delivered as its report says.
    pub async fn send(&self, mut push: Push) -> Result<Accepted, SendError> {
        push.id = PushId::accepted_by(&self.node);
        // An acked push is followed by its report instead, as socket.io does.
        push.recoverable = self.recovery && push.ack.is_none();
        self.send_as_accepted(push).await
    }

    #[tracing::instrument(name = "push", skip_all, fields(id = %push.id, target = push.target.kind()))]
    async fn send_as_accepted(&self, push: Push) -> Result<Accepted, SendError> {
        self.check(&push)?;
        let cluster = self.bus.is_cluster();
        let ack_id = if cluster {
            // Reports may arrive before PUBLISH answers: the record must exist first.
            self.tracker
                .open(&push.id, push.ack.is_some(), &push.target)?;
            None
        } else {
            push.ack.map(|_| self.tracker.begin(&push.id)).transpose()?
        };
        let published = match self.bus.publish(&push, ack_id).await {
            Ok(p) => p,
            Err(e) => {
                self.tracker.abandon(&push.id);
                return Err(e.into());
            }
        };
        self.metrics
            .pushes
            .with_label_values(&[push.target.kind()])
            .inc();
        // Before the tracker hears of the fan-out, which may make the report final
        // (and emit it) at once.
        if let Some(events) = &self.events {
            events.emit(|| Event::Pushed {
                id: push.id.clone(),
                target: push.target.kind(),
                to: push.target.clone(),
                event: push.event.clone(),
                ack_timeout_ms: push.ack.map(|t| t.as_millis() as u64),
                report: match &published {
                    Published::Local(fan) => Some(fan.report()),
                    Published::Cluster { .. } => None,
                },
                nodes: match &published {
                    Published::Cluster { nodes, .. } => Some(*nodes),
                    Published::Local(_) => None,
                },
            });
        }
        let mut refused = Vec::new();
        match published {
            Published::Local(fan) => {
                tracing::debug!(sockets = fan.sockets, delivered = fan.delivered, "pushed");
                match push.ack {
                    Some(timeout) => self.tracker.delivered(&push.id, fan, timeout),
                    None => self.tracker.complete(&push.id, fan.report()),
                }
            }
            Published::Cluster {
                nodes,
                refused: not_sent,
            } => {
                tracing::debug!(nodes, refused = not_sent.len(), "published");
                refused = not_sent;
                let timeout = push.ack.unwrap_or(REPORT_TIMEOUT);
                self.tracker.expect(&push.id, nodes, timeout);
            }
        }
        let report = if push.wait {
            self.tracker.wait(&push.id).await
        } else {
            None
        };
        Ok(Accepted {
            id: push.id,
            report,
            refused,
        })
    }
}
