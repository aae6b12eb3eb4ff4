//! Configuration: command-line flags, each also an environment variable, optionally a
//! TOML file. Flags win over the environment, the environment over the file, the file
//! over the defaults.
//!
//! Only this module reads the environment or files. Resolution is a pure function of
//! the parsed flags, an environment lookup and the file's text, so tests build a
//! [`Config`] from a map without touching the process environment.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::auth::{Origins, TokenRules};
use crate::id::{InvalidNodeId, NodeId};
use crate::limits::{self, Networks, Rate};

/// Engine.IO's own default: long enough that idle mobile clients are cheap, short enough
/// that a dead peer is noticed within a minute.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 25_000;
/// Engine.IO's default pong wait.
pub const DEFAULT_PING_TIMEOUT_MS: u64 = 20_000;
/// A Phoenix connection silent this long is closed: phoenix.js beats every 30 s, and
/// Phoenix's own server gives a socket 60 s.
pub const DEFAULT_PHOENIX_TIMEOUT_MS: u64 = 60_000;
/// An Engine.IO session that has not connected a namespace (not authenticated) is
/// closed after this. socket.io-client sends its CONNECT right after the handshake, so
/// a real client needs one round trip; Socket.IO's own 45 s let an unauthenticated
/// handshake hold a session and a task for most of a minute.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Engine.IO's `maxHttpBufferSize` default (1 MB).
pub const DEFAULT_MAX_PAYLOAD: u64 = 1_000_000;
/// Engine.IO's default upgrade window.
pub const DEFAULT_UPGRADE_TIMEOUT_MS: u64 = 10_000;
/// HTTP API bodies: a batch of 1000 small pushes fits; a runaway body does not.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Outbound frames a connection may have queued. A client that is this far behind is
/// not reading; holding more would only grow memory (the kernel socket buffer already
/// holds what is in flight).
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
/// Outbound bytes a connection may have queued, so a few large pushes cannot pin
/// megabytes per slow connection.
pub const DEFAULT_QUEUE_BYTES: usize = 1024 * 1024;
/// See [`crate::registry::DEFAULT_REGISTRY_TTL_MS`]; shorter than this many ms and
/// the lease refresh (every sixth) would be too busy and too close to a Redis hiccup.
pub const MIN_REGISTRY_TTL_MS: u64 = 1_000;
/// How long queues may drain on SIGTERM before sessions are closed.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Pusher's `activity_timeout`: a Pusher connection silent this long is pinged.
/// pusher-js uses the smaller of its own 120 s and the server's value, so 120 s
/// keeps idle connections as quiet as the client allows.
pub const DEFAULT_PUSHER_ACTIVITY_TIMEOUT_MS: u64 = 120_000;
/// How long a pinged Pusher connection has to answer: pusher-js's own pong wait.
pub const DEFAULT_PUSHER_PONG_TIMEOUT_MS: u64 = 30_000;

/// Flags as parsed by clap; every one optional so that the environment and the file
/// can fill what the command line did not say.
#[derive(Debug, Default, Parser)]
#[command(
    name = "pushgate",
    version,
    about = "A push gateway for Socket.IO clients"
)]
pub struct Flags {
    /// TOML file with the same settings (snake_case names) [env: PUSHGATE_CONFIG]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address for client transports, the HTTP API, metrics and health [env: PUSHGATE_LISTEN] [default: 0.0.0.0:3000]
    #[arg(long)]
    pub listen: Option<String>,
    /// Redis URL for the cluster bus; unset = single node [env: PUSHGATE_REDIS_URL]
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Where the other nodes reach this one (IP, IP:PORT or HOST:PORT), cluster mode only [env: PUSHGATE_ADVERTISE_ADDR] [default: the listen address; on 0.0.0.0 or [::], this host's address toward Redis]
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Prefix of every Redis key and channel [env: PUSHGATE_REDIS_PREFIX] [default: pushgate]
    #[arg(long)]
    pub redis_prefix: Option<String>,
    /// Within this time a killed node's sockets leave every cluster answer (its lease lives half of it) [env: PUSHGATE_REGISTRY_TTL_MS] [default: 30000]
    #[arg(long)]
    pub registry_ttl_ms: Option<String>,
    /// Comma-separated bearer keys for /v1; unset = loopback callers only [env: PUSHGATE_API_KEYS]
    #[arg(long)]
    pub api_keys: Option<String>,
    /// HS256 secret for connection JWTs; unset = anonymous connections [env: PUSHGATE_JWT_SECRET]
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// Stable node id, 1-16 of [A-Za-z0-9_-] [env: PUSHGATE_NODE_ID] [default: random]
    #[arg(long)]
    pub node_id: Option<String>,
    /// Comma-separated Socket.IO namespaces clients may join [env: PUSHGATE_NAMESPACES] [default: /]
    #[arg(long)]
    pub namespaces: Option<String>,
    /// [env: PUSHGATE_PING_INTERVAL_MS] [default: 25000]
    #[arg(long)]
    pub ping_interval_ms: Option<String>,
    /// [env: PUSHGATE_PING_TIMEOUT_MS] [default: 20000]
    #[arg(long)]
    pub ping_timeout_ms: Option<String>,
    /// [env: PUSHGATE_CONNECT_TIMEOUT_MS] [default: 45000]
    #[arg(long)]
    pub connect_timeout_ms: Option<String>,
    /// [env: PUSHGATE_PHOENIX_TIMEOUT_MS] [default: 60000]
    #[arg(long)]
    pub phoenix_timeout_ms: Option<String>,
    /// [env: PUSHGATE_UPGRADE_TIMEOUT_MS] [default: 10000]
    #[arg(long)]
    pub upgrade_timeout_ms: Option<String>,
    /// Largest Engine.IO payload in bytes [env: PUSHGATE_MAX_PAYLOAD] [default: 1000000]
    #[arg(long)]
    pub max_payload: Option<String>,
    /// Largest HTTP API body in bytes [env: PUSHGATE_MAX_BODY_BYTES] [default: 1048576]
    #[arg(long)]
    pub max_body_bytes: Option<String>,
    /// Outbound frames queued per connection before it is dropped as slow [env: PUSHGATE_QUEUE_CAPACITY] [default: 256]
    #[arg(long)]
    pub queue_capacity: Option<String>,
    /// Outbound bytes queued per connection before it is dropped as slow [env: PUSHGATE_QUEUE_BYTES] [default: 1048576]
    #[arg(long)]
    pub queue_bytes: Option<String>,
    /// Drain deadline on SIGTERM/SIGINT [env: PUSHGATE_SHUTDOWN_TIMEOUT_MS] [default: 10000]
    #[arg(long)]
    pub shutdown_timeout_ms: Option<String>,
    /// Runtime worker threads; 0 = one per CPU [env: PUSHGATE_WORKER_THREADS] [default: 0]
    #[arg(long)]
    pub worker_threads: Option<String>,
    /// Pusher apps `app_id:key:secret,...`; unset = no Pusher frontend [env: PUSHGATE_PUSHER_APPS]
    #[arg(long)]
    pub pusher_apps: Option<String>,
    /// Silence before the server pings a Pusher connection (announced as activity_timeout) [env: PUSHGATE_PUSHER_ACTIVITY_TIMEOUT_MS] [default: 120000]
    #[arg(long)]
    pub pusher_activity_timeout_ms: Option<String>,
    /// Pong wait after a server ping to a Pusher connection [env: PUSHGATE_PUSHER_PONG_TIMEOUT_MS] [default: 30000]
    #[arg(long)]
    pub pusher_pong_timeout_ms: Option<String>,
    /// Pusher connections per app on this node; 0 = no limit [env: PUSHGATE_PUSHER_MAX_CONNECTIONS] [default: 0]
    #[arg(long)]
    pub pusher_max_connections: Option<String>,
    /// File holding the API keys (comma- or newline-separated) [env: PUSHGATE_API_KEYS_FILE]
    #[arg(long)]
    pub api_keys_file: Option<PathBuf>,
    /// File holding the JWT secret [env: PUSHGATE_JWT_SECRET_FILE]
    #[arg(long)]
    pub jwt_secret_file: Option<PathBuf>,
    /// File holding the Pusher apps (comma- or newline-separated) [env: PUSHGATE_PUSHER_APPS_FILE]
    #[arg(long)]
    pub pusher_apps_file: Option<PathBuf>,
    /// Tolerance for a token's exp and nbf [env: PUSHGATE_JWT_LEEWAY_MS] [default: 30000]
    #[arg(long)]
    pub jwt_leeway_ms: Option<String>,
    /// Comma-separated accepted `aud` values; unset = not checked [env: PUSHGATE_JWT_AUDIENCE]
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// Comma-separated accepted `iss` values; unset = not checked [env: PUSHGATE_JWT_ISSUER]
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// Comma-separated browser origins allowed to connect; unset = any [env: PUSHGATE_ALLOWED_ORIGINS]
    #[arg(long)]
    pub allowed_origins: Option<String>,
    /// Comma-separated proxies (addresses, CIDRs) whose X-Forwarded-For is believed [env: PUSHGATE_TRUSTED_PROXIES]
    #[arg(long)]
    pub trusted_proxies: Option<String>,
    /// Connections on this node; 0 = no limit [env: PUSHGATE_MAX_CONNECTIONS] [default: 200000]
    #[arg(long)]
    pub max_connections: Option<String>,
    /// Connections per client address; 0 = no limit [env: PUSHGATE_MAX_CONNECTIONS_PER_IP] [default: 1000]
    #[arg(long)]
    pub max_connections_per_ip: Option<String>,
    /// Connections per user on this node; 0 = no limit [env: PUSHGATE_MAX_CONNECTIONS_PER_USER] [default: 100]
    #[arg(long)]
    pub max_connections_per_user: Option<String>,
    /// Connections not yet authenticated on this node; 0 = no limit [env: PUSHGATE_MAX_PENDING_CONNECTIONS] [default: 10000]
    #[arg(long)]
    pub max_pending_connections: Option<String>,
    /// New connections per second per client address; 0 = no limit [env: PUSHGATE_CONNECT_RATE_PER_IP] [default: 50]
    #[arg(long)]
    pub connect_rate_per_ip: Option<String>,
    /// Burst of new connections per client address [env: PUSHGATE_CONNECT_BURST_PER_IP] [default: 500]
    #[arg(long)]
    pub connect_burst_per_ip: Option<String>,
    /// Rooms per connection; 0 = no limit [env: PUSHGATE_MAX_ROOMS_PER_CONNECTION] [default: 1000]
    #[arg(long)]
    pub max_rooms_per_connection: Option<String>,
    /// Socket.IO connection state recovery: how long a disconnected client may come back and get what it missed; 0 = off [env: PUSHGATE_RECOVERY_WINDOW_MS] [default: 0]
    #[arg(long)]
    pub recovery_window_ms: Option<String>,
    /// Recent pushes kept for recovery (Redis stream MAXLEN, or the single node's ring) [env: PUSHGATE_RECOVERY_MAX_PUSHES] [default: 10000]
    #[arg(long)]
    pub recovery_max_pushes: Option<String>,
    /// Users one push may name [env: PUSHGATE_MAX_PUSH_TARGETS] [default: 1000]
    #[arg(long)]
    pub max_push_targets: Option<String>,
    /// Pushes in one batch [env: PUSHGATE_MAX_BATCH] [default: 1000]
    #[arg(long)]
    pub max_batch: Option<String>,
    /// HTTP API requests per second per key (per address without keys); 0 = no limit [env: PUSHGATE_API_RATE] [default: 5000]
    #[arg(long)]
    pub api_rate: Option<String>,
    /// Burst of HTTP API requests per key [env: PUSHGATE_API_BURST] [default: 5000]
    #[arg(long)]
    pub api_burst: Option<String>,
    /// Ack-tracked pushes pending on this node; 0 = no limit [env: PUSHGATE_MAX_PENDING_ACKS] [default: 10000]
    #[arg(long)]
    pub max_pending_acks: Option<String>,
    /// Addresses remembered by each per-address rate table [env: PUSHGATE_ADDRESS_TABLE_SIZE] [default: 100000]
    #[arg(long)]
    pub address_table_size: Option<String>,
    /// Webhook URL per Pusher app `app_id=http://host/path,...`; unset = no webhooks [env: PUSHGATE_PUSHER_WEBHOOKS]
    #[arg(long)]
    pub pusher_webhooks: Option<String>,
}

/// The TOML file's shape: the same names as the flags, in snake_case, typed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    redis_url: Option<String>,
    advertise_addr: Option<String>,
    redis_prefix: Option<String>,
    registry_ttl_ms: Option<u64>,
    api_keys: Option<Vec<String>>,
    jwt_secret: Option<String>,
    node_id: Option<String>,
    namespaces: Option<Vec<String>>,
    ping_interval_ms: Option<u64>,
    ping_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    phoenix_timeout_ms: Option<u64>,
    upgrade_timeout_ms: Option<u64>,
    max_payload: Option<u64>,
    max_body_bytes: Option<usize>,
    queue_capacity: Option<usize>,
    queue_bytes: Option<usize>,
    shutdown_timeout_ms: Option<u64>,
    worker_threads: Option<usize>,
    pusher_apps: Option<Vec<String>>,
    pusher_activity_timeout_ms: Option<u64>,
    pusher_pong_timeout_ms: Option<u64>,
    pusher_max_connections: Option<u64>,
    api_keys_file: Option<PathBuf>,
    jwt_secret_file: Option<PathBuf>,
    pusher_apps_file: Option<PathBuf>,
    jwt_leeway_ms: Option<u64>,
    jwt_audience: Option<Vec<String>>,
    jwt_issuer: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    max_connections: Option<u64>,
    max_connections_per_ip: Option<u64>,
    max_connections_per_user: Option<u64>,
    max_pending_connections: Option<u64>,
    connect_rate_per_ip: Option<u64>,
    connect_burst_per_ip: Option<u64>,
    max_rooms_per_connection: Option<u64>,
    recovery_window_ms: Option<u64>,
    recovery_max_pushes: Option<u64>,
    max_push_targets: Option<u64>,
    max_batch: Option<u64>,
    api_rate: Option<u64>,
    api_burst: Option<u64>,
    max_pending_acks: Option<u64>,
    address_table_size: Option<u64>,
    pusher_webhooks: Option<Vec<String>>,
}

