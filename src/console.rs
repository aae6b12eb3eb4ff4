//! The dev console: static pages the gateway serves at `/console` (the cluster, a live
//! log of the event stream, a push form) and `/console/client` (a Socket.IO client
//! that shows what it receives and acks when asked). They are embedded in the binary
//! (`include_str!`): no build step, and nothing is loaded from another host — the
//! Content-Security-Policy allows this origin only.
//!
//! The pages hold no privilege: `/console` calls the `/v1` API with the key the user
//! types (or passes as `#key=…` in the URL fragment, which browsers never send), under
//! the same rules as any caller; `/console/client` connects like any client, with a
//! token. Serving them costs nothing until someone opens them.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("console/index.html");
const CLIENT_HTML: &str = include_str!("console/client.html");
const CONSOLE_CSS: &str = include_str!("console/console.css");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CLIENT_JS: &str = include_str!("console/client.js");

/// This origin only: scripts, styles, `fetch` and the WebSocket (`'self'` covers
/// `ws:`/`wss:` to the same host in CSP 3). No inline script, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // A new binary may bring new pages: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The console's routes (no key: the pages are public, the API they call is not).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    const HTML: &str = "text/html; charset=utf-8";
    Router::new()
        .route("/console", get(|| async { asset(HTML, INDEX_HTML) }))
        .route(
            "/console/client",
            get(|| async { asset(HTML, CLIENT_HTML) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/client.js",
            get(|| async { asset("text/javascript; charset=utf-8", CLIENT_JS) }),
        )
}
