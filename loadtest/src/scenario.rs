//! What a run does: connections, ramp, targets, identities, pushes. Read from flags, a
//! TOML scenario file (`--scenario`, the same names in snake_case), or both; a flag wins
//! over the file, the file over the defaults. The resolved [`Scenario`] is what worker
//! processes receive.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{phoenix, Protocol, TokenPlace};

/// Default connections: enough to see a shape, few enough for a laptop.
const DEFAULT_CONNECTIONS: u64 = 1000;
/// Default ramp, connections per second.
const DEFAULT_RAMP_RATE: f64 = 500.0;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time after the ramp, before pushes: memory per idle connection is read at its end.
const DEFAULT_HOLD: Duration = Duration::from_secs(5);
const DEFAULT_DURATION: Duration = Duration::from_secs(30);
/// Time after the last push for deliveries still in flight.
const DEFAULT_DRAIN: Duration = Duration::from_secs(3);

/// Which connections a push addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PushTo {
    /// No pushes: connections only.
    None,
    /// `{"all": true}`
    All,
    /// `{"user": "u<k>"}` for a random k below `users`.
    User,
    /// `{"room": "r<k>"}` for a random k below `rooms`.
    Room,
}

/// Which HTTP API pushes go through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PushApi {
    /// pushgate's `POST /v1/push` (every target kind, acks, `wait`).
    #[default]
    V1,
    /// The Pusher HTTP API, `POST /apps/<id>/events` signed with the app's secret: what
    /// pushgate's Pusher frontend and any Pusher server (Sockudo) answer. Rooms only
    /// (a room is a channel), no acks.
    Pusher,
}

/// The Pusher app the clients connect to and the pushes are signed for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PusherApp {
    pub id: String,
    pub key: String,
    pub secret: String,
}

impl fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PusherApp({}:{}:***)", self.id, self.key)
    }
}

/// The app of a run that names none: what `bench/compare.sh` configures on both sides.
pub const DEFAULT_PUSHER_APP: &str = "load-app:load-key:load-secret";

impl FromStr for PusherApp {
    type Err = String;
    /// `app_id:key:secret` (the secret is the rest, so it may hold `:`).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.trim().splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(id), Some(key), Some(secret))
                if !id.is_empty() && !key.is_empty() && !secret.is_empty() =>
            {
                Ok(PusherApp {
                    id: id.to_owned(),
                    key: key.to_owned(),
                    secret: secret.to_owned(),
                })
            }
            _ => Err("expected app_id:key:secret".to_owned()),
        }
    }
}

