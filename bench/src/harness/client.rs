//! Clients of the things under test: the wsmux protocol over the daemon's Unix socket, a
//! length-prefixed stream (websocat's `lengthprefixed:` overlay uses the same 4-byte
//! big-endian framing), and a direct WebSocket client of the upstream.
//!
//! Reading is built for throughput: one large buffer per connection, every whole frame in it
//! handled in place, no allocation per message.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::Message;
use wsmux_proto::frame::check;
use wsmux_proto::{
    decode_server, encode, ClientMsg, Hello, PayloadRef, ServerMsg, Subscribe, DEFAULT_MAX_FRAME,
    HEADER_LEN, PROTOCOL_VERSION,
};

use super::msgpack::{self, Fields};
use super::track::{dropped_from_text, Tracker};

/// Read buffer of one connection.
const READ_BUF: usize = 64 * 1024;

/// Connects to a Unix socket, retrying while the listener's backlog is full (`EAGAIN`) or it
/// does not listen yet (`ECONNREFUSED`), for at most 10 s.
pub async fn connect_unix(socket: &Path) -> Result<UnixStream> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) => return Ok(s),
            // A full backlog, or a socket file that is bound but not yet listening (a relay
            // that has just started: its file appears before `listen`).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {}", socket.display())),
        }
    }
}

/// How the frames of a stream are delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// A 4-byte big-endian length before each body (wsmux, the floor relay, websocat's
    /// `lengthprefixed:` overlay).
    Prefixed,
    /// A newline after each body (websocat's line mode, `-t`).
    Lines,
}

/// Reads delimited frames from a stream.
pub struct FrameReader<R> {
    stream: R,
    buf: BytesMut,
    framing: Framing,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `stream`, whose frames are length-prefixed.
    pub fn new(stream: R) -> Self {
        Self::with_framing(stream, Framing::Prefixed)
    }

    /// Wraps `stream`, whose frames are delimited as `framing` says.
    pub fn with_framing(stream: R, framing: Framing) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::with_capacity(READ_BUF),
            framing,
        }
    }

    /// The next whole frame in `buf[pos..]`: (body start, body end, frame end).
    fn next_frame(&self, pos: usize) -> Result<Option<(usize, usize, usize)>> {
        let rest = &self.buf[pos..];
        Ok(match self.framing {
            Framing::Prefixed => check(rest, DEFAULT_MAX_FRAME)?
                .map(|total| (pos + HEADER_LEN, pos + total, pos + total)),
            Framing::Lines => rest
                .iter()
                .position(|&b| b == b'\n')
                .map(|n| (pos, pos + n, pos + n + 1)),
        })
    }

    /// Calls `f` with the body of every frame that arrives until `f` returns `true`
    /// (result `Ok(true)`) or `deadline` passes (`Ok(false)`). End of stream is an error.
    pub async fn read_frames(
        &mut self,
        deadline: Instant,
        mut f: impl FnMut(&[u8]) -> Result<bool>,
    ) -> Result<bool> {
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        loop {
            let mut pos = 0;
            let mut stop = false;
            while !stop {
                let Some((body, end, next)) = self.next_frame(pos)? else {
                    break;
                };
                stop = f(&self.buf[body..end])?;
                pos = next;
            }
            self.buf.advance(pos);
            if stop {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if self.buf.capacity() - self.buf.len() < READ_BUF / 4 {
                self.buf.reserve(READ_BUF);
            }
            tokio::select! {
                r = self.stream.read_buf(&mut self.buf) => {
                    if r.context("reading")? == 0 {
                        bail!("the connection was closed by the other side");
                    }
                }
                _ = &mut sleep => return Ok(false),
            }
        }
    }

    /// The next frame body, copied out (for the control path).
    pub async fn next_body(&mut self, deadline: Instant) -> Result<Vec<u8>> {
        let mut body = None;
        let got = self
            .read_frames(deadline, |b| {
                body = Some(b.to_vec());
                Ok(true)
            })
            .await?;
        match body {
            Some(b) if got => Ok(b),
            _ => bail!("no frame before the deadline"),
        }
    }
}

/// `send {id, endpoint, data}` encoded from borrowed data. Written here rather than built as a
/// `ClientMsg::Send` so that the payload is not copied into an owned `Payload` per request;
/// the field names are PROTOCOL.md's.
#[derive(Serialize)]
pub struct SendRef<'a> {
    /// Always `"send"`.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Request id.
    pub id: u64,
    /// Endpoint name.
    pub endpoint: &'a str,
    /// The message.
    pub data: PayloadRef<'a>,
}