/// The resolved configuration of one node. Its `Debug` output redacts the secrets
/// (API keys, JWT secret, the Redis URL, which may carry a password), so logging a
/// configuration can never leak them.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub redis_url: Option<String>,
    /// Where the other nodes reach this one, as configured; `None` = derived at start
    /// ([`default_advertise_addr`]). Used in cluster mode only.
    pub advertise_addr: Option<AdvertiseAddr>,
    /// Prefix of every Redis key and channel, so several gateways can share a Redis.
    pub redis_prefix: String,
    /// TTL of the registry entries this node owns in Redis.
    pub registry_ttl: Duration,
    /// Connection state recovery; `None` = off.
    pub recovery: Option<crate::recovery::Settings>,
    pub api_keys: Vec<String>,
    pub jwt_secret: Option<String>,
    pub node_id: NodeId,
    pub namespaces: Vec<String>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
    /// A Phoenix connection that sends nothing (not even a heartbeat) this long is
    /// closed.
    pub phoenix_timeout: Duration,
    pub upgrade_timeout: Duration,
    pub max_payload: u64,
    pub max_body_bytes: usize,
    pub queue_capacity: usize,
    pub queue_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Tokio worker threads; `None` = one per CPU. Several processes on one host
    /// (one per 20k-file limit, say) each wanting every core only contend; give each
    /// a share.
    pub worker_threads: Option<usize>,
    /// The Pusher apps this node serves; empty = no Pusher frontend. The first is
    /// the one whose channels are pushgate's rooms.
    pub pusher_apps: Vec<PusherApp>,
    /// Silence before the server pings a Pusher connection; announced to clients as
    /// `activity_timeout` in whole seconds.
    pub pusher_activity_timeout: Duration,
    pub pusher_pong_timeout: Duration,
    /// Pusher connections per app on this node; `None` = no limit.
    pub pusher_max_connections: Option<usize>,
    /// What this node admits (connections, rates, sizes, pending acks).
    pub limits: limits::Settings,
    /// How connection tokens are checked beyond their signature.
    pub token_rules: TokenRules,
    /// Browser origins allowed to open client connections.
    pub allowed_origins: Origins,
    /// Proxies whose `X-Forwarded-For` names the client address.
    pub trusted_proxies: Networks,
}

/// One Pusher app: its id (in HTTP API paths), its key (in client URLs and signed
/// requests), its secret (the HMAC key of every signature) and where its webhooks go.
/// `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PusherApp {
    pub id: String,
    pub key: String,
    pub secret: String,
    /// The `http://` URL its webhooks are POSTed to; `None` = no webhooks.
    pub webhook: Option<String>,
}

impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("webhook", &self.webhook.as_deref().map(redact_url_password))
            .finish()
    }
}

/// The setting as a user may have written it, for error messages.
const PUSHER_APPS_SETTING: &str = "PUSHGATE_PUSHER_APPS (--pusher-apps)";

