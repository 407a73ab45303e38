//! The proxy leg of a connection: TCP to the proxy, then an HTTP `CONNECT` tunnel or a SOCKS5
//! handshake (`tokio-socks`), giving a [`Tunnel`] that TLS and the WebSocket handshake run
//! over as they would over TCP. The proxy sees the `CONNECT` (or the SOCKS request) and
//! ciphertext; SNI and certificate verification stay the upstream's.
//!
//! The answer to `CONNECT` is parsed without IO ([`parse_connect_reply`]), within
//! [`MAX_HEAD`] bytes. Bytes the proxy sends after the head belong to the tunnel: the
//! [`Tunnel`] reads them first. Deadlines are the caller's (`connect_timeout` covers the
//! whole attempt). Credentials are written to the proxy and nowhere else.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_socks::tcp::Socks5Stream;
use tokio_socks::TargetAddr;
use tokio_tungstenite::tungstenite::http::StatusCode;
use wsmux_config::{Proxy, ProxyKind};

use super::connect::{Progress, Stage};
use crate::text::{escape, MAX_PEER_TEXT};

/// Largest response head accepted from an HTTP proxy.
pub const MAX_HEAD: usize = 16 * 1024;

/// Most header lines accepted in a proxy's response head.
const MAX_HEADERS: usize = 64;

/// Why the proxy leg failed.
#[derive(Debug)]
pub struct ProxyError {
    /// For `state`, `status` and logs, peer text escaped: `proxy 127.0.0.1:3128 refused
    /// CONNECT to stream.example.com:443: HTTP 407 Proxy Authentication Required`.
    pub reason: String,
    /// The proxy refused our credentials (or wants some): retrying cannot help.
    pub auth_failed: bool,
}

impl ProxyError {
    fn retry(reason: String) -> Self {
        ProxyError {
            reason,
            auth_failed: false,
        }
    }
}

/// A TCP stream to the upstream, directly or through a proxy: what the proxy sent after its
/// answer is read first.
#[derive(Debug)]
pub struct Tunnel {
    /// Bytes read with the proxy's answer that belong to the tunnel.
    early: Vec<u8>,
    /// How many of `early` were read.
    pos: usize,
    /// The connection.
    tcp: TcpStream,
}

