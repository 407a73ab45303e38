//! The floor relay: the cheapest possible local hop, the reference the daemon is measured
//! against. It is a program written for the benchmark only and runs as its own process
//! (`wsmux-bench __floor-relay URL SOCKET`), so its CPU time is read the way the daemon's is.
//!
//! One thread, no runtime, no tasks, no queues, no protocol:
//!
//! - the upstream is read with tungstenite, the WebSocket library the daemon uses, with the
//!   daemon's read buffer (16 KiB);
//! - each data message is written as a 4-byte big-endian length and the raw payload to every
//!   connected Unix-socket client, in the order they connected. What the upstream has ready
//!   at once (at most [`BATCH_MESSAGES`] messages, [`BATCH_BYTES`] bytes) goes to each client
//!   in one `writev`: at a low rate that is one message per `writev`, under a blast it is as
//!   few system calls as the kernel allows. A relay writing every message on its own was 9×
//!   slower than the daemon at 10 clients, so it would be no floor for throughput;
//! - the sockets are non-blocking; when a client's socket is full, the relay waits (`poll`)
//!   until that client can take the rest, for at most 10 s, then drops the client. With no
//!   queue of its own, the kernel's socket buffer is the only buffer, and nothing is lost;
//! - one `poll` over the upstream and the listener decides what to do next; new clients are
//!   accepted between messages.
//!
//! It exits when the upstream closes, or when the process that started it is gone.

use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

/// The hidden first argument that runs the relay instead of the benchmark.
pub const ARG: &str = "__floor-relay";

/// Most messages gathered from one read of the upstream (two `iovec`s each, within
/// `IOV_MAX`).
pub const BATCH_MESSAGES: usize = 512;

/// Most payload bytes gathered from one read of the upstream.
pub const BATCH_BYTES: usize = 256 * 1024;

/// Longest wait for one client to take a message.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);

/// How often the relay checks that its parent is still there.
const PARENT_CHECK_MS: i32 = 500;

/// Runs the relay with the arguments that follow [`ARG`]: the upstream URL and the socket.
pub fn main(args: &[String]) -> Result<()> {
    let [url, socket] = args else {
        bail!("usage: wsmux-bench {ARG} ws://HOST:PORT/ SOCKET");
    };
    let parent = std::os::unix::process::parent_id();
    let listener =
        UnixListener::bind(Path::new(socket)).with_context(|| format!("listening on {socket}"))?;
    listener.set_nonblocking(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let tcp = TcpStream::connect(
        url.strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .context("the upstream must be a ws:// URL")?,
    )
    .with_context(|| format!("connecting to {url}"))?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) = tungstenite::client::client_with_config(
        url.as_str(),
        MaybeTlsStream::Plain(tcp),
        Some(config),
    )
    .map_err(|e| anyhow::anyhow!("WebSocket handshake with {url}: {e}"))?;
    let upstream_fd = match ws.get_ref() {
        MaybeTlsStream::Plain(s) => {
            s.set_nonblocking(true)?;
            s.as_raw_fd()
        }
        _ => bail!("the floor relay only speaks plain ws://"),
    };

    let mut clients: Vec<UnixStream> = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: upstream_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structures for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, PARENT_CHECK_MS) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if n == 0 {
            if std::os::unix::process::parent_id() != parent {
                return Ok(());
            }
            continue;
        }
        if fds[1].revents != 0 {
            accept_all(&listener, &mut clients)?;
        }
        if fds[0].revents != 0 && !relay_ready(&mut ws, &mut clients)? {
            return Ok(());
        }
    }
}

/// Accepts every pending client.
fn accept_all(listener: &UnixListener, clients: &mut Vec<UnixStream>) -> Result<()> {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true)?;
                clients.push(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("accept"),
        }
    }
}

/// Relays every message the upstream has ready; `false` once the upstream is gone.
fn relay_ready(
    ws: &mut WebSocket<MaybeTlsStream<TcpStream>>,
    clients: &mut Vec<UnixStream>,
) -> Result<bool> {
    let mut batch: Vec<([u8; 4], Bytes)> = Vec::with_capacity(BATCH_MESSAGES);
    loop {
        let mut bytes = 0;
        let mut open = true;
        let mut drained = false;
        while batch.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
            let payload = match ws.read() {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(t)) => t.into(),
                Ok(Message::Close(_)) => {
                    open = false;
                    break;
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A pong for a ping may be waiting to go out.
                    match ws.flush() {
                        Ok(()) => {}
                        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        }
                        Err(_) => open = false,
                    }
                    drained = true;
                    break;
                }
                Err(_) => {
                    open = false;
                    break;
                }
            };
            let len = u32::try_from(payload.len()).context("message over 4 GiB")?;
            bytes += payload.len();
            batch.push((len.to_be_bytes(), payload));
        }
        if !batch.is_empty() {
            let slices: Vec<IoSlice<'_>> = batch
                .iter()
                .flat_map(|(h, p)| [IoSlice::new(h), IoSlice::new(p)])
                .collect();
            clients.retain_mut(|c| write_all(c, &slices).is_ok());
            batch.clear();
        }
        if !open {
            return Ok(false);
        }
        if drained {
            return Ok(true);
        }
    }
}

/// Writes `slices` to one client: one `writev`, and only if the socket is full, waits for it.
fn write_all(c: &mut UnixStream, slices: &[IoSlice<'_>]) -> io::Result<()> {
    let mut rest: Vec<IoSlice<'_>>;
    let mut left: &mut [IoSlice<'_>] = match c.write_vectored(slices) {
        Ok(n) if n == slices.iter().map(|s| s.len()).sum::<usize>() => return Ok(()),
        Ok(n) => {
            rest = slices.to_vec();
            let mut r: &mut [IoSlice<'_>] = &mut rest;
            IoSlice::advance_slices(&mut r, n);
            r
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            rest = slices.to_vec();
            &mut rest
        }
        Err(e) => return Err(e),
    };
    let deadline = Instant::now() + CLIENT_DEADLINE;
    while !left.is_empty() {
        match c.write_vectored(left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_writable(c.as_raw_fd(), deadline)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `fd` can be written, or fails at `until`.
fn wait_writable(fd: RawFd, until: Instant) -> io::Result<()> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `p` is a valid pollfd for the whole call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