/// Parses `app_id:key:secret,...`. Ids and keys are 1-64 of `[A-Za-z0-9_.-]` (they
/// travel in URL paths and in room names); the secret is the rest after the second
/// `:`, never empty. Ids and keys must be unique, and the error never shows a secret.
pub fn parse_pusher_apps(text: &str) -> Result<Vec<PusherApp>, ConfigError> {
    let refuse = |entry: &str, message: String| {
        // Only what precedes the secret is shown.
        let shown = entry.splitn(3, ':').take(2).collect::<Vec<_>>().join(":");
        ConfigError::Invalid {
            name: PUSHER_APPS_SETTING,
            value: shown,
            message,
        }
    };
    let word_ok = |w: &str| {
        (1..=64).contains(&w.len())
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    let mut apps: Vec<PusherApp> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(3, ':');
        let (Some(id), Some(key), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(refuse(entry, "each app is app_id:key:secret".into()));
        };
        if !word_ok(id) {
            return Err(refuse(
                entry,
                "the app id must be 1-64 of [A-Za-z0-9_.-]".into(),
            ));
        }
        if !word_ok(key) {
            return Err(refuse(
                entry,
                "the key must be 1-64 of [A-Za-z0-9_.-]".into(),
            ));
        }
        if secret.is_empty() {
            return Err(refuse(entry, "the secret must not be empty".into()));
        }
        if apps.iter().any(|a| a.id == id) {
            return Err(refuse(entry, format!("app id {id:?} is listed twice")));
        }
        if apps.iter().any(|a| a.key == key) {
            return Err(refuse(entry, format!("key {key:?} is listed twice")));
        }
        apps.push(PusherApp {
            id: id.to_owned(),
            key: key.to_owned(),
            secret: secret.to_owned(),
            webhook: None,
        });
    }
    if apps.is_empty() {
        return Err(ConfigError::Invalid {
            name: PUSHER_APPS_SETTING,
            value: String::new(),
            message: "no app in the list".into(),
        });
    }
    Ok(apps)
}

/// The setting as a user may have written it, for error messages.
const PUSHER_WEBHOOKS_SETTING: &str = "PUSHGATE_PUSHER_WEBHOOKS (--pusher-webhooks)";

/// Parses `app_id=url,...` into `apps`' webhook URLs. Each app id must be one of
/// `apps` and appear once; each URL is an absolute `http://` URL (this build has no
/// TLS client: an `https://` receiver is reached through a local TLS proxy) without
/// a comma. The error names the setting and never shows a password in a URL.
pub fn parse_pusher_webhooks(text: &str, apps: &mut [PusherApp]) -> Result<(), ConfigError> {
    let refuse = |entry: &str, message: String| ConfigError::Invalid {
        name: PUSHER_WEBHOOKS_SETTING,
        value: redact_url_password(entry),
        message,
    };
    let mut any = false;
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        any = true;
        let Some((id, url)) = entry.split_once('=') else {
            return Err(refuse(entry, "each webhook is app_id=url".into()));
        };
        let (id, url) = (id.trim(), url.trim());
        let Some(app) = apps.iter_mut().find(|a| a.id == id) else {
            return Err(refuse(
                entry,
                format!("app id {id:?} is not in PUSHGATE_PUSHER_APPS"),
            ));
        };
        if app.webhook.is_some() {
            return Err(refuse(entry, format!("app id {id:?} is listed twice")));
        }
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| refuse(entry, format!("not an absolute URL: {e}")))?;
        match parsed.scheme() {
            "http" if parsed.host_str().is_some_and(|h| !h.is_empty()) => {}
            "http" => return Err(refuse(entry, "the URL has no host".into())),
            "https" => {
                return Err(refuse(
                    entry,
                    "https is not built into this gateway; give an http:// URL \
                     (a local TLS proxy can carry it to an https receiver)"
                        .into(),
                ))
            }
            other => {
                return Err(refuse(
                    entry,
                    format!("unsupported scheme {other:?}: give an http:// URL"),
                ))
            }
        }
        app.webhook = Some(url.to_owned());
    }
    if !any {
        return Err(ConfigError::Invalid {
            name: PUSHER_WEBHOOKS_SETTING,
            value: String::new(),
            message: "no webhook in the list".into(),
        });
    }
    Ok(())
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const REDACTED: &str = "<redacted>";
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("redis_url", &self.redis_url.as_ref().map(|_| REDACTED))
            .field("advertise_addr", &self.advertise_addr)
            .field("redis_prefix", &self.redis_prefix)
            .field("registry_ttl", &self.registry_ttl)
            .field("recovery", &self.recovery)
            .field(
                "api_keys",
                &format_args!("<{} redacted>", self.api_keys.len()),
            )
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| REDACTED))
            .field("node_id", &self.node_id)
            .field("namespaces", &self.namespaces)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("phoenix_timeout", &self.phoenix_timeout)
            .field("upgrade_timeout", &self.upgrade_timeout)
            .field("max_payload", &self.max_payload)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes", &self.queue_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("worker_threads", &self.worker_threads)
            .field("pusher_apps", &self.pusher_apps)
            .field("pusher_activity_timeout", &self.pusher_activity_timeout)
            .field("pusher_pong_timeout", &self.pusher_pong_timeout)
            .field("pusher_max_connections", &self.pusher_max_connections)
            .field("limits", &self.limits)
            .field("token_rules", &self.token_rules)
            .field("allowed_origins", &self.allowed_origins)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

