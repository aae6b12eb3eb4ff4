//! Limits: how much one node admits, and the bookkeeping behind each limit.
//!
//! Every limit is a number in [`Settings`] (from `config`), a [`Limit`] name (the
//! `limit` label of `pushgate_limit_refusals_total` and of the refusal a client or
//! caller sees) and a check here. The checks are plain counters and token buckets:
//! no I/O, no HTTP, no protocol. Frontends and the API turn a [`Refused`] into their
//! protocol's answer (an Engine.IO handshake error, a Phoenix 403, a Pusher 4004 or
//! 4100, an HTTP 429 or 503); this module never knows which.
//!
//! What is counted, and where it is released:
//! - connections per node and per address: an [`Admission`], taken before a client
//!   connection exists (the Engine.IO handshake, the Phoenix upgrade or long-poll
//!   session, the Pusher upgrade) and held by the connection; dropping it gives the
//!   counts back, so a connection that ends however it ends releases them;
//! - connections not yet authenticated: the same admission while it is *pending*
//!   (an Engine.IO session that has not connected a namespace);
//! - connections per user: a [`UserSlot`], held by the socket that has the user;
//! - pending ack-tracked pushes: an [`AckSlot`], held by the tracker's record until
//!   its report is final;
//! - connect rate per address and API requests per caller: token buckets in bounded
//!   tables ([`Buckets`]): a flood from many (spoofed) addresses evicts the stalest
//!   entries instead of growing memory.
//!
//! An address is an IPv4 address or an IPv6 /64 ([`Address`]): one IPv6 host usually
//! owns a whole /64, so counting single IPv6 addresses would let it pick a new one for
//! every connection.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{IntCounter, IntGauge};

use crate::id::{Frontend, UserId};
use crate::metrics::Metrics;

/// Connections one node holds at most. This host class (2 cores, 24 GiB) must hold
/// 100,000+ load-tool connections; idle connections cost 4–14 KiB of RSS each
/// (BENCHMARKS.md), so 200,000 stays well inside memory while a flood cannot take the
/// process to the kernel's limits.
pub const DEFAULT_MAX_CONNECTIONS: usize = 200_000;
/// Connections from one address (an IPv4 address or an IPv6 /64). Carrier-grade NAT
/// and office networks put hundreds of real users behind one address; one machine
/// should not take a node's capacity.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;
/// Connections of one user on one node: many tabs and devices, not a runaway loop.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 100;
/// Connections that have not authenticated yet (Engine.IO sessions without a
/// namespace), per node. A real client authenticates within a round trip, so these
/// are few; many are a flood of handshakes.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// New connections per second from one address, with a burst: a page load opens one
/// or two; a NAT'd office reconnecting after a node restart opens its burst at once
/// and the rest back off (every client library here retries with backoff), all back
/// within seconds. A handshake flood from one address is held to 50 a second, a few
/// milliseconds of CPU.
pub const DEFAULT_CONNECT_RATE_PER_IP: u32 = 50;
pub const DEFAULT_CONNECT_BURST_PER_IP: u32 = 500;
/// Rooms one connection may be in, however it joined them (token, client, API).
/// Enough for any real page, few enough that one client cannot grow the hub's
/// indexes without bound.
pub const DEFAULT_MAX_ROOMS_PER_CONNECTION: usize = 1_000;
/// Users one push may name (`{"users": [...]}`); a push is one PUBLISH per user.
pub const DEFAULT_MAX_PUSH_TARGETS: usize = 1_000;
/// Pushes in one `POST /v1/push/batch`; a batch of 1000 small pushes fits the default
/// body limit.
pub const DEFAULT_MAX_BATCH: usize = 1_000;
/// HTTP API requests per second per key (per address without keys), with a burst.
/// Well above what the load tool sends (2,500 pushes/s), far below what would starve
/// the node's other callers.
pub const DEFAULT_API_RATE: u32 = 5_000;
pub const DEFAULT_API_BURST: u32 = 5_000;
/// Ack-tracked pushes whose report is not final yet, per node. Each holds the set of
/// sockets it waits for until its acks come or its timeout passes.
pub const DEFAULT_MAX_PENDING_ACKS: usize = 10_000;
/// Addresses remembered by each token-bucket table (about 100 bytes each). Beyond
/// this the stalest entries are forgotten, so a flood from many addresses costs a
/// bounded amount of memory.
pub const DEFAULT_ADDRESS_TABLE_SIZE: usize = 100_000;