impl Tunnel {
    /// A stream with nothing read ahead.
    pub fn direct(tcp: TcpStream) -> Self {
        Tunnel {
            early: Vec::new(),
            pos: 0,
            tcp,
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.early.len() {
            let n = (this.early.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.early[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.early.len() {
                this.early = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    super::connect::write_through!(tcp);
}

/// Opens a tunnel to `host:port` (the upstream's host as in its URL, IPv6 in brackets)
/// through `proxy`.
pub async fn open(
    proxy: &Proxy,
    host: &str,
    port: u16,
    progress: &Progress,
) -> Result<Tunnel, ProxyError> {
    match proxy.kind {
        ProxyKind::Http => {
            let tcp = connect_to(proxy, progress).await?;
            progress.set(Stage::ProxyHandshake);
            http_connect(tcp, proxy, &format!("{host}:{port}")).await
        }
        ProxyKind::Socks5 | ProxyKind::Socks5h => socks5(proxy, host, port, progress).await,
    }
}

/// TCP to the proxy.
async fn connect_to(proxy: &Proxy, progress: &Progress) -> Result<TcpStream, ProxyError> {
    progress.set(Stage::ProxyTcp);
    let tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| {
            ProxyError::retry(format!(
                "proxy {} unreachable: TCP connect failed: {e}",
                proxy.address()
            ))
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// `CONNECT authority` over `tcp`, and the proxy's answer.
async fn http_connect(
    mut tcp: TcpStream,
    proxy: &Proxy,
    authority: &str,
) -> Result<Tunnel, ProxyError> {
    let address = proxy.address();
    let io_error = |what: &str, e: std::io::Error| {
        ProxyError::retry(format!(
            "proxy {address}: {what} CONNECT to {authority} failed: {e}"
        ))
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(c) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", c.username, c.password));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str(concat!(
        "User-Agent: wsmuxd/",
        env!("CARGO_PKG_VERSION"),
        "\r\n\r\n"
    ));
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| io_error("sending", e))?;
    drop(request);
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = tcp
            .read(&mut buf[len..])
            .await
            .map_err(|e| io_error("reading the answer to", e))?;
        if n == 0 {
            return Err(ProxyError::retry(format!(
                "proxy {address} closed the connection before answering CONNECT to {authority}"
            )));
        }
        len += n;
        match parse_connect_reply(&buf[..len]) {
            Ok(None) => continue,
            Ok(Some(ConnectReply::Open { head_len })) => {
                buf.truncate(len);
                buf.drain(..head_len);
                buf.shrink_to_fit();
                return Ok(Tunnel {
                    early: buf,
                    pos: 0,
                    tcp,
                });
            }
            Ok(Some(ConnectReply::Refused { status, text })) => {
                return Err(ProxyError {
                    reason: format!(
                        "proxy {address} refused CONNECT to {authority}: HTTP {status} {text}"
                    ),
                    // A proxy's 401 is its answer to our credentials too: tinyproxy sends 407
                    // for missing ones and 401 for wrong ones. The upstream was not reached.
                    auth_failed: matches!(status, 401 | 407),
                });
            }
            Err(e) => {
                return Err(ProxyError::retry(format!(
                    "proxy {address} answered CONNECT to {authority} with {e}"
                )))
            }
        }
    }
}

/// What a proxy answered to `CONNECT`, once its head is complete.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectReply {
    /// A 2xx status: the tunnel is open. The first `head_len` bytes were the head; any
    /// after them belong to the tunnel (a 2xx answer to `CONNECT` has no body).
    Open {
        /// Length of the response head, final blank line included.
        head_len: usize,
    },
    /// Any other status.
    Refused {
        /// The status code.
        status: u16,
        /// The reason phrase, escaped (or the standard one when the proxy sent none).
        text: String,
    },
}

/// A response head that is not one.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// No complete head within [`MAX_HEAD`] bytes.
    #[error("a response head larger than {} KiB", MAX_HEAD / 1024)]
    TooLarge,
    /// Not HTTP/1.x, or malformed.
    #[error("a malformed HTTP response ({0})")]
    Malformed(String),
}

/// Parses a proxy's answer to `CONNECT` from the bytes received so far: `Ok(None)` until the
/// head is complete.
pub fn parse_connect_reply(buf: &[u8]) -> Result<Option<ConnectReply>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(head_len)) => {
            let status = response.code.unwrap_or(0);
            if (200..300).contains(&status) {
                return Ok(Some(ConnectReply::Open { head_len }));
            }
            let text = match response.reason.map(str::trim) {
                Some(reason) if !reason.is_empty() => escape(reason, MAX_PEER_TEXT),
                _ => StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("")
                    .to_owned(),
            };
            Ok(Some(ConnectReply::Refused {
                status,
                text: text.trim_end().to_owned(),
            }))
        }
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// SOCKS5: the name as the target (`socks5h`), or each of its addresses in turn (`socks5`,
/// resolved here), until one is reached.
async fn socks5(
    proxy: &Proxy,
    host: &str,
    port: u16,
    progress: &Progress,
) -> Result<Tunnel, ProxyError> {
    let address = proxy.address();
    // `[::1]` in a URL is `::1` to SOCKS.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let targets: Vec<TargetAddr<'static>> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![TargetAddr::Ip((ip, port).into())],
        Err(_) if proxy.kind == ProxyKind::Socks5h => {
            vec![TargetAddr::Domain(bare.to_owned().into(), port)]
        }
        Err(_) => {
            progress.set(Stage::Resolve);
            let addrs: Vec<_> = tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| ProxyError::retry(format!("cannot resolve {bare}: {e}")))?
                .map(TargetAddr::Ip)
                .collect();
            if addrs.is_empty() {
                return Err(ProxyError::retry(format!("{bare} has no address")));
            }
            addrs
        }
    };
    let count = targets.len();
    for (i, target) in targets.into_iter().enumerate() {
        let tcp = connect_to(proxy, progress).await?;
        progress.set(Stage::ProxyHandshake);
        let shown = target.to_string();
        let result = match &proxy.credentials {
            Some(c) => {
                Socks5Stream::connect_with_password_and_socket(
                    tcp,
                    target,
                    &c.username,
                    &c.password,
                )
                .await
            }
            None => Socks5Stream::connect_with_socket(tcp, target).await,
        };
        let error = match result {
            Ok(stream) => return Ok(Tunnel::direct(stream.into_inner())),
            Err(e) => e,
        };
        let (what, auth_failed, target_side) = describe_socks(&error);
        // Another address of the same name may be reachable.
        if target_side && i + 1 < count {
            tracing::debug!(proxy = %address, target = %shown, error = %what, "trying the next address");
            continue;
        }
        let reason = if auth_failed {
            format!("SOCKS5 proxy {address}: {what}")
        } else {
            format!("SOCKS5 proxy {address} could not connect to {shown}: {what}")
        };
        return Err(ProxyError {
            reason,
            auth_failed,
        });
    }
    unreachable!("at least one target is tried")
}