/// A duration written `500ms`, `10s`, `2m`, `1h` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 10s, 2m)"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            u => {
                return Err(format!(
                    "unknown duration unit {u:?} in {s:?} (ms, s, m, h)"
                ))
            }
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("{s:?} is not a duration"));
        }
        Ok(Span(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) if s >= 0.0 && s.is_finite() => Ok(Span(Duration::from_secs_f64(s))),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!("{s} is not a duration"))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Every setting, optional: the flags and the scenario file both fill one of these.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Gateway endpoints `host:port`, comma-separated or repeated; connection i goes to
    /// target i mod len. They must be one cluster (or one node) for the expected counts.
    #[arg(long = "target", alias = "targets", value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    /// Client protocol: Socket.IO v4, Phoenix Channels v2 (joins `pushgate` and the
    /// room's topic, heartbeats, acks with `pushgate:ack`), or Pusher Channels 7
    /// (subscribes to the room as a public channel; no token, no acks).
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// WebSocket path (default: `/socket.io/` for Socket.IO, `/socket/websocket` for
    /// Phoenix, `/app` for Pusher, which appends `/<key>`).
    #[arg(long)]
    pub path: Option<String>,
    /// Pusher app `app_id:key:secret`: the key in the clients' URL, the id and secret for
    /// `--push-api pusher` [default: load-app:load-key:load-secret].
    #[arg(long, env = "PUSHGATE_LOAD_PUSHER_APP", hide_env_values = true)]
    pub pusher_app: Option<String>,
    /// The push API: pushgate's `/v1/push`, or the Pusher HTTP API (`/apps/<id>/events`,
    /// signed; room pushes only) that any Pusher server answers.
    #[arg(long, value_enum)]
    pub push_api: Option<PushApi>,
    /// Connections to open.
    #[arg(long, short = 'n')]
    pub connections: Option<u64>,
    /// Ramp rate, connections per second (over all workers).
    #[arg(long)]
    pub ramp_rate: Option<f64>,
    /// Local source addresses 127.0.0.1..=127.0.0.<k> (0 = automatic from the
    /// ephemeral port range; 1 with no bind = the kernel's choice).
    #[arg(long)]
    pub sources: Option<u32>,
    /// Time for TCP connect + upgrade + protocol handshake (Phoenix: the joins too).
    #[arg(long)]
    pub connect_timeout: Option<Span>,
    /// Idle time after the ramp, before pushes.
    #[arg(long)]
    pub hold: Option<Span>,
    /// Push phase length.
    #[arg(long)]
    pub duration: Option<Span>,
    /// Wait after the last push for deliveries in flight.
    #[arg(long)]
    pub drain: Option<Span>,
    /// What pushes address.
    #[arg(long, value_enum)]
    pub push: Option<PushTo>,
    /// Pushes per second (0 = none).
    #[arg(long)]
    pub push_rate: Option<f64>,
    /// Push endpoints, comma-separated or repeated, used round-robin. Default:
    /// http://<target>/v1/push for each target (the socket.io peer: http://<target>/push).
    #[arg(long = "push-url", value_delimiter = ',')]
    pub push_urls: Option<Vec<String>>,
    /// Bearer key for the push API.
    #[arg(long, env = "PUSHGATE_LOAD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Distinct users: connection i is user u<i mod users>. Default: one per connection.
    #[arg(long)]
    pub users: Option<u64>,
    /// Rooms: connection i joins r<i mod rooms> through its token's `rooms` claim.
    #[arg(long)]
    pub rooms: Option<u64>,
    /// HS256 secret for connection tokens; unset = connect without a token.
    #[arg(long, env = "PUSHGATE_LOAD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Where the token goes (default: Socket.IO `auth`, Phoenix `query`; Phoenix `auth`
    /// is phoenix 1.8's `authToken` subprotocol).
    #[arg(long, value_enum)]
    pub token_in: Option<TokenPlace>,
    /// Phoenix heartbeat interval (phoenix.js: 30 s).
    #[arg(long)]
    pub heartbeat: Option<Span>,
    /// Ask for acks: `"ack": {"timeout_ms": N}` on every push.
    #[arg(long)]
    pub ack_timeout_ms: Option<u64>,
    /// Clients answer ack requests (`--client-ack false` to let them time out).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub client_ack: Option<bool>,
    /// Send `"wait": true` and sum the reports the push API returns.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub wait: Option<bool>,
    /// Event name of the pushes.
    #[arg(long)]
    pub event: Option<String>,
    /// Extra bytes of filler in every push's data.
    #[arg(long)]
    pub pad: Option<usize>,
    /// Worker processes (default: as many as the open-files limit needs).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Gateway process ids to sample RSS and CPU of (comma-separated or repeated).
    #[arg(long = "pid", value_delimiter = ',')]
    pub pids: Option<Vec<u32>>,
    /// JSON results file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// PNG chart file (default: the --out path with .png).
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// A name for this run in the report.
    #[arg(long)]
    pub label: Option<String>,
}

macro_rules! overlay {
    ($a:expr, $b:expr; $($f:ident),* $(,)?) => {
        Settings { $($f: $a.$f.or($b.$f),)* }
    };
}