/// Appends one framed request to `buf`.
pub fn encode_request<T: Serialize + ?Sized>(msg: &T, buf: &mut Vec<u8>) -> Result<()> {
    encode(msg, buf, DEFAULT_MAX_FRAME).context("encoding a request")
}

/// A greeted wsmux client.
pub struct Client {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connects to the daemon at `socket` and completes `hello`/`welcome` before `deadline`.
    pub async fn connect(socket: &Path, deadline: Instant) -> Result<Client> {
        let stream = connect_unix(socket).await?;
        let (r, w) = stream.into_split();
        let mut c = Client {
            reader: FrameReader::new(r),
            writer: w,
        };
        c.request(&ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: Some("wsmux-bench".into()),
        }))
        .await?;
        let body = c
            .reader
            .next_body(deadline)
            .await
            .context("waiting for welcome")?;
        match decode_server(&body) {
            Ok(ServerMsg::Welcome(_)) => Ok(c),
            Ok(other) => bail!("expected welcome, got {other:?}"),
            Err(e) => bail!("undecodable answer to hello: {e}"),
        }
    }

    /// Writes one request.
    pub async fn request<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<()> {
        let mut buf = Vec::with_capacity(64);
        encode_request(msg, &mut buf)?;
        self.writer
            .write_all(&buf)
            .await
            .context("writing a request")
    }

    /// Subscribes to `endpoint` and waits until it is `open` (or `deadline`).
    pub async fn subscribe_open(&mut self, endpoint: &str, deadline: Instant) -> Result<()> {
        self.subscribe_topics(endpoint, None, deadline).await
    }

    /// Subscribes to `topics` of `endpoint` (the whole endpoint if `None`) and waits until
    /// the subscription is acknowledged and the endpoint is `open` (or `deadline`). An `error`
    /// reply fails with its code and message.
    pub async fn subscribe_topics(
        &mut self,
        endpoint: &str,
        topics: Option<Vec<String>>,
        deadline: Instant,
    ) -> Result<()> {
        const ID: u64 = 1;
        self.request(&ClientMsg::Subscribe(Subscribe {
            topics,
            id: Some(ID),
            endpoint: endpoint.to_owned(),
            ..Subscribe::default()
        }))
        .await?;
        let mut acked = false;
        let mut open = false;
        let mut failure = None;
        let done = self
            .reader
            .read_frames(deadline, |body| {
                let f = msgpack::fields(body)?;
                match (f.ty, f.id) {
                    ("ack", Some(ID)) => acked = true,
                    ("error", Some(ID)) => {
                        failure = Some(format!("{:?}: {:?}", f.code, f.message));
                        return Ok(true);
                    }
                    ("state", _) if acked => open = f.state == Some("open"),
                    _ => {}
                }
                Ok(acked && open)
            })
            .await?;
        if let Some(e) = failure {
            bail!("subscribe to `{endpoint}` failed: {e}");
        }
        if !done {
            bail!("endpoint `{endpoint}` not open before the deadline (acked: {acked})");
        }
        Ok(())
    }

    /// Receives `message` frames into `tracker` until the run's last message arrived
    /// (`Ok(true)`) or `deadline` (`Ok(false)`).
    pub async fn receive(&mut self, tracker: &mut Tracker, deadline: Instant) -> Result<bool> {
        if tracker.done {
            return Ok(true);
        }
        self.reader
            .read_frames(deadline, |body| {
                let f = msgpack::fields(body)?;
                Ok(on_event(tracker, &f))
            })
            .await
    }

    /// Receives until a warm-up probe arrived.
    pub async fn until_attached(&mut self, tracker: &mut Tracker, deadline: Instant) -> Result<()> {
        if tracker.attached {
            return Ok(());
        }
        let ok = self
            .reader
            .read_frames(deadline, |body| {
                let f = msgpack::fields(body)?;
                on_event(tracker, &f);
                Ok(tracker.attached)
            })
            .await?;
        if !ok {
            bail!("no warm-up probe arrived before the deadline");
        }
        Ok(())
    }

    /// The two halves, for a writer task and a reader task.
    pub fn into_parts(self) -> (FrameReader<OwnedReadHalf>, OwnedWriteHalf) {
        (self.reader, self.writer)
    }
}

