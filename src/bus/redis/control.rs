//! Control requests between nodes: kick, join and leave sockets of another node (the
//! answers tell the caller how many sockets changed), and the report of a push another
//! node accepted.

use super::*;
use crate::delivery::{Report, State};

/// What a node answers to a control request.
pub(super) enum Answer {
    /// How a kick, join or leave went.
    Count(Counted),
    /// The report of a push, `None` when the node does not know it.
    Report(Option<(State, Report)>),
}

/// How many sockets a kick, join or leave applied to.
#[derive(Debug, Default)]
pub(super) struct Counted {
    /// Sockets it applied to.
    pub n: u32,
    /// Sockets a limit kept out of a room (joins only).
    pub refused: Vec<String>,
}

/// What a room change on another node did.
#[derive(Debug, Default)]
pub struct RoomChange {
    /// Sockets that joined (or left).
    pub changed: u32,
    /// Sockets already in as many rooms as they may be, which did not join.
    pub refused: Vec<SocketId>,
}

impl RedisBus {
    /// Sends a control message to `node` and waits for its answer: how many sockets it
    /// applied to (0 when the node is gone or did not answer in time).
    pub(super) async fn request(
        &self,
        node: &str,
        make: impl FnOnce(Request) -> Message,
    ) -> Result<Counted, BusError> {
        Ok(match self.ask(node, make).await? {
            Some(Answer::Count(c)) => c,
            _ => Counted::default(),
        })
    }

    /// The pending or final report of a push that `node` accepted, from that node;
    /// `None` when it does not know the push or did not answer in time.
    pub async fn report_of(
        &self,
        node: &str,
        push: &PushId,
    ) -> Result<Option<(State, Report)>, BusError> {
        let push = push.to_string();
        Ok(
            match self
                .ask(node, |request| Message::ReportOf { request, push })
                .await?
            {
                Some(Answer::Report(r)) => r,
                _ => None,
            },
        )
    }

    /// Sends a control message to `node` and waits for its answer (`None` when the
    /// node is gone or did not answer within [`REQUEST_TIMEOUT`]).
    async fn ask(
        &self,
        node: &str,
        make: impl FnOnce(Request) -> Message,
    ) -> Result<Option<Answer>, BusError> {
        if !self.is_up() {
            return Err(Self::unavailable());
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.requests.lock().insert(id, tx);
        let message = make(Request {
            id,
            from: self.node.to_string(),
        });
        let sent: Result<i64, _> = self
            .publish_on(
                &self.publisher,
                self.inbox(node),
                Envelope::new(message).encode(),
            )
            .await;
        let answer = match sent {
            Ok(0) => Ok(None),
            Ok(_) => Ok(tokio::time::timeout(REQUEST_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)),
            Err(e) => Err(BusError::Redis(e)),
        };
        self.requests.lock().remove(&id);
        self.metrics
            .bus_messages
            .with_label_values(&["out", "inbox"])
            .inc();
        answer
    }

    /// Disconnects sockets of `node`; returns how many it found.
    pub async fn kick(&self, node: &str, sockets: Vec<SocketId>) -> Result<u32, BusError> {
        let sockets = sockets.into_iter().map(|s| s.to_string()).collect();
        self.request(node, |request| Message::Kick { request, sockets })
            .await
            .map(|a| a.n)
    }

    /// Adds (`join`) or removes sockets of `node` to or from `room`; returns how many
    /// changed and which could not join.
    pub async fn change_room(
        &self,
        node: &str,
        room: &RoomName,
        sockets: Vec<SocketId>,
        join: bool,
    ) -> Result<RoomChange, BusError> {
        let sockets = sockets.into_iter().map(|s| s.to_string()).collect();
        let room = room.to_string();
        self.request(node, |request| {
            if join {
                Message::Join {
                    request,
                    room,
                    sockets,
                }
            } else {
                Message::Leave {
                    request,
                    room,
                    sockets,
                }
            }
        })
        .await
        .map(|a| RoomChange {
            changed: a.n,
            refused: a.refused.into_iter().map(SocketId::from).collect(),
        })
    }

    pub(super) fn rooms(&self, request: Request, room: String, sockets: Vec<String>, join: bool) {
        let room = RoomName::from(room);
        let mut n = 0u32;
        let mut refused = Vec::new();
        for sid in sockets {
            let socket = SocketId::from(sid.as_str());
            let changed = if join {
                match self.hub.try_join(&socket, &room) {
                    crate::hub::Join::Joined => true,
                    crate::hub::Join::Full { .. } => {
                        refused.push(sid);
                        false
                    }
                    _ => false,
                }
            } else {
                self.hub.leave(&socket, &room)
            };
            n += u32::from(changed);
        }
        // Answer once the subscription for the room is in place, so that a push the
        // caller sends after the answer reaches the sockets.
        let (tx, rx) = oneshot::channel();
        let _ = self.notes.send(Note::Barrier(Barrier::Subscribed, tx));
        let outbox = self.outbox.clone();
        let to = self.inbox(&request.from);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
            let _ = outbox.send((
                to,
                Envelope::new(Message::Done {
                    request: request.id,
                    n,
                    refused,
                })
                .encode(),
            ));
        });
    }
}
