//! The operating-system limits a load run meets — open files, ephemeral ports, listen
//! backlogs — how the run is planned around them (worker processes, source addresses),
//! and what to tell the user when one stops it.

use std::io;

use serde::{Deserialize, Serialize};

use crate::client::ConnectError;
use crate::scenario::Scenario;

/// Descriptors a worker keeps for itself (stdio, runtime, pipes, /proc reads).
const FD_RESERVE: u64 = 128;
/// Concurrent push requests, each a pooled HTTP connection of the parent.
pub const PUSH_CONCURRENCY: usize = 256;
/// Share of a (source, target) pair's ephemeral ports the plan counts on. Linux's
/// `connect()` takes ports of one parity first (even ones; `bind()` gets the odd) and
/// looks through all of that half before it tries the other: past half of the range
/// for one destination every connect scans thousands of ports in the kernel. The big
/// runs met it as a cliff at ~14,000 connections per target, where the load tool's
/// system time took both cores. So a pair is planned to stay below half.
const PORT_USE: f64 = 0.45;

/// The limits in force for this process and host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// `net.ipv4.ip_local_port_range`
    pub port_range: (u32, u32),
    /// `net.core.somaxconn`
    pub somaxconn: u64,
    /// `net.ipv4.tcp_max_syn_backlog`
    pub syn_backlog: u64,
    /// `fs.file-max`
    pub file_max: u64,
}

impl Limits {
    /// Raises this process's open-files soft limit to the hard limit and reads the rest.
    pub fn raise_and_read() -> io::Result<Limits> {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        let port_range = read_proc("/proc/sys/net/ipv4/ip_local_port_range")
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        let num = |path: &str, default: u64| {
            read_proc(path)
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(default)
        };
        Ok(Limits {
            nofile_soft: rl.rlim_cur,
            nofile_hard: rl.rlim_max,
            port_range,
            somaxconn: num("/proc/sys/net/core/somaxconn", 4096),
            syn_backlog: num("/proc/sys/net/ipv4/tcp_max_syn_backlog", 1024),
            file_max: num("/proc/sys/fs/file-max", 0),
        })
    }

    pub fn ports_per_pair(&self) -> u64 {
        (self.port_range.1.saturating_sub(self.port_range.0) + 1) as u64
    }
}

fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// How the connections are spread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Processes holding connections.
    pub workers: u32,
    /// True when the single worker runs inside this process (no re-exec).
    pub in_process: bool,
    /// Source addresses 127.0.0.1..=127.0.0.<sources>; 0 = no bind, the kernel's choice.
    pub sources: u32,
    /// Connections one process can hold under its open-files limit.
    pub per_process_capacity: u64,
    /// Things the user should know before the run (a plan that will likely hit a limit).
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn new(sc: &Scenario, limits: &Limits) -> Plan {
        let mut warnings = Vec::new();
        let child_cap = limits.nofile_soft.saturating_sub(FD_RESERVE).max(1);
        // In-process, the push client's connections share the descriptor table.
        let inproc_cap = child_cap
            .saturating_sub(PUSH_CONCURRENCY as u64 + 16)
            .max(1);
        let n = sc.connections;
        let (workers, in_process) = match sc.workers {
            Some(1) => (1, true),
            Some(w) => (w, false),
            None if n <= inproc_cap => (1, true),
            None => (n.div_ceil(child_cap) as u32, false),
        };
        let cap = if in_process { inproc_cap } else { child_cap };
        let per_worker = n.div_ceil(workers as u64);
        if per_worker > cap {
            warnings.push(format!(
                "{per_worker} connections per process exceed the open-files limit \
                 ({} soft, ~{cap} usable): expect EMFILE; use --workers {} or more",
                limits.nofile_soft,
                n.div_ceil(child_cap)
            ));
        }
        let pair_cap = ((limits.ports_per_pair() as f64) * PORT_USE) as u64;
        let targets = sc.targets.len() as u64;
        let sources = if sc.sources > 0 {
            sc.sources
        } else {
            let pairs = n.div_ceil(pair_cap.max(1));
            let s = pairs.div_ceil(targets);
            if s <= 1 {
                0
            } else {
                s.min(254) as u32
            }
        };
        let pairs = targets * sources.max(1) as u64;
        if n > pairs * pair_cap {
            warnings.push(format!(
                "{n} connections over {pairs} (source, target) pairs of ~{pair_cap} ports each: \
                 expect EADDRNOTAVAIL; add targets, --sources, or widen \
                 net.ipv4.ip_local_port_range"
            ));
        }
        // Every loopback connection costs the gateway a descriptor as well.
        let per_target = n.div_ceil(targets);
        if per_target + FD_RESERVE > limits.nofile_hard {
            warnings.push(format!(
                "{per_target} connections per target: a gateway process on this host can hold \
                 at most ~{} (its open-files hard limit is {} here too); spread over more \
                 targets",
                limits.nofile_hard.saturating_sub(FD_RESERVE),
                limits.nofile_hard
            ));
        }
        Plan {
            workers,
            in_process,
            sources,
            per_process_capacity: cap,
            warnings,
        }
    }
}