/// A setting that could not be used; the message names it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}: {message} (got {value:?})")]
    Invalid {
        name: &'static str,
        value: String,
        message: String,
    },
    #[error("cannot read config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    ParseFile {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{name}: cannot read {path}")]
    ReadSecret {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: {message}")]
    Missing { name: &'static str, message: String },
    #[error(transparent)]
    NodeId(#[from] InvalidNodeId),
}

impl Default for Config {
    fn default() -> Self {
        Self::resolve(Flags::default(), |_| None, None).expect("defaults are valid")
    }
}

impl Config {
    /// Reads flags from the command line, the process environment and the config file.
    pub fn load() -> Result<Self, ConfigError> {
        let flags = Flags::parse();
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let path = flags
            .config
            .clone()
            .or_else(|| env("PUSHGATE_CONFIG").map(PathBuf::from));
        let file = match path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                Some((path, text))
            }
            None => None,
        };
        Self::resolve(flags, env, file)
    }

    /// Resolves flags, then `env`, then the file (path and text), then defaults;
    /// secrets named by a `…_FILE` setting are read from the file system.
    pub fn resolve(
        flags: Flags,
        env: impl Fn(&str) -> Option<String>,
        file: Option<(PathBuf, String)>,
    ) -> Result<Self, ConfigError> {
        Self::resolve_with(flags, env, file, |p| std::fs::read_to_string(p))
    }

    /// [`Config::resolve`] with `read` for the secret files (tests pass a map).
    pub fn resolve_with(
        flags: Flags,
        env: impl Fn(&str) -> Option<String>,
        file: Option<(PathBuf, String)>,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Self, ConfigError> {
        let file: FileSettings = match file {
            Some((path, text)) => {
                toml::from_str(&text).map_err(|source| ConfigError::ParseFile { path, source })?
            }
            None => FileSettings::default(),
        };
        // One setting: the flag, else the variable, else the file's value rendered as text.
        let pick = |flag: Option<String>, var: &str, file: Option<String>| {
            flag.or_else(|| env(var)).or(file)
        };
        let num =
            |name: &'static str, flag: Option<String>, file: Option<u64>, default: u64| match pick(
                flag,
                name,
                file.map(|v| v.to_string()),
            ) {
                None => Ok(default),
                Some(v) => v.trim().parse::<u64>().map_err(|e| invalid(name, &v, e)),
            };
        let positive = |name: &'static str, flag, file, default| {
            let v = num(name, flag, file, default)?;
            if v == 0 {
                return Err(invalid(name, "0", "must be greater than zero"));
            }
            Ok(v)
        };

        let listen_text = pick(flags.listen, "PUSHGATE_LISTEN", file.listen)
            .unwrap_or_else(|| "0.0.0.0:3000".to_owned());
        let listen = listen_text
            .parse()
            .map_err(|e| invalid("PUSHGATE_LISTEN", &listen_text, e))?;

        // A secret given directly or in a file (`…_FILE`), never both.
        let secret = |name: &'static str,
                      file_name: &'static str,
                      value: Option<String>,
                      path: Option<PathBuf>|
         -> Result<Option<String>, ConfigError> {
            match (value, path) {
                (Some(_), Some(_)) => Err(ConfigError::Invalid {
                    name,
                    value: "<redacted>".into(),
                    message: format!("set either {name} or {file_name}, not both"),
                }),
                (Some(v), None) => Ok(Some(v)),
                (None, None) => Ok(None),
                (None, Some(path)) => {
                    let text = read(&path).map_err(|source| ConfigError::ReadSecret {
                        name: file_name,
                        path: path.clone(),
                        source,
                    })?;
                    // One trailing newline (or several, or CRLF) is how editors and
                    // `echo` end a file; it is never part of the secret.
                    let text = text.trim_end_matches(['\n', '\r']).to_owned();
                    if text.is_empty() {
                        return Err(ConfigError::Invalid {
                            name: file_name,
                            value: path.display().to_string(),
                            message: "the file is empty".into(),
                        });
                    }
                    Ok(Some(text))
                }
            }
        };
        let path_of = |flag: Option<PathBuf>, var: &str, file: Option<PathBuf>| {
            flag.or_else(|| env(var).map(PathBuf::from)).or(file)
        };

        let api_keys = match secret(
            "PUSHGATE_API_KEYS",
            "PUSHGATE_API_KEYS_FILE",
            pick(
                flags.api_keys,
                "PUSHGATE_API_KEYS",
                file.api_keys.map(|v| v.join(",")),
            ),
            path_of(
                flags.api_keys_file,
                "PUSHGATE_API_KEYS_FILE",
                file.api_keys_file,
            ),
        )? {
            None => Vec::new(),
            Some(v) => {
                let keys: Vec<String> = v
                    .split([',', '\n'])
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect();
                if keys.is_empty() {
                    return Err(invalid("PUSHGATE_API_KEYS", "", "no key in the list"));
                }
                keys
            }
        };

        let node_id = match pick(flags.node_id, "PUSHGATE_NODE_ID", file.node_id) {
            Some(v) => NodeId::parse(v.trim())?,
            None => NodeId::random(),
        };

        let namespaces = match pick(
            flags.namespaces,
            "PUSHGATE_NAMESPACES",
            file.namespaces.map(|v| v.join(",")),
        ) {
            None => vec!["/".to_owned()],
            Some(v) => {
                let list: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect();
                if list.is_empty() || list.iter().any(|n| !n.starts_with('/')) {
                    return Err(invalid(
                        "PUSHGATE_NAMESPACES",
                        &v,
                        "a comma-separated list of names that start with '/'",
                    ));
                }
                list
            }
        };

        let redis_prefix = pick(
            flags.redis_prefix,
            "PUSHGATE_REDIS_PREFIX",
            file.redis_prefix,
        )
        .unwrap_or_else(|| "pushgate".to_owned());
        if redis_prefix.is_empty()
            || redis_prefix.len() > 64
            || redis_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "PUSHGATE_REDIS_PREFIX",
                &redis_prefix,
                "1 to 64 characters, no spaces",
            ));
        }
        let registry_ttl_ms = num(
            "PUSHGATE_REGISTRY_TTL_MS",
            flags.registry_ttl_ms,
            file.registry_ttl_ms,
            crate::registry::DEFAULT_REGISTRY_TTL_MS,
        )?;
        if registry_ttl_ms < MIN_REGISTRY_TTL_MS {
            return Err(invalid(
                "PUSHGATE_REGISTRY_TTL_MS",
                &registry_ttl_ms.to_string(),
                format!("at least {MIN_REGISTRY_TTL_MS}"),
            ));
        }
        let redis_url = pick(flags.redis_url, "PUSHGATE_REDIS_URL", file.redis_url)
            .map(|url| check_redis_url(&url).map(|()| url))
            .transpose()?;
        let recovery_window_ms = num(
            "PUSHGATE_RECOVERY_WINDOW_MS",
            flags.recovery_window_ms,
            file.recovery_window_ms,
            0,
        )?;
        let recovery = if recovery_window_ms == 0 {
            None
        } else {
            if redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("redis-cluster://"))
            {
                // One ordered stream is what makes a single offset meaningful; on a
                // Redis Cluster it and the pub/sub channels live on different shards,
                // so recording and publishing could not be one step (ARCHITECTURE.md).
                return Err(invalid(
                    "PUSHGATE_RECOVERY_WINDOW_MS",
                    &recovery_window_ms.to_string(),
                    "0 with a redis-cluster:// URL: recovery needs a single Redis",
                ));
            }
            Some(crate::recovery::Settings {
                window: Duration::from_millis(recovery_window_ms),
                max_pushes: positive(
                    "PUSHGATE_RECOVERY_MAX_PUSHES",
                    flags.recovery_max_pushes,
                    file.recovery_max_pushes,
                    crate::recovery::DEFAULT_MAX_PUSHES as u64,
                )? as usize,
            })
        };
        let jwt_secret = secret(
            "PUSHGATE_JWT_SECRET",
            "PUSHGATE_JWT_SECRET_FILE",
            pick(flags.jwt_secret, "PUSHGATE_JWT_SECRET", file.jwt_secret),
            path_of(
                flags.jwt_secret_file,
                "PUSHGATE_JWT_SECRET_FILE",
                file.jwt_secret_file,
            ),
        )?;
        let pusher_apps = match secret(
            "PUSHGATE_PUSHER_APPS",
            "PUSHGATE_PUSHER_APPS_FILE",
            pick(
                flags.pusher_apps,
                "PUSHGATE_PUSHER_APPS",
                file.pusher_apps.map(|v| v.join(",")),
            ),
            path_of(
                flags.pusher_apps_file,
                "PUSHGATE_PUSHER_APPS_FILE",
                file.pusher_apps_file,
            ),
        )? {
            None => Vec::new(),
            Some(v) => parse_pusher_apps(&v.replace(['\n', '\r'], ","))?,
        };

        // A comma-separated list; `None` when unset.
        let list = |flag: Option<String>, var: &str, file: Option<Vec<String>>| {
            pick(flag, var, file.map(|v| v.join(","))).map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
        };
        // A limit: 0 means none.
        let limit = |name: &'static str, flag, file, default: usize| {
            num(name, flag, file, default as u64).map(|v| (v > 0).then_some(v as usize))
        };
        let rate = |name: &'static str,
                    flag,
                    file,
                    default: u32,
                    burst_name: &'static str,
                    burst_flag,
                    burst_file,
                    default_burst: u32|
         -> Result<Option<Rate>, ConfigError> {
            let per_second = num(name, flag, file, u64::from(default))?;
            let burst = positive(burst_name, burst_flag, burst_file, u64::from(default_burst))?;
            let as_u32 = |name: &'static str, v: u64| {
                u32::try_from(v).map_err(|_| invalid(name, &v.to_string(), "too large"))
            };
            Ok((per_second > 0).then_some(Rate {
                per_second: as_u32(name, per_second)?,
                burst: as_u32(burst_name, burst)?,
            }))
        };
        let limits = limits::Settings {
            max_connections: limit(
                "PUSHGATE_MAX_CONNECTIONS",
                flags.max_connections,
                file.max_connections,
                limits::DEFAULT_MAX_CONNECTIONS,
            )?,
            max_connections_per_ip: limit(
                "PUSHGATE_MAX_CONNECTIONS_PER_IP",
                flags.max_connections_per_ip,
                file.max_connections_per_ip,
                limits::DEFAULT_MAX_CONNECTIONS_PER_IP,
            )?,
            max_connections_per_user: limit(
                "PUSHGATE_MAX_CONNECTIONS_PER_USER",
                flags.max_connections_per_user,
                file.max_connections_per_user,
                limits::DEFAULT_MAX_CONNECTIONS_PER_USER,
            )?,
            max_pending: limit(
                "PUSHGATE_MAX_PENDING_CONNECTIONS",
                flags.max_pending_connections,
                file.max_pending_connections,
                limits::DEFAULT_MAX_PENDING,
            )?,
            connect_rate: rate(
                "PUSHGATE_CONNECT_RATE_PER_IP",
                flags.connect_rate_per_ip,
                file.connect_rate_per_ip,
                limits::DEFAULT_CONNECT_RATE_PER_IP,
                "PUSHGATE_CONNECT_BURST_PER_IP",
                flags.connect_burst_per_ip,
                file.connect_burst_per_ip,
                limits::DEFAULT_CONNECT_BURST_PER_IP,
            )?,
            max_rooms: limit(
                "PUSHGATE_MAX_ROOMS_PER_CONNECTION",
                flags.max_rooms_per_connection,
                file.max_rooms_per_connection,
                limits::DEFAULT_MAX_ROOMS_PER_CONNECTION,
            )?,
            max_push_targets: positive(
                "PUSHGATE_MAX_PUSH_TARGETS",
                flags.max_push_targets,
                file.max_push_targets,
                limits::DEFAULT_MAX_PUSH_TARGETS as u64,
            )? as usize,
            max_batch: positive(
                "PUSHGATE_MAX_BATCH",
                flags.max_batch,
                file.max_batch,
                limits::DEFAULT_MAX_BATCH as u64,
            )? as usize,
            api_rate: rate(
                "PUSHGATE_API_RATE",
                flags.api_rate,
                file.api_rate,
                limits::DEFAULT_API_RATE,
                "PUSHGATE_API_BURST",
                flags.api_burst,
                file.api_burst,
                limits::DEFAULT_API_BURST,
            )?,
            max_pending_acks: limit(
                "PUSHGATE_MAX_PENDING_ACKS",
                flags.max_pending_acks,
                file.max_pending_acks,
                limits::DEFAULT_MAX_PENDING_ACKS,
            )?,
            address_table: positive(
                "PUSHGATE_ADDRESS_TABLE_SIZE",
                flags.address_table_size,
                file.address_table_size,
                limits::DEFAULT_ADDRESS_TABLE_SIZE as u64,
            )? as usize,
        };
        let token_rules = TokenRules {
            leeway: Duration::from_millis(num(
                "PUSHGATE_JWT_LEEWAY_MS",
                flags.jwt_leeway_ms,
                file.jwt_leeway_ms,
                crate::auth::DEFAULT_LEEWAY.as_millis() as u64,
            )?),
            audience: list(
                flags.jwt_audience,
                "PUSHGATE_JWT_AUDIENCE",
                file.jwt_audience,
            )
            .unwrap_or_default(),
            issuer: list(flags.jwt_issuer, "PUSHGATE_JWT_ISSUER", file.jwt_issuer)
                .unwrap_or_default(),
            max_rooms: limits.max_rooms,
        };
        let allowed_origins = match pick(
            flags.allowed_origins,
            "PUSHGATE_ALLOWED_ORIGINS",
            file.allowed_origins.map(|v| v.join(",")),
        ) {
            None => Origins::any(),
            Some(v) => {
                Origins::parse(&v).map_err(|e| invalid("PUSHGATE_ALLOWED_ORIGINS", &v, e))?
            }
        };
        let trusted_proxies = match pick(
            flags.trusted_proxies,
            "PUSHGATE_TRUSTED_PROXIES",
            file.trusted_proxies.map(|v| v.join(",")),
        ) {
            None => Networks::default(),
            Some(v) => {
                Networks::parse(&v).map_err(|e| invalid("PUSHGATE_TRUSTED_PROXIES", &v, e))?
            }
        };

        let mut pusher_apps = pusher_apps;
        if let Some(hooks) = pick(
            flags.pusher_webhooks,
            "PUSHGATE_PUSHER_WEBHOOKS",
            file.pusher_webhooks.map(|v| v.join(",")),
        ) {
            parse_pusher_webhooks(&hooks, &mut pusher_apps)?;
        }
        let advertise_addr = pick(
            flags.advertise_addr,
            "PUSHGATE_ADVERTISE_ADDR",
            file.advertise_addr,
        )
        .map(|text| {
            AdvertiseAddr::parse(&text).map_err(|message| ConfigError::Invalid {
                name: ADVERTISE_ADDR_SETTING,
                value: text,
                message,
            })
        })
        .transpose()?;
        let ms = Duration::from_millis;
        let config = Config {
            listen,
            redis_url,
            advertise_addr,
            redis_prefix,
            registry_ttl: ms(registry_ttl_ms),
            recovery,
            api_keys,
            jwt_secret,
            node_id,
            namespaces,
            ping_interval: ms(positive(
                "PUSHGATE_PING_INTERVAL_MS",
                flags.ping_interval_ms,
                file.ping_interval_ms,
                DEFAULT_PING_INTERVAL_MS,
            )?),
            ping_timeout: ms(positive(
                "PUSHGATE_PING_TIMEOUT_MS",
                flags.ping_timeout_ms,
                file.ping_timeout_ms,
                DEFAULT_PING_TIMEOUT_MS,
            )?),
            phoenix_timeout: ms(positive(
                "PUSHGATE_PHOENIX_TIMEOUT_MS",
                flags.phoenix_timeout_ms,
                file.phoenix_timeout_ms,
                DEFAULT_PHOENIX_TIMEOUT_MS,
            )?),
            connect_timeout: ms(positive(
                "PUSHGATE_CONNECT_TIMEOUT_MS",
                flags.connect_timeout_ms,
                file.connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT_MS,
            )?),
            upgrade_timeout: ms(positive(
                "PUSHGATE_UPGRADE_TIMEOUT_MS",
                flags.upgrade_timeout_ms,
                file.upgrade_timeout_ms,
                DEFAULT_UPGRADE_TIMEOUT_MS,
            )?),
            max_payload: positive(
                "PUSHGATE_MAX_PAYLOAD",
                flags.max_payload,
                file.max_payload,
                DEFAULT_MAX_PAYLOAD,
            )?,
            max_body_bytes: positive(
                "PUSHGATE_MAX_BODY_BYTES",
                flags.max_body_bytes,
                file.max_body_bytes.map(|v| v as u64),
                DEFAULT_MAX_BODY_BYTES as u64,
            )? as usize,
            queue_capacity: positive(
                "PUSHGATE_QUEUE_CAPACITY",
                flags.queue_capacity,
                file.queue_capacity.map(|v| v as u64),
                DEFAULT_QUEUE_CAPACITY as u64,
            )? as usize,
            queue_bytes: positive(
                "PUSHGATE_QUEUE_BYTES",
                flags.queue_bytes,
                file.queue_bytes.map(|v| v as u64),
                DEFAULT_QUEUE_BYTES as u64,
            )? as usize,
            shutdown_timeout: ms(num(
                "PUSHGATE_SHUTDOWN_TIMEOUT_MS",
                flags.shutdown_timeout_ms,
                file.shutdown_timeout_ms,
                DEFAULT_SHUTDOWN_TIMEOUT_MS,
            )?),
            worker_threads: match num(
                "PUSHGATE_WORKER_THREADS",
                flags.worker_threads,
                file.worker_threads.map(|v| v as u64),
                0,
            )? {
                0 => None,
                n => Some(n as usize),
            },
            pusher_apps,
            pusher_activity_timeout: ms(positive(
                "PUSHGATE_PUSHER_ACTIVITY_TIMEOUT_MS",
                flags.pusher_activity_timeout_ms,
                file.pusher_activity_timeout_ms,
                DEFAULT_PUSHER_ACTIVITY_TIMEOUT_MS,
            )?),
            pusher_pong_timeout: ms(positive(
                "PUSHGATE_PUSHER_PONG_TIMEOUT_MS",
                flags.pusher_pong_timeout_ms,
                file.pusher_pong_timeout_ms,
                DEFAULT_PUSHER_PONG_TIMEOUT_MS,
            )?),
            pusher_max_connections: match num(
                "PUSHGATE_PUSHER_MAX_CONNECTIONS",
                flags.pusher_max_connections,
                file.pusher_max_connections,
                0,
            )? {
                0 => None,
                n => Some(n as usize),
            },
            limits,
            token_rules,
            allowed_origins,
            trusted_proxies,
        };
        if config.jwt_secret.as_deref() == Some("") {
            return Err(invalid("PUSHGATE_JWT_SECRET", "", "must not be empty"));
        }
        Ok(config)
    }
}

