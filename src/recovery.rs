//! Connection state recovery: a client that lost its connection comes back, to any
//! node, within a window, and gets back its user and rooms and every push it missed,
//! in order and without duplicates (Socket.IO v4's `pid` and `offset`).
//!
//! - Every *recoverable* push (recovery on, no ack: an acked push is tracked by its
//!   report instead, as socket.io does) is recorded, in one total order, before or as
//!   it is delivered: in an in-process [`Ring`] on a single node, in one bounded Redis
//!   stream `{p}:x` in a cluster. Its *offset* is its push id, which the Socket.IO
//!   codec appends to the event as a last argument; the client keeps the last one.
//! - Recording and delivering are one step (the ring's lock; in Redis one script does
//!   XADD and PUBLISH), so the order of offsets is the order in which every socket
//!   got the pushes: "everything after the client's offset" is exactly what it missed.
//! - A session is named by its `pid`, a secret the client gets in its CONNECT answer
//!   and sends back: `<socket id>~<mac>`, where the mac (HMAC of the socket id under a
//!   key of the node) makes it unguessable from the public socket id. A restored
//!   socket gets a new socket id (its node's) and keeps its pid.
//! - What a lost session was (user, namespace, rooms) is kept in the ring on a single
//!   node; in a cluster it is the registry's socket entry, kept for the window under
//!   `{p}:x:p:{pid}` when the socket is removed (by its node, or by a survivor after
//!   the node died).
//!
//! This module is the vocabulary and the single node's store; the Redis side lives in
//! the bus (`bus/redis/recovery.rs`) and the registry.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

use crate::id::{RoomName, SocketId, Target, UserId};
use crate::push::Push;

/// Recent pushes kept by default (`PUSHGATE_RECOVERY_MAX_PUSHES`).
pub const DEFAULT_MAX_PUSHES: usize = 10_000;

/// Hex digits of a pid's mac: 128 bits.
const MAC_HEX: usize = 32;

/// Recovery settings: how long a session may be away, and how many recent pushes are
/// kept (whichever bound is reached first ends a session's chance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub window: Duration,
    pub max_pushes: usize,
}

/// A session that may come back: what its socket was when it was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The socket id it had: pushes addressed to it (or excepting it) are its.
    pub sid: SocketId,
    pub user: Option<UserId>,
    /// Its Socket.IO namespace; `None` for a frontend without namespaces (Phoenix),
    /// which gets pushes of every namespace.
    pub namespace: Option<String>,
    pub rooms: Vec<RoomName>,
}

impl Saved {
    /// Whether `push` would have reached this session's socket.
    pub fn is_reached_by(&self, push: &Push) -> bool {
        if self.namespace.as_deref().is_some_and(|n| n != push.scope())
            || push.except.contains(&self.sid)
        {
            return false;
        }
        match &push.target {
            Target::All => true,
            Target::User(u) => self.user.as_ref() == Some(u),
            Target::Users(us) => self.user.as_ref().is_some_and(|u| us.contains(u)),
            Target::Room(r) => self.rooms.contains(r),
            Target::Socket(s) => *s == self.sid,
        }
    }
}

/// What a client asks to get back.
#[derive(Debug, Clone)]
pub struct Request {
    pub pid: String,
    /// The offset (push id) of the last push it got.
    pub offset: String,
    /// The user its token names now: it must be the session's.
    pub user: Option<UserId>,
    /// The namespace it connects to (as [`Saved::namespace`]): it must be the
    /// session's.
    pub namespace: Option<String>,
}

/// A session given back: what it was, its pid, and (single node) the pushes it
/// missed, to be queued before anything else reaches the new socket.
#[derive(Debug)]
pub struct Restored {
    pub saved: Saved,
    pub pid: String,
    pub missed: Vec<Push>,
    /// In a cluster: the new socket must be registered *held* (recoverable pushes
    /// skip it) until the missed pushes reach it through the bus, in order.
    pub held: bool,
}

/// Registers the new socket: with `Some`, as the restored session; with `None`, as a
/// fresh one. Returns its socket id, or `None` when the connection went meanwhile.
pub type Connect = Box<dyn FnOnce(Option<Restored>) -> Option<SocketId> + Send>;

pub type RestoreFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where sessions and recent pushes are kept: the [`Ring`] on a single node, the
/// Redis bus in a cluster.
pub trait Store: Send + Sync {
    fn settings(&self) -> Settings;

    /// Gives `request`'s session back if it can (calling `connect` with it), else
    /// calls `connect(None)`; exactly one call either way.
    fn restore(&self, request: Request, connect: Connect) -> RestoreFuture;

    /// A socket was lost for a reason it may recover from (single node; in a cluster
    /// the registry keeps the session).
    fn lost(&self, _pid: &str, _saved: Saved) {}
}

/// What a frontend needs for recovery: where sessions are kept, and the pids.
#[derive(Clone)]
pub struct Recovery {
    pub store: std::sync::Arc<dyn Store>,
    pub pids: std::sync::Arc<Pids>,
}

