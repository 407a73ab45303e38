//! One attempt to open a link: TCP (directly or through a [`super::proxy`]), TLS, the
//! WebSocket handshake, all within `connect_timeout`; what a refusal said (status,
//! `Retry-After`, body, escaped), and at which stage a timeout struck.
//!
//! The stream under tungstenite is a [`Tap`]: it passes bytes through unchanged and scans the
//! server's frame headers on the way, keeping the payload of a close frame. tungstenite
//! replaces close codes the RFC reserves (1005, 1006, 1015, below 1000, 5000 and up, ...)
//! with `1002 Protocol violation` and refuses reasons that are not UTF-8; the tap keeps what
//! the server really sent, so that a `reason` can say it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsmux_config::EndpointSettings;

use super::inbound::RawClose;
use super::proxy::Tunnel;
use crate::policy::humanize;
use crate::text::{escape, MAX_PEER_TEXT};

/// An open upstream WebSocket.
pub type Ws = WebSocketStream<Tap<MaybeTlsStream<Tunnel>>>;

/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A failed connection attempt.
#[derive(Debug)]
pub struct ConnectError {
    /// Human-readable reason, peer text escaped, e.g. `HTTP 401 Unauthorized: invalid token`.
    pub reason: String,
    /// The HTTP status of a refused handshake.
    pub status: Option<u16>,
    /// The server's `Retry-After`, in seconds form.
    pub retry_after: Option<Duration>,
    /// The proxy refused our credentials: fatal whatever `fatal_statuses` says.
    pub proxy_auth_failed: bool,
}

impl ConnectError {
    fn plain(reason: impl Into<String>) -> Self {
        ConnectError {
            reason: reason.into(),
            status: None,
            retry_after: None,
            proxy_auth_failed: false,
        }
    }

    /// Whether retrying is pointless until someone fixes something: the upstream refused
    /// the handshake with one of `fatal_statuses`, or a proxy refused its credentials.
    pub fn is_fatal(&self, fatal_statuses: &[u16]) -> bool {
        self.proxy_auth_failed || self.status.is_some_and(|s| fatal_statuses.contains(&s))
    }
}

/// The stages of an attempt, for saying where a timeout struck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// TCP to the upstream.
    Tcp,
    /// Resolving the upstream's name (SOCKS5 without `h`).
    Resolve,
    /// TCP to the proxy.
    ProxyTcp,
    /// `CONNECT` or the SOCKS5 handshake.
    ProxyHandshake,
    /// TLS with the upstream.
    Tls,
    /// The WebSocket handshake.
    WebSocket,
}

impl Stage {
    const ALL: [Stage; 6] = [
        Stage::Tcp,
        Stage::Resolve,
        Stage::ProxyTcp,
        Stage::ProxyHandshake,
        Stage::Tls,
        Stage::WebSocket,
    ];

    /// What was under way, for "connect timeout after 10s (during ...)".
    fn during(self, proxy: Option<&wsmux_config::Proxy>) -> String {
        let proxy = proxy.map_or_else(
            || "the proxy".to_owned(),
            |p| format!("proxy {}", p.address()),
        );
        match self {
            Stage::Tcp => "the TCP connect".into(),
            Stage::Resolve => "name resolution".into(),
            Stage::ProxyTcp => format!("the TCP connect to {proxy}"),
            Stage::ProxyHandshake => format!("the handshake with {proxy}"),
            Stage::Tls => "the TLS handshake".into(),
            Stage::WebSocket => "the WebSocket handshake".into(),
        }
    }
}

/// The stage an attempt has reached, readable after its future was dropped.
#[derive(Debug)]
pub struct Progress(AtomicU8);

impl Progress {
    fn new() -> Self {
        Progress(AtomicU8::new(Stage::Tcp as u8))
    }

    /// Records that the attempt reached `stage`.
    pub fn set(&self, stage: Stage) {
        self.0.store(stage as u8, Ordering::Relaxed);
    }

    fn get(&self) -> Stage {
        let n = self.0.load(Ordering::Relaxed);
        Stage::ALL
            .into_iter()
            .find(|s| *s as u8 == n)
            .unwrap_or(Stage::Tcp)
    }
}

/// Opens the WebSocket: TCP (through the proxy, if any), TLS and the handshake, all within
/// `connect_timeout`.
pub async fn connect(
    settings: Arc<EndpointSettings>,
    tls: Arc<crate::tls::TlsBase>,
) -> Result<Box<Ws>, ConnectError> {
    let progress = Progress::new();
    match tokio::time::timeout(settings.connect_timeout, open(&settings, &tls, &progress)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::plain(format!(
            "connect timeout after {} (during {})",
            humanize(settings.connect_timeout),
            progress.get().during(settings.proxy.proxy()),
        ))),
    }
}