impl Settings {
    /// Reads a TOML scenario file.
    pub fn from_file(path: &Path) -> Result<Settings, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ScenarioError::Toml(message) => ScenarioError::File {
                path: path.to_owned(),
                message,
            },
            e => e,
        })
    }

    pub fn from_toml(text: &str) -> Result<Settings, ScenarioError> {
        toml::from_str(text).map_err(|e| ScenarioError::Toml(e.to_string()))
    }

    /// `self` where set, else `base`.
    pub fn over(self, base: Settings) -> Settings {
        overlay!(self, base; targets, protocol, path, pusher_app, push_api, connections,
            ramp_rate, sources,
            connect_timeout, hold, duration, drain, push, push_rate, push_urls, api_key, users,
            rooms, jwt_secret, token_in, heartbeat, ack_timeout_ms, client_ack, wait, event,
            pad, workers, pids, out, chart, label)
    }
}

/// A setting that cannot be used, with the setting's name.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("scenario: {0}")]
    Toml(String),
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

fn invalid(setting: &'static str, message: impl fmt::Display) -> ScenarioError {
    ScenarioError::Invalid {
        setting,
        message: message.to_string(),
    }
}

/// A complete, checked scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub label: Option<String>,
    pub targets: Vec<String>,
    pub protocol: Protocol,
    pub path: String,
    pub pusher_app: PusherApp,
    pub push_api: PushApi,
    pub connections: u64,
    pub ramp_rate: f64,
    /// 0 = automatic (decided by the plan).
    pub sources: u32,
    pub connect_timeout: Duration,
    pub hold: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub push: PushTo,
    pub push_rate: f64,
    pub push_urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    pub users: u64,
    pub rooms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    pub token_in: TokenPlace,
    pub heartbeat: Duration,
    pub ack_timeout_ms: Option<u64>,
    pub client_ack: bool,
    pub wait: bool,
    pub event: String,
    pub pad: usize,
    pub workers: Option<u32>,
    pub pids: Vec<u32>,
    pub out: Option<PathBuf>,
    pub chart: Option<PathBuf>,
}