/// Whether a connection that closed for `reason` may come back for its session. As
/// socket.io decides: a closed or failed transport (the client's own WebSocket close
/// included), no pong, the server shutting down. A client that broke the protocol,
/// overran a limit, did not read or was disconnected through the API starts afresh.
pub fn may_come_back(reason: crate::connection::CloseReason) -> bool {
    use crate::connection::CloseReason::*;
    matches!(
        reason,
        Client | TransportClose | TransportError | PingTimeout | Shutdown
    )
}

/// Makes pids (`<socket id>~<hex mac>`) and knows the pid of every socket of this
/// node: computed from its id, or kept for a restored socket, which keeps its
/// session's pid under a new id.
pub struct Pids {
    key: [u8; 32],
    restored: Mutex<HashMap<SocketId, String>>,
}

impl Default for Pids {
    fn default() -> Self {
        Self::new()
    }
}

impl Pids {
    /// A fresh random key: pids made by one node run are its own.
    pub fn new() -> Self {
        Self {
            key: rand::random(),
            restored: Mutex::default(),
        }
    }

    /// The pid of a socket of this node.
    pub fn pid_of(&self, sid: &SocketId) -> String {
        match self.restored.lock().get(sid) {
            Some(pid) => pid.clone(),
            None => self.of(sid),
        }
    }

    /// `sid` is a restored session's new socket, which keeps `pid`.
    pub fn restored(&self, sid: &SocketId, pid: &str) {
        self.restored.lock().insert(sid.clone(), pid.to_owned());
    }

    /// The socket is gone.
    pub fn forget(&self, sid: &SocketId) {
        let mut restored = self.restored.lock();
        if !restored.is_empty() {
            restored.remove(sid);
        }
    }

    /// The pid of a new socket.
    pub fn of(&self, sid: &SocketId) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(sid.as_str().as_bytes());
        let digest = hex::encode(mac.finalize().into_bytes());
        format!("{sid}~{}", &digest[..MAC_HEX])
    }
}

/// The socket id a pid was made for, when it has the shape of one.
pub fn pid_socket(pid: &str) -> Option<SocketId> {
    let (sid, mac) = pid.rsplit_once('~')?;
    (!sid.is_empty()
        && sid.len() <= 200
        && mac.len() == MAC_HEX
        && mac.bytes().all(|b| b.is_ascii_hexdigit()))
    .then(|| SocketId::from(sid))
}

/// A single node's store: recent recoverable pushes and lost sessions, in memory.
pub struct Ring {
    settings: Settings,
    inner: Mutex<RingInner>,
}

#[derive(Default)]
struct RingInner {
    pushes: VecDeque<(Instant, Push)>,
    sessions: HashMap<String, (Instant, Saved)>,
    /// Lost sessions in the order they were lost, to expire them.
    lost_order: VecDeque<(Instant, String)>,
}

impl Ring {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            inner: Mutex::default(),
        }
    }

    /// Records `push` and runs `deliver` under one lock, so that the order of the
    /// ring is the order in which sockets got the pushes.
    pub fn record<R>(&self, push: &Push, deliver: impl FnOnce() -> R) -> R {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        inner.pushes.push_back((now, push.clone()));
        while inner.pushes.len() > self.settings.max_pushes
            || inner
                .pushes
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > self.settings.window)
        {
            inner.pushes.pop_front();
        }
        deliver()
    }

    fn expire_sessions(&self, inner: &mut RingInner, now: Instant) {
        while let Some((at, _)) = inner.lost_order.front() {
            if now.duration_since(*at) <= self.settings.window {
                break;
            }
            let (at, pid) = inner.lost_order.pop_front().expect("front exists");
            if inner.sessions.get(&pid).is_some_and(|(t, _)| *t == at) {
                inner.sessions.remove(&pid);
            }
        }
    }

    /// How many lost sessions are kept (for tests and the gauge).
    pub fn sessions(&self) -> usize {
        self.inner.lock().sessions.len()
    }
}

impl Store for Ring {
    fn settings(&self) -> Settings {
        self.settings
    }

    fn restore(&self, request: Request, connect: Connect) -> RestoreFuture {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        self.expire_sessions(&mut inner, now);
        let found = match inner.sessions.get(&request.pid) {
            Some((_, saved))
                if saved.user == request.user && saved.namespace == request.namespace =>
            {
                inner
                    .pushes
                    .iter()
                    .rposition(|(_, p)| p.id.as_str() == request.offset)
                    .map(|at| (saved.clone(), at))
            }
            _ => None,
        };
        match found {
            Some((saved, at)) => {
                inner.sessions.remove(&request.pid);
                let missed = inner
                    .pushes
                    .iter()
                    .skip(at + 1)
                    .filter(|(_, p)| saved.is_reached_by(p))
                    .map(|(_, p)| p.clone())
                    .collect();
                // Under the lock: no push is recorded between the missed ones and the
                // new socket's registration.
                connect(Some(Restored {
                    saved,
                    pid: request.pid,
                    missed,
                    held: false,
                }));
            }
            None => {
                connect(None);
            }
        }
        Box::pin(std::future::ready(()))
    }

