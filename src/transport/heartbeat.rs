//! Keeping a connection alive, for every frontend: either the server pings and waits
//! for the pong (Engine.IO v4), or the client beats and the server only watches the
//! silence (Phoenix), or the server pings only after a silence and anything the client
//! sends counts as its pong (Pusher). Pure timer arithmetic: the transports own the
//! timers, this decides what a deadline means.

use std::time::{Duration, Instant};

use crate::connection::CloseReason;

/// Who drives the heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The server pings every `interval` after the last pong (or the start) and
    /// closes the connection when `timeout` passes without the pong.
    ServerPings {
        interval: Duration,
        timeout: Duration,
    },
    /// The client sends something at least every `timeout`; silence longer than that
    /// closes the connection.
    ClientBeats { timeout: Duration },
    /// Any client message proves it alive. After `idle` without one the server pings,
    /// and closes the connection when `timeout` more passes without any message
    /// (Pusher: `activity_timeout`, then `pusher:ping`, then error 4201).
    IdlePings { idle: Duration, timeout: Duration },
}

/// What the heartbeat wants done when its deadline passes.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    Wait,
    /// Queue the frontend's ping.
    Ping,
    Close(CloseReason),
}

#[derive(Debug)]
pub struct Heartbeat {
    mode: Mode,
    next: Instant,
    awaiting_pong: bool,
    /// A connection that has not attached (a Socket.IO namespace) by then is closed.
    connect_deadline: Option<Instant>,
}

impl Heartbeat {
    /// A heartbeat whose first deadline is one interval (or timeout) after `start`.
    /// `connect_deadline`: when an unattached connection is closed.
    pub fn new(mode: Mode, start: Instant, connect_deadline: Option<Instant>) -> Self {
        let first = match mode {
            Mode::ServerPings { interval, .. } => interval,
            Mode::ClientBeats { timeout } => timeout,
            Mode::IdlePings { idle, .. } => idle,
        };
        Self {
            mode,
            next: start + first,
            awaiting_pong: false,
            connect_deadline,
        }
    }

    pub fn deadline(&self) -> Instant {
        match self.connect_deadline {
            Some(c) => c.min(self.next),
            None => self.next,
        }
    }

    /// The client answered a ping (server-driven) or sent anything (client-driven).
    pub fn on_pong(&mut self) {
        match self.mode {
            Mode::ServerPings { interval, .. } => {
                if self.awaiting_pong {
                    self.awaiting_pong = false;
                    self.next = Instant::now() + interval;
                }
            }
            Mode::ClientBeats { timeout } => self.next = Instant::now() + timeout,
            Mode::IdlePings { idle, .. } => {
                self.awaiting_pong = false;
                self.next = Instant::now() + idle;
            }
        }
    }

    /// The deadline passed (or the timer woke early). `attached`: whether the
    /// connection has attached, which ends the connect deadline.
    pub fn on_deadline(&mut self, attached: bool) -> Beat {
        let now = Instant::now();
        if let Some(c) = self.connect_deadline {
            if attached {
                self.connect_deadline = None;
            } else if now >= c {
                return Beat::Close(CloseReason::ConnectTimeout);
            }
        }
        if now < self.next {
            return Beat::Wait;
        }
        match self.mode {
            Mode::ClientBeats { .. } => Beat::Close(CloseReason::PingTimeout),
            Mode::ServerPings { timeout, .. } | Mode::IdlePings { timeout, .. } => {
                if self.awaiting_pong {
                    return Beat::Close(CloseReason::PingTimeout);
                }
                self.awaiting_pong = true;
                // The pong is due `timeout` after the ping was due, not after this
                // task happened to wake: timers fire late, and the client counts from
                // the ping.
                self.next += timeout;
                Beat::Ping
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_server_ping_unanswered_within_the_timeout_closes() {
        let start = Instant::now() - 100 * MS;
        let mode = Mode::ServerPings {
            interval: 50 * MS,
            timeout: 10 * MS,
        };
        let mut b = Heartbeat::new(mode, start, None);
        assert_eq!(b.on_deadline(true), Beat::Ping);
        assert_eq!(b.on_deadline(true), Beat::Close(CloseReason::PingTimeout));
    }

    #[test]
    fn a_pong_moves_the_next_ping_one_interval_on() {
        let start = Instant::now() - 100 * MS;
        let mode = Mode::ServerPings {
            interval: 50 * MS,
            timeout: 10 * MS,
        };
        let mut b = Heartbeat::new(mode, start, None);
        assert_eq!(b.on_deadline(true), Beat::Ping);
        b.on_pong();
        assert_eq!(b.on_deadline(true), Beat::Wait);
        assert!(b.deadline() > Instant::now() + 40 * MS);
    }

    #[test]
    fn a_silent_client_is_closed_after_its_timeout_and_any_message_resets_it() {
        let mode = Mode::ClientBeats { timeout: 30 * MS };
        let mut b = Heartbeat::new(mode, Instant::now(), None);
        assert_eq!(b.on_deadline(true), Beat::Wait);
        let mut late = Heartbeat::new(mode, Instant::now() - 40 * MS, None);
        assert_eq!(
            late.on_deadline(true),
            Beat::Close(CloseReason::PingTimeout)
        );
        late.on_pong();
        assert_eq!(late.on_deadline(true), Beat::Wait);
    }

    #[test]
    fn an_idle_client_is_pinged_and_any_message_answers_the_ping() {
        let mode = Mode::IdlePings {
            idle: 50 * MS,
            timeout: 10 * MS,
        };
        let mut fresh = Heartbeat::new(mode, Instant::now(), None);
        assert_eq!(fresh.on_deadline(true), Beat::Wait, "not idle yet");
        let mut b = Heartbeat::new(mode, Instant::now() - 100 * MS, None);
        assert_eq!(b.on_deadline(true), Beat::Ping);
        b.on_pong();
        assert_eq!(
            b.on_deadline(true),
            Beat::Wait,
            "a message answered the ping"
        );
        assert!(b.deadline() > Instant::now() + 40 * MS, "idle counts anew");
        let mut silent = Heartbeat::new(mode, Instant::now() - 100 * MS, None);
        assert_eq!(silent.on_deadline(true), Beat::Ping);
        assert_eq!(
            silent.on_deadline(true),
            Beat::Close(CloseReason::PingTimeout),
            "no message within the timeout after the ping"
        );
    }

    #[test]
    fn an_unattached_connection_is_closed_at_its_connect_deadline() {
        let mode = Mode::ClientBeats {
            timeout: Duration::from_secs(60),
        };
        let now = Instant::now();
        let mut b = Heartbeat::new(mode, now, Some(now - MS));
        assert_eq!(
            b.on_deadline(false),
            Beat::Close(CloseReason::ConnectTimeout)
        );
        let mut attached = Heartbeat::new(mode, now, Some(now - MS));
        assert_eq!(attached.on_deadline(true), Beat::Wait);
    }
}