/// The class of a failed connection attempt; each has its own advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailKind {
    /// EMFILE: this process's open-files limit.
    FileLimit,
    /// ENFILE: the host's file table.
    HostFileLimit,
    /// EADDRNOTAVAIL / EADDRINUSE: ephemeral ports of a (source, target) pair.
    Ports,
    /// ECONNREFUSED: nothing listening, or a full listen backlog.
    Refused,
    /// ECONNRESET, EPIPE, closed during the handshake.
    Reset,
    /// The whole set-up took longer than the connect timeout.
    Timeout,
    /// ENOMEM / ENOBUFS.
    Memory,
    /// The HTTP upgrade was answered with an error status.
    HttpStatus,
    /// The server refused the identity: Socket.IO CONNECT_ERROR, Phoenix 403 or a refused
    /// join (a bad token, say), Pusher's `pusher:error` (an unknown app key) or a refused
    /// subscription.
    Auth,
    /// An unexpected frame in the handshake.
    Protocol,
    Other,
}

impl FailKind {
    pub fn of(e: &ConnectError) -> FailKind {
        use tokio_tungstenite::tungstenite::Error as WsError;
        match e {
            ConnectError::Io { source, .. } => Self::of_io(source),
            ConnectError::Timeout => FailKind::Timeout,
            ConnectError::Upgrade(WsError::Io(io)) => Self::of_io(io),
            ConnectError::Upgrade(WsError::Http(_)) => FailKind::HttpStatus,
            ConnectError::Upgrade(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                FailKind::Reset
            }
            ConnectError::Upgrade(WsError::Protocol(_)) => FailKind::Reset,
            ConnectError::Upgrade(_) => FailKind::Other,
            ConnectError::Refused(_) => FailKind::Auth,
            ConnectError::Protocol(_) => FailKind::Protocol,
            ConnectError::Closed => FailKind::Reset,
        }
    }

    pub fn of_io(e: &io::Error) -> FailKind {
        match e.raw_os_error() {
            Some(libc::EMFILE) => FailKind::FileLimit,
            Some(libc::ENFILE) => FailKind::HostFileLimit,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => FailKind::Ports,
            Some(libc::ECONNREFUSED) => FailKind::Refused,
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => FailKind::Reset,
            Some(libc::ETIMEDOUT) => FailKind::Timeout,
            Some(libc::ENOMEM | libc::ENOBUFS) => FailKind::Memory,
            _ => match e.kind() {
                io::ErrorKind::UnexpectedEof => FailKind::Reset,
                _ => FailKind::Other,
            },
        }
    }

