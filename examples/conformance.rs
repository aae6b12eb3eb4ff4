//! A server that behaves like the Engine.IO and Socket.IO protocol reference test
//! servers, built on pushgate's frontend, so the official protocol test suites
//! (the `test-suite/` folders of socketio/engine.io-protocol and
//! socketio/socket.io-protocol) can run against our implementation:
//!
//! - `/engine.io/`: echoes every message, text as text and binary as binary.
//! - `/socket.io/`: namespaces `/` and `/custom`; emits `auth` with the CONNECT
//!   payload on connect; re-emits `message` as `message-back` with the same
//!   arguments; acks `message-with-ack` with its own arguments.
//!
//! pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1000000, connectTimeout 1000 ms.
//!
//! ```sh
//! cargo run --example conformance            # listens on 127.0.0.1:3000
//! PORT=3100 cargo run --example conformance
//! ```

use std::sync::Arc;
use std::time::Duration;

use pushgate::auth::Identity;
use pushgate::connection::{CloseReason, Frame};
use pushgate::delivery::Tracker;
use pushgate::frontend::socketio::engine::{Handler, Message};
use pushgate::frontend::socketio::engineio::Query;
use pushgate::frontend::socketio::{
    Behaviour, Engine, EngineConfig, Event, Refusal, Session, Socket, SocketIo,
};
use pushgate::hub::Hub;
use pushgate::id::{NodeId, SocketId};
use pushgate::metrics::Metrics;
use pushgate::server::socketio_routes;
use serde_json::{json, Value};

/// The Engine.IO reference server: echo.
struct Echo;

impl Handler for Echo {
    type State = ();

    fn open(&self, _: &Arc<Session<Self>>, _: &Query) {}

    fn message(
        &self,
        session: &Arc<Session<Self>>,
        _: &mut (),
        message: Message<'_>,
    ) -> Result<(), CloseReason> {
        let frame = match message {
            Message::Text(text) => Frame::text(format!("4{text}")),
            Message::Binary(bytes) => Frame::Binary(bytes),
        };
        session.outbox().push_control(frame);
        Ok(())
    }

    fn close(&self, _: &Arc<Session<Self>>, _: (), _: CloseReason) {}

    fn disconnect(&self, _: &Session<Self>, _: &mut (), _: &SocketId) {}
}

/// The Socket.IO reference server's behaviour.
struct Reference;

impl Behaviour for Reference {
    fn connect(&self, _: &str, _: Option<&Value>, _: Option<&str>) -> Result<Identity, Refusal> {
        Ok(Identity::default())
    }

    fn connected(&self, socket: &Socket<'_>, auth: Option<&Value>) {
        socket.emit("auth", &[auth.cloned().unwrap_or_else(|| json!({}))], &[]);
    }

    fn event(&self, socket: &Socket<'_>, event: Event<'_>) {
        match event.name {
            "message" => socket.emit("message-back", event.args, event.attachments),
            "message-with-ack" => {
                if let Some(id) = event.ack {
                    socket.ack(id, Value::Array(event.args.to_vec()), event.attachments);
                }
            }
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let config = EngineConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        upgrade_timeout: Duration::from_secs(10),
        connect_timeout: None,
        max_payload: 1_000_000,
        queue_capacity: 1024,
        queue_bytes: 16 * 1024 * 1024,
        forwarder: None,
    };
    let metrics = Arc::new(Metrics::new());
    let mut codecs = pushgate::codec::Codecs::new();
    codecs.register(Arc::new(pushgate::frontend::socketio::SocketIoCodec));
    let hub = Arc::new(Hub::new(codecs, metrics.clone()));
    let tracker = Tracker::new(metrics.clone());
    let echo = Engine::new(config.clone(), Echo, metrics.clone());
    let socketio = Engine::new(
        EngineConfig {
            connect_timeout: Some(Duration::from_millis(1000)),
            ..config
        },
        SocketIo::new(
            hub,
            tracker,
            NodeId::from("conformance"),
            vec!["/".into(), "/custom".into()],
            Reference,
            metrics.clone(),
        ),
        metrics,
    );
    let app = socketio_routes(echo, "/engine.io").merge(socketio_routes(socketio, "/socket.io"));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!("conformance server listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