impl Scenario {
    /// Applies defaults and checks every setting.
    pub fn resolve(s: Settings) -> Result<Scenario, ScenarioError> {
        let targets = s
            .targets
            .unwrap_or_else(|| vec!["127.0.0.1:3000".to_owned()]);
        if targets.is_empty() {
            return Err(invalid("targets", "at least one host:port is needed"));
        }
        for t in &targets {
            match t.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return Err(invalid("targets", format!("{t:?} is not host:port"))),
            }
        }
        let protocol = s.protocol.unwrap_or_default();
        let path = s.path.unwrap_or_else(|| protocol.default_path().to_owned());
        if !path.starts_with('/') {
            return Err(invalid("path", "must start with /"));
        }
        let connections = s.connections.unwrap_or(DEFAULT_CONNECTIONS);
        if connections == 0 {
            return Err(invalid("connections", "must be at least 1"));
        }
        let ramp_rate = s.ramp_rate.unwrap_or(DEFAULT_RAMP_RATE);
        if !(ramp_rate > 0.0 && ramp_rate.is_finite()) {
            return Err(invalid("ramp_rate", "must be a positive number"));
        }
        let sources = s.sources.unwrap_or(0);
        if sources > 254 {
            return Err(invalid(
                "sources",
                "at most 254 (127.0.0.1 ..= 127.0.0.254)",
            ));
        }
        let push_rate = s.push_rate.unwrap_or(1.0);
        if !(push_rate >= 0.0 && push_rate.is_finite()) {
            return Err(invalid("push_rate", "must be 0 or a positive number"));
        }
        let push = if push_rate == 0.0 {
            PushTo::None
        } else {
            s.push.unwrap_or(PushTo::All)
        };
        let users = s.users.unwrap_or(connections);
        if users == 0 {
            return Err(invalid("users", "must be at least 1"));
        }
        let rooms = s.rooms.unwrap_or(0);
        let jwt_secret = s.jwt_secret.filter(|k| !k.is_empty());
        let tokens = protocol.rooms_need_token();
        match push {
            PushTo::User if protocol == Protocol::Pusher => {
                return Err(invalid(
                    "push",
                    "Pusher clients of this tool do not sign in: push to rooms (channels) or all",
                ))
            }
            PushTo::User if jwt_secret.is_none() => {
                return Err(invalid(
                    "jwt_secret",
                    "pushes to users need connection tokens (--jwt-secret)",
                ))
            }
            PushTo::Room if tokens && jwt_secret.is_none() => {
                return Err(invalid(
                    "jwt_secret",
                    "pushes to rooms need connection tokens (--jwt-secret)",
                ))
            }
            PushTo::Room if rooms == 0 => {
                return Err(invalid("rooms", "push = room needs rooms >= 1"))
            }
            _ => {}
        }
        if rooms > 0 && tokens && jwt_secret.is_none() {
            return Err(invalid(
                "rooms",
                "rooms are joined through the token: set --jwt-secret",
            ));
        }
        let pusher_app: PusherApp = s
            .pusher_app
            .as_deref()
            .unwrap_or(DEFAULT_PUSHER_APP)
            .parse()
            .map_err(|e| invalid("pusher_app", e))?;
        let push_api = s.push_api.unwrap_or_default();
        if push_api == PushApi::Pusher {
            if !matches!(push, PushTo::Room | PushTo::None) {
                return Err(invalid(
                    "push_api",
                    "the Pusher HTTP API pushes to channels: use --push room",
                ));
            }
            if s.ack_timeout_ms.is_some() || s.wait == Some(true) {
                return Err(invalid(
                    "push_api",
                    "the Pusher HTTP API has no acks and no reports: drop --ack-timeout-ms and --wait",
                ));
            }
        }
        if let Some(ms) = s.ack_timeout_ms {
            if !(1..=300_000).contains(&ms) {
                return Err(invalid("ack_timeout_ms", "must be 1 ..= 300000"));
            }
        }
        let wait = s.wait.unwrap_or(false);
        let drain = match (s.drain, s.ack_timeout_ms) {
            (Some(d), _) => d.0,
            // Acks that are waited for may take the whole timeout.
            (None, Some(ms)) => DEFAULT_DRAIN.max(Duration::from_millis(ms + 1000)),
            (None, None) => DEFAULT_DRAIN,
        };
        let push_urls = match s.push_urls {
            Some(urls) if urls.is_empty() => return Err(invalid("push_urls", "empty list")),
            Some(urls) => urls,
            None => targets
                .iter()
                .map(|t| match push_api {
                    PushApi::V1 => format!("http://{t}/v1/push"),
                    PushApi::Pusher => format!("http://{t}/apps/{}/events", pusher_app.id),
                })
                .collect(),
        };
        for u in &push_urls {
            if !u.starts_with("http://") {
                return Err(invalid("push_urls", format!("{u:?}: only http:// URLs")));
            }
        }
        let event = s.event.unwrap_or_else(|| "load".to_owned());
        if event.is_empty() {
            return Err(invalid("event", "must not be empty"));
        }
        let heartbeat = s.heartbeat.map_or(phoenix::DEFAULT_HEARTBEAT, |d| d.0);
        if heartbeat.is_zero() {
            return Err(invalid("heartbeat", "must be more than 0"));
        }
        if s.workers == Some(0) {
            return Err(invalid("workers", "must be at least 1"));
        }
        Ok(Scenario {
            label: s.label,
            targets,
            protocol,
            path,
            pusher_app,
            push_api,
            connections,
            ramp_rate,
            sources,
            connect_timeout: s.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            hold: s.hold.map_or(DEFAULT_HOLD, |d| d.0),
            duration: s.duration.map_or(DEFAULT_DURATION, |d| d.0),
            drain,
            push,
            push_rate,
            push_urls,
            api_key: s.api_key.filter(|k| !k.is_empty()),
            users,
            rooms,
            jwt_secret,
            token_in: s.token_in.unwrap_or_else(|| protocol.default_token_place()),
            heartbeat,
            ack_timeout_ms: s.ack_timeout_ms,
            client_ack: s.client_ack.unwrap_or(true),
            wait,
            event,
            pad: s.pad.unwrap_or(0),
            workers: s.workers,
            pids: s.pids.unwrap_or_default(),
            out: s.out,
            chart: s.chart,
        })
    }

    /// User index of connection `i` (its user is `u<index>`).
    pub fn user_of(&self, i: u64) -> u64 {
        i % self.users
    }

    /// Room index of connection `i` (room `r<index>`), when rooms are on.
    pub fn room_of(&self, i: u64) -> Option<u64> {
        (self.rooms > 0).then(|| i % self.rooms)
    }

    /// The connections of worker `k` of `n`: a contiguous block, so every worker spreads
    /// over all targets, sources and users.
    pub fn block(&self, k: u32, n: u32) -> std::ops::Range<u64> {
        let (k, n) = (k as u128, n as u128);
        let total = self.connections as u128;
        (total * k / n) as u64..(total * (k + 1) / n) as u64
    }

    /// The same scenario with its secrets blanked, for the results file.
    pub fn redacted(&self) -> Scenario {
        let mut s = self.clone();
        s.api_key = s.api_key.map(|_| "***".to_owned());
        s.jwt_secret = s.jwt_secret.map(|_| "***".to_owned());
        s.pusher_app.secret = "***".to_owned();
        s
    }
}

