//! The HTTP/1.1 of long polls, as pure code: reading a request head and deciding
//! whether the small-request path of [`super::listener`] may serve it, and writing a
//! response head. No I/O, no tokio; fuzzed under `fuzz/`.
//!
//! Only the plainest requests qualify — what long-polling clients send: `GET` or
//! `POST` over HTTP/1.1 to a transport path, with at most one `Content-Length` and a
//! small body, no `Transfer-Encoding`, no `Expect`, no upgrade. Anything else is
//! [`Plan::Handoff`]: the connection goes to hyper, which implements all of HTTP/1.1.
//! So this module never has to answer a malformed or unusual request; hyper does.

/// Headers a fast-path request may carry; more is unusual, and goes to hyper.
pub const MAX_HEADERS: usize = 32;
/// The largest request head the fast path reads before it gives the connection to
/// hyper. A poll's head is a few hundred bytes; a browser's with cookies a few KiB.
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest body the fast path reads. Engine.IO posts are small (pongs, acks,
/// events); a larger one goes to hyper, which streams it.
pub const MAX_BODY: usize = 64 * 1024;

/// A request head read from the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Head<'b> {
    pub method: &'b str,
    /// The request target (origin form: path and query).
    pub target: &'b str,
    /// The minor version: 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(&'b str, &'b [u8])>,
    /// Bytes of the head, the blank line included: the body starts there.
    pub len: usize,
}

impl Head<'_> {
    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What reading a buffer's head found.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'b> {
    /// The head is not complete yet.
    Partial,
    Complete(Head<'b>),
    /// Not a head the fast path reads (malformed, or too many headers): hyper will
    /// answer it.
    Unusual,
}

/// Reads the request head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => {
            let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
            else {
                return Parsed::Unusual;
            };
            Parsed::Complete(Head {
                method,
                target,
                version,
                headers: req.headers.iter().map(|h| (h.name, h.value)).collect(),
                len,
            })
        }
        Err(_) => Parsed::Unusual,
    }
}

/// What the listener does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Serve it on the fast path: read `body` more bytes after the head; `close` the
    /// connection after answering (the client asked).
    Serve { body: usize, close: bool },
    /// Give the connection, this request included, to hyper.
    Handoff,
}

/// Whether the fast path serves `head`; `fast_path` says which paths are transport
/// paths.
pub fn plan(head: &Head<'_>, fast_path: impl Fn(&str) -> bool) -> Plan {
    if head.version != 1 || !matches!(head.method, "GET" | "POST") || !fast_path(head.path()) {
        return Plan::Handoff;
    }
    let mut body = None;
    let mut close = false;
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = content_length(value) else {
                return Plan::Handoff;
            };
            if body.replace(n).is_some() || n > MAX_BODY {
                return Plan::Handoff;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Plan::Handoff;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Plan::Handoff;
                }
            }
        }
    }
    Plan::Serve {
        body: body.unwrap_or(0),
        close,
    }
}

/// A `Content-Length` value: ASCII digits only (no sign, no list), at most 19 of them.
fn content_length(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Headers the listener writes itself (framing and connection management); the
/// response's own values for them are dropped.
pub fn is_framing_header(name: &str) -> bool {
    [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Appends a response head: status line, `headers` (framing headers skipped), `date`,
/// `content-length`, `connection: close` when `close`, and the blank line.
pub fn write_head<'h>(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    date: &str,
    content_length: usize,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if is_framing_header(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(content_length.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(path: &str) -> bool {
        path.starts_with("/socket.io")
    }

    fn head(text: &str) -> Head<'_> {
        match parse(text.as_bytes()) {
            Parsed::Complete(h) => h,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_poll_is_read_and_served_on_the_fast_path() {
        let text = "GET /socket.io/?EIO=4&transport=polling&sid=gw1~x HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nnext";
        let h = head(text);
        assert_eq!(h.method, "GET");
        assert_eq!(h.path(), "/socket.io/");
        assert_eq!(h.target, "/socket.io/?EIO=4&transport=polling&sid=gw1~x");
        assert_eq!(
            h.headers,
            vec![("Host", &b"a"[..]), ("Accept", &b"*/*"[..])]
        );
        assert_eq!(&text[h.len..], "next");
        assert_eq!(
            plan(&h, transport),
            Plan::Serve {
                body: 0,
                close: false
            }
        );

        let post = head("POST /socket.io/?sid=x HTTP/1.1\r\ncontent-length: 2\r\nConnection: keep-alive, close\r\n\r\n40");
        assert_eq!(
            plan(&post, transport),
            Plan::Serve {
                body: 2,
                close: true
            }
        );
    }

    #[test]
    fn a_head_is_partial_until_its_blank_line() {
        for partial in [
            "",
            "GET",
            "GET /socket.io/ HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert_eq!(parse(partial.as_bytes()), Parsed::Partial, "{partial:?}");
        }
        assert_eq!(parse(b"\x00\x01 nonsense\r\n\r\n"), Parsed::Unusual);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: y\r\n")).collect();
        assert_eq!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Parsed::Unusual
        );
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for text in [
            "GET /v1/nodes HTTP/1.1\r\n\r\n",       // not a transport path
            "GET /socket.io/ HTTP/1.0\r\n\r\n",     // HTTP/1.0
            "OPTIONS /socket.io/ HTTP/1.1\r\n\r\n", // another method
            "HEAD /socket.io/ HTTP/1.1\r\n\r\n",
            "POST /socket.io/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", // chunked
            "POST /socket.io/ HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST /socket.io/ HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /socket.io/ HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
            "POST /socket.io/ HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST /socket.io/ HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", // a large body
            "POST /socket.io/ HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /socket.io/ HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET /socket.io/ HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert_eq!(plan(&head(text), transport), Plan::Handoff, "{text:?}");
        }
    }

    #[test]
    fn a_response_head_carries_its_length_and_never_the_handlers_framing() {
        let mut out = Vec::new();
        write_head(
            &mut out,
            200,
            "OK",
            [
                ("content-type", &b"text/plain; charset=UTF-8"[..]),
                ("content-length", &b"99"[..]),
                ("transfer-encoding", &b"chunked"[..]),
            ],
            "Wed, 02 Dec 2026 10:00:00 GMT",
            2,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=UTF-8\r\n\
             date: Wed, 02 Dec 2026 10:00:00 GMT\r\ncontent-length: 2\r\n\r\n"
        );
        let mut out = Vec::new();
        write_head(&mut out, 400, "Bad Request", [], "d", 0, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 400 Bad Request\r\ndate: d\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }
}
