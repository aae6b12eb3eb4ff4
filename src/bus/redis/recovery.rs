//! Connection state recovery over Redis (see `crate::recovery` for the design).
//!
//! - Recording: a recoverable push is one script that, for each of its envelopes,
//!   XADDs it to the bounded stream `{p}:x` (MAXLEN, the stream's TTL the window) and
//!   PUBLISHes it: one step, so the stream's order is the order every subscriber got
//!   the pushes in.
//! - Restoring: the session is read (`{p}:x:p:{pid}`, or the registry entry of a
//!   socket whose node died before anyone removed it); the new socket is registered
//!   *held* and its subscriptions made; then one script finds the client's offset in
//!   the stream and PUBLISHes everything after it to this node's inbox as one *replay*
//!   message, and points the pid at the new socket. Pushes recorded before that
//!   script skip the held socket (they are in the replay); pushes recorded after it
//!   arrive after the replay on the same subscriber connection. So the client gets
//!   each missed push once, in order, then the live ones.

use super::*;
use crate::recovery::{self, Connect, Pids, Request, RestoreFuture, Restored, Saved, Store};

/// First byte of a replay message. Never the first byte of an envelope (a
/// MessagePack map), so the receive task tells them apart before decoding.
pub(super) const REPLAY_TAG: u8 = b'X';

/// Stream entries read per step while looking for an offset.
const SCAN: &str = "256";

