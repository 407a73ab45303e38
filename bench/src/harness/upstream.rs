//! A local WebSocket upstream built for load generation.
//!
//! Every connection gets two plain OS threads over a blocking `std::net::TcpStream`: a reader
//! that parses the client's frames (answering pings and closes, counting data messages) and,
//! on demand, a sender that writes pre-encoded server frames in large batches ([`Conn::blast`])
//! or at a fixed rate ([`pace`]). Doing the framing by hand keeps the generator far cheaper
//! than the daemon it measures, and blocking threads pace with `thread::sleep` precision
//! instead of a 1 ms timer wheel. The handshake key is derived with tungstenite's own
//! `derive_accept_key`.
//!
//! Only 127.0.0.1 is ever bound.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::payload::{self, now_ns};

/// Bytes gathered before one `write` while blasting.
const BATCH: usize = 256 * 1024;

/// Largest client frame accepted.
const MAX_FRAME: u64 = 64 * 1024 * 1024;

/// A running upstream server.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    conns: Mutex<Vec<Arc<Conn>>>,
    changed: Condvar,
    stopping: AtomicBool,
    /// Connections answer Binance-style `SUBSCRIBE`/`UNSUBSCRIBE` requests.
    answer: bool,
}

/// Most stream names a connection's [`SubscribeLog`] keeps.
const MAX_LOGGED_STREAMS: usize = 1 << 20;

/// The Binance-style requests a connection received (an upstream started with
/// [`Upstream::start_answering`]).
#[derive(Clone, Debug, Default)]
pub struct SubscribeLog {
    /// `SUBSCRIBE` requests.
    pub requests: u64,
    /// The streams they named, in order, repeats included (at most 1 M).
    pub streams: Vec<String>,
    /// `UNSUBSCRIBE` requests.
    pub unsubscribes: u64,
    /// Text messages that were neither.
    pub other: u64,
}

/// One accepted WebSocket connection.
pub struct Conn {
    /// The request path, e.g. `/` or `/e042`.
    pub path: String,
    writer: Mutex<TcpStream>,
    closed: AtomicBool,
    rx_messages: AtomicU64,
    rx_bytes: AtomicU64,
    last_rx_ns: AtomicU64,
    /// Answers `SUBSCRIBE`/`UNSUBSCRIBE` and logs them in `subs`.
    answer: bool,
    /// What was subscribed, when `answer`.
    subs: Mutex<SubscribeLog>,
}

/// What a connection received from its client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Received {
    /// Data messages.
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// When the last one arrived (`payload::now_ns`), 0 if none.
    pub last_ns: u64,
}

impl Upstream {
    /// Listens on 127.0.0.1, port chosen by the system.
    pub fn start() -> Result<Upstream> {
        Upstream::start_with(false)
    }

    /// Like [`Upstream::start`], but every connection also parses the client's text messages
    /// as Binance-style requests (`{"method":"SUBSCRIBE","params":[...],"id":N}`), answers
    /// each `SUBSCRIBE`/`UNSUBSCRIBE` with `{"result":null,"id":N}` and logs it.
    pub fn start_answering() -> Result<Upstream> {
        Upstream::start_with(true)
    }