/// The Redis URL schemes this build can connect with, and what each means to fred.
/// TLS (`rediss://`, `rediss-cluster://`, …) is refused rather than accepted: fred is
/// built without a TLS feature, so it would speak plain TCP to a TLS port and the node
/// would sit in `redis_unavailable` forever.
pub const REDIS_URL_SCHEMES: &[&str] = &[
    "redis://",
    "redis-cluster://",
    "redis-sentinel://",
    "redis+unix://",
];

/// The setting as a user may have written it, for error messages.
const REDIS_URL_SETTING: &str = "PUSHGATE_REDIS_URL (--redis-url)";

/// Refuses, at start, a Redis URL the bus could never connect with: a scheme other
/// than [`REDIS_URL_SCHEMES`], or a URL fred's own parser (the one the bus uses)
/// rejects. The message names the setting and the problem and never shows a password.
fn check_redis_url(url: &str) -> Result<(), ConfigError> {
    let shown = redact_url_password(url);
    let refuse = |message: String| ConfigError::Invalid {
        name: REDIS_URL_SETTING,
        value: shown.clone(),
        message,
    };
    let expected = REDIS_URL_SCHEMES.join(", ");
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(refuse(format!("not a URL; expected one of {expected}")));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme.starts_with("rediss") {
        return Err(refuse(format!(
            "TLS to Redis is not built into this gateway; use one of {expected} \
             (a TLS tunnel such as stunnel can carry redis://)"
        )));
    }
    if !REDIS_URL_SCHEMES
        .iter()
        .any(|s| s.trim_end_matches("://") == scheme)
    {
        return Err(refuse(format!(
            "unsupported scheme {scheme:?}; expected one of {expected}"
        )));
    }
    if scheme == "redis+unix" {
        if !rest.starts_with('/') {
            return Err(refuse(
                "a unix socket URL needs an absolute path, e.g. redis+unix:///run/redis.sock"
                    .to_owned(),
            ));
        }
    } else {
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return Err(refuse("no host".to_owned()));
        }
    }
    fred::types::config::Config::from_url(url)
        .map(drop)
        .map_err(|e| refuse(format!("malformed: {}", e.details())))
}

