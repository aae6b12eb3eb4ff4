//! Who may open a client connection, checked at every frontend's handshake before a
//! connection exists: the browser Origin allow-list, then the node's limits for the
//! client's address ([`crate::limits`]). A frontend calls [`Gate::check_origin`] and
//! [`Gate::admit`] and turns a [`Refusal`] into its protocol's answer; the HTTP
//! statuses the HTTP-refusing transports share are here ([`Refusal::status`]).
//!
//! The client's address is the TCP peer, unless the peer is a trusted proxy
//! (`PUSHGATE_TRUSTED_PROXIES`): then it is the nearest address in
//! `X-Forwarded-For` that is not itself a trusted proxy. Behind HAProxy without that
//! setting every client would share the proxy's address and its per-address limits,
//! so the first such request is logged as a warning.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};

use crate::auth::Origins;
use crate::id::Frontend;
use crate::limits::{Admission, Limit, Limits, Networks, Refused, NO_ADDRESS};
use crate::metrics::Metrics;

/// Why a connection attempt was refused before it became a connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The browser page's origin is not in `PUSHGATE_ALLOWED_ORIGINS`.
    #[error("origin not allowed: this gateway only accepts browser connections from its configured origins")]
    Origin,
    #[error(transparent)]
    Limit(Refused),
}

impl Refusal {
    /// The `reason` label and machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Limit(r) => r.limit.as_str(),
        }
    }

    /// The HTTP status of a refused handshake: 403 for what retrying will not fix
    /// (origin, the address's or user's quota), 429 for a rate, 503 for a full node.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Origin => StatusCode::FORBIDDEN,
            Refusal::Limit(r) => match r.limit {
                Limit::ConnectRate | Limit::ApiRate => StatusCode::TOO_MANY_REQUESTS,
                Limit::Connections | Limit::Pending | Limit::PendingAcks => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::FORBIDDEN,
            },
        }
    }

    /// `Retry-After` for the refusal, when waiting helps.
    pub fn retry_after(&self) -> Option<HeaderValue> {
        match self {
            Refusal::Origin => None,
            Refusal::Limit(r) => r.retry_after_secs().map(HeaderValue::from),
        }
    }
}

/// The gate every new client connection passes.
pub struct Gate {
    limits: Arc<Limits>,
    origins: Origins,
    proxies: Networks,
    metrics: Arc<Metrics>,
    /// Whether the untrusted-`X-Forwarded-For` warning was logged (once per node).
    warned: AtomicBool,
}

impl Gate {
    pub fn new(
        limits: Arc<Limits>,
        origins: Origins,
        proxies: Networks,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            limits,
            origins,
            proxies,
            metrics,
            warned: AtomicBool::new(false),
        }
    }

    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// Refuses a browser request whose `Origin` is not allowed (requests without one
    /// pass: see [`Origins`]). A page the gateway served itself (the dev console:
    /// `Origin` names the request's own `Host`) always may.
    pub fn check_origin(&self, headers: &HeaderMap, frontend: Frontend) -> Result<(), Refusal> {
        if self.origins.is_any() {
            return Ok(());
        }
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("null"));
        if self.origins.allows(origin) || is_same_origin(origin, headers.get(header::HOST)) {
            return Ok(());
        }
        self.metrics
            .connect_errors
            .with_label_values(&[frontend.as_str(), "origin"])
            .inc();
        tracing::debug!(
            frontend = frontend.as_str(),
            origin = origin.unwrap_or_default(),
            "connection from a browser origin not allowed"
        );
        Err(Refusal::Origin)
    }

    /// Admits a new connection from the request's client address (see
    /// [`Limits::admit`]); `pending`: it still has to authenticate.
    pub fn admit(
        &self,
        req: &Request,
        frontend: Frontend,
        pending: bool,
    ) -> Result<Admission, Refusal> {
        let ip = self.client_address(req);
        self.limits
            .admit(ip, frontend, pending, Instant::now())
            .map_err(Refusal::Limit)
    }

    /// The client's address: see the module documentation.
    pub fn client_address(&self, req: &Request) -> IpAddr {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = req.headers().contains_key(X_FORWARDED_FOR);
        if forwarded && peer.is_some_and(|p| !self.proxies.contains(p)) {
            self.warn_untrusted(peer.unwrap_or(NO_ADDRESS));
        }
        client_address(peer, req.headers(), &self.proxies)
    }

    fn warn_untrusted(&self, peer: IpAddr) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %peer,
                "requests carry X-Forwarded-For but PUSHGATE_TRUSTED_PROXIES does not list \
                 their sender: per-address limits count the sender's address, not the clients'"
            );
        }
    }
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Whether `origin` (`scheme://authority`) names the host the request was sent to.
fn is_same_origin(origin: Option<&str>, host: Option<&HeaderValue>) -> bool {
    let (Some(origin), Some(host)) = (origin, host.and_then(|h| h.to_str().ok())) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority.eq_ignore_ascii_case(host))
}