    fn start_with(answer: bool) -> Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the upstream")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            answer,
            ..Shared::default()
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("upstream-accept".into())
            .spawn(move || accept_loop(listener, s))?;
        Ok(Upstream {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// `ws://127.0.0.1:PORT/PATH`.
    pub fn url_path(&self, path: &str) -> String {
        format!("ws://{}/{path}", self.addr)
    }

    /// Waits until at least `n` connections are open; returns them in accept order.
    pub fn wait_live(&self, n: usize, limit: Duration) -> Result<Vec<Arc<Conn>>> {
        let deadline = Instant::now() + limit;
        let mut conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let live: Vec<Arc<Conn>> = conns.iter().filter(|c| !c.is_closed()).cloned().collect();
            if live.len() >= n {
                return Ok(live);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "the upstream has {} open WebSocket connection(s) after {limit:?}, expected {n}",
                    live.len()
                );
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            conns = self
                .shared
                .changed
                .wait_timeout(conns, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Upstream {
    /// The requests of every connection so far, together (connections in accept order).
    pub fn subscribed(&self) -> SubscribeLog {
        let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = SubscribeLog::default();
        for c in conns.iter() {
            let s = c.subscribed();
            all.requests += s.requests;
            all.unsubscribes += s.unsubscribes;
            all.other += s.other;
            let room = MAX_LOGGED_STREAMS.saturating_sub(all.streams.len());
            all.streams.extend(s.streams.into_iter().take(room));
        }
        all
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Unblock accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        for c in conns.iter() {
            c.shutdown();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let s = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("upstream-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = serve(stream, s);
            });
    }
}

/// Reads the HTTP upgrade request and answers it; returns the request path.
fn handshake(stream: &mut TcpStream) -> Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    // Byte by byte, so that nothing after the request is consumed (clients send nothing
    // before the 101 anyway); requests are a few hundred bytes.
    while !req.ends_with(b"\r\n\r\n") {
        if req.len() > 16 * 1024 {
            bail!("handshake request too large");
        }
        if stream.read(&mut byte)? == 0 {
            bail!("connection closed during the handshake");
        }
        req.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&req);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let key = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, v)| v.trim().to_owned())
        .context("no Sec-WebSocket-Key in the upgrade request")?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes())?;
    stream.set_read_timeout(None)?;
    stream.set_nodelay(true)?;
    Ok(path)
}

fn serve(mut stream: TcpStream, shared: Arc<Shared>) -> Result<()> {
    if shared.stopping.load(Ordering::SeqCst) {
        return Ok(());
    }
    let path = handshake(&mut stream)?;
    let conn = Arc::new(Conn {
        path,
        writer: Mutex::new(stream.try_clone()?),
        closed: AtomicBool::new(false),
        rx_messages: AtomicU64::new(0),
        rx_bytes: AtomicU64::new(0),
        last_rx_ns: AtomicU64::new(0),
        answer: shared.answer,
        subs: Mutex::new(SubscribeLog::default()),
    });
    {
        let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.push(Arc::clone(&conn));
        shared.changed.notify_all();
    }
    let result = conn.read_loop(stream);
    conn.closed.store(true, Ordering::SeqCst);
    shared.changed.notify_all();
    result
}

/// Appends a server frame header (FIN set, no mask) for a payload of `len` bytes.
fn put_header(buf: &mut Vec<u8>, opcode: u8, len: usize) {
    buf.push(0x80 | opcode);
    if len < 126 {
        buf.push(len as u8);
    } else if len <= 0xffff {
        buf.push(126);
        buf.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a text frame holding `body`.
pub fn put_text(buf: &mut Vec<u8>, body: &[u8]) {
    put_header(buf, 0x1, body.len());
    buf.extend_from_slice(body);
}

/// Undoes a client's masking.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

impl Conn {
    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn shutdown(&self) {
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
    }

    /// What the client sent so far.
    pub fn received(&self) -> Received {
        Received {
            messages: self.rx_messages.load(Ordering::Acquire),
            bytes: self.rx_bytes.load(Ordering::Relaxed),
            last_ns: self.last_rx_ns.load(Ordering::Relaxed),
        }
    }

    /// Writes already encoded frames.
    fn write(&self, bytes: &[u8]) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(bytes)
            .context("writing to the upstream connection")
    }

    /// Sends `count` binary messages of `size` bytes (payload sequence numbers `first..`) as
    /// fast as the socket takes them. Blocks; returns when the last byte was written.
    pub fn blast(&self, first: u64, count: u64, size: usize) -> Result<()> {
        let size = size.max(payload::HEADER);
        let mut body = vec![0u8; size];
        payload::fill(&mut body, 0, 0);
        let mut batch = Vec::with_capacity(BATCH + size + 16);
        let mut stamp = now_ns();
        for seq in first..first + count {
            payload::stamp(&mut body, seq, stamp);
            put_header(&mut batch, 0x2, size);
            batch.extend_from_slice(&body);
            if batch.len() >= BATCH {
                self.write(&batch)?;
                batch.clear();
                stamp = now_ns();
            }
        }
        if !batch.is_empty() {
            self.write(&batch)?;
        }
        Ok(())
    }

    /// Sends one binary message with payload sequence number `seq`, stamped now.
    fn send_stamped(&self, frame: &mut [u8], body_at: usize, seq: u64) -> Result<()> {
        payload::stamp(&mut frame[body_at..], seq, now_ns());
        self.write(frame)
    }

    /// Sends `count` text messages as fast as the socket takes them; `body(i, buf)` appends
    /// the payload of message `i` (`0..count`) to `buf`. Blocks; returns when the last byte
    /// was written.
    pub fn blast_text(&self, count: u64, mut body: impl FnMut(u64, &mut Vec<u8>)) -> Result<()> {
        let mut one = Vec::with_capacity(4096);
        let mut batch = Vec::with_capacity(2 * BATCH);
        for i in 0..count {
            one.clear();
            body(i, &mut one);
            put_text(&mut batch, &one);
            if batch.len() >= BATCH {
                self.write(&batch)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.write(&batch)?;
        }
        Ok(())
    }

    /// Writes frames built with [`put_text`] in one go.
    pub fn write_frames(&self, frames: &[u8]) -> Result<()> {
        self.write(frames)
    }

    /// The requests logged so far (empty unless the upstream answers requests).
    pub fn subscribed(&self) -> SubscribeLog {
        self.subs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Logs and answers one text message of the client, if it is a Binance-style request.
    fn on_request(&self, text: &[u8]) {
        let v: Option<serde_json::Value> = serde_json::from_slice(text).ok();
        let method = v
            .as_ref()
            .and_then(|v| v.get("method"))
            .and_then(|m| m.as_str());
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        match (method, &v) {
            (Some("SUBSCRIBE"), Some(v)) => {
                subs.requests += 1;
                let params = v.get("params").and_then(|p| p.as_array());
                for s in params.into_iter().flatten().filter_map(|s| s.as_str()) {
                    if subs.streams.len() < MAX_LOGGED_STREAMS {
                        subs.streams.push(s.to_owned());
                    }
                }
            }
            (Some("UNSUBSCRIBE"), Some(_)) => subs.unsubscribes += 1,
            _ => {
                subs.other += 1;
                return;
            }
        }
        drop(subs);
        let id = v
            .as_ref()
            .and_then(|v| v.get("id"))
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let answer = serde_json::json!({ "result": null, "id": id }).to_string();
        let mut frame = Vec::with_capacity(answer.len() + 4);
        put_text(&mut frame, answer.as_bytes());
        let _ = self.write(&frame);
    }

    fn read_loop(&self, stream: TcpStream) -> Result<()> {
        let mut r = BufReader::with_capacity(64 * 1024, stream);
        let mut payload = Vec::new();
        loop {
            let mut h = [0u8; 2];
            if r.read_exact(&mut h).is_err() {
                return Ok(());
            }
            let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
            let masked = h[1] & 0x80 != 0;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    r.read_exact(&mut b)?;
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    r.read_exact(&mut b)?;
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            if len > MAX_FRAME {
                bail!("client frame of {len} bytes");
            }
            let mut mask = [0u8; 4];
            if masked {
                r.read_exact(&mut mask)?;
            }
            payload.resize(len as usize, 0);
            r.read_exact(&mut payload)?;
            match opcode {
                0x0..=0x2 => {
                    // Data (or a continuation of it): count the message when it is complete.
                    self.rx_bytes.fetch_add(len, Ordering::Relaxed);
                    if self.answer && fin && opcode == 0x1 {
                        if masked {
                            unmask(&mut payload, mask);
                        }
                        self.on_request(&payload);
                    }
                    if fin {
                        self.last_rx_ns.store(now_ns(), Ordering::Relaxed);
                        self.rx_messages.fetch_add(1, Ordering::Release);
                    }
                }
                0x8 | 0x9 => {
                    if masked {
                        unmask(&mut payload, mask);
                    }
                    let reply_op = if opcode == 0x9 { 0xA } else { 0x8 };
                    let echo = if opcode == 0x8 {
                        &payload[..payload.len().min(2)]
                    } else {
                        &payload[..]
                    };
                    let mut frame = Vec::with_capacity(echo.len() + 4);
                    put_header(&mut frame, reply_op, echo.len());
                    frame.extend_from_slice(echo);
                    let _ = self.write(&frame);
                    if opcode == 0x8 {
                        self.shutdown();
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }
}

/// What [`pace`] achieved.
#[derive(Clone, Copy, Debug, Default)]
pub struct PaceReport {
    /// Messages sent to each connection.
    pub sent: u64,
    /// Largest delay of a tick behind its schedule, in nanoseconds.
    pub max_behind_ns: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// Sends `count` messages of `size` bytes to every connection in `conns` at `rate` messages
/// per second; the payload sequence numbers are `0..count`. Each copy is stamped just before
/// its own write, so a receiver's delay does not include writes to the other connections.
/// Blocks (call it from a thread of its own). Stops early when `stop` is set.
pub fn pace(
    conns: &[Arc<Conn>],
    rate: u64,
    count: u64,
    size: usize,
    stop: &AtomicBool,
) -> Result<PaceReport> {
    let size = size.max(payload::HEADER);
    let mut frame = Vec::with_capacity(size + 16);
    put_header(&mut frame, 0x2, size);
    let body_at = frame.len();
    frame.resize(body_at + size, 0);
    payload::fill(&mut frame[body_at..], 0, 0);
    let period_ns = 1_000_000_000 / rate.max(1);
    let start_wall = Instant::now();
    let start = now_ns() + 1_000_000;
    let mut report = PaceReport::default();
    for seq in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + seq * period_ns;
        let now = now_ns();
        if now < due {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        report.max_behind_ns = report.max_behind_ns.max(now_ns().saturating_sub(due));
        for c in conns {
            c.send_stamped(&mut frame, body_at, seq)?;
        }
        report.sent += 1;
    }
    report.elapsed = start_wall.elapsed();
    Ok(report)
}

/// Sends a warm-up probe ([`payload::PROBE`]) to every connection every `every` until
/// `attached()` says all receivers saw one, or `limit` passes.
pub fn probe_until(
    conns: &[Arc<Conn>],
    every: Duration,
    limit: Duration,
    mut attached: impl FnMut() -> bool,
) -> Result<()> {
    let mut frame = Vec::with_capacity(64);
    put_header(&mut frame, 0x2, payload::HEADER);
    let body_at = frame.len();
    frame.resize(body_at + payload::HEADER, 0);
    let deadline = Instant::now() + limit;
    loop {
        for c in conns {
            c.send_stamped(&mut frame, body_at, payload::PROBE)?;
        }
        std::thread::sleep(every);
        if attached() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("receivers did not see the warm-up probes within {limit:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    #[test]
    fn headers() {
        let mut b = Vec::new();
        put_header(&mut b, 2, 100);
        assert_eq!(b, [0x82, 100]);
        b.clear();
        put_header(&mut b, 2, 4096);
        assert_eq!(b, [0x82, 126, 0x10, 0x00]);
        b.clear();
        put_header(&mut b, 1, 70_000);
        assert_eq!(b[..2], [0x81, 127]);
        assert_eq!(b.len(), 10);
    }

    #[tokio::test]
    async fn talks_websocket_with_tungstenite() {
        payload::init_clock();
        let up = Upstream::start().unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(up.url_path("x"))
            .await
            .unwrap();
        let conns = up.wait_live(1, Duration::from_secs(5)).unwrap();
        assert_eq!(conns[0].path, "/x");
        let c = Arc::clone(&conns[0]);
        std::thread::spawn(move || c.blast(0, 300, 4096).unwrap());
        for want in 0..300u64 {
            let Some(Ok(Message::Binary(b))) = ws.next().await else {
                panic!("no message");
            };
            assert_eq!(b.len(), 4096);
            assert_eq!(payload::read(&b).unwrap().0, want);
        }
        ws.send(Message::Ping(vec![1, 2].into())).await.unwrap();
        ws.send(Message::binary(vec![7u8; 10])).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], &[1, 2]),
            other => panic!("{other:?}"),
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while conns[0].received().messages < 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(conns[0].received().messages, 1);
        assert_eq!(conns[0].received().bytes, 10);
    }

    #[tokio::test]
    async fn answers_and_logs_subscribes() {
        payload::init_clock();
        let up = Upstream::start_answering().unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(up.url()).await.unwrap();
        let conns = up.wait_live(1, Duration::from_secs(5)).unwrap();
        for text in [
            r#"{"method":"SUBSCRIBE","params":["t0001","t0002"],"id":7}"#,
            r#"{"method":"UNSUBSCRIBE","params":["t0001"],"id":8}"#,
            "not json",
        ] {
            ws.send(Message::text(text)).await.unwrap();
        }
        for want in [7, 8] {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("no answer");
            };
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v, serde_json::json!({"result": null, "id": want}));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while conns[0].received().messages < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let log = up.subscribed();
        assert_eq!((log.requests, log.unsubscribes, log.other), (1, 1, 1));
        assert_eq!(log.streams, ["t0001", "t0002"]);

        // Text frames from the blaster arrive whole and in order.
        let c = Arc::clone(&conns[0]);
        std::thread::spawn(move || {
            c.blast_text(3, |i, b| b.extend_from_slice(format!("m{i}").as_bytes()))
                .unwrap()
        });
        for want in ["m0", "m1", "m2"] {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("no message");
            };
            assert_eq!(t.as_str(), want);
        }
    }
}
