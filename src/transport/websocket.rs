//! The WebSocket transport, shared by every frontend that speaks over WebSocket: the
//! upgrade answer, the per-connection buffers, and the one task that writes queued
//! frames, reads client messages and keeps the heartbeat until the connection ends.
//!
//! A frontend plugs in as a [`Peer`]: the small interface this transport needs (its
//! outbox, what to do with a message, its ping, its close). The transport owns that
//! interface so that it never imports a frontend.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::heartbeat::{Beat, Heartbeat};
use crate::connection::{CloseReason, Frame, Outbox, Queued};

/// Bytes tungstenite reads per syscall and keeps allocated per connection. Clients send
/// little (pongs, acks, joins), and a larger message only grows the buffer while it is
/// read, so 256 bytes keeps idle connections small. tungstenite's default is 128 KiB.
const WS_READ_BUFFER: usize = 256;
/// Frames are written out as soon as they are formatted: no write-side buffering
/// beyond the frame itself (tungstenite's default batches 128 KiB).
const WS_WRITE_BUFFER: usize = 0;
/// How long a closing WebSocket waits for the client's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);

/// An upgraded connection.
pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What the WebSocket loop needs from the frontend's connection.
pub trait Peer: Send + Sync + 'static {
    /// The queue the loop drains.
    fn outbox(&self) -> &Outbox;
    /// A text message from the client. An error closes the connection with it.
    fn text(self: &Arc<Self>, text: &str, beat: &mut Heartbeat) -> Result<(), CloseReason>;
    /// A binary message from the client.
    fn binary(self: &Arc<Self>, bytes: Bytes, beat: &mut Heartbeat) -> Result<(), CloseReason>;
    /// The frame the heartbeat sends when it pings (server-driven heartbeats only).
    fn ping(&self) -> Option<Frame>;
    /// Whether the connection has attached (ends the connect deadline).
    fn attached(&self) -> bool;
    /// Ends the connection (idempotent): unregister, tell the frontend.
    fn close(self: &Arc<Self>, reason: CloseReason);
    /// A queued frame is being written now (for the push-to-write histogram).
    fn written(&self, queued: &Queued, now: Instant);
    /// The WebSocket close code sent for `reason`; `None` when the client ended it.
    fn close_code(&self, reason: CloseReason) -> Option<CloseCode> {
        match reason {
            CloseReason::Shutdown => Some(CloseCode::Away),
            CloseReason::SlowClient => Some(CloseCode::Policy),
            CloseReason::ProtocolError => Some(CloseCode::Protocol),
            CloseReason::TooLarge => Some(CloseCode::Size),
            CloseReason::Client | CloseReason::TransportClose | CloseReason::TransportError => None,
            _ => Some(CloseCode::Normal),
        }
    }
}

/// tungstenite settings for one endpoint: small read buffer, no write batching, and
/// messages no larger than `max_payload`.
pub fn config(max_payload: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_write_buffer_size(max_payload + 64 * 1024)
        .max_message_size(Some(max_payload))
        .max_frame_size(Some(max_payload))
}

/// Whether the request asks for a WebSocket upgrade.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// Why a request could not be upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotUpgradable {
    /// No `Connection: upgrade` / `Upgrade: websocket` / key.
    NotAnUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    BadVersion,
    /// The connection cannot be taken over (HTTP/2, or already taken).
    NoConnection,
}

/// A WebSocket handshake the frontend accepted: answer with `response`, then await
/// `upgraded` in a task of the frontend's.
pub struct Accepted {
    pub response: Response,
    pub upgraded: hyper::upgrade::OnUpgrade,
}

/// Accepts the WebSocket handshake of `req`, answering with `protocol` as the chosen
/// subprotocol when given.
pub fn accept(mut req: Request, protocol: Option<&'static str>) -> Result<Accepted, NotUpgradable> {
    let headers = req.headers();
    let key = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if is_upgrade_request(headers) => key.clone(),
        _ => return Err(NotUpgradable::NotAnUpgrade),
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(NotUpgradable::BadVersion);
    }
    let upgraded = req
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or(NotUpgradable::NoConnection)?;
    let accept = derive_accept_key(key.as_bytes());
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    let response = response
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    Ok(Accepted { response, upgraded })
}

/// Completes an accepted upgrade into a WebSocket stream; `None` when the client went
/// away during the handshake.
pub async fn upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
) -> Option<Ws> {
    match on_upgrade.await {
        Ok(u) => Some(
            WebSocketStream::from_raw_socket(TokioIo::new(u), Role::Server, Some(config)).await,
        ),
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            None
        }
    }
}