/// The setting as a user may have written it, for error messages.
pub const ADVERTISE_ADDR_SETTING: &str = "PUSHGATE_ADVERTISE_ADDR (--advertise-addr)";

/// Where the other nodes of a cluster reach this one, as configured: they forward to it
/// the long-polling requests and WebSocket upgrades of the sessions it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvertiseAddr {
    /// An IP address; the node's listen port is added.
    Ip(IpAddr),
    /// An IP address and port.
    Socket(SocketAddr),
    /// A host name and port, resolved by the peers (e.g. a compose service name).
    Host(String, u16),
}

impl AdvertiseAddr {
    /// `IP`, `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`. An unspecified address
    /// (`0.0.0.0`, `::`) or port 0 names no reachable place, so it is refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        const SHAPE: &str = "an IP address, IP:PORT or HOST:PORT";
        if text.is_empty() {
            return Err(format!("empty; expected {SHAPE}"));
        }
        if text.contains('/') || text.contains('@') {
            return Err(format!("expected {SHAPE}, without scheme or path"));
        }
        let unreachable = |ip: IpAddr| {
            format!("{ip} is not an address other nodes can reach; give this node's own")
        };
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.ip().is_unspecified() {
                return Err(unreachable(addr.ip()));
            }
            if addr.port() == 0 {
                return Err("port 0 is not a port other nodes can reach".to_owned());
            }
            return Ok(AdvertiseAddr::Socket(addr));
        }
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if ip.is_unspecified() {
                return Err(unreachable(ip));
            }
            return Ok(AdvertiseAddr::Ip(ip));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("a host name needs a port; expected {SHAPE}"));
        };
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("bad port {port:?}; expected {SHAPE}")),
            Ok(p) => p,
        };
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !host.starts_with(['-', '.'])
            && !host.ends_with(['-', '.']);
        if !valid_host {
            return Err(format!("bad host name {host:?}; expected {SHAPE}"));
        }
        Ok(AdvertiseAddr::Host(host.to_ascii_lowercase(), port))
    }

    /// `host:port` as peers connect to it; `listen_port` fills in a bare IP.
    pub fn authority(&self, listen_port: u16) -> String {
        match self {
            AdvertiseAddr::Ip(ip) => SocketAddr::new(*ip, listen_port).to_string(),
            AdvertiseAddr::Socket(addr) => addr.to_string(),
            AdvertiseAddr::Host(host, port) => format!("{host}:{port}"),
        }
    }
}

/// Where peers reach a node that set no `PUSHGATE_ADVERTISE_ADDR`: its listen address
/// when that names one interface; when it listens on every interface (`0.0.0.0`,
/// `[::]`), the local address its host uses toward Redis (`route`, found by the
/// server), with the listen port — the peers share that Redis, so they most likely
/// share that network too. Without a route the node cannot tell, and says so.
pub fn default_advertise_addr(
    listen: SocketAddr,
    route: Option<IpAddr>,
) -> Result<String, ConfigError> {
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    match route {
        Some(ip) if !ip.is_unspecified() => Ok(SocketAddr::new(ip, listen.port()).to_string()),
        _ => Err(ConfigError::Missing {
            name: ADVERTISE_ADDR_SETTING,
            message: format!(
                "not set, and this node listens on {listen} (every interface) and found no \
                 local address toward Redis; set it to an address the other nodes reach \
                 this one on"
            ),
        }),
    }
}

/// `scheme://user:secret@host` → `scheme://user:<redacted>@host`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or("", |(user, _)| user);
    format!("{scheme}://{user}:<redacted>{}", &rest[at..])
}