/// A token bucket's rate: `per_second` tokens come back every second, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// The limits of one node; `None` is no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_connections_per_user: Option<usize>,
    pub max_pending: Option<usize>,
    pub connect_rate: Option<Rate>,
    pub max_rooms: Option<usize>,
    pub max_push_targets: usize,
    pub max_batch: usize,
    pub api_rate: Option<Rate>,
    pub max_pending_acks: Option<usize>,
    /// Entries of each per-address token-bucket table.
    pub address_table: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_connections: Some(DEFAULT_MAX_CONNECTIONS),
            max_connections_per_ip: Some(DEFAULT_MAX_CONNECTIONS_PER_IP),
            max_connections_per_user: Some(DEFAULT_MAX_CONNECTIONS_PER_USER),
            max_pending: Some(DEFAULT_MAX_PENDING),
            connect_rate: Some(Rate {
                per_second: DEFAULT_CONNECT_RATE_PER_IP,
                burst: DEFAULT_CONNECT_BURST_PER_IP,
            }),
            max_rooms: Some(DEFAULT_MAX_ROOMS_PER_CONNECTION),
            max_push_targets: DEFAULT_MAX_PUSH_TARGETS,
            max_batch: DEFAULT_MAX_BATCH,
            api_rate: Some(Rate {
                per_second: DEFAULT_API_RATE,
                burst: DEFAULT_API_BURST,
            }),
            max_pending_acks: Some(DEFAULT_MAX_PENDING_ACKS),
            address_table: DEFAULT_ADDRESS_TABLE_SIZE,
        }
    }
}

impl Settings {
    /// No limit at all (the push and batch sizes keep their defaults): for tools and
    /// tests that are not about limits.
    pub fn unlimited() -> Self {
        Self {
            max_connections: None,
            max_connections_per_ip: None,
            max_connections_per_user: None,
            max_pending: None,
            connect_rate: None,
            max_rooms: None,
            api_rate: None,
            max_pending_acks: None,
            ..Self::default()
        }
    }
}

/// The name of a limit: the `limit` label of its metrics and the code of its refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Connections on this node.
    Connections,
    /// Connections from one address.
    IpConnections,
    /// Connections of one user on this node.
    UserConnections,
    /// Connections not yet authenticated on this node.
    Pending,
    /// New connections per second from one address.
    ConnectRate,
    /// Rooms of one connection.
    Rooms,
    /// Users named by one push.
    PushTargets,
    /// Pushes in one batch.
    Batch,
    /// API requests per second of one key (or address).
    ApiRate,
    /// Ack-tracked pushes pending on this node.
    PendingAcks,
}

impl Limit {
    pub const ALL: [Limit; 10] = [
        Limit::Connections,
        Limit::IpConnections,
        Limit::UserConnections,
        Limit::Pending,
        Limit::ConnectRate,
        Limit::Rooms,
        Limit::PushTargets,
        Limit::Batch,
        Limit::ApiRate,
        Limit::PendingAcks,
    ];

    /// The `limit` label, and the machine-readable code of a refusal.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "node_connections",
            Limit::IpConnections => "ip_connections",
            Limit::UserConnections => "user_connections",
            Limit::Pending => "pending_connections",
            Limit::ConnectRate => "connect_rate",
            Limit::Rooms => "rooms",
            Limit::PushTargets => "push_targets",
            Limit::Batch => "batch_size",
            Limit::ApiRate => "api_rate",
            Limit::PendingAcks => "pending_acks",
        }
    }

    /// Whether waiting helps: the node is full or the caller is too fast, rather than
    /// the caller asking for more than it may ever have.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Limit::Connections
                | Limit::Pending
                | Limit::ConnectRate
                | Limit::ApiRate
                | Limit::PendingAcks
        )
    }
}

/// A limit said no. Its message is written for the client or caller that sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused {
    pub limit: Limit,
    /// The limit's value (for a rate: tokens per second).
    pub max: u64,
    /// When trying again can succeed (rates; a rough hint for full nodes).
    pub retry_after: Option<Duration>,
}

impl Refused {
    fn new(limit: Limit, max: impl TryInto<u64>) -> Self {
        Self {
            limit,
            max: max.try_into().unwrap_or(u64::MAX),
            retry_after: limit.is_transient().then_some(Duration::from_secs(1)),
        }
    }

    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .map(|s| s.max(1))
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = self.max;
        match self.limit {
            Limit::Connections => write!(
                f,
                "this node holds its maximum of {max} connections; retry later"
            ),
            Limit::IpConnections => write!(
                f,
                "too many connections from this address (at most {max})"
            ),
            Limit::UserConnections => write!(
                f,
                "too many connections for this user on this node (at most {max})"
            ),
            Limit::Pending => write!(
                f,
                "too many connections waiting to authenticate on this node (at most {max}); retry later"
            ),
            Limit::ConnectRate => write!(
                f,
                "connecting too often from this address (at most {max} per second); retry later"
            ),
            Limit::Rooms => write!(f, "at most {max} rooms per connection"),
            Limit::PushTargets => write!(f, "at most {max} users per push"),
            Limit::Batch => write!(f, "at most {max} pushes per batch"),
            Limit::ApiRate => write!(
                f,
                "too many requests for this API key (at most {max} per second); retry later"
            ),
            Limit::PendingAcks => write!(
                f,
                "{max} ack-tracked pushes are pending on this node; retry when some reports are final"
            ),
        }
    }
}

