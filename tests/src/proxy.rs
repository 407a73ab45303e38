//! A TCP proxy that forwards, blackholes (keeps both sockets open but forwards nothing, like
//! a half-open connection) or resets traffic.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both directions.
    Forward,
    /// Read and discard both directions; keep the sockets open.
    Blackhole,
    /// Close new connections at once (existing ones are left alone).
    Refuse,
}

/// A running proxy.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Current mode for all connections.
    mode: watch::Sender<Mode>,
    /// Live client-side sockets, so they can be reset.
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Starts a proxy to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("local addr");
        let (mode, rx) = watch::channel(Mode::Forward);
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let c = Arc::clone(&conns);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *rx.borrow() == Mode::Refuse {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                if let Ok(std) = client.into_std() {
                    if let Ok(clone) = std.try_clone() {
                        c.lock().unwrap().push(clone);
                    }
                    let Ok(client) = TcpStream::from_std(std) else {
                        continue;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, rx.clone()));
                    tokio::spawn(pump(sr, cw, rx.clone()));
                }
            }
        });
        Proxy { addr, mode, conns }
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Switches every connection (current and future) to `mode`.
    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// Resets every connection accepted so far (RST to the client side).
    pub fn reset_all(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let s = socket_linger_zero(s);
            drop(s);
        }
    }
}

fn socket_linger_zero(s: std::net::TcpStream) -> std::net::TcpStream {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    s
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if *mode.borrow() == Mode::Blackhole {
            continue;
        }
        // Refuse only affects new connections.
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Keep the other side open in blackhole mode: that is the point of it.
    if *mode.borrow() == Mode::Blackhole {
        std::future::pending::<()>().await;
    } else {
        let _ = to.shutdown().await;
    }
}