    /// Which limit this is and how to raise it.
    pub fn advice(self, l: &Limits) -> String {
        match self {
            FailKind::FileLimit => format!(
                "open-files limit of a load process (soft {}, hard {}): use more --workers \
                 (each process gets its own {} descriptors), or raise the hard limit \
                 (ulimit -Hn, LimitNOFILE= in systemd, /etc/security/limits.conf) where the \
                 host allows it",
                l.nofile_soft, l.nofile_hard, l.nofile_soft
            ),
            FailKind::HostFileLimit => format!(
                "the host's file table is full (fs.file-max = {}): raise it with \
                 sysctl -w fs.file-max=N",
                l.file_max
            ),
            FailKind::Ports => format!(
                "out of ephemeral ports for a (source, target) pair (range {}-{}, {} ports): \
                 add --sources K (127.0.0.1..=127.0.0.K), add targets, or widen \
                 sysctl net.ipv4.ip_local_port_range",
                l.port_range.0,
                l.port_range.1,
                l.ports_per_pair()
            ),
            FailKind::Refused => format!(
                "connection refused: the target is not listening, or its listen backlog \
                 overflowed (net.core.somaxconn = {}, tcp_max_syn_backlog = {}; the \
                 server's own backlog argument caps it too): lower --ramp-rate, or raise \
                 both sysctls and the server's backlog",
                l.somaxconn, l.syn_backlog
            ),
            FailKind::Reset => "reset or closed during the handshake: the server dropped it \
                 (often its own open-files limit: EMFILE on accept) — check the server log \
                 and its limits"
                .to_owned(),
            FailKind::Timeout => format!(
                "set-up took longer than --connect-timeout: the server is saturated or SYNs \
                 are dropped at a full accept queue (somaxconn = {}); lower --ramp-rate or \
                 raise --connect-timeout",
                l.somaxconn
            ),
            FailKind::Memory => "the kernel ran out of socket memory (ENOMEM/ENOBUFS): \
                 raise net.ipv4.tcp_mem / net.core.*mem_max, or use fewer connections"
                .to_owned(),
            FailKind::HttpStatus => "the WebSocket upgrade was refused with an HTTP error: \
                 403, 429 or 503 from pushgate are its limits (connections per address, connect \
                 rate per address, connections per node): start the gateways for load runs with \
                 PUSHGATE_MAX_CONNECTIONS_PER_IP=0 PUSHGATE_CONNECT_RATE_PER_IP=0 (README \
                 \"Limits\"); otherwise check --path, the target, and the server log"
                .to_owned(),
            FailKind::Auth => "the server refused the connection (Socket.IO CONNECT_ERROR, \
                 Phoenix 403 or a refused phx_join: token missing, bad or expired?; Pusher \
                 pusher:error 4001: an app key the server does not know): check \
                 --jwt-secret against the server's secret, or --pusher-app against its apps; \
                 a Phoenix 403 is also pushgate's per-address limits \
                 (PUSHGATE_MAX_CONNECTIONS_PER_IP=0 PUSHGATE_CONNECT_RATE_PER_IP=0 for load runs)"
                .to_owned(),
            FailKind::Protocol => "unexpected frames in the handshake: is the target a \
                 server of --protocol (Socket.IO v4, Phoenix Channels v2, Pusher 7) at --path?"
                .to_owned(),
            FailKind::Other => "see the sample error".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Stage;
    use crate::scenario::Settings;

    fn limits(nofile: u64) -> Limits {
        Limits {
            nofile_soft: nofile,
            nofile_hard: nofile,
            port_range: (32768, 60999),
            somaxconn: 4096,
            syn_backlog: 2048,
            file_max: 1 << 20,
        }
    }

    fn scenario(n: u64, targets: usize) -> Scenario {
        let t = (0..targets)
            .map(|i| format!("127.0.0.1:{}", 4001 + i))
            .collect();
        Scenario::resolve(Settings {
            connections: Some(n),
            targets: Some(t),
            ..Settings::default()
        })
        .unwrap()
    }

    #[test]
    fn small_runs_stay_in_process_without_binding() {
        let p = Plan::new(&scenario(5000, 1), &limits(20_000));
        assert_eq!((p.workers, p.in_process, p.sources), (1, true, 0));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn runs_beyond_one_process_limit_get_worker_processes() {
        let p = Plan::new(&scenario(50_000, 4), &limits(20_000));
        assert!(!p.in_process);
        assert_eq!(p.workers, 3);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn runs_beyond_one_pair_of_ports_get_source_addresses() {
        let p = Plan::new(&scenario(100_000, 1), &limits(1 << 20));
        assert_eq!(p.sources, 8);
        // One gateway cannot hold 100k on a 1M-descriptor host? It can; no warning then.
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn no_pair_is_planned_past_half_of_its_ports() {
        // The big run: 450,000 over 25 gateways is 18,000 per target, past the even
        // half of 28,232 ports.
        let p = Plan::new(&scenario(450_000, 25), &limits(20_000));
        assert_eq!(p.sources, 2);
        let p = Plan::new(&scenario(300_000, 25), &limits(20_000));
        assert_eq!(p.sources, 0, "12,000 per target fits in one half");
    }

    #[test]
    fn forced_too_few_workers_warn_of_emfile() {
        let mut sc = scenario(30_000, 1);
        sc.workers = Some(1);
        let p = Plan::new(&sc, &limits(20_000));
        assert!(
            p.warnings.iter().any(|w| w.contains("EMFILE")),
            "{:?}",
            p.warnings
        );
        assert!(
            p.warnings.iter().any(|w| w.contains("per target")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn os_errors_map_to_the_limit_they_hit() {
        let io = |code| ConnectError::Io {
            stage: Stage::Connect,
            source: io::Error::from_raw_os_error(code),
        };
        assert_eq!(FailKind::of(&io(libc::EMFILE)), FailKind::FileLimit);
        assert_eq!(FailKind::of(&io(libc::EADDRNOTAVAIL)), FailKind::Ports);
        assert_eq!(FailKind::of(&io(libc::ECONNREFUSED)), FailKind::Refused);
        assert_eq!(FailKind::of(&io(libc::ECONNRESET)), FailKind::Reset);
        assert_eq!(FailKind::of(&ConnectError::Timeout), FailKind::Timeout);
        assert_eq!(
            FailKind::of(&ConnectError::Refused("x".into())),
            FailKind::Auth
        );
        let l = limits(20_000);
        assert!(FailKind::FileLimit.advice(&l).contains("--workers"));
        assert!(FailKind::Ports.advice(&l).contains("ip_local_port_range"));
        assert!(FailKind::Refused.advice(&l).contains("somaxconn"));
    }
}