/// A SOCKS5 failure in words (RFC 1928 and 1929 names), whether it is an authentication
/// failure, and whether it concerns the target rather than the proxy.
fn describe_socks(e: &tokio_socks::Error) -> (String, bool, bool) {
    use tokio_socks::Error as E;
    let (what, auth, target): (&str, bool, bool) = match e {
        E::PasswordAuthFailure(_) => ("authentication failed (user name or password refused)", true, false),
        E::NoAcceptableAuthMethods => (
            "authentication failed (the proxy accepts none of the offered methods: does it want a user name and password?)",
            true,
            false,
        ),
        E::AuthorizationRequired => (
            "authentication failed (the proxy wants a user name and password)",
            true,
            false,
        ),
        E::GeneralSocksServerFailure => ("general SOCKS server failure", false, false),
        E::ConnectionNotAllowedByRuleset => ("connection not allowed by ruleset", false, false),
        E::NetworkUnreachable => ("network unreachable", false, true),
        E::HostUnreachable => ("host unreachable", false, true),
        E::ConnectionRefused => ("connection refused", false, true),
        E::TtlExpired => ("TTL expired", false, true),
        E::CommandNotSupported => ("command not supported", false, false),
        E::AddressTypeNotSupported => ("address type not supported", false, false),
        E::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ("the proxy closed the connection during the handshake", false, false)
        }
        E::Io(io) => return (format!("handshake failed: {io}"), false, false),
        // Unknown reply codes come back as `UnknownAuthMethod` too.
        E::InvalidResponseVersion
        | E::InvalidReservedByte
        | E::UnknownAddressType
        | E::UnknownAuthMethod
        | E::UnknownError => return (format!("not a valid SOCKS5 answer ({e})"), false, false),
        other => return (format!("{other}"), false, false),
    };
    (what.to_owned(), auth, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_reply_is_complete_only_with_its_blank_line() {
        let head = b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n";
        for cut in 0..head.len() {
            assert_eq!(parse_connect_reply(&head[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(
            parse_connect_reply(head),
            Ok(Some(ConnectReply::Open {
                head_len: head.len()
            }))
        );
        // What follows the head is the tunnel's: a TLS server hello, say.
        let mut more = head.to_vec();
        more.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, 0x31]);
        assert_eq!(
            parse_connect_reply(&more),
            Ok(Some(ConnectReply::Open {
                head_len: head.len()
            }))
        );
        assert_eq!(
            parse_connect_reply(b"HTTP/1.0 200 OK\r\n\r\n"),
            Ok(Some(ConnectReply::Open { head_len: 19 }))
        );
    }

    #[test]
    fn refusals_keep_the_status_and_escaped_text() {
        let refused = |head: &[u8]| match parse_connect_reply(head) {
            Ok(Some(ConnectReply::Refused { status, text })) => (status, text),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n<html>"),
            (407, "Proxy Authentication Required".to_owned())
        );
        // No reason phrase: the standard one.
        assert_eq!(
            refused(b"HTTP/1.1 403 \r\n\r\n"),
            (403, "Forbidden".to_owned())
        );
        // Peer text is data: a phrase that is not plain ASCII gives way to the standard one,
        // and control characters are not HTTP at all.
        let (status, text) = refused("HTTP/1.1 502 Bad \u{202e}gateway\r\n\r\n".as_bytes());
        assert_eq!((status, text.as_str()), (502, "Bad Gateway"));
        assert!(matches!(
            parse_connect_reply(b"HTTP/1.1 502 Bad\x1b[31m gateway\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_or_malformed_heads_are_errors() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        big.extend_from_slice(b"X-Filler: ");
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse_connect_reply(&big), Err(HeadError::TooLarge));
        assert!(matches!(
            parse_connect_reply(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse_connect_reply(&many),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn socks_errors_are_named_and_classified() {
        use tokio_socks::Error as E;
        let (what, auth, _) = describe_socks(&E::PasswordAuthFailure(1));
        assert!(what.starts_with("authentication failed") && auth);
        assert!(describe_socks(&E::NoAcceptableAuthMethods).1);
        assert_eq!(
            describe_socks(&E::HostUnreachable),
            ("host unreachable".to_owned(), false, true)
        );
        assert_eq!(
            describe_socks(&E::ConnectionNotAllowedByRuleset),
            ("connection not allowed by ruleset".to_owned(), false, false)
        );
    }

    /// A tunnel hands out what was read ahead first, in reads of any size, then the socket.
    #[tokio::test]
    async fn a_tunnel_reads_the_early_bytes_first() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b" world").await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut t = Tunnel {
            early: b"hello".to_vec(),
            pos: 0,
            tcp,
        };
        let mut first = [0u8; 3];
        t.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"hel");
        let mut rest = Vec::new();
        t.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"lo world");
        server.await.unwrap();
    }
}
