//! The node's one listener: accepts connections and serves HTTP/1.1 on them — long
//! polls on a small path of its own, everything else with hyper.
//!
//! Why not hyper for everything: a long-polling client keeps one HTTP connection with
//! a request pending at all times, and hyper's server gives every connection an
//! 8 KiB write buffer from the start and an 8 KiB read buffer once it reads (16 KiB
//! behind hyper-util's protocol detection, which reads a 24-byte prefix first). Its
//! server builder cannot make them smaller (`max_buf_size` has a floor of 8 KiB; exact
//! read sizing exists for clients only). That was most of the ~27 KiB a polling client
//! cost (BENCHMARKS.md). The fast path reads a request head into a buffer sized to it,
//! copies what the request needs, frees the buffer, and holds nothing but the socket
//! and the handler's future while the poll waits.
//!
//! A connection starts on the fast path. Each request head is read there and planned
//! ([`http1::plan`]); the plain requests long-polling clients send (GET and POST to a
//! transport path, small body) are served there, through the same axum router. The
//! first request that is anything else — an API call, a WebSocket upgrade, chunked
//! or large bodies, `Expect`, HTTP/1.0, a malformed head — hands the connection, with
//! the bytes already read, to hyper for the rest of its life. So the fast path never
//! answers an unusual request itself.
//!
//! Shutdown: when `stop` fires the listener stops accepting; idle connections close,
//! requests in flight finish (hyper's graceful shutdown on its connections), then
//! [`serve`] returns once every connection ended.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use axum::response::Response;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use super::http1::{self, Parsed, Plan};
use crate::metrics::Metrics;

/// Bytes read per `read` call into the stack before they are appended to a
/// connection's buffer, which grows only as far as the head needs.
const READ_CHUNK: usize = 2048;
/// A response body up to this size is written in one `write` with its head.
const INLINE_BODY: usize = 16 * 1024;
/// After an accept error other than a refused connection (EMFILE: out of file
/// descriptors), wait this long before accepting again, as axum's server does.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The long-polling endpoints the fast path serves, called directly (not through the
/// router, whose boxed routing and handler futures would add to every held poll).
pub trait LongPolls: Send + Sync + 'static {
    /// Whether requests for `path` are long polls.
    fn serves(&self, path: &str) -> bool;
    /// Answers a long-poll request.
    fn call(&self, request: Request<Body>) -> Pin<Box<dyn Future<Output = Response> + Send>>;
}