/// The address a limit counts: an IPv4 address, or the /64 of an IPv6 address. An
/// IPv4-mapped IPv6 address is its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address([u64; 2]);

impl From<IpAddr> for Address {
    fn from(ip: IpAddr) -> Self {
        let v6 = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_ipv6_mapped(),
                None => {
                    let prefix = u128::from(v6) >> 64 << 64;
                    Ipv6Addr::from(prefix)
                }
            },
        };
        let n = u128::from(v6);
        Address([(n >> 64) as u64, n as u64])
    }
}

/// A list of networks (`10.0.0.0/8`, `::1`, `192.168.1.7`), e.g. the proxies whose
/// `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(Vec<(IpAddr, u8)>);

impl Networks {
    /// Parses a comma-separated list of addresses and CIDR networks.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (ip, bits) = match item.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (item, None),
            };
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("{item:?} is not an IP address or CIDR network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => match b.parse::<u8>() {
                    Ok(b) if b <= max => b,
                    _ => return Err(format!("{item:?}: the prefix length must be 0 to {max}")),
                },
            };
            // `contains` reads an IPv4-mapped address as its IPv4 one, so a mapped entry
            // is kept as its IPv4 network; as an IPv6 one it would match nothing.
            let (ip, bits) = match ip {
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) if bits >= 96 => (IpAddr::V4(v4), bits - 96),
                    Some(_) => {
                        return Err(format!(
                            "{item:?}: an IPv4-mapped network must be /96 or longer"
                        ))
                    }
                    None => (ip, bits),
                },
                v4 => (v4, bits),
            };
            nets.push((ip, bits));
        }
        Ok(Self(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the networks (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(u32::from(*n), u32::from(a), *bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(u128::from(*n), u128::from(a), *bits),
            _ => false,
        })
    }
}

fn prefix_eq<T>(a: T, b: T, bits: u8) -> bool
where
    T: std::ops::BitXor<Output = T> + std::ops::Shr<u32, Output = T> + PartialEq + From<u8>,
{
    let width = (std::mem::size_of::<T>() * 8) as u32;
    let bits = u32::from(bits);
    bits == 0 || (a ^ b) >> (width - bits) == T::from(0)
}

/// The loopback addresses, for messages that must say whether a caller is local.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The IPv4 unspecified address, for callers with no address (never counted).
pub const NO_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// A token bucket: `take` spends one token; tokens come back at the rate, up to the
/// burst. Pure arithmetic over the instants it is given.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * f64::from(rate.per_second)).min(f64::from(rate.burst));
        self.at = now.max(self.at);
    }

    /// Spends a token, or says how long until one is back.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if rate.per_second == 0 {
            return Err(Duration::from_secs(1));
        }
        Err(Duration::from_secs_f64(
            (1.0 - self.tokens) / f64::from(rate.per_second),
        ))
    }

    /// Whether the bucket has refilled completely: forgetting it changes nothing.
    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= f64::from(rate.burst)
    }
}

/// Shards of the bounded tables: enough that two cores rarely meet on one lock.
const SHARDS: usize = 16;