/// The client address of a request from `peer`: `peer` itself unless it is one of
/// `proxies`; then, walking `X-Forwarded-For` from the right (the entry the nearest
/// proxy added), the first address that is not a trusted proxy. Entries that are not
/// addresses end the walk (the address before them is the last one vouched for).
pub fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, proxies: &Networks) -> IpAddr {
    let Some(mut client) = peer else {
        return NO_ADDRESS;
    };
    if !proxies.contains(client) {
        return client;
    }
    let hops = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !proxies.contains(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5678`,
/// `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_peer_is_the_client_unless_it_is_a_trusted_proxy() {
        let proxies = Networks::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let spoofed = headers(&["6.6.6.6"]);
        assert_eq!(
            client_address(Some(ip("8.8.8.8")), &spoofed, &proxies),
            ip("8.8.8.8"),
            "an untrusted peer's X-Forwarded-For is ignored"
        );
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &headers(&[]), &proxies),
            ip("127.0.0.1"),
            "a proxy that forwards nothing is the client"
        );
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &headers(&["203.0.113.9"]), &proxies),
            ip("203.0.113.9")
        );
        // A client that sends its own X-Forwarded-For: the proxy appends the real
        // address, which is the one taken.
        assert_eq!(
            client_address(
                Some(ip("127.0.0.1")),
                &headers(&["6.6.6.6, 203.0.113.9"]),
                &proxies
            ),
            ip("203.0.113.9")
        );
        // Two trusted hops, in one header or two.
        assert_eq!(
            client_address(
                Some(ip("127.0.0.1")),
                &headers(&["203.0.113.9", "10.1.1.1"]),
                &proxies
            ),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(
                Some(ip("127.0.0.1")),
                &headers(&["garbage, 10.1.1.1"]),
                &proxies
            ),
            ip("10.1.1.1"),
            "the last vouched-for address when the chain breaks"
        );
        assert_eq!(
            client_address(
                Some(ip("127.0.0.1")),
                &headers(&["[2001:db8::1]:443"]),
                &proxies
            ),
            ip("2001:db8::1")
        );
        assert_eq!(client_address(None, &spoofed, &proxies), NO_ADDRESS);
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &spoofed, &Networks::default()),
            ip("127.0.0.1"),
            "no trusted proxies: the header means nothing"
        );
    }

    #[test]
    fn a_page_the_gateway_served_is_its_own_origin() {
        let host = HeaderValue::from_static("gw.example.com:3000");
        assert!(is_same_origin(
            Some("http://gw.example.com:3000"),
            Some(&host)
        ));
        assert!(is_same_origin(
            Some("https://GW.example.com:3000"),
            Some(&host)
        ));
        assert!(!is_same_origin(Some("http://gw.example.com"), Some(&host)));
        assert!(!is_same_origin(Some("http://evil.com"), Some(&host)));
        assert!(!is_same_origin(Some("null"), Some(&host)));
        assert!(!is_same_origin(None, Some(&host)));
        assert!(!is_same_origin(Some("http://gw.example.com:3000"), None));
    }

    #[test]
    fn refusals_have_the_statuses_clients_back_off_from() {
        let limit = |l| {
            Refusal::Limit(Refused {
                limit: l,
                max: 1,
                retry_after: Some(Duration::from_millis(1500)),
            })
        };
        assert_eq!(Refusal::Origin.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            limit(Limit::ConnectRate).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            limit(Limit::Connections).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(limit(Limit::IpConnections).status(), StatusCode::FORBIDDEN);
        assert_eq!(limit(Limit::ConnectRate).retry_after().unwrap(), "2");
        assert_eq!(Refusal::Origin.code(), "origin");
    }
}
