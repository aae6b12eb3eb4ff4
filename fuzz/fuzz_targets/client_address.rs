//! The client address behind trusted proxies (`transport::admission::client_address`)
//! and the trusted-proxy list it uses (`limits::Networks`). The input is lines: the
//! `PUSHGATE_TRUSTED_PROXIES` text, the peer's address, then `X-Forwarded-For` header
//! values. Never panics, and:
//!
//! - a parsed list contains every address it names;
//! - a peer that is not a trusted proxy is the client, whatever the header says, and no
//!   peer is `NO_ADDRESS`;
//! - behind a trusted proxy, the client is the first entry from the right that is not a
//!   trusted proxy, or the last address before an entry that is not one, or the peer:
//!   a client can add entries on the left but never skip an untrusted one.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use pushgate::limits::{Networks, NO_ADDRESS};
use pushgate::transport::admission::client_address;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let list = lines.next().unwrap_or_default();
    let proxies = match Networks::parse(list) {
        Ok(p) => {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let ip: IpAddr = item.split('/').next().unwrap().parse().unwrap();
                assert!(p.contains(ip), "{list:?} does not contain {ip}");
            }
            p
        }
        Err(_) => Networks::parse("127.0.0.1, 10.0.0.0/8, ::1").unwrap(),
    };
    let peer: Option<IpAddr> = lines.next().and_then(|l| l.trim().parse().ok());
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Ok(v) = HeaderValue::from_str(line) {
            headers.append("x-forwarded-for", v);
        }
    }

    let client = client_address(peer, &headers, &proxies);
    let Some(peer) = peer else {
        assert_eq!(client, NO_ADDRESS);
        return;
    };
    if !proxies.contains(peer) {
        assert_eq!(client, peer, "an untrusted peer's header was believed");
        return;
    }
    // The walk, as the documentation states it.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut expected = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = address(hop) else {
            break;
        };
        expected = ip;
        if !proxies.contains(ip) {
            break;
        }
    }
    assert_eq!(client, expected, "hops {hops:?}");
});

/// An entry: an address, with or without a port, IPv6 maybe in brackets.
fn address(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })
}