/// Token buckets by key, at most `capacity` of them. When a shard is full, buckets
/// that refilled completely are dropped first (they are as good as new ones); if it
/// is still full, the least recently used quarter of the shard is forgotten (counted
/// in `evictions`), which costs those keys their debt but never memory.
pub struct Buckets<K> {
    shards: Box<[Mutex<HashMap<K, Bucket>>]>,
    per_shard: usize,
    hasher: RandomState,
    rate: Rate,
    entries: IntGauge,
    evictions: IntCounter,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(rate: Rate, capacity: usize, entries: IntGauge, evictions: IntCounter) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            rate,
            entries,
            evictions,
        }
    }

    /// Spends one of `key`'s tokens, or says how long until one is back.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        // Per-shard lock held for a map lookup (and, rarely, a sweep); never awaited.
        let mut map = shard.lock();
        if let Some(b) = map.get_mut(key) {
            return b.take(self.rate, now);
        }
        if map.len() >= self.per_shard {
            self.make_room(&mut map, now);
        }
        let mut bucket = Bucket::full(self.rate, now);
        let taken = bucket.take(self.rate, now);
        map.insert(key.clone(), bucket);
        self.entries.inc();
        taken
    }

    fn make_room(&self, map: &mut HashMap<K, Bucket>, now: Instant) {
        let before = map.len();
        map.retain(|_, b| !b.is_full(self.rate, now));
        if map.len() >= self.per_shard {
            let mut ages: Vec<Instant> = map.values().map(|b| b.at).collect();
            let quarter = (ages.len() / 4).max(1);
            let (_, cut, _) = ages.select_nth_unstable(quarter - 1);
            let cut = *cut;
            let mut left = quarter;
            let kept_before = map.len();
            map.retain(|_, b| {
                if left > 0 && b.at <= cut {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
            self.evictions.inc_by((kept_before - map.len()) as u64);
        }
        self.entries.sub((before - map.len()) as i64);
    }

    /// Entries held (for tests; the gauge says the same).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts by key with a maximum per key. An entry exists only while its count is
/// above 0, so the table is bounded by what it counts (open connections).
struct Counts<K> {
    shards: Box<[Mutex<HashMap<K, u32>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, u32>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Adds one unless `key` holds `max` already.
    fn try_add(&self, key: &K, max: usize) -> bool {
        let mut map = self.shard(key).lock();
        let n = map.entry(key.clone()).or_insert(0);
        if *n as usize >= max {
            if *n == 0 {
                map.remove(key);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn remove(&self, key: &K) {
        let mut map = self.shard(key).lock();
        if let Some(n) = map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }

    #[cfg(test)]
    fn get(&self, key: &K) -> u32 {
        self.shard(key).lock().get(key).copied().unwrap_or(0)
    }
}

/// A bounded count (connections on the node, pending connections, pending acked
/// pushes), mirrored in a gauge.
struct Slots {
    used: AtomicUsize,
    max: Option<usize>,
    gauge: Option<IntGauge>,
}

impl Slots {
    fn new(max: Option<usize>, gauge: Option<IntGauge>) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
            gauge,
        }
    }

    fn try_take(&self) -> bool {
        let taken = match self.max {
            None => {
                self.used.fetch_add(1, Ordering::AcqRel);
                true
            }
            Some(max) => self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        };
        if taken {
            if let Some(g) = &self.gauge {
                g.inc();
            }
        }
        taken
    }

    fn give(&self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }

    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Who is calling the HTTP API, for its request rate: a configured key (by index), a
/// Pusher app (by index), or an address (no keys configured, or no valid key given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    Key(usize),
    App(usize),
    Address(Address),
}

/// The limits of one node and their counts.
pub struct Limits {
    settings: Settings,
    connections: Slots,
    pending: Slots,
    pending_acks: Slots,
    by_address: Counts<Address>,
    by_user: Counts<UserId>,
    connect_rate: Option<Buckets<Address>>,
    api_rate: Option<Buckets<Caller>>,
    metrics: Arc<Metrics>,
}

impl Limits {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Arc<Self> {
        let table = |name: &str| {
            (
                metrics.limit_addresses.with_label_values(&[name]),
                metrics.limit_address_evictions.with_label_values(&[name]),
            )
        };
        let connect_rate = settings.connect_rate.map(|rate| {
            let (entries, evictions) = table("connect_rate");
            Buckets::new(rate, settings.address_table, entries, evictions)
        });
        let api_rate = settings.api_rate.map(|rate| {
            let (entries, evictions) = table("api_rate");
            Buckets::new(rate, settings.address_table, entries, evictions)
        });
        for limit in Limit::ALL {
            let value = match limit {
                Limit::Connections => settings.max_connections,
                Limit::IpConnections => settings.max_connections_per_ip,
                Limit::UserConnections => settings.max_connections_per_user,
                Limit::Pending => settings.max_pending,
                Limit::ConnectRate => settings.connect_rate.map(|r| r.per_second as usize),
                Limit::Rooms => settings.max_rooms,
                Limit::PushTargets => Some(settings.max_push_targets),
                Limit::Batch => Some(settings.max_batch),
                Limit::ApiRate => settings.api_rate.map(|r| r.per_second as usize),
                Limit::PendingAcks => settings.max_pending_acks,
            };
            metrics
                .limit
                .with_label_values(&[limit.as_str()])
                .set(value.unwrap_or(0) as i64);
            // Refusals of every limit exist from the first scrape, at 0.
            metrics.limit_refusals.with_label_values(&[limit.as_str()]);
        }
        Arc::new(Self {
            connections: Slots::new(settings.max_connections, None),
            pending: Slots::new(
                settings.max_pending,
                Some(metrics.pending_connections.clone()),
            ),
            pending_acks: Slots::new(
                settings.max_pending_acks,
                Some(metrics.pending_acked_pushes.clone()),
            ),
            by_address: Counts::new(),
            by_user: Counts::new(),
            connect_rate,
            api_rate,
            settings,
            metrics,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counts a refusal (and, for a connection attempt, its frontend's connect error)
    /// and returns it.
    pub fn refused(&self, refused: Refused, frontend: Option<Frontend>) -> Refused {
        let limit = refused.limit.as_str();
        self.metrics
            .limit_refusals
            .with_label_values(&[limit])
            .inc();
        if let Some(f) = frontend {
            self.metrics
                .connect_errors
                .with_label_values(&[f.as_str(), limit])
                .inc();
        }
        tracing::debug!(limit, frontend = ?frontend.map(Frontend::as_str), "refused by a limit");
        refused
    }

    /// A new connection from `ip` asks to be admitted: its address's connect rate,
    /// the node's connections, its address's connections and, for a connection that
    /// still has to authenticate (`pending`), the pending connections. The attempt
    /// spends a token of the rate whether it is admitted or not.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        frontend: Frontend,
        pending: bool,
        now: Instant,
    ) -> Result<Admission, Refused> {
        let address = Address::from(ip);
        let s = &self.settings;
        if let (Some(buckets), Some(rate)) = (&self.connect_rate, s.connect_rate) {
            if let Err(wait) = buckets.take(&address, now) {
                let mut r = Refused::new(Limit::ConnectRate, rate.per_second);
                r.retry_after = Some(wait);
                return Err(self.refused(r, Some(frontend)));
            }
        }
        if !self.connections.try_take() {
            let r = Refused::new(Limit::Connections, s.max_connections.unwrap_or(0));
            return Err(self.refused(r, Some(frontend)));
        }
        if let Some(max) = s.max_connections_per_ip {
            if !self.by_address.try_add(&address, max) {
                self.connections.give();
                return Err(self.refused(Refused::new(Limit::IpConnections, max), Some(frontend)));
            }
        }
        if pending && !self.pending.try_take() {
            self.connections.give();
            if s.max_connections_per_ip.is_some() {
                self.by_address.remove(&address);
            }
            let r = Refused::new(Limit::Pending, s.max_pending.unwrap_or(0));
            return Err(self.refused(r, Some(frontend)));
        }
        Ok(Admission {
            limits: self.clone(),
            address,
            pending: AtomicBool::new(pending),
            released: AtomicBool::new(false),
        })
    }

    /// One more connection of `user` on this node.
    pub fn user(self: &Arc<Self>, user: &UserId, frontend: Frontend) -> Result<UserSlot, Refused> {
        if let Some(max) = self.settings.max_connections_per_user {
            if !self.by_user.try_add(user, max) {
                return Err(self.refused(Refused::new(Limit::UserConnections, max), Some(frontend)));
            }
        }
        Ok(UserSlot {
            limits: self.clone(),
            user: user.clone(),
            released: AtomicBool::new(false),
        })
    }

    /// One more ack-tracked push whose report is pending on this node.
    pub fn pending_ack(self: &Arc<Self>) -> Result<AckSlot, Refused> {
        if !self.pending_acks.try_take() {
            let max = self.settings.max_pending_acks.unwrap_or(0);
            return Err(self.refused(Refused::new(Limit::PendingAcks, max), None));
        }
        Ok(AckSlot {
            limits: self.clone(),
        })
    }

    /// Whether `n` more ack-tracked pushes would fit now (a batch is checked whole
    /// before any of it is sent; each push still takes its own slot).
    pub fn pending_acks_fit(&self, n: usize) -> Result<(), Refused> {
        match self.settings.max_pending_acks {
            Some(max) if self.pending_acks.used() + n > max => {
                Err(self.refused(Refused::new(Limit::PendingAcks, max), None))
            }
            _ => Ok(()),
        }
    }

    /// One HTTP API request of `caller`.
    pub fn api_request(&self, caller: Caller, now: Instant) -> Result<(), Refused> {
        let (Some(buckets), Some(rate)) = (&self.api_rate, self.settings.api_rate) else {
            return Ok(());
        };
        buckets.take(&caller, now).map_err(|wait| {
            let mut r = Refused::new(Limit::ApiRate, rate.per_second);
            r.retry_after = Some(wait);
            self.refused(r, None)
        })
    }

    /// Whether a connection may be in `rooms` rooms (its token's, at connect).
    pub fn rooms(&self, rooms: usize) -> Result<(), Refused> {
        match self.settings.max_rooms {
            Some(max) if rooms > max => Err(self.refused(Refused::new(Limit::Rooms, max), None)),
            _ => Ok(()),
        }
    }

    /// Whether a push may name `users` users.
    pub fn push_targets(&self, users: usize) -> Result<(), Refused> {
        let max = self.settings.max_push_targets;
        if users > max {
            return Err(self.refused(Refused::new(Limit::PushTargets, max), None));
        }
        Ok(())
    }

    /// Whether a batch may hold `pushes` pushes.
    pub fn batch(&self, pushes: usize) -> Result<(), Refused> {
        let max = self.settings.max_batch;
        if pushes > max {
            return Err(self.refused(Refused::new(Limit::Batch, max), None));
        }
        Ok(())
    }

    /// A refusal for a room join past the per-connection limit (the hub enforces it).
    pub fn rooms_refused(&self) -> Refused {
        self.refused(
            Refused::new(Limit::Rooms, self.settings.max_rooms.unwrap_or(0)),
            None,
        )
    }

    /// Connections admitted and not yet closed.
    pub fn connections(&self) -> usize {
        self.connections.used()
    }

    /// Connections admitted and not yet authenticated.
    pub fn pending(&self) -> usize {
        self.pending.used()
    }
}

/// A connection's place on the node: its share of the node's and its address's
/// connections, and while it has not authenticated, of the pending ones.
/// [`Admission::release`] (when the connection closes) or dropping it gives them
/// back, once.
pub struct Admission {
    limits: Arc<Limits>,
    address: Address,
    pending: AtomicBool,
    released: AtomicBool,
}

impl Admission {
    /// The connection authenticated: it no longer counts as pending.
    pub fn authenticated(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.limits.pending.give();
        }
    }

    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The connection closed: gives its counts back (idempotent).
    pub fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        self.authenticated();
        let l = &self.limits;
        l.connections.give();
        if l.settings.max_connections_per_ip.is_some() {
            l.by_address.remove(&self.address);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release();
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("pending", &self.is_pending())
            .finish()
    }
}

/// One connection of a user; [`UserSlot::release`] or dropping it gives the count
/// back, once.
pub struct UserSlot {
    limits: Arc<Limits>,
    user: UserId,
    released: AtomicBool,
}

impl UserSlot {
    /// The socket closed: gives its count back (idempotent).
    pub fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.limits.settings.max_connections_per_user.is_some() {
            self.limits.by_user.remove(&self.user);
        }
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.release();
    }
}

impl fmt::Debug for UserSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UserSlot").field(&self.user).finish()
    }
}

/// One pending ack-tracked push; dropping it (when its report is final, or the push
/// was not sent) gives the count back.
pub struct AckSlot {
    limits: Arc<Limits>,
}

impl Drop for AckSlot {
    fn drop(&mut self) {
        self.limits.pending_acks.give();
    }
}

impl fmt::Debug for AckSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AckSlot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(settings: Settings) -> Arc<Limits> {
        Limits::new(settings, Arc::new(Metrics::new()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const RATE: Rate = Rate {
        per_second: 2,
        burst: 3,
    };

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(RATE, t0);
        for _ in 0..3 {
            assert!(b.take(RATE, t0).is_ok());
        }
        let wait = b.take(RATE, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500), "one token every 500 ms");
        assert!(b.take(RATE, t0 + Duration::from_millis(499)).is_err());
        assert!(b.take(RATE, t0 + Duration::from_millis(500)).is_ok());
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(RATE, later).is_ok());
        }
        assert!(b.take(RATE, later).is_err());
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = Bucket::full(RATE, t0);
        for _ in 0..3 {
            b.take(RATE, t0).unwrap();
        }
        assert!(b.take(RATE, t0 - Duration::from_secs(5)).is_err());
    }

    #[test]
    fn addresses_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(
            Address::from(ip("10.0.0.1")),
            Address::from(ip("::ffff:10.0.0.1"))
        );
        assert_ne!(Address::from(ip("10.0.0.1")), Address::from(ip("10.0.0.2")));
        assert_eq!(
            Address::from(ip("2001:db8:1:2::1")),
            Address::from(ip("2001:db8:1:2:ffff::9")),
            "one /64"
        );
        assert_ne!(
            Address::from(ip("2001:db8:1:2::1")),
            Address::from(ip("2001:db8:1:3::1"))
        );
        assert_ne!(Address::from(ip("0.0.0.1")), Address::from(ip("::1")));
    }

    #[test]
    fn networks_parse_and_match() {
        let n = Networks::parse("10.0.0.0/8, 192.168.1.7,::1, fd00::/8").unwrap();
        assert!(n.contains(ip("10.200.3.4")));
        assert!(n.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped");
        assert!(n.contains(ip("192.168.1.7")));
        assert!(!n.contains(ip("192.168.1.8")));
        assert!(n.contains(ip("::1")) && n.contains(ip("fd12::3")));
        assert!(!n.contains(ip("11.0.0.1")) && !n.contains(ip("2001:db8::1")));
        assert!(Networks::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129", "1.2.3.4/x"] {
            assert!(Networks::parse(bad).is_err(), "{bad}");
        }
        assert!(Networks::parse("").unwrap().is_empty());
    }

    #[test]
    fn an_ipv4_mapped_entry_is_its_ipv4_network() {
        // Found by the client_address fuzz target: `::ffff:10.0.0.2` was kept as an
        // IPv6 network while every mapped address is looked up as IPv4, so the entry
        // matched nothing and that proxy was never trusted.
        let n = Networks::parse("::ffff:10.0.0.2, ::ffff:192.168.0.0/112").unwrap();
        assert!(n.contains(ip("10.0.0.2")) && n.contains(ip("::ffff:10.0.0.2")));
        assert!(n.contains(ip("192.168.3.4")) && n.contains(ip("::ffff:192.168.3.4")));
        assert!(!n.contains(ip("10.0.0.3")) && !n.contains(ip("192.169.0.1")));
        assert!(!n.contains(ip("::a00:2")), "IPv4-compatible is not mapped");
        assert!(Networks::parse("::ffff:10.0.0.0/95").is_err());
    }

    #[test]
    fn admissions_count_the_node_and_the_address_and_give_back_on_drop() {
        let l = limits(Settings {
            max_connections: Some(3),
            max_connections_per_ip: Some(2),
            connect_rate: None,
            ..Settings::unlimited()
        });
        let now = Instant::now();
        let a = l
            .admit(ip("10.0.0.1"), Frontend::SocketIo, false, now)
            .unwrap();
        let b = l
            .admit(ip("10.0.0.1"), Frontend::SocketIo, false, now)
            .unwrap();
        let refused = l
            .admit(ip("10.0.0.1"), Frontend::Phoenix, false, now)
            .unwrap_err();
        assert_eq!(refused.limit, Limit::IpConnections);
        assert_eq!(refused.max, 2);
        assert!(!refused.limit.is_transient());
        let c = l
            .admit(ip("10.0.0.2"), Frontend::Pusher, false, now)
            .unwrap();
        let full = l
            .admit(ip("10.0.0.3"), Frontend::Pusher, false, now)
            .unwrap_err();
        assert_eq!(full.limit, Limit::Connections);
        assert_eq!(full.retry_after_secs(), Some(1));
        assert_eq!(l.connections(), 3);
        a.release();
        drop(a);
        assert_eq!(
            l.by_address.get(&Address::from(ip("10.0.0.1"))),
            1,
            "released once"
        );
        let _d = l
            .admit(ip("10.0.0.1"), Frontend::SocketIo, false, now)
            .unwrap();
        drop((b, c));
        assert_eq!(l.connections(), 1);
        assert_eq!(l.by_address.get(&Address::from(ip("10.0.0.2"))), 0);
        assert!(
            l.by_address
                .shards
                .iter()
                .map(|s| s.lock().len())
                .sum::<usize>()
                == 1,
            "entries live only while counted"
        );
    }

    #[test]
    fn a_refused_admission_takes_nothing() {
        let l = limits(Settings {
            max_connections: Some(10),
            max_connections_per_ip: Some(10),
            max_pending: Some(1),
            connect_rate: None,
            ..Settings::unlimited()
        });
        let now = Instant::now();
        let a = l
            .admit(ip("10.0.0.1"), Frontend::SocketIo, true, now)
            .unwrap();
        assert!(a.is_pending());
        let r = l
            .admit(ip("10.0.0.1"), Frontend::SocketIo, true, now)
            .unwrap_err();
        assert_eq!(r.limit, Limit::Pending);
        assert_eq!(l.connections(), 1, "the refused attempt gave its slot back");
        assert_eq!(l.by_address.get(&Address::from(ip("10.0.0.1"))), 1);
        // Authenticated: no longer pending, so another may wait.
        a.authenticated();
        a.authenticated();
        assert_eq!(l.pending(), 0, "authenticating twice gives back once");
        let b = l
            .admit(ip("10.0.0.1"), Frontend::SocketIo, true, now)
            .unwrap();
        drop(b);
        assert_eq!(
            l.pending(),
            0,
            "a pending admission dropped gives both back"
        );
        assert_eq!(l.connections(), 1);
    }

    #[test]
    fn the_connect_rate_refuses_with_a_retry_hint_and_spends_on_refused_attempts() {
        let l = limits(Settings {
            connect_rate: Some(RATE),
            ..Settings::unlimited()
        });
        let t0 = Instant::now();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                l.admit(ip("10.0.0.1"), Frontend::SocketIo, false, t0)
                    .unwrap(),
            );
        }
        let r = l
            .admit(ip("10.0.0.1"), Frontend::SocketIo, false, t0)
            .unwrap_err();
        assert_eq!(r.limit, Limit::ConnectRate);
        assert_eq!(r.retry_after, Some(Duration::from_millis(500)));
        assert_eq!(r.retry_after_secs(), Some(1));
        assert!(r.to_string().contains("at most 2 per second"), "{r}");
        // Another address has its own bucket.
        assert!(l
            .admit(ip("10.0.0.2"), Frontend::SocketIo, false, t0)
            .is_ok());
        let t1 = t0 + Duration::from_millis(500);
        assert!(l
            .admit(ip("10.0.0.1"), Frontend::SocketIo, false, t1)
            .is_ok());
        assert!(l
            .admit(ip("10.0.0.1"), Frontend::SocketIo, false, t1)
            .is_err());
    }

    #[test]
    fn a_flood_from_many_addresses_keeps_the_table_bounded() {
        let metrics = Arc::new(Metrics::new());
        let l = Limits::new(
            Settings {
                connect_rate: Some(Rate {
                    per_second: 1,
                    burst: 5,
                }),
                address_table: 160,
                ..Settings::unlimited()
            },
            metrics.clone(),
        );
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.admit(addr, Frontend::SocketIo, false, t0);
        }
        let table = l.connect_rate.as_ref().unwrap();
        assert!(table.len() <= 160, "{} entries", table.len());
        let gauge = metrics
            .limit_addresses
            .with_label_values(&["connect_rate"])
            .get();
        assert_eq!(gauge as usize, table.len(), "the gauge follows the table");
        assert!(
            metrics
                .limit_address_evictions
                .with_label_values(&["connect_rate"])
                .get()
                > 0
        );
        // Refilled buckets are dropped first: after a rest, new addresses evict none.
        let evicted = metrics
            .limit_address_evictions
            .with_label_values(&["connect_rate"])
            .get();
        let t1 = t0 + Duration::from_secs(60);
        for i in 0..1_000u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
            let _ = l.admit(addr, Frontend::SocketIo, false, t1);
        }
        assert!(table.len() <= 160);
        let evicted_after = metrics
            .limit_address_evictions
            .with_label_values(&["connect_rate"])
            .get();
        assert!(
            evicted_after - evicted < 1_000,
            "rested buckets went first: {evicted} then {evicted_after}"
        );
    }

    #[test]
    fn users_count_per_node_and_give_back_on_drop() {
        let l = limits(Settings {
            max_connections_per_user: Some(2),
            ..Settings::unlimited()
        });
        let alice = UserId::from("alice");
        let a = l.user(&alice, Frontend::SocketIo).unwrap();
        let _b = l.user(&alice, Frontend::Phoenix).unwrap();
        let r = l.user(&alice, Frontend::Pusher).unwrap_err();
        assert_eq!(r.limit, Limit::UserConnections);
        assert!(r.to_string().contains("at most 2"), "{r}");
        assert!(l.user(&UserId::from("bob"), Frontend::SocketIo).is_ok());
        drop(a);
        assert!(l.user(&alice, Frontend::SocketIo).is_ok());
    }

    #[test]
    fn pending_acks_are_slots_and_a_batch_is_checked_whole() {
        let l = limits(Settings {
            max_pending_acks: Some(2),
            ..Settings::unlimited()
        });
        let a = l.pending_ack().unwrap();
        assert!(l.pending_acks_fit(1).is_ok());
        assert_eq!(l.pending_acks_fit(2).unwrap_err().limit, Limit::PendingAcks);
        let _b = l.pending_ack().unwrap();
        assert_eq!(l.pending_ack().unwrap_err().limit, Limit::PendingAcks);
        drop(a);
        assert!(l.pending_ack().is_ok());
    }

    #[test]
    fn the_api_rate_is_per_caller() {
        let l = limits(Settings {
            api_rate: Some(RATE),
            ..Settings::unlimited()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            l.api_request(Caller::Key(0), t0).unwrap();
        }
        let r = l.api_request(Caller::Key(0), t0).unwrap_err();
        assert_eq!(r.limit, Limit::ApiRate);
        assert!(l.api_request(Caller::Key(1), t0).is_ok());
        assert!(l
            .api_request(Caller::Address(Address::from(ip("10.0.0.1"))), t0)
            .is_ok());
    }

    #[test]
    fn sizes_are_checked_against_their_limits() {
        let l = limits(Settings {
            max_rooms: Some(2),
            max_push_targets: 3,
            max_batch: 4,
            ..Settings::unlimited()
        });
        assert!(l.rooms(2).is_ok() && l.rooms(3).is_err());
        assert!(l.push_targets(3).is_ok());
        assert_eq!(
            l.push_targets(4).unwrap_err().to_string(),
            "at most 3 users per push"
        );
        assert!(l.batch(4).is_ok() && l.batch(5).is_err());
    }

    #[test]
    fn unlimited_admits_everything() {
        let l = limits(Settings::unlimited());
        let now = Instant::now();
        let held: Vec<_> = (0..5_000)
            .map(|_| {
                l.admit(ip("127.0.0.1"), Frontend::SocketIo, true, now)
                    .unwrap()
            })
            .collect();
        assert_eq!(l.connections(), 5_000);
        drop(held);
        assert_eq!(l.connections(), 0);
    }

    #[test]
    fn refusals_are_counted_by_limit_and_frontend() {
        let metrics = Arc::new(Metrics::new());
        let l = Limits::new(
            Settings {
                max_connections: Some(0),
                ..Settings::unlimited()
            },
            metrics.clone(),
        );
        let _ = l.admit(ip("10.0.0.1"), Frontend::Phoenix, false, Instant::now());
        let text = metrics.render();
        assert!(
            text.contains(r#"pushgate_limit_refusals_total{limit="node_connections"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            r#"pushgate_connect_errors_total{frontend="phoenix",reason="node_connections"} 1"#
        ));
        assert!(text.contains(r#"pushgate_limit{limit="node_connections"} 0"#));
    }
}