/// Applies one daemon frame to `tracker`; `true` when the run is complete.
fn on_event(tracker: &mut Tracker, f: &Fields<'_>) -> bool {
    match f.ty {
        "message" => {
            if let Some(data) = f.data {
                return tracker.on_message(f.seq, data);
            }
        }
        "error" if f.code == Some("lagged") => {
            tracker.on_lagged(f.dropped.or_else(|| f.message.and_then(dropped_from_text)));
        }
        "lagged" => tracker.on_lagged(f.dropped),
        _ => {}
    }
    tracker.done
}

/// A client of a Unix socket whose frame bodies are raw payloads, without a protocol (the
/// floor relay, websocat).
/// A client that receives the run's messages: a wsmux subscriber or a relay's raw client.
pub trait Receiver {
    /// Reads until the last message of the run or `deadline`; `true` if it arrived.
    fn receive(
        &mut self,
        tracker: &mut Tracker,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<bool>>;
    /// Reads until a warm-up probe arrived, or fails at `deadline`.
    fn until_attached(
        &mut self,
        tracker: &mut Tracker,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Result<()>>;
}

impl Receiver for Client {
    async fn receive(&mut self, tracker: &mut Tracker, deadline: Instant) -> Result<bool> {
        Client::receive(self, tracker, deadline).await
    }
    async fn until_attached(&mut self, tracker: &mut Tracker, deadline: Instant) -> Result<()> {
        Client::until_attached(self, tracker, deadline).await
    }
}

impl Receiver for RawClient {
    async fn receive(&mut self, tracker: &mut Tracker, deadline: Instant) -> Result<bool> {
        RawClient::receive(self, tracker, deadline).await
    }
    async fn until_attached(&mut self, tracker: &mut Tracker, deadline: Instant) -> Result<()> {
        RawClient::until_attached(self, tracker, deadline).await
    }
}

pub struct RawClient {
    reader: FrameReader<UnixStream>,
}

impl RawClient {
    /// Connects to `socket`, whose frames are delimited as `framing` says.
    pub async fn connect(socket: &Path, framing: Framing) -> Result<RawClient> {
        let stream = connect_unix(socket).await?;
        Ok(RawClient {
            reader: FrameReader::with_framing(stream, framing),
        })
    }

    /// Like [`Client::receive`].
    pub async fn receive(&mut self, tracker: &mut Tracker, deadline: Instant) -> Result<bool> {
        if tracker.done {
            return Ok(true);
        }
        self.reader
            .read_frames(deadline, |body| Ok(tracker.on_message(None, body)))
            .await
    }

    /// Receives until a warm-up probe arrived.
    pub async fn until_attached(&mut self, tracker: &mut Tracker, deadline: Instant) -> Result<()> {
        if tracker.attached {
            return Ok(());
        }
        let ok = self
            .reader
            .read_frames(deadline, |body| {
                tracker.on_message(None, body);
                Ok(tracker.attached)
            })
            .await?;
        if !ok {
            bail!("no warm-up probe arrived before the deadline");
        }
        Ok(())
    }
}

/// A WebSocket client connected straight to the upstream (the baseline of the latency
/// scenario), built on tokio-tungstenite.
pub struct DirectClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl DirectClient {
    /// Connects to `url` (a `ws://127.0.0.1:...` address).
    pub async fn connect(url: &str) -> Result<DirectClient> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            tcp.set_nodelay(true)?;
        }
        Ok(DirectClient { ws })
    }

    /// Like [`Client::receive`]; also returns when a probe arrived if `until_probe`.
    pub async fn receive(
        &mut self,
        tracker: &mut Tracker,
        deadline: Instant,
        until_probe: bool,
    ) -> Result<bool> {
        loop {
            if tracker.done || (until_probe && tracker.attached) {
                return Ok(true);
            }
            let next = tokio::time::timeout_at(deadline.into(), self.ws.next()).await;
            match next {
                Err(_) => return Ok(false),
                Ok(None) => bail!("the upstream closed the direct connection"),
                Ok(Some(m)) => match m.context("direct WebSocket")? {
                    Message::Binary(b) => {
                        tracker.on_message(None, &b);
                    }
                    Message::Text(t) => {
                        tracker.on_message(None, t.as_bytes());
                    }
                    _ => {}
                },
            }
        }
    }
}