/// KEYS[1] the stream; ARGV: MAXLEN, TTL in ms, the push id, then channel and
/// envelope pairs. Answers the PUBLISH counts, in order.
const RECORD: &str = r#"
local counts = {}
for i = 4, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'i', ARGV[3], 'e', ARGV[i + 1])
  counts[#counts + 1] = redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return counts
"#;

/// Walks the stream (KEYS[1]) back from its end to the entry of push ARGV[1]. The
/// shared part of [`FIND`] and [`REPLAY`]: sets `found` and `after` (the envelopes
/// after it, newest first).
const WALK: &str = r#"
local found = false
local after = {}
local last = '+'
while not found do
  local batch = redis.call('XREVRANGE', KEYS[1], last, '-', 'COUNT', ARGV[#ARGV])
  for _, e in ipairs(batch) do
    local f = e[2]
    local id, env
    for j = 1, #f, 2 do
      if f[j] == 'i' then id = f[j + 1] elseif f[j] == 'e' then env = f[j + 1] end
    end
    if id == ARGV[1] then found = true break end
    after[#after + 1] = env
  end
  if found or #batch < tonumber(ARGV[#ARGV]) then break end
  last = '(' .. batch[#batch][1]
end
"#;

/// Whether the stream (KEYS[1]) still holds push ARGV[1]. ARGV[2]: the scan step.
fn find_script() -> String {
    format!("{WALK}\nif found then return 1 end\nreturn 0")
}

/// KEYS[1] the stream, KEYS[2] the session's key; ARGV: the offset, this node's
/// inbox, the replay header (`<new sid>\n<lost sid>`), the new socket id, the scan
/// step. PUBLISHes the replay and points the session at the new socket; answers how
/// many envelopes it carried, or -1 when the offset is gone.
fn replay_script() -> String {
    format!(
        r#"{WALK}
if not found then return -1 end
local parts = {{'X', ARGV[3], '\n'}}
for k = #after, 1, -1 do
  parts[#parts + 1] = struct.pack('>I4', #after[k])
  parts[#parts + 1] = after[k]
end
redis.call('PUBLISH', ARGV[2], table.concat(parts))
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'sid', ARGV[4])
return #after"#
    )
}

/// A replay message: the new socket, the socket the session was lost as, and the
/// envelopes it missed, in order. `None` for bytes that are not one.
pub(super) fn parse_replay(bytes: &Bytes) -> Option<(SocketId, SocketId, Vec<Bytes>)> {
    let rest = bytes.strip_prefix(&[REPLAY_TAG])?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let new = std::str::from_utf8(&rest[..nl]).ok()?;
    let rest = &rest[nl + 1..];
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let lost = std::str::from_utf8(&rest[..nl]).ok()?;
    let start = bytes.len() - (rest.len() - nl - 1);
    let mut at = start;
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        out.push(bytes.slice(at..at.checked_add(len).filter(|&e| e <= bytes.len())?));
        at += len;
    }
    Some((SocketId::from(new), SocketId::from(lost), out))
}

/// Whether the stored pid is the one the client sent, compared in constant time.
fn same_secret(stored: Option<&String>, sent: &str) -> bool {
    stored.is_some_and(|s| bool::from(subtle::ConstantTimeEq::ct_eq(s.as_bytes(), sent.as_bytes())))
}

/// The recovery settings of a bus that keeps sessions.
pub(super) struct Keeping {
    pub settings: recovery::Settings,
}

impl RedisBus {
    /// Records recoverable pushes and keeps sessions (the registry's part too).
    pub fn keep_sessions(&self, settings: recovery::Settings, pids: Arc<Pids>) {
        self.registry.keep_sessions(crate::registry::Sessions {
            pids: pids.clone(),
            window: settings.window,
        });
        let _ = self.keeping.set(Keeping { settings });
    }

    /// The recovery store of this bus, for the frontends.
    pub fn recovery_store(self: &Arc<Self>) -> Option<Arc<dyn Store>> {
        self.keeping
            .get()
            .map(|_| Arc::new(RedisStore(self.clone())) as Arc<dyn Store>)
    }

    /// Records and publishes a recoverable push's envelopes in one script; answers
    /// the PUBLISH counts.
    pub(super) async fn record_and_publish(
        &self,
        push: &Push,
        envelopes: &[(String, Bytes)],
    ) -> FredResult<Vec<i64>> {
        let keeping = self.keeping.get().expect("recording needs settings");
        let stream = self.registry.keys().recovery_stream();
        let mut args: Vec<Value> = vec![
            Value::from(RECORD),
            Value::from(1_i64),
            Value::from(stream.as_str()),
            Value::from(keeping.settings.max_pushes as i64),
            Value::from(keeping.settings.window.as_millis() as i64),
            Value::from(push.id.as_str()),
        ];
        for (channel, bytes) in envelopes {
            args.push(Value::from(channel.as_str()));
            args.push(Value::Bytes(bytes.clone()));
        }
        let slot = fred::types::Key::from(stream.as_str()).cluster_hash();
        let command = fred::types::CustomCommand::new_static(
            "EVAL",
            fred::types::ClusterHash::Custom(slot),
            false,
        );
        let answer: Value = self.publisher.custom(command, args).await?;
        Ok(match answer {
            Value::Array(counts) => counts
                .into_iter()
                .map(|c| c.as_i64().unwrap_or(0))
                .collect(),
            _ => Vec::new(),
        })
    }

    /// A replay arrived on this node's inbox: queue it on the held socket.
    pub(super) fn on_replay(&self, bytes: &Bytes) {
        let Some((socket, lost, envelopes)) = parse_replay(bytes) else {
            self.metrics
                .bus_dropped
                .with_label_values(&["undecodable"])
                .inc();
            return;
        };
        let now = crate::id::now_ms();
        let missed: Vec<Push> = envelopes
            .iter()
            .filter_map(|b| match Envelope::decode(b) {
                Ok(Envelope {
                    m: Message::Push(p),
                    ..
                }) => p.into_push(now),
                _ => None,
            })
            .collect();
        match self.hub.release(&socket, &lost, &missed) {
            Some(n) => {
                self.metrics.recovery_replayed.inc_by(n as u64);
                tracing::debug!(socket = %socket, lost = %lost, missed = n, "recovered session replayed");
            }
            None => tracing::debug!(socket = %socket, "replay for a socket that is gone"),
        }
    }

    /// The session `request` names, if it may come back: a removed socket's kept
    /// entry, or the entry of a socket whose node is dead. Redis errors read as
    /// "not recoverable": the client gets a fresh session.
    ///
    /// A client often comes back before anyone noticed it left: its old node still
    /// holds the socket (the transport's loss is not seen yet), or the node died and
    /// its lease has not lapsed. Then the old node is asked to drop the socket (which
    /// keeps its session) and the lookup is repeated until the session is kept or the
    /// node's lease is gone, for at most a lease's lifetime and a scan.
    async fn find_session(&self, request: &Request) -> FredResult<Option<Saved>> {
        let keys = self.registry.keys();
        let deadline = Instant::now()
            + self.registry.lease_ttl()
            + self.registry.scan_interval()
            + Duration::from_secs(1);
        let mut asked = false;
        let (sid, mut map) = loop {
            let kept: HashMap<String, String> = self
                .publisher
                .hgetall(keys.recovery_session(&request.pid))
                .await?;
            if kept.contains_key("gone") {
                let sid = kept.get("sid").cloned().unwrap_or_default();
                break (SocketId::from(sid), kept);
            }
            // Alive somewhere, or its node died and nobody removed it yet.
            let sid = match kept.get("sid") {
                Some(sid) => SocketId::from(sid.as_str()),
                None => match recovery::pid_socket(&request.pid) {
                    Some(sid) => sid,
                    None => return Ok(None),
                },
            };
            let map: HashMap<String, String> =
                self.publisher.hgetall(keys.socket(sid.as_str())).await?;
            let node = map.get("node").cloned().unwrap_or_default();
            if node.is_empty() && !asked {
                return Ok(None);
            }
            if !node.is_empty() {
                if !same_secret(map.get("pid"), &request.pid) {
                    return Ok(None);
                }
                let leased: bool = self.publisher.exists(keys.lease(&node)).await?;
                if !leased && node != self.node.as_str() {
                    break (sid, map);
                }
                if !asked {
                    asked = true;
                    // Answered only by a live node; a dead one's lease lapses meanwhile.
                    if let Err(e) = self.kick(&node, vec![sid.clone()]).await {
                        tracing::debug!(node = %node, error = %e, "the old node did not answer; waiting for its lease");
                    }
                    continue;
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The pid is the secret: it must be the one this socket was given.
        if !same_secret(map.remove("pid").as_ref(), &request.pid) {
            return Ok(None);
        }
        let Some(entry) = crate::registry::entry(&sid, map) else {
            return Ok(None);
        };
        let saved = Saved {
            sid,
            user: entry.info.user,
            // Only Socket.IO has namespaces.
            namespace: (entry.info.frontend == crate::id::Frontend::SocketIo)
                .then_some(entry.info.namespace),
            rooms: entry.info.rooms,
        };
        if saved.user != request.user || saved.namespace != request.namespace {
            return Ok(None);
        }
        let (command, args) = crate::registry::eval_owned(
            find_script(),
            keys.recovery_stream(),
            [request.offset.clone(), SCAN.to_owned()],
        );
        let found: i64 = self.publisher.custom(command, args).await?;
        Ok((found == 1).then_some(saved))
    }

    async fn restore(self: Arc<Self>, request: Request, connect: Connect) {
        let saved = match self.find_session(&request).await {
            Ok(Some(saved)) => saved,
            Ok(None) => {
                connect(None);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "recovery lookup failed; a fresh session instead");
                self.metrics.recovery.with_label_values(&["error"]).inc();
                connect(None);
                return;
            }
        };
        let lost = saved.sid.clone();
        let Some(socket) = connect(Some(Restored {
            saved,
            pid: request.pid.clone(),
            missed: Vec::new(),
            held: true,
        })) else {
            return;
        };
        // Pushes to its user and rooms must reach it before the replay is cut.
        self.subscribed().await;
        let keys = self.registry.keys();
        let mut header = String::with_capacity(socket.as_str().len() + lost.as_str().len() + 1);
        header.push_str(socket.as_str());
        header.push('\n');
        header.push_str(lost.as_str());
        let (command, args) = crate::registry::eval_two(
            replay_script(),
            keys.recovery_stream(),
            keys.recovery_session(&request.pid),
            [
                request.offset.clone(),
                self.inbox(self.node.as_str()),
                header,
                socket.to_string(),
                SCAN.to_owned(),
            ],
        );
        match self.publisher.custom::<i64, _>(command, args).await {
            Ok(n) if n >= 0 => {
                tracing::info!(socket = %socket, lost = %lost, missed = n, "session recovered");
            }
            outcome => {
                // The offset left the stream since it was found, or Redis failed: the
                // socket lives on, told nothing more than it was.
                self.metrics.recovery.with_label_values(&["partial"]).inc();
                tracing::warn!(socket = %socket, ?outcome, "recovered session could not be replayed");
                self.hub.release(&socket, &lost, &[]);
            }
        }
    }
}

/// The Redis bus as the frontends' recovery store.
struct RedisStore(Arc<RedisBus>);

impl Store for RedisStore {
    fn settings(&self) -> recovery::Settings {
        self.0.keeping.get().expect("a store has settings").settings
    }

    fn restore(&self, request: Request, connect: Connect) -> RestoreFuture {
        Box::pin(self.0.clone().restore(request, connect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_message_parses_into_its_envelopes() {
        let mut b = b"Xn2.new\nn1.old\n".to_vec();
        for e in [&b"ab"[..], b"", b"cde"] {
            b.extend_from_slice(&(e.len() as u32).to_be_bytes());
            b.extend_from_slice(e);
        }
        let (new, lost, envs) = parse_replay(&Bytes::from(b.clone())).unwrap();
        assert_eq!((new.as_str(), lost.as_str()), ("n2.new", "n1.old"));
        assert_eq!(envs, vec![&b"ab"[..], b"", b"cde"]);
        b.pop();
        assert!(parse_replay(&Bytes::from(b)).is_none(), "truncated");
        assert!(parse_replay(&Bytes::from_static(b"\x82\xa1v")).is_none());
        assert!(parse_replay(&Bytes::from_static(b"Xonly-one-line")).is_none());
    }
}