/// The connection's one task: writes queued frames, reads client messages and keeps
/// `beat`, until the connection closes; then the closing handshake.
///
/// This future lives as long as the connection, so its size is memory per connection:
/// it is an `async move` block rather than an `async fn` (whose arguments would be
/// stored twice), and it selects and writes with `poll_fn` rather than nested futures.
// Not `async fn`: that form stores the arguments twice (see the doc above).
#[allow(clippy::manual_async_fn)]
pub fn run<P: Peer>(
    peer: Arc<P>,
    mut ws: Ws,
    mut beat: Heartbeat,
) -> impl Future<Output = ()> + Send {
    // `beat` is `mut` here, not rebound inside: a rebinding would be a second copy in
    // the future's state.
    async move {
        let sleep = tokio::time::sleep_until(beat.deadline().into());
        tokio::pin!(sleep);
        let mut batch: Vec<Queued> = Vec::new();
        let reason = 'session: loop {
            let closing = peer.outbox().drain(&mut batch);
            if !batch.is_empty() {
                let written = {
                    let now = Instant::now();
                    batch.reverse(); // popped from the back, so written in queue order
                    let mut ready = std::pin::pin!(peer.outbox().ready());
                    std::future::poll_fn(|cx| {
                        match write_batch(cx, &*peer, &mut ws, &mut batch, now) {
                            Poll::Ready(r) => return Poll::Ready(r),
                            Poll::Pending => {}
                        }
                        // A client that does not read blocks the write; its queue then
                        // overflows (or it misses a pong) and the connection closes,
                        // which ends the write.
                        loop {
                            if let Some(reason) = peer.outbox().closing() {
                                return Poll::Ready(Err(reason));
                            }
                            match ready.as_mut().poll(cx) {
                                Poll::Ready(()) => ready.set(peer.outbox().ready()),
                                Poll::Pending => return Poll::Pending,
                            }
                        }
                    })
                    .await
                };
                if let Err(reason) = written {
                    break 'session reason;
                }
                if batch.capacity() > 64 {
                    batch = Vec::new();
                }
            }
            if let Some(reason) = closing {
                break reason;
            }
            // A hand-rolled select over the three sources: `tokio::select!` builds a
            // larger state machine, and this future lives as long as the connection.
            let wake = {
                let mut ready = std::pin::pin!(peer.outbox().ready());
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(msg) = ws.poll_next_unpin(cx) {
                        return Poll::Ready(Wake::Read(msg));
                    }
                    if ready.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Queued);
                    }
                    sleep.as_mut().poll(cx).map(|()| Wake::Timer)
                })
                .await
            };
            match wake {
                Wake::Read(msg) => {
                    let handled = match msg {
                        Some(Ok(WsMessage::Text(text))) => peer.text(&text, &mut beat),
                        Some(Ok(WsMessage::Binary(bytes))) => peer.binary(bytes, &mut beat),
                        Some(Ok(WsMessage::Close(_))) => Err(CloseReason::Client),
                        // WebSocket-level ping/pong: tungstenite answers pings.
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "websocket read failed");
                            Err(read_error(&e))
                        }
                        None => Err(CloseReason::TransportClose),
                    };
                    if let Err(reason) = handled {
                        break reason;
                    }
                    sleep.as_mut().reset(beat.deadline().into());
                }
                Wake::Queued => {}
                Wake::Timer => {
                    match beat.on_deadline(peer.attached()) {
                        Beat::Wait => {}
                        Beat::Ping => {
                            // Once per ping interval: an idle connection gives back the
                            // buffers its last burst left behind.
                            batch = Vec::new();
                            peer.outbox().trim();
                            if let Some(ping) = peer.ping() {
                                peer.outbox().push_control(ping);
                            }
                        }
                        Beat::Close(reason) => break reason,
                    }
                    sleep.as_mut().reset(beat.deadline().into());
                }
            }
        };
        peer.close(reason);
        if let Some(code) = peer.close_code(reason) {
            let frame = CloseFrame {
                code,
                reason: reason.as_str().into(),
            };
            // RFC 6455 closing handshake: send the close, then read until the client's
            // close (or EOF) so the TCP close is clean rather than a reset that could
            // destroy the close frame in the client's receive buffer. The heartbeat's
            // timer bounds it, so the task holds one timer, not two.
            sleep
                .as_mut()
                .reset((Instant::now() + CLOSE_HANDSHAKE).into());
            // Boxed: it runs once, at the end, and would otherwise be the largest
            // state of this long-lived future.
            let mut handshake = Box::pin(async {
                if ws.close(Some(frame)).await.is_ok() {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
            std::future::poll_fn(|cx| match handshake.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(()),
                Poll::Pending => sleep.as_mut().poll(cx),
            })
            .await;
        }
    }
}

/// A read error: a message over the size limit is the client breaking the protocol's
/// limits (the peer answers it with its own close code); anything else is the
/// transport failing.
fn read_error(e: &tokio_tungstenite::tungstenite::Error) -> CloseReason {
    use tokio_tungstenite::tungstenite::error::CapacityError;
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => CloseReason::TooLarge,
        _ => CloseReason::TransportError,
    }
}

/// What woke the WebSocket loop.
enum Wake {
    Read(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    Queued,
    Timer,
}

/// Writes `batch` (in reverse order: the next frame is last) and flushes, as far as
/// the socket takes it now.
fn write_batch<P: Peer>(
    cx: &mut std::task::Context<'_>,
    peer: &P,
    ws: &mut Ws,
    batch: &mut Vec<Queued>,
    now: Instant,
) -> Poll<Result<(), CloseReason>> {
    let failed = |e: tokio_tungstenite::tungstenite::Error| {
        tracing::debug!(error = %e, "websocket write failed");
        CloseReason::TransportError
    };
    while !batch.is_empty() {
        match ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(failed(e))),
            Poll::Pending => return Poll::Pending,
        }
        let Some(q) = batch.pop() else { break };
        peer.written(&q, now);
        let msg = match q.frame {
            Frame::Text(t) => WsMessage::Text(t),
            Frame::Binary(b) => WsMessage::Binary(b),
        };
        if let Err(e) = ws.start_send_unpin(msg) {
            return Poll::Ready(Err(failed(e)));
        }
    }
    ws.poll_flush_unpin(cx).map_err(failed)
}
