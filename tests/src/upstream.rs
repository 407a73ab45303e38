//! A scriptable WebSocket server standing in for the real upstream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// What the test can tell the connections to do.
#[derive(Clone, Debug)]
enum Control {
    Send(Message),
    SendMany(Arc<Vec<Message>>),
    Close(u16, String),
    Abort,
}

/// What the upstream saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A client connected (connection number, from 1).
    Connected(usize),
    /// A data message arrived on connection `n`.
    Message(usize, Message),
    /// A ping frame arrived on connection `n`.
    Ping(usize),
    /// A pong frame arrived on connection `n`, with its payload.
    Pong(usize, Vec<u8>),
    /// A close frame arrived on connection `n` (code).
    Close(usize, Option<u16>),
    /// Connection `n` ended.
    Gone(usize),
}

/// How the upstream behaves on its own.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Answer this exact text message with `heartbeat_reply`.
    pub heartbeat: Option<String>,
    /// The answer to `heartbeat`.
    pub heartbeat_reply: String,
    /// Echo every other text message back.
    pub echo: bool,
}

/// A running test upstream.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Control channels of live connections.
    live: Arc<Mutex<Vec<mpsc::UnboundedSender<Control>>>>,
    /// Everything seen, in order.
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Upstream {
    /// Starts an upstream with default behaviour (no echo, no heartbeat answers).
    pub async fn start() -> Upstream {
        Self::with(Behaviour::default()).await
    }

    /// Starts an upstream with the given behaviour.
    pub async fn with(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::on(listener, behaviour)
    }

    /// Serves on an already bound listener (to restart on the same port).
    pub fn on(listener: TcpListener, behaviour: Behaviour) -> Upstream {
        let addr = listener.local_addr().expect("local addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let live: Arc<Mutex<Vec<mpsc::UnboundedSender<Control>>>> = Arc::default();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (c, l) = (Arc::clone(&connections), Arc::clone(&live));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // Register the connection before the handshake answer goes out: once the
                // client sees the connection open, a broadcast must reach it.
                let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
                // The callback's error type is fixed by tungstenite.
                #[allow(clippy::result_large_err)]
                let register = {
                    let (c, l) = (Arc::clone(&c), Arc::clone(&l));
                    move |_: &Request, response: Response| {
                        l.lock().unwrap().push(ctl_tx);
                        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                        let mut response = response;
                        response
                            .headers_mut()
                            .insert("x-connection", n.to_string().parse().unwrap());
                        Ok(response)
                    }
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, register).await else {
                    continue;
                };
                let n = c.load(Ordering::SeqCst);
                let _ = seen_tx.send(Seen::Connected(n));
                tokio::spawn(serve(ws, n, ctl_rx, seen_tx.clone(), behaviour.clone()));
            }
        });
        Upstream {
            addr,
            connections,
            live,
            seen,
        }
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn control(&self, c: Control) {
        self.live
            .lock()
            .unwrap()
            .retain(|tx| tx.send(c.clone()).is_ok());
    }

    /// Sends a message on every live connection.
    pub fn broadcast(&self, msg: Message) {
        self.control(Control::Send(msg));
    }

    /// Sends `msgs` on every live connection, in order, with one flush at the end (a burst).
    pub fn broadcast_many(&self, msgs: Vec<Message>) {
        self.control(Control::SendMany(Arc::new(msgs)));
    }

    /// Closes every live connection with a close frame.
    pub fn close_all(&self, code: u16, reason: &str) {
        self.control(Control::Close(code, reason.into()));
    }

    /// Drops every live connection's TCP socket without a close frame.
    pub fn abort_all(&self) {
        self.control(Control::Abort);
    }

    /// The next thing the upstream saw.
    pub async fn next(&mut self) -> Seen {
        self.seen
            .recv()
            .await
            .expect("upstream event channel closed")
    }

    /// Waits for the next event matching `pred`, skipping others.
    pub async fn wait_for(&mut self, mut pred: impl FnMut(&Seen) -> bool) -> Seen {
        loop {
            let s = self.next().await;
            if pred(&s) {
                return s;
            }
        }
    }

    /// Waits until connection number `n` is established.
    pub async fn wait_connected(&mut self, n: usize) {
        self.wait_for(|s| *s == Seen::Connected(n)).await;
    }
}

async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    n: usize,
    mut ctl: mpsc::UnboundedReceiver<Control>,
    seen: mpsc::UnboundedSender<Seen>,
    behaviour: Behaviour,
) {
    loop {
        tokio::select! {
            c = ctl.recv() => match c {
                Some(Control::Send(m)) => {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                Some(Control::SendMany(msgs)) => {
                    let mut fed = true;
                    for m in msgs.iter() {
                        if ws.feed(m.clone()).await.is_err() {
                            fed = false;
                            break;
                        }
                    }
                    if !fed || ws.flush().await.is_err() {
                        break;
                    }
                }
                Some(Control::Close(code, reason)) => {
                    let _ = ws
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        })))
                        .await;
                    break;
                }
                Some(Control::Abort) | None => break,
            },
            m = ws.next() => match m {
                Some(Ok(Message::Ping(_))) => {
                    let _ = seen.send(Seen::Ping(n));
                }
                Some(Ok(Message::Pong(p))) => {
                    let _ = seen.send(Seen::Pong(n, p.to_vec()));
                }
                Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(f))) => {
                    let _ = seen.send(Seen::Close(n, f.map(|f| u16::from(f.code))));
                    let _ = ws.close(None).await;
                    break;
                }
                Some(Ok(m)) => {
                    let _ = seen.send(Seen::Message(n, m.clone()));
                    if let Message::Text(t) = &m {
                        if behaviour.heartbeat.as_deref() == Some(t.as_str()) {
                            let _ = ws.send(Message::text(behaviour.heartbeat_reply.clone())).await;
                        } else if behaviour.echo {
                            let _ = ws.send(m).await;
                        }
                    }
                }
                Some(Err(_)) | None => break,
            },
        }
    }
    let _ = seen.send(Seen::Gone(n));
}
