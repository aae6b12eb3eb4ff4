//! The outbound side of one client connection: a bounded queue of encoded frames that
//! the fan-out fills and the connection's transport drains.
//!
//! The queue is bounded in frames and in bytes. When a push does not fit, the client
//! is not keeping up: the queue is cleared, marked closing with
//! [`CloseReason::SlowClient`], and the transport closes the connection. Publishers
//! never wait for a slow client.
//!
//! Why a `parking_lot::Mutex<VecDeque>` and not a channel: a tokio bounded channel
//! allocates its first block (32 slots, ~1.3 KiB here) when it is created, for every
//! connection, idle or not; a `VecDeque` allocates on first use. The lock is this
//! connection's own, held for a push or a drain (no await, no syscall inside), so
//! it is uncontended and costs one atomic swap like a lock-free queue would.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One encoded Engine.IO packet, ready to be written. Cloning shares the bytes, so a
/// push encoded once is cloned into every target connection's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text packet in wire form, e.g. `42["event",{...}]` or `2` (ping).
    Text(Utf8Bytes),
    /// A binary message (a Socket.IO attachment).
    Binary(Bytes),
}

impl Frame {
    pub fn text(s: impl Into<Utf8Bytes>) -> Self {
        Frame::Text(s.into())
    }

    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A frame with the instant its push was accepted, for the push-to-write histogram
/// (`None` for protocol frames such as pings and handshake replies).
#[derive(Debug, Clone)]
pub struct Queued {
    pub frame: Frame,
    pub pushed_at: Option<Instant>,
}

/// Why a connection ended; also the `reason` label of `pushgate_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the session (close packet, WebSocket close, all namespaces left).
    Client,
    /// The transport ended without a close (socket reset, EOF).
    TransportClose,
    /// Reading or writing the transport failed.
    TransportError,
    /// No pong within the ping timeout.
    PingTimeout,
    /// The session joined no namespace within the connect timeout.
    ConnectTimeout,
    /// The client sent something the protocol does not allow.
    ProtocolError,
    /// The client sent a message larger than the limit.
    TooLarge,
    /// The outbound queue was full: the client does not read fast enough.
    SlowClient,
    /// Disconnected through the HTTP API.
    Kicked,
    /// A limit refused what the connection asked for in a way that ends it (a Pusher
    /// sign-in past the user's connection limit).
    OverQuota,
    /// The node is shutting down.
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::TransportClose => "transport_close",
            CloseReason::TransportError => "transport_error",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TooLarge => "too_large",
            CloseReason::SlowClient => "slow_client",
            CloseReason::Kicked => "kicked",
            CloseReason::OverQuota => "over_quota",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The outcome of offering frames to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The frames did not fit: the connection is now closing as a slow client.
    Overflow,
    /// The connection is already closing.
    Closed,
}

struct Queue {
    frames: VecDeque<Queued>,
    bytes: usize,
    closing: Option<CloseReason>,
}

/// The bounded outbound queue of one connection.
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Wakes the transport: frames were queued or the connection is closing. There is
    /// one waiter at a time (the WebSocket task or the pending long-poll), and a
    /// notification with no waiter is kept for the next one.
    ready: Notify,
    capacity: u32,
    max_bytes: u32,
}