    fn lost(&self, pid: &str, saved: Saved) {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        self.expire_sessions(&mut inner, now);
        inner.sessions.insert(pid.to_owned(), (now, saved));
        inner.lost_order.push_back((now, pid.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Push;

    fn saved() -> Saved {
        Saved {
            sid: SocketId::from("n1.abc"),
            user: Some(UserId::from("alice")),
            namespace: Some("/".into()),
            rooms: vec![RoomName::from("r1")],
        }
    }

    fn push(target: Target, n: u32) -> Push {
        let mut p = Push::new(target, "e", Some(serde_json::json!(n)));
        p.id = crate::id::PushId::from(format!("p{n}"));
        p
    }

    #[test]
    fn a_session_is_reached_by_what_would_have_reached_its_socket() {
        let s = saved();
        assert!(s.is_reached_by(&push(Target::All, 1)));
        assert!(s.is_reached_by(&push(Target::User(UserId::from("alice")), 1)));
        assert!(!s.is_reached_by(&push(Target::User(UserId::from("bob")), 1)));
        assert!(s.is_reached_by(&push(
            Target::Users(vec![UserId::from("bob"), UserId::from("alice")]),
            1
        )));
        assert!(s.is_reached_by(&push(Target::Room(RoomName::from("r1")), 1)));
        assert!(!s.is_reached_by(&push(Target::Room(RoomName::from("r2")), 1)));
        assert!(s.is_reached_by(&push(Target::Socket(SocketId::from("n1.abc")), 1)));
        let mut except = push(Target::All, 1);
        except.except.insert(SocketId::from("n1.abc"));
        assert!(!s.is_reached_by(&except));
        let mut other_nsp = push(Target::All, 1);
        other_nsp.scope = Some("/admin".into());
        assert!(!s.is_reached_by(&other_nsp));
        let any = Saved {
            namespace: None,
            ..saved()
        };
        assert!(any.is_reached_by(&other_nsp), "no namespace: every push's");
    }

    #[test]
    fn pids_name_their_socket_and_cannot_be_made_without_the_key() {
        let pids = Pids::new();
        let sid = SocketId::from("n1.abc");
        let pid = pids.of(&sid);
        assert_eq!(pid_socket(&pid), Some(sid.clone()));
        assert_ne!(Pids::new().of(&sid), pid);
        let new = SocketId::from("n2.def");
        pids.restored(&new, &pid);
        assert_eq!(pids.pid_of(&new), pid);
        pids.forget(&new);
        assert_ne!(pids.pid_of(&new), pid);
        assert_eq!(pid_socket("n1.abc"), None);
        assert_eq!(pid_socket("n1.abc~zz"), None);
    }

    fn restore(ring: &Ring, pid: &str, offset: &str, user: &str) -> Option<Restored> {
        let out = std::sync::Arc::new(Mutex::new(None));
        let o = out.clone();
        // The ring restores before it returns; its future is already complete.
        drop(ring.restore(
            Request {
                pid: pid.into(),
                offset: offset.into(),
                user: Some(UserId::from(user)),
                namespace: Some("/".into()),
            },
            Box::new(move |r| {
                *o.lock() = r;
                Some(SocketId::from("n1.new"))
            }),
        ));
        let r = out.lock().take();
        r
    }

    #[test]
    fn the_ring_gives_back_what_came_after_the_offset_once() {
        let ring = Ring::new(Settings {
            window: Duration::from_secs(60),
            max_pushes: 100,
        });
        for n in 1..=5 {
            let target = if n == 3 {
                Target::Room(RoomName::from("r2"))
            } else {
                Target::All
            };
            ring.record(&push(target, n), || ());
        }
        ring.lost("pid1", saved());
        assert!(
            restore(&ring, "pid1", "p1", "bob").is_none(),
            "another user"
        );
        let r = restore(&ring, "pid1", "p1", "alice").expect("restored");
        let ids: Vec<&str> = r.missed.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["p2", "p4", "p5"]);
        assert_eq!(r.saved, saved());
        assert!(restore(&ring, "pid1", "p1", "alice").is_none(), "only once");
    }

    #[test]
    fn an_offset_the_ring_no_longer_holds_is_not_recovered() {
        let ring = Ring::new(Settings {
            window: Duration::from_secs(60),
            max_pushes: 2,
        });
        for n in 1..=3 {
            ring.record(&push(Target::All, n), || ());
        }
        ring.lost("pid1", saved());
        assert!(restore(&ring, "pid1", "p1", "alice").is_none());
        ring.lost("pid1", saved());
        assert_eq!(
            restore(&ring, "pid1", "p2", "alice").unwrap().missed.len(),
            1
        );
    }

    #[test]
    fn sessions_lost_longer_ago_than_the_window_are_gone() {
        let ring = Ring::new(Settings {
            window: Duration::from_millis(0),
            max_pushes: 10,
        });
        ring.record(&push(Target::All, 1), || ());
        ring.lost("pid1", saved());
        std::thread::sleep(Duration::from_millis(2));
        assert!(restore(&ring, "pid1", "p1", "alice").is_none());
        assert_eq!(ring.sessions(), 0);
    }
}