fn invalid(name: &'static str, value: &str, message: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::resolve(Flags::default(), |k| map.get(k).cloned(), None)
    }

    #[test]
    fn defaults_match_the_design_brief() {
        let c = from_env(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:3000");
        assert!(c.redis_url.is_none() && c.jwt_secret.is_none() && c.api_keys.is_empty());
        assert_eq!(c.namespaces, vec!["/"]);
        assert_eq!(c.ping_interval, Duration::from_millis(25_000));
        assert_eq!(c.redis_prefix, "pushgate");
        assert_eq!(c.registry_ttl, Duration::from_secs(30));
    }

    #[test]
    fn cluster_settings_are_read_and_checked() {
        let c = from_env(&[
            ("PUSHGATE_REDIS_URL", "redis://127.0.0.1:6379"),
            ("PUSHGATE_REDIS_PREFIX", "pg-test"),
            ("PUSHGATE_REGISTRY_TTL_MS", "3000"),
        ])
        .unwrap();
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(c.redis_prefix, "pg-test");
        assert_eq!(c.registry_ttl, Duration::from_secs(3));
        let err = from_env(&[("PUSHGATE_REGISTRY_TTL_MS", "10")]).unwrap_err();
        assert!(
            err.to_string().contains("PUSHGATE_REGISTRY_TTL_MS"),
            "{err}"
        );
        assert!(from_env(&[("PUSHGATE_REDIS_PREFIX", "a b")]).is_err());
    }

    #[test]
    fn environment_sets_every_value() {
        let c = from_env(&[
            ("PUSHGATE_LISTEN", "127.0.0.1:0"),
            ("PUSHGATE_API_KEYS", "k1, k2,"),
            ("PUSHGATE_NODE_ID", "gw1"),
            ("PUSHGATE_NAMESPACES", "/,/custom"),
            ("PUSHGATE_QUEUE_CAPACITY", "16"),
            ("PUSHGATE_WORKER_THREADS", "1"),
        ])
        .unwrap();
        assert_eq!(c.worker_threads, Some(1));
        assert_eq!(c.api_keys, vec!["k1", "k2"]);
        assert_eq!(c.node_id.as_str(), "gw1");
        assert_eq!(c.namespaces, vec!["/", "/custom"]);
        assert_eq!(c.queue_capacity, 16);
    }

    #[test]
    fn flag_wins_over_environment_which_wins_over_file() {
        let flags = Flags {
            queue_capacity: Some("7".into()),
            ..Flags::default()
        };
        let file = "queue_capacity = 9\nqueue_bytes = 99\nping_timeout_ms = 5\n".to_owned();
        let env = |k: &str| (k == "PUSHGATE_QUEUE_BYTES").then(|| "55".to_owned());
        let c = Config::resolve(flags, env, Some(("f.toml".into(), file))).unwrap();
        assert_eq!(c.queue_capacity, 7);
        assert_eq!(c.queue_bytes, 55);
        assert_eq!(c.ping_timeout, Duration::from_millis(5));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = from_env(&[("PUSHGATE_PING_INTERVAL_MS", "soon")]).unwrap_err();
        assert!(
            err.to_string().contains("PUSHGATE_PING_INTERVAL_MS"),
            "{err}"
        );
        let err = from_env(&[("PUSHGATE_LISTEN", "nowhere")]).unwrap_err();
        assert!(err.to_string().contains("PUSHGATE_LISTEN"), "{err}");
        assert!(from_env(&[("PUSHGATE_QUEUE_CAPACITY", "0")]).is_err());
        assert!(from_env(&[("PUSHGATE_NODE_ID", "a.b")]).is_err());
        assert!(from_env(&[("PUSHGATE_NAMESPACES", "chat")]).is_err());
    }

    #[test]
    fn every_supported_redis_url_scheme_is_accepted() {
        for url in [
            "redis://127.0.0.1:6390",
            "redis://:pw@redis.internal/2",
            "redis://user:pw@[::1]:6390",
            "redis-cluster://10.0.0.1:7000?node=10.0.0.2:7000&node=10.0.0.3:7000",
            "redis-sentinel://10.0.0.1:26379/0?sentinelServiceName=main",
            "redis+unix:///run/redis/redis.sock",
        ] {
            let c = from_env(&[("PUSHGATE_REDIS_URL", url)])
                .unwrap_or_else(|e| panic!("{url} refused: {e}"));
            assert_eq!(c.redis_url.as_deref(), Some(url));
        }
    }

    #[test]
    fn recovery_is_off_by_default_and_refused_on_a_redis_cluster() {
        let c = from_env(&[("PUSHGATE_RECOVERY_WINDOW_MS", "5000")]).unwrap();
        assert_eq!(
            c.recovery,
            Some(crate::recovery::Settings {
                window: Duration::from_secs(5),
                max_pushes: crate::recovery::DEFAULT_MAX_PUSHES
            })
        );
        assert!(from_env(&[]).unwrap().recovery.is_none());
        let err = from_env(&[
            ("PUSHGATE_RECOVERY_WINDOW_MS", "5000"),
            ("PUSHGATE_REDIS_URL", "redis-cluster://a:7000?node=b:7000"),
        ])
        .expect_err("recovery on a cluster")
        .to_string();
        assert!(err.contains("PUSHGATE_RECOVERY_WINDOW_MS"), "{err}");
    }

    #[test]
    fn a_wrong_or_malformed_redis_url_names_the_setting_and_the_problem() {
        for (url, problem) in [
            ("http://x", "unsupported scheme \"http\""),
            ("127.0.0.1:6379", "not a URL"),
            ("not a url", "not a URL"),
            ("rediss://cache:6380", "TLS"),
            ("rediss-cluster://cache:6380", "TLS"),
            ("redis://", "no host"),
            ("redis://:6390", "no host"),
            ("redis://host:99999", "malformed"),
            ("redis://host:6390/a/b", "malformed"),
            ("redis://host:6390/x", "malformed"),
            ("redis-cluster://a:7000?node=b", "malformed"),
            ("redis-sentinel://a:26379", "malformed"),
            ("redis+unix://relative.sock", "absolute path"),
        ] {
            let err = from_env(&[("PUSHGATE_REDIS_URL", url)])
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"))
                .to_string();
            assert!(err.contains("PUSHGATE_REDIS_URL"), "{url}: {err}");
            assert!(err.contains("--redis-url"), "{url}: {err}");
            assert!(err.contains(problem), "{url}: {err}");
        }
        let flags = Flags {
            redis_url: Some("http://x".into()),
            ..Flags::default()
        };
        assert!(Config::resolve(flags, |_| None, None).is_err());
    }

    #[test]
    fn a_refused_redis_url_never_shows_its_password() {
        for url in ["http://u:hunter2@x", "redis://:hunter2@host:99999"] {
            let err = from_env(&[("PUSHGATE_REDIS_URL", url)])
                .unwrap_err()
                .to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("<redacted>"), "{err}");
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let c = from_env(&[
            ("PUSHGATE_API_KEYS", "key-one,key-two"),
            ("PUSHGATE_JWT_SECRET", "jwt-s3cret"),
            ("PUSHGATE_REDIS_URL", "redis://:hunter2@127.0.0.1:6379"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["key-one", "key-two", "jwt-s3cret", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("<2 redacted>"), "{shown}");
    }

    #[test]
    fn pusher_apps_are_read_from_the_environment_and_the_file() {
        let c = from_env(&[("PUSHGATE_PUSHER_APPS", "1:key-one:s3cret, app2:k2:a:b")]).unwrap();
        assert_eq!(
            c.pusher_apps,
            vec![
                PusherApp {
                    id: "1".into(),
                    key: "key-one".into(),
                    secret: "s3cret".into(),
                    webhook: None,
                },
                PusherApp {
                    id: "app2".into(),
                    key: "k2".into(),
                    secret: "a:b".into(),
                    webhook: None,
                },
            ],
            "a secret may hold ':'"
        );
        assert!(from_env(&[]).unwrap().pusher_apps.is_empty());
        let file = "pusher_apps = [\"7:k:s\"]\npusher_max_connections = 5\n".to_owned();
        let c = Config::resolve(Flags::default(), |_| None, Some(("f.toml".into(), file))).unwrap();
        assert_eq!(c.pusher_apps[0].id, "7");
        assert_eq!(c.pusher_max_connections, Some(5));
        assert_eq!(c.pusher_activity_timeout, Duration::from_secs(120));
    }

    #[test]
    fn bad_pusher_apps_name_the_setting_and_never_show_the_secret() {
        for (text, problem) in [
            ("1:key", "app_id:key:secret"),
            ("1:key:", "secret must not be empty"),
            (":key:hunter2", "app id"),
            ("1:k/y:hunter2", "key must be"),
            ("1:a:hunter2,1:b:hunter2", "listed twice"),
            ("1:a:hunter2,2:a:hunter2", "listed twice"),
            (" , ", "no app"),
        ] {
            let err = from_env(&[("PUSHGATE_PUSHER_APPS", text)])
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"))
                .to_string();
            assert!(err.contains("PUSHGATE_PUSHER_APPS"), "{text}: {err}");
            assert!(err.contains(problem), "{text}: {err}");
            assert!(!err.contains("hunter2"), "{text}: {err}");
        }
        let c = from_env(&[("PUSHGATE_PUSHER_APPS", "1:k:hunter2")]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(from_env(&[("PUSHGATE_PUSHER_ACTIVITY_TIMEOUT_MS", "0")]).is_err());
    }

    /// Resolves from environment variables and an in-memory file system.
    fn with_files(vars: &[(&str, &str)], files: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let fs: HashMap<PathBuf, String> = files
            .iter()
            .map(|(k, v)| (PathBuf::from(k), v.to_string()))
            .collect();
        Config::resolve_with(
            Flags::default(),
            |k| env.get(k).cloned(),
            None,
            |p| {
                fs.get(p).cloned().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
                })
            },
        )
    }

    #[test]
    fn limits_have_defaults_and_zero_means_none() {
        let c = from_env(&[]).unwrap();
        assert_eq!(c.limits, limits::Settings::default());
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.token_rules.leeway, Duration::from_secs(30));
        assert!(c.allowed_origins.is_any() && c.trusted_proxies.is_empty());
        let c = from_env(&[
            ("PUSHGATE_MAX_CONNECTIONS", "0"),
            ("PUSHGATE_MAX_CONNECTIONS_PER_IP", "7"),
            ("PUSHGATE_CONNECT_RATE_PER_IP", "0"),
            ("PUSHGATE_API_RATE", "50"),
            ("PUSHGATE_API_BURST", "60"),
            ("PUSHGATE_MAX_ROOMS_PER_CONNECTION", "3"),
            ("PUSHGATE_MAX_BATCH", "10"),
            ("PUSHGATE_MAX_PENDING_ACKS", "0"),
        ])
        .unwrap();
        assert_eq!(c.limits.max_connections, None);
        assert_eq!(c.limits.max_connections_per_ip, Some(7));
        assert_eq!(c.limits.connect_rate, None);
        assert_eq!(
            c.limits.api_rate,
            Some(Rate {
                per_second: 50,
                burst: 60
            })
        );
        assert_eq!(c.limits.max_rooms, Some(3));
        assert_eq!(
            c.token_rules.max_rooms,
            Some(3),
            "tokens follow the room limit"
        );
        assert_eq!(c.limits.max_batch, 10);
        assert_eq!(c.limits.max_pending_acks, None);
        for (k, v) in [
            ("PUSHGATE_MAX_BATCH", "0"),
            ("PUSHGATE_MAX_PUSH_TARGETS", "0"),
            ("PUSHGATE_CONNECT_BURST_PER_IP", "0"),
            ("PUSHGATE_MAX_CONNECTIONS", "many"),
            ("PUSHGATE_API_RATE", "99999999999"),
        ] {
            let err = from_env(&[(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{k}={v}: {err}");
        }
        let file =
            "max_connections_per_user = 4\nallowed_origins = [\"https://a.example\"]\n".to_owned();
        let c = Config::resolve(Flags::default(), |_| None, Some(("f.toml".into(), file))).unwrap();
        assert_eq!(c.limits.max_connections_per_user, Some(4));
        assert!(c.allowed_origins.allows(Some("https://a.example")));
    }

    #[test]
    fn security_settings_are_read_and_checked() {
        let c = from_env(&[
            ("PUSHGATE_JWT_LEEWAY_MS", "1500"),
            ("PUSHGATE_JWT_AUDIENCE", "pushgate, push"),
            ("PUSHGATE_JWT_ISSUER", "https://app.example.com"),
            (
                "PUSHGATE_ALLOWED_ORIGINS",
                "https://app.example.com,https://*.example.org",
            ),
            ("PUSHGATE_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8"),
        ])
        .unwrap();
        assert_eq!(c.token_rules.leeway, Duration::from_millis(1500));
        assert_eq!(c.token_rules.audience, vec!["pushgate", "push"]);
        assert_eq!(c.token_rules.issuer, vec!["https://app.example.com"]);
        assert!(c.allowed_origins.allows(Some("https://x.example.org")));
        assert!(!c.allowed_origins.allows(Some("https://evil.example.net")));
        assert!(c.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        for (k, v) in [
            ("PUSHGATE_ALLOWED_ORIGINS", "app.example.com"),
            ("PUSHGATE_ALLOWED_ORIGINS", " , "),
            ("PUSHGATE_TRUSTED_PROXIES", "10.0.0.0/40"),
            ("PUSHGATE_JWT_LEEWAY_MS", "-1"),
        ] {
            let err = from_env(&[(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{k}={v}: {err}");
        }
    }

    #[test]
    fn the_advertise_address_is_an_ip_a_socket_address_or_a_host_and_port() {
        let parse = |t: &str| AdvertiseAddr::parse(t);
        assert_eq!(parse("10.0.0.7").unwrap().authority(3001), "10.0.0.7:3001");
        assert_eq!(
            parse("10.0.0.7:4000").unwrap().authority(3001),
            "10.0.0.7:4000"
        );
        assert_eq!(
            parse("[fd00::7]:4000").unwrap().authority(1),
            "[fd00::7]:4000"
        );
        assert_eq!(
            parse("[fd00::7]").unwrap().authority(3000),
            "[fd00::7]:3000"
        );
        assert_eq!(parse("fd00::7").unwrap().authority(3000), "[fd00::7]:3000");
        assert_eq!(parse(" GW1:3000 ").unwrap().authority(1), "gw1:3000");
        assert_eq!(
            parse("gw-1.internal.example:3000").unwrap(),
            AdvertiseAddr::Host("gw-1.internal.example".into(), 3000)
        );
        for (bad, why) in [
            ("", "empty"),
            ("0.0.0.0", "not an address other nodes can reach"),
            ("0.0.0.0:3000", "not an address other nodes can reach"),
            ("[::]:3000", "not an address other nodes can reach"),
            ("10.0.0.7:0", "port 0"),
            ("gw1", "needs a port"),
            ("gw1:0", "bad port"),
            ("gw1:http", "bad port"),
            ("gw1:70000", "bad port"),
            ("http://gw1:3000", "without scheme"),
            ("gw1:3000/x", "without scheme"),
            ("-gw1:3000", "bad host name"),
            ("gw_1:3000", "bad host name"),
            (":3000", "bad host name"),
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn secrets_are_read_from_files_with_the_trailing_newline_trimmed() {
        let c = with_files(
            &[
                ("PUSHGATE_API_KEYS_FILE", "/run/secrets/keys"),
                ("PUSHGATE_JWT_SECRET_FILE", "/run/secrets/jwt"),
                ("PUSHGATE_PUSHER_APPS_FILE", "/run/secrets/pusher"),
            ],
            &[
                ("/run/secrets/keys", "k1\nk2, k3\n"),
                ("/run/secrets/jwt", "s3cret with spaces \r\n"),
                ("/run/secrets/pusher", "1:key:sec:ret\n2:key2:other\n"),
            ],
        )
        .unwrap();
        assert_eq!(c.api_keys, vec!["k1", "k2", "k3"]);
        assert_eq!(c.jwt_secret.as_deref(), Some("s3cret with spaces "));
        assert_eq!(c.pusher_apps.len(), 2);
        assert_eq!(c.pusher_apps[0].secret, "sec:ret");
        assert_eq!(c.pusher_apps[1].secret, "other");
        let shown = format!("{c:?}");
        for secret in ["k1", "s3cret", "sec:ret", "other"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        // The TOML file can name them too.
        let file = "jwt_secret_file = \"/s/jwt\"\n".to_owned();
        let c = Config::resolve_with(
            Flags::default(),
            |_| None,
            Some(("f.toml".into(), file)),
            |p| {
                assert_eq!(p, Path::new("/s/jwt"));
                Ok("from-file\n".into())
            },
        )
        .unwrap();
        assert_eq!(c.jwt_secret.as_deref(), Some("from-file"));
    }

    #[test]
    fn a_secret_given_both_ways_or_unreadable_is_a_clear_error() {
        for (name, value, file_var) in [
            ("PUSHGATE_API_KEYS", "k1", "PUSHGATE_API_KEYS_FILE"),
            ("PUSHGATE_JWT_SECRET", "hunter2", "PUSHGATE_JWT_SECRET_FILE"),
            (
                "PUSHGATE_PUSHER_APPS",
                "1:k:hunter2",
                "PUSHGATE_PUSHER_APPS_FILE",
            ),
        ] {
            let err = with_files(
                &[(name, value), (file_var, "/s/x")],
                &[("/s/x", "hunter2\n")],
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(name) && err.contains(file_var), "{err}");
            assert!(err.contains("not both"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");

            let err = with_files(&[(file_var, "/nowhere/secret")], &[]).unwrap_err();
            let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(text.contains(file_var), "{text}");
            assert!(text.contains("/nowhere/secret"), "{text}");
            assert!(text.contains("No such file"), "{text}");

            let err = with_files(&[(file_var, "/s/empty")], &[("/s/empty", "\n")])
                .unwrap_err()
                .to_string();
            assert!(err.contains(file_var) && err.contains("empty"), "{err}");
        }
        // The real file system: a directory cannot be read as a secret.
        let err = Config::resolve(
            Flags {
                jwt_secret_file: Some(std::env::temp_dir()),
                ..Flags::default()
            },
            |_| None,
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("PUSHGATE_JWT_SECRET_FILE"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_advertise_address_names_the_setting() {
        let err = from_env(&[("PUSHGATE_ADVERTISE_ADDR", "0.0.0.0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PUSHGATE_ADVERTISE_ADDR"), "{err}");
        assert!(err.contains("--advertise-addr"), "{err}");
        let c = from_env(&[("PUSHGATE_ADVERTISE_ADDR", "10.1.2.3")]).unwrap();
        assert_eq!(
            c.advertise_addr,
            Some(AdvertiseAddr::Ip([10, 1, 2, 3].into()))
        );
        let file = "advertise_addr = \"gw2:3000\"\n".to_owned();
        let c = Config::resolve(Flags::default(), |_| None, Some(("f.toml".into(), file))).unwrap();
        assert_eq!(
            c.advertise_addr,
            Some(AdvertiseAddr::Host("gw2".into(), 3000))
        );
        assert_eq!(from_env(&[]).unwrap().advertise_addr, None);
    }

    #[test]
    fn without_a_setting_peers_reach_the_listen_address_or_the_route_to_redis() {
        let listen = |s: &str| s.parse::<SocketAddr>().unwrap();
        let route = Some(IpAddr::from([10, 0, 0, 9]));
        assert_eq!(
            default_advertise_addr(listen("127.0.0.1:3001"), route).unwrap(),
            "127.0.0.1:3001"
        );
        assert_eq!(
            default_advertise_addr(listen("[fd00::1]:3001"), None).unwrap(),
            "[fd00::1]:3001"
        );
        assert_eq!(
            default_advertise_addr(listen("0.0.0.0:3000"), route).unwrap(),
            "10.0.0.9:3000"
        );
        assert_eq!(
            default_advertise_addr(listen("[::]:3000"), Some(IpAddr::from([127, 0, 0, 1])))
                .unwrap(),
            "127.0.0.1:3000"
        );
        let err = default_advertise_addr(listen("0.0.0.0:3000"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PUSHGATE_ADVERTISE_ADDR"), "{err}");
        assert!(err.contains("0.0.0.0:3000"), "{err}");
    }

    #[test]
    fn pusher_webhooks_name_an_app_and_an_http_url() {
        let c = from_env(&[
            ("PUSHGATE_PUSHER_APPS", "1:k:s,2:k2:s"),
            (
                "PUSHGATE_PUSHER_WEBHOOKS",
                "2 = http://127.0.0.1:9000/hooks?a=b=c ,",
            ),
        ])
        .unwrap();
        assert_eq!(c.pusher_apps[0].webhook, None);
        assert_eq!(
            c.pusher_apps[1].webhook.as_deref(),
            Some("http://127.0.0.1:9000/hooks?a=b=c"),
            "a URL may hold '='"
        );
        let file = "pusher_apps = [\"7:k:s\"]\npusher_webhooks = [\"7=http://h/x\"]\n".to_owned();
        let c = Config::resolve(Flags::default(), |_| None, Some(("f.toml".into(), file))).unwrap();
        assert_eq!(c.pusher_apps[0].webhook.as_deref(), Some("http://h/x"));
    }

    #[test]
    fn bad_pusher_webhooks_name_the_setting_and_the_problem() {
        for (hooks, problem) in [
            ("http://h/x", "app_id=url"),
            ("9=http://h/x", "not in PUSHGATE_PUSHER_APPS"),
            ("1=http://h/x,1=http://h/y", "listed twice"),
            ("1=h/x", "not an absolute URL"),
            ("1=https://h/x", "https is not built"),
            ("1=ftp://h/x", "unsupported scheme"),
            (" , ", "no webhook"),
        ] {
            let err = from_env(&[
                ("PUSHGATE_PUSHER_APPS", "1:k:s"),
                ("PUSHGATE_PUSHER_WEBHOOKS", hooks),
            ])
            .err()
            .unwrap_or_else(|| panic!("{hooks} accepted"))
            .to_string();
            assert!(err.contains("PUSHGATE_PUSHER_WEBHOOKS"), "{hooks}: {err}");
            assert!(err.contains(problem), "{hooks}: {err}");
        }
        let err = from_env(&[
            ("PUSHGATE_PUSHER_APPS", "1:k:s"),
            ("PUSHGATE_PUSHER_WEBHOOKS", "1=http://u:hunter2@h/x"),
        ])
        .map(|c| format!("{c:?}"))
        .unwrap();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let r = Config::resolve(
            Flags::default(),
            |_| None,
            Some(("f.toml".into(), "listn = \"x\"".into())),
        );
        assert!(matches!(r, Err(ConfigError::ParseFile { .. })));
    }
}