async fn open(
    settings: &EndpointSettings,
    tls: &crate::tls::TlsBase,
    progress: &Progress,
) -> Result<Box<Ws>, ConnectError> {
    let mut request = settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::plain(format!("invalid request: {e}")))?;
    let headers = request.headers_mut();
    for (name, value) in &settings.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ConnectError::plain(format!("invalid header name `{name}`: {e}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| ConnectError::plain(format!("invalid value for header `{name}`: {e}")))?;
        headers.insert(name, value);
    }
    if !settings.subprotocols.is_empty() {
        let joined = settings.subprotocols.join(", ");
        let value = HeaderValue::from_str(&joined)
            .map_err(|e| ConnectError::plain(format!("invalid subprotocols `{joined}`: {e}")))?;
        headers.insert("sec-websocket-protocol", value);
    }
    // tungstenite zero-fills its whole read buffer before every read: keep it small.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size));
    let url = &settings.url;
    let host = url
        .host_str()
        .ok_or_else(|| ConnectError::plain("the URL has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    // `[::1]` in a URL is `::1` to a resolver.
    let addr_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = match settings.proxy.proxy() {
        None => {
            let tcp = TcpStream::connect((addr_host, port)).await.map_err(|e| {
                ConnectError::plain(format!("TCP connect to {host}:{port} failed: {e}"))
            })?;
            let _ = tcp.set_nodelay(true);
            Tunnel::direct(tcp)
        }
        Some(proxy) => super::proxy::open(proxy, host, port, progress)
            .await
            .map_err(|e| ConnectError {
                proxy_auth_failed: e.auth_failed,
                ..ConnectError::plain(e.reason)
            })?,
    };
    let stream = if url.scheme() == "wss" {
        progress.set(Stage::Tls);
        let config = crate::tls::for_endpoint(settings, tls).map_err(ConnectError::plain)?;
        let name = rustls::pki_types::ServerName::try_from(addr_host.to_owned())
            .map_err(|e| ConnectError::plain(format!("invalid TLS server name `{host}`: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::plain(format!("TLS handshake failed: {e}")))?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    progress.set(Stage::WebSocket);
    match tokio_tungstenite::client_async_with_config(request, Tap::new(stream), Some(config)).await
    {
        Ok((ws, _response)) => Ok(Box::new(ws)),
        Err(e) => {
            let (status, retry_after) = match &e {
                tungstenite::Error::Http(response) => {
                    let status = response.status().as_u16();
                    let retry_after = matches!(status, 429 | 503)
                        .then(|| response.headers().get("retry-after"))
                        .flatten()
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (Some(status), retry_after)
                }
                _ => (None, None),
            };
            Err(ConnectError {
                reason: describe_error(&e),
                status,
                retry_after,
                proxy_auth_failed: false,
            })
        }
    }
}

/// A short, user-facing description of a WebSocket error, e.g. `HTTP 401 Unauthorized:
/// invalid token`. What the peer wrote (a response body) is escaped and cut.
pub fn describe_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let mut s = format!(
                "HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            let body = response.body().as_deref().unwrap_or_default();
            let body = String::from_utf8_lossy(body);
            let body = body.trim();
            if !body.is_empty() {
                s = s.trim_end().to_owned();
                s.push_str(": ");
                s.push_str(&escape(body, MAX_PEER_TEXT));
            }
            s.trim_end().to_owned()
        }
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            "connection closed".into()
        }
        // Other errors can quote the peer (a bad header, a protocol error): escape them too.
        other => escape(&other.to_string(), MAX_PEER_TEXT),
    }
}

/// Where the tap is in the server's byte stream.
#[derive(Clone, Copy, Debug)]
enum Scan {
    /// In the HTTP response head; `matched` bytes of `\r\n\r\n` seen.
    Head {
        /// How much of the terminator was seen.
        matched: u8,
    },
    /// Collecting a frame header: `have` bytes of `need` so far.
    Header {
        /// Bytes collected.
        have: usize,
        /// Bytes the header takes, once known (2 until the length byte is seen).
        need: usize,
    },
    /// Skipping (or, for a close frame, keeping) `left` payload bytes.
    Payload {
        /// Bytes of payload still to come.
        left: u64,
        /// Whether it is a close frame.
        close: bool,
    },
}

/// A pass-through stream that watches the server's frames for a close frame (see the module
/// documentation). Only headers are parsed; payloads are counted, not copied, except the
/// (at most 125-byte) payload of a close frame.
#[derive(Debug)]
pub struct Tap<S> {
    /// The stream below (plain TCP or TLS).
    inner: S,
    /// Scanner state.
    scan: Scan,
    /// The frame header being collected.
    header: [u8; 14],
    /// The payload of the close frame being read.
    close_buf: Vec<u8>,
    /// The last close frame seen, whole.
    close: Option<RawClose>,
}

/// Longest control-frame payload kept (RFC 6455: 125).
const MAX_CLOSE_PAYLOAD: usize = 125;

impl<S> Tap<S> {
    /// Wraps `inner`; the first bytes read are the HTTP response.
    pub fn new(inner: S) -> Self {
        Tap {
            inner,
            scan: Scan::Head { matched: 0 },
            header: [0; 14],
            close_buf: Vec::new(),
            close: None,
        }
    }

    /// The close frame the server sent, as it sent it, once one was read whole.
    pub fn close_frame(&self) -> Option<&RawClose> {
        self.close.as_ref()
    }

    /// Scans bytes the server sent.
    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.scan {
                Scan::Head { matched } => {
                    let b = data[0];
                    data = &data[1..];
                    const END: &[u8; 4] = b"\r\n\r\n";
                    *matched = if b == END[*matched as usize] {
                        *matched + 1
                    } else if b == b'\r' {
                        1
                    } else {
                        0
                    };
                    if *matched == 4 {
                        self.scan = Scan::Header { have: 0, need: 2 };
                    }
                }
                Scan::Header { have, need } => {
                    let take = (*need - *have).min(data.len());
                    self.header[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have < *need {
                        continue;
                    }
                    if *need == 2 {
                        let masked = self.header[1] & 0x80 != 0;
                        let extra = match self.header[1] & 0x7f {
                            126 => 2,
                            127 => 8,
                            _ => 0,
                        };
                        let full = 2 + extra + if masked { 4 } else { 0 };
                        if full > 2 {
                            *need = full;
                            continue;
                        }
                    }
                    let h = &self.header;
                    let masked = h[1] & 0x80 != 0;
                    let len = match h[1] & 0x7f {
                        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                        n => u64::from(n),
                    };
                    let close = h[0] & 0x0f == 0x8 && !masked;
                    self.close_buf.clear();
                    if len == 0 {
                        if close {
                            self.close = Some(RawClose::default());
                        }
                        self.scan = Scan::Header { have: 0, need: 2 };
                    } else {
                        self.scan = Scan::Payload { left: len, close };
                    }
                }
                Scan::Payload { left, close } => {
                    let take = (*left).min(data.len() as u64) as usize;
                    if *close && self.close_buf.len() < MAX_CLOSE_PAYLOAD {
                        let room = MAX_CLOSE_PAYLOAD - self.close_buf.len();
                        self.close_buf.extend_from_slice(&data[..take.min(room)]);
                    }
                    *left -= take as u64;
                    data = &data[take..];
                    if *left == 0 {
                        if *close {
                            let p = &self.close_buf;
                            self.close = Some(match p.len() {
                                0 | 1 => RawClose::default(),
                                _ => RawClose {
                                    code: Some(u16::from_be_bytes([p[0], p[1]])),
                                    reason: p[2..].to_vec(),
                                },
                            });
                        }
                        self.scan = Scan::Header { have: 0, need: 2 };
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            this.observe(&buf.filled()[before..]);
        }
        result
    }
}

/// The `AsyncWrite` methods of a wrapper that writes straight through to its field `inner`.
macro_rules! write_through {
    ($inner:ident) => {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.get_mut().$inner).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().$inner).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().$inner).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.get_mut().$inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.$inner.is_write_vectored()
        }
    };
}
pub(super) use write_through;

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    write_through!(inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_tap_finds_close_frames_after_the_head_and_any_data() {
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        stream.extend(frame(0x1, b"hello"));
        stream.extend(frame(0x2, &vec![0x88; 300])); // looks like close opcodes inside
        stream.extend(frame(0x2, &vec![0u8; 70_000]));
        let mut close = 1006u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"Stale Connection");
        stream.extend(frame(0x8, &close));
        // Every split of the stream into reads gives the same answer.
        for chunk in [1, 2, 3, 7, 13, 4096, stream.len()] {
            let mut tap = Tap::new(());
            for piece in stream.chunks(chunk) {
                tap.observe(piece);
            }
            assert_eq!(
                tap.close_frame(),
                Some(&RawClose {
                    code: Some(1006),
                    reason: b"Stale Connection".to_vec()
                }),
                "chunk {chunk}"
            );
        }
        let mut tap = Tap::new(());
        tap.observe(b"HTTP/1.1 101 OK\r\n\r\n");
        tap.observe(&frame(0x8, &[]));
        assert_eq!(tap.close_frame(), Some(&RawClose::default()));
    }
}