/// Serves `app` (and `polls` on the fast path) on `listener` until `stop` fires and
/// every connection ended.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    polls: Arc<dyn LongPolls>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> io::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let conn = Connection {
            stream,
            remote,
            app: app.clone(),
            polls: polls.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        let task = conn.run();
        tracing::trace!(bytes = std::mem::size_of_val(&task), "connection task size");
        connections.spawn(task);
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The `reason` label (`HTTP_CONNECTION_ERROR_REASONS`) of a connection hyper ended
/// with `e`.
fn error_reason(e: &hyper::Error) -> &'static str {
    if e.is_parse_too_large() {
        "too_large"
    } else if e.is_parse() || e.is_parse_status() {
        "malformed"
    } else if e.is_incomplete_message() {
        "incomplete"
    } else if std::error::Error::source(e).is_some_and(|s| s.is::<io::Error>()) {
        "io"
    } else {
        "other"
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection. Its task is memory per idle polling client, so what it
/// holds across a wait is kept small: the socket, a buffer that is empty between
/// requests, the boxed future of the request being answered. The rare paths (writing
/// a response, handing off to hyper) are boxed, so their state is not part of it.
struct Connection {
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    polls: Arc<dyn LongPolls>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Connection {
    /// The connection's task. An `async move` block rather than an `async fn`, which
    /// would store `self` twice; the request and the response are built and consumed
    /// in plain functions, and the socket is polled with `poll_fn`s, so none of them
    /// is part of what the task holds while a poll waits (its size is logged at
    /// `trace`, "connection task size").
    #[allow(clippy::manual_async_fn)] // an `async fn` would hold `self` twice
    fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let _ = self.stream.set_nodelay(true);
            // Bytes read and not yet consumed: a partial request, or what a pipelining
            // client sent after the request being answered. Empty (no allocation)
            // while a request waits.
            let mut buf: Vec<u8> = Vec::new();
            loop {
                // Read a whole fast-path request.
                let (head, body, close) = loop {
                    let plan = match http1::parse(&buf) {
                        Parsed::Partial if buf.len() >= http1::MAX_HEAD => None,
                        Parsed::Partial => Some(None),
                        Parsed::Unusual => None,
                        Parsed::Complete(h) => match http1::plan(&h, |p| self.polls.serves(p)) {
                            Plan::Serve { body, close } => Some(Some((h.len, body, close))),
                            Plan::Handoff => None,
                        },
                    };
                    match plan {
                        None => return Box::pin(self.handoff(buf)).await,
                        Some(Some((head, body, close))) if buf.len() >= head + body => {
                            break (head, body, close)
                        }
                        Some(_) => {}
                    }
                    let idle = buf.is_empty();
                    let read = poll_fn(|cx| poll_read_more(&self.stream, &mut buf, cx));
                    let read = if idle {
                        // Between requests: a stopping node closes the connection.
                        tokio::select! {
                            _ = self.stop.cancelled() => return,
                            r = read => r,
                        }
                    } else {
                        read.await
                    };
                    if !matches!(read, Ok(n) if n > 0) {
                        return;
                    }
                };
                let Some(mut answer) = self.start(&mut buf, head, body) else {
                    // A head the http crate refuses: hyper answers it.
                    return Box::pin(self.handoff(buf)).await;
                };

                // Answer it. A client that goes away meanwhile ends the request (a held
                // poll is released) and the connection.
                let (close, write) = {
                    let mut watching = buf.is_empty();
                    let stream = &self.stream;
                    let response = poll_fn(|cx| {
                        if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                            return Poll::Ready(Some(response));
                        }
                        if watching {
                            let mut probe = [0u8; 1];
                            match stream.poll_peek(cx, &mut ReadBuf::new(&mut probe)) {
                                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                                    return Poll::Ready(None)
                                }
                                // The client sent its next request already; it is read
                                // after this one is answered.
                                Poll::Ready(Ok(_)) => watching = false,
                                Poll::Pending => {}
                            }
                        }
                        Poll::Pending
                    })
                    .await;
                    drop(answer);
                    let Some(response) = response else {
                        return;
                    };
                    let close =
                        close || self.stop.is_cancelled() || wants_close(response.headers());
                    (
                        close,
                        Box::pin(write_response(&mut self.stream, response, close)),
                    )
                };
                let written = write.await;
                if !matches!(written, Ok(true)) || close {
                    let _ = self.stream.shutdown().await;
                    return;
                }
            }
        }
    }

    /// Builds the request whose `head` and `body` bytes start `buf`, consumes them, and
    /// starts answering it; `None` when the http crate refuses a part of the head.
    fn start(
        &self,
        buf: &mut Vec<u8>,
        head: usize,
        body: usize,
    ) -> Option<Pin<Box<dyn Future<Output = Response> + Send>>> {
        let mut request = match http1::parse(&buf[..head]) {
            Parsed::Complete(h) => request_of(&h, &buf[head..head + body])?,
            _ => return None,
        };
        buf.drain(..head + body);
        if buf.is_empty() {
            // Nothing pipelined: give the memory back before the request waits.
            *buf = Vec::new();
        }
        request.extensions_mut().insert(ConnectInfo(self.remote));
        Some(self.polls.call(request))
    }

    /// Gives the connection to hyper, with the bytes read and not consumed, for the
    /// rest of its life (API calls, WebSocket upgrades, anything unusual).
    async fn handoff(self, read: Vec<u8>) {
        let Connection {
            stream,
            remote,
            app,
            metrics,
            stop,
            ..
        } = self;
        let io = TokioIo::new(Prefixed {
            prefix: read,
            at: 0,
            stream,
        });
        let service =
            hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                let mut app = app.clone();
                app.call(request.map(Body::new))
            });
        let mut conn = std::pin::pin!(hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades());
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            let reason = error_reason(&e);
            metrics
                .http_connection_errors
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(error = %e, %remote, reason, "connection ended with an error");
        }
    }
}

/// Reads what the socket has (at least one byte, or 0 at its end) onto `buf`. The
/// stack chunk lives only within one poll, so an idle connection holds no read
/// buffer, and readiness is polled directly (no readiness future per connection).
fn poll_read_more(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        if let Err(e) = std::task::ready!(stream.poll_read_ready(cx)) {
            return Poll::Ready(Err(e));
        }
        let mut chunk = [0u8; READ_CHUNK];
        match stream.try_read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Poll::Ready(Ok(n));
            }
            // Readiness was cleared: poll it again (it registers the waker).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// The request of a fast-path head and its body; `None` when the http crate refuses
/// a part of it (hyper then answers it).
fn request_of(head: &http1::Head<'_>, body: &[u8]) -> Option<Request<Body>> {
    let method = Method::from_bytes(head.method.as_bytes()).ok()?;
    let uri: Uri = head.target.parse().ok()?;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for (name, value) in &head.headers {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_bytes(value).ok()?,
        );
    }
    let body = if body.is_empty() {
        Body::empty()
    } else {
        Body::from(Bytes::copy_from_slice(body))
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}

/// Writes `response` with a `content-length`; false when the connection cannot go on
/// (a body error, an upgrade answer, a write error).
async fn write_response(
    stream: &mut TcpStream,
    response: Response,
    close: bool,
) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    if parts.status == axum::http::StatusCode::SWITCHING_PROTOCOLS {
        // Upgrades are planned off the fast path; a handler that answers 101 to
        // anything else gets no connection to take over.
        return Ok(false);
    }
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return Ok(false);
    };
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let inline = body.len() <= INLINE_BODY;
    let mut out = Vec::with_capacity(256 + if inline { body.len() } else { 0 });
    http1::write_head(
        &mut out,
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or(""),
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
        &date,
        body.len(),
        close,
    );
    if inline {
        out.extend_from_slice(&body);
        stream.write_all(&out).await?;
    } else {
        stream.write_all(&out).await?;
        stream.write_all(&body).await?;
    }
    Ok(true)
}

/// A socket whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
