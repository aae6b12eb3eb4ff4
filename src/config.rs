//! Configuration: command-line flags, each also an environment variable, optionally a
//! TOML file. Flags win over the environment, the environment over the file, the file
//! over the defaults.
//!
//! Only this module reads the environment or files. Resolution is a pure function of
//! the parsed flags, an environment lookup and the file's text, so tests build a
//! [`Config`] from a map without touching the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::id::{InvalidNodeId, NodeId};

/// Engine.IO's own default: long enough that idle mobile clients are cheap, short enough
/// that a dead peer is noticed within a minute.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 25_000;
/// Engine.IO's default pong wait.
pub const DEFAULT_PING_TIMEOUT_MS: u64 = 20_000;
/// A Phoenix connection silent this long is closed: phoenix.js beats every 30 s, and
/// Phoenix's own server gives a socket 60 s.
pub const DEFAULT_PHOENIX_TIMEOUT_MS: u64 = 60_000;
/// Socket.IO's default: a session that never joins a namespace is closed after this.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 45_000;
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
/// the refresh (every third) would be too busy and too close to a Redis hiccup.
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
    /// Prefix of every Redis key and channel [env: PUSHGATE_REDIS_PREFIX] [default: pushgate]
    #[arg(long)]
    pub redis_prefix: Option<String>,
    /// TTL of this node's registry entries in Redis, refreshed every third of it [env: PUSHGATE_REGISTRY_TTL_MS] [default: 30000]
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
    pusher_webhooks: Option<Vec<String>>,
}

/// The resolved configuration of one node. Its `Debug` output redacts the secrets
/// (API keys, JWT secret, the Redis URL, which may carry a password), so logging a
/// configuration can never leak them.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so several gateways can share a Redis.
    pub redis_prefix: String,
    /// TTL of the registry entries this node owns in Redis.
    pub registry_ttl: Duration,
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
            .field("redis_prefix", &self.redis_prefix)
            .field("registry_ttl", &self.registry_ttl)
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

    /// Resolves flags, then `env`, then the file (path and text), then defaults.
    pub fn resolve(
        flags: Flags,
        env: impl Fn(&str) -> Option<String>,
        file: Option<(PathBuf, String)>,
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

        let api_keys = match pick(
            flags.api_keys,
            "PUSHGATE_API_KEYS",
            file.api_keys.map(|v| v.join(",")),
        ) {
            None => Vec::new(),
            Some(v) => {
                let keys: Vec<String> = v
                    .split(',')
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
        let ms = Duration::from_millis;
        let config = Config {
            listen,
            redis_url,
            redis_prefix,
            registry_ttl: ms(registry_ttl_ms),
            api_keys,
            jwt_secret: pick(flags.jwt_secret, "PUSHGATE_JWT_SECRET", file.jwt_secret),
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
            pusher_apps: {
                let mut apps = match pick(
                    flags.pusher_apps,
                    "PUSHGATE_PUSHER_APPS",
                    file.pusher_apps.map(|v| v.join(",")),
                ) {
                    None => Vec::new(),
                    Some(v) => parse_pusher_apps(&v)?,
                };
                if let Some(hooks) = pick(
                    flags.pusher_webhooks,
                    "PUSHGATE_PUSHER_WEBHOOKS",
                    file.pusher_webhooks.map(|v| v.join(",")),
                ) {
                    parse_pusher_webhooks(&hooks, &mut apps)?;
                }
                apps
            },
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