/// `--worker k/n`: this process is worker k (0-based) of n.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSlot {
    pub k: u32,
    pub n: u32,
}

impl FromStr for WorkerSlot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s.split_once('/').ok_or("expected k/n")?;
        let k: u32 = k.parse().map_err(|_| "k is not a number")?;
        let n: u32 = n.parse().map_err(|_| "n is not a number")?;
        if n == 0 || k >= n {
            return Err("need 0 <= k < n".into());
        }
        Ok(WorkerSlot { k, n })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn flags(args: &[&str]) -> Settings {
        let mut v = vec!["pushgate-load"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().settings
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!("500ms".parse(), Ok(Span(Duration::from_millis(500))));
        assert_eq!("10s".parse(), Ok(Span(Duration::from_secs(10))));
        assert_eq!("2m".parse(), Ok(Span(Duration::from_secs(120))));
        assert_eq!("1.5".parse(), Ok(Span(Duration::from_millis(1500))));
        assert_eq!("1h".parse(), Ok(Span(Duration::from_secs(3600))));
        assert!("10 parsecs".parse::<Span>().is_err());
        assert!("s".parse::<Span>().is_err());
        assert!("".parse::<Span>().is_err());
    }

    #[test]
    fn defaults_make_a_broadcast_run_against_localhost() {
        let s = Scenario::resolve(Settings::default()).unwrap();
        assert_eq!(s.targets, vec!["127.0.0.1:3000"]);
        assert_eq!(s.push_urls, vec!["http://127.0.0.1:3000/v1/push"]);
        assert_eq!(s.push, PushTo::All);
        assert_eq!(s.users, s.connections);
        assert_eq!(s.protocol, Protocol::Socketio);
        assert_eq!(s.path, "/socket.io/");
        assert_eq!(s.token_in, TokenPlace::Auth);
        assert!(s.client_ack);
        assert_eq!(s.drain, DEFAULT_DRAIN);
    }

    #[test]
    fn phoenix_defaults_to_its_own_path_token_place_and_heartbeat() {
        let s = Scenario::resolve(flags(&["--protocol", "phoenix"])).unwrap();
        assert_eq!(s.protocol, Protocol::Phoenix);
        assert_eq!(s.path, "/socket/websocket");
        assert_eq!(
            s.token_in,
            TokenPlace::Query,
            "params: {{token}} on the URL"
        );
        assert_eq!(s.heartbeat, Duration::from_secs(30));
        let s = Scenario::resolve(flags(&[
            "--protocol",
            "phoenix",
            "--token-in",
            "auth",
            "--heartbeat",
            "500ms",
            "--path",
            "/ws/websocket",
        ]))
        .unwrap();
        assert_eq!(
            (s.token_in, s.heartbeat, s.path.as_str()),
            (
                TokenPlace::Auth,
                Duration::from_millis(500),
                "/ws/websocket"
            )
        );
        let file = Settings::from_toml("protocol = \"phoenix\"\nheartbeat = \"5s\"").unwrap();
        let s = Scenario::resolve(file).unwrap();
        assert_eq!(
            (s.protocol, s.heartbeat),
            (Protocol::Phoenix, Duration::from_secs(5))
        );
        assert!(matches!(
            Scenario::resolve(flags(&["--heartbeat", "0s"])),
            Err(ScenarioError::Invalid {
                setting: "heartbeat",
                ..
            })
        ));
        assert!(Cli::try_parse_from(["pushgate-load", "--protocol", "sockjs"]).is_err());
    }

    #[test]
    fn pusher_subscribes_rooms_without_tokens_and_pushes_through_either_api() {
        let s = Scenario::resolve(flags(&[
            "--protocol",
            "pusher",
            "--rooms",
            "1",
            "--push",
            "room",
        ]))
        .unwrap();
        assert_eq!(s.path, "/app", "the client appends /<key>");
        assert_eq!(s.pusher_app.key, "load-key");
        assert_eq!(s.push_api, PushApi::V1);
        assert_eq!(s.push_urls, ["http://127.0.0.1:3000/v1/push"]);
        let s = Scenario::resolve(flags(&[
            "--protocol",
            "pusher",
            "--rooms",
            "1",
            "--push",
            "room",
            "--push-api",
            "pusher",
            "--pusher-app",
            "7:k:s:e:c",
            "--target",
            "127.0.0.1:6001",
        ]))
        .unwrap();
        assert_eq!(
            (s.pusher_app.id.as_str(), s.pusher_app.secret.as_str()),
            ("7", "s:e:c")
        );
        assert_eq!(s.push_urls, ["http://127.0.0.1:6001/apps/7/events"]);
        assert_eq!(s.redacted().pusher_app.secret, "***");
        assert!(!format!("{:?}", s.pusher_app).contains("s:e:c"));
        let refused = |args: &[&str]| match Scenario::resolve(flags(args)) {
            Err(ScenarioError::Invalid { setting, .. }) => setting,
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(refused(&["--protocol", "pusher", "--push", "user"]), "push");
        assert_eq!(
            refused(&["--push-api", "pusher", "--push", "all"]),
            "push_api"
        );
        assert_eq!(
            refused(&[
                "--protocol",
                "pusher",
                "--rooms",
                "1",
                "--push",
                "room",
                "--push-api",
                "pusher",
                "--wait"
            ]),
            "push_api"
        );
        assert_eq!(
            refused(&["--protocol", "pusher", "--pusher-app", "id:key"]),
            "pusher_app"
        );
        assert_eq!(
            refused(&["--rooms", "1"]),
            "rooms",
            "Socket.IO still needs tokens"
        );
    }

    #[test]
    fn toml_file_reads_every_kind_of_value() {
        let file = Settings::from_toml(
            r#"
            targets = ["127.0.0.1:4001", "127.0.0.1:4002"]
            push_urls = ["http://127.0.0.1:4001/push"]
            connections = 5000
            ramp_rate = 1000.0
            hold = "2s"
            duration = 60
            push = "user"
            push_rate = 10
            users = 100
            jwt_secret = "s3cret"
            token_in = "query"
            ack_timeout_ms = 5000
            wait = true
            pids = [10, 11]
            "#,
        )
        .unwrap();
        let s = Scenario::resolve(file).unwrap();
        assert_eq!(s.targets.len(), 2);
        assert_eq!(s.push_urls, vec!["http://127.0.0.1:4001/push"]);
        assert_eq!(s.connections, 5000);
        assert_eq!(s.hold, Duration::from_secs(2));
        assert_eq!(s.duration, Duration::from_secs(60));
        assert_eq!(s.push, PushTo::User);
        assert_eq!(s.push_rate, 10.0);
        assert_eq!(s.token_in, TokenPlace::Query);
        assert_eq!(s.drain, Duration::from_secs(6), "ack timeout + 1 s");
        assert_eq!(s.pids, vec![10, 11]);
        assert!(s.wait);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let err = Settings::from_toml("conections = 5").unwrap_err();
        assert!(err.to_string().contains("conections"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = Settings::from_toml("connections = 5000\nhold = \"9s\"\npush_rate = 3").unwrap();
        let cli = flags(&[
            "-n",
            "7",
            "--target",
            "a:1,b:2",
            "--target",
            "c:3",
            "--client-ack",
            "false",
        ]);
        let s = Scenario::resolve(cli.over(file)).unwrap();
        assert_eq!(s.connections, 7);
        assert_eq!(s.hold, Duration::from_secs(9));
        assert_eq!(s.push_rate, 3.0);
        assert_eq!(s.targets, vec!["a:1", "b:2", "c:3"]);
        assert!(!s.client_ack);
        let s = Scenario::resolve(flags(&["--wait"])).unwrap();
        assert!(s.wait);
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let bad = |args: &[&str]| match Scenario::resolve(flags(args)) {
            Err(ScenarioError::Invalid { setting, .. }) => setting,
            other => panic!("{args:?}: {other:?}"),
        };
        assert_eq!(bad(&["--target", "nohost"]), "targets");
        assert_eq!(bad(&["-n", "0"]), "connections");
        assert_eq!(bad(&["--ramp-rate", "0"]), "ramp_rate");
        assert_eq!(bad(&["--push", "user"]), "jwt_secret");
        assert_eq!(bad(&["--push", "room", "--jwt-secret", "k"]), "rooms");
        assert_eq!(bad(&["--ack-timeout-ms", "0"]), "ack_timeout_ms");
        assert_eq!(bad(&["--push-url", "https://x/v1/push"]), "push_urls");
        assert_eq!(bad(&["--sources", "300"]), "sources");
    }

    #[test]
    fn push_rate_zero_means_no_pushes() {
        let s = Scenario::resolve(flags(&["--push-rate", "0", "--push", "all"])).unwrap();
        assert_eq!(s.push, PushTo::None);
    }

    #[test]
    fn blocks_cover_every_connection_once() {
        let s = Scenario::resolve(flags(&["-n", "10"])).unwrap();
        let blocks: Vec<_> = (0..3).map(|k| s.block(k, 3)).collect();
        assert_eq!(blocks, vec![0..3, 3..6, 6..10]);
    }

    #[test]
    fn identities_cycle_over_users_and_rooms() {
        let s = Scenario::resolve(flags(&[
            "-n",
            "10",
            "--users",
            "4",
            "--rooms",
            "3",
            "--jwt-secret",
            "k",
        ]))
        .unwrap();
        assert_eq!(
            (0..6).map(|i| s.user_of(i)).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 0, 1]
        );
        assert_eq!(s.room_of(5), Some(2));
        let s = Scenario::resolve(flags(&["-n", "10"])).unwrap();
        assert_eq!(s.room_of(5), None);
    }

    #[test]
    fn worker_slot_parses() {
        assert_eq!("1/3".parse(), Ok(WorkerSlot { k: 1, n: 3 }));
        assert!("3/3".parse::<WorkerSlot>().is_err());
        assert!("x".parse::<WorkerSlot>().is_err());
    }

    #[test]
    fn redacted_hides_secrets() {
        let s = Scenario::resolve(flags(&["--jwt-secret", "k", "--api-key", "a"])).unwrap();
        let r = s.redacted();
        assert_eq!(r.jwt_secret.as_deref(), Some("***"));
        assert_eq!(r.api_key.as_deref(), Some("***"));
    }

    #[test]
    fn shipped_scenario_files_resolve() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Settings::from_file(&path).unwrap();
                Scenario::resolve(s).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n > 0, "no scenario files in {}", dir.display());
    }
}