impl Outbox {
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                bytes: 0,
                closing: None,
            }),
            ready: Notify::new(),
            capacity: capacity.min(u32::MAX as usize) as u32,
            max_bytes: max_bytes.min(u32::MAX as usize) as u32,
        }
    }

    /// Queues a push's frames (an event and its attachments) all or nothing. When they
    /// do not fit, the connection starts closing as a slow client. `pushed_at` is when
    /// the push was accepted (`None` for other fan-outs, such as presence diffs, which
    /// the push-to-write histogram does not time).
    pub fn push(&self, frames: &[Frame], pushed_at: Option<Instant>) -> Enqueued {
        let size: usize = frames.iter().map(Frame::len).sum();
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return Enqueued::Closed;
        }
        if q.frames.len() + frames.len() > self.capacity as usize
            || q.bytes + size > self.max_bytes as usize
        {
            q.frames = VecDeque::new();
            q.bytes = 0;
            q.closing = Some(CloseReason::SlowClient);
            drop(q);
            self.ready.notify_one();
            return Enqueued::Overflow;
        }
        q.bytes += size;
        q.frames.extend(frames.iter().map(|frame| Queued {
            frame: frame.clone(),
            pushed_at,
        }));
        drop(q);
        self.ready.notify_one();
        Enqueued::Queued
    }

    /// Queues a protocol frame (ping, handshake reply, ack answer). These are small and
    /// part of keeping the session alive, so they are not refused for fullness; they
    /// are dropped once the connection is closing.
    pub fn push_control(&self, frame: Frame) {
        let mut q = self.queue.lock();
        if q.closing.is_some() {
            return;
        }
        q.bytes += frame.len();
        if q.frames.capacity() == 0 {
            // A connection's first frames are its handshake replies: allocate for
            // them exactly rather than VecDeque's minimum of four slots.
            q.frames.reserve_exact(1);
        }
        q.frames.push_back(Queued {
            frame,
            pushed_at: None,
        });
        drop(q);
        self.ready.notify_one();
    }

    /// Moves every queued frame into `out`, and says whether the connection is closing.
    /// The queue's buffer is released when it had grown large, so a burst does not pin
    /// memory on an idle connection.
    pub fn drain(&self, out: &mut Vec<Queued>) -> Option<CloseReason> {
        let mut q = self.queue.lock();
        if out.capacity() == 0 {
            out.reserve_exact(q.frames.len());
        }
        out.extend(q.frames.drain(..));
        q.bytes = 0;
        if q.frames.capacity() > 64 {
            q.frames = VecDeque::new();
        }
        q.closing
    }

    /// Releases the queue's buffer when it is empty. Called at heartbeat time, so an
    /// idle connection holds no queue memory while a busy one keeps its buffer
    /// between pushes (no allocation per delivery).
    pub fn trim(&self) {
        let mut q = self.queue.lock();
        if q.frames.is_empty() && q.frames.capacity() > 0 {
            q.frames = VecDeque::new();
        }
    }

    /// Whether anything is queued (used while draining before shutdown).
    pub fn is_empty(&self) -> bool {
        self.queue.lock().frames.is_empty()
    }

    /// Marks the connection closing (first reason wins) and wakes the transport.
    /// Frames already queued stay, so a close can follow a last message.
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut q = self.queue.lock();
        let first = q.closing.is_none();
        if first {
            q.closing = Some(reason);
        }
        drop(q);
        self.ready.notify_one();
        first
    }

    pub fn closing(&self) -> Option<CloseReason> {
        self.queue.lock().closing
    }

    /// Wakes a waiter without queuing anything (used for transport changes).
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Resolves when frames were queued or the connection started closing since the
    /// last wait.
    pub fn ready(&self) -> tokio::sync::futures::Notified<'_> {
        self.ready.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame::text(s.to_owned())
    }

    #[test]
    fn frames_drain_in_order() {
        let outbox = Outbox::new(8, 1024);
        let now = Instant::now();
        assert_eq!(outbox.push(&[text("a")], Some(now)), Enqueued::Queued);
        assert_eq!(
            outbox.push(
                &[text("b"), Frame::Binary(Bytes::from_static(b"x"))],
                Some(now)
            ),
            Enqueued::Queued
        );
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), None);
        let frames: Vec<_> = out.into_iter().map(|q| q.frame).collect();
        assert_eq!(
            frames,
            vec![
                text("a"),
                text("b"),
                Frame::Binary(Bytes::from_static(b"x"))
            ]
        );
    }

    #[test]
    fn overflow_by_count_closes_as_slow_client_and_drops_the_backlog() {
        let outbox = Outbox::new(2, 1024);
        let now = Instant::now();
        assert_eq!(outbox.push(&[text("1")], Some(now)), Enqueued::Queued);
        assert_eq!(outbox.push(&[text("2")], Some(now)), Enqueued::Queued);
        assert_eq!(outbox.push(&[text("3")], Some(now)), Enqueued::Overflow);
        assert_eq!(outbox.push(&[text("4")], Some(now)), Enqueued::Closed);
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), Some(CloseReason::SlowClient));
        assert!(out.is_empty());
    }

    #[test]
    fn overflow_by_bytes_counts_every_frame_of_a_push() {
        let outbox = Outbox::new(100, 10);
        let now = Instant::now();
        assert_eq!(outbox.push(&[text("12345")], Some(now)), Enqueued::Queued);
        assert_eq!(
            outbox.push(&[text("123"), text("456")], Some(now)),
            Enqueued::Overflow
        );
    }

    #[test]
    fn close_keeps_queued_frames_and_first_reason_wins() {
        let outbox = Outbox::new(4, 100);
        outbox.push_control(text("41"));
        assert!(outbox.close(CloseReason::Kicked));
        assert!(!outbox.close(CloseReason::Shutdown));
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), Some(CloseReason::Kicked));
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_transport() {
        let outbox = std::sync::Arc::new(Outbox::new(4, 100));
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.ready().await }
        });
        tokio::task::yield_now().await;
        outbox.push(&[text("x")], Some(Instant::now()));
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
