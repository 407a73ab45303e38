//! Who is at the other end of a loopback TCP connection. On Linux the kernel lists every TCP
//! socket of the network namespace with its owner's uid in `/proc/net/tcp` and
//! `/proc/net/tcp6`; the peer's socket is the one whose local address is the peer's address
//! and whose remote address is ours. Elsewhere nothing tells.

use std::net::{IpAddr, SocketAddr};

/// What is known about the user of a TCP peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerUid {
    /// The uid that owns the peer's socket.
    Known(u32),
    /// The platform lists sockets, but the peer's is not there (it closed already, or it is
    /// in another network namespace, or the table could not be read).
    NotFound,
    /// The platform has no way to tell.
    Unsupported,
}

/// The uid of the process at `theirs`, connected to us at `ours`.
pub async fn tcp_peer_uid(ours: SocketAddr, theirs: SocketAddr) -> PeerUid {
    if !cfg!(target_os = "linux") {
        return PeerUid::Unsupported;
    }
    let found = tokio::task::spawn_blocking(move || lookup(ours, theirs))
        .await
        .ok()
        .flatten();
    found.map_or(PeerUid::NotFound, PeerUid::Known)
}

/// Reads the kernel's tables for the peer's socket.
fn lookup(ours: SocketAddr, theirs: SocketAddr) -> Option<u32> {
    use std::io::BufRead;
    let tables: &[(&str, bool)] = match theirs.ip() {
        // A dual-stack peer socket connected to an IPv4 address is listed with mapped
        // addresses in the IPv6 table.
        IpAddr::V4(_) => &[("/proc/net/tcp", false), ("/proc/net/tcp6", true)],
        IpAddr::V6(_) => &[("/proc/net/tcp6", false)],
    };
    for (path, mapped) in tables {
        let Ok(file) = std::fs::File::open(path) else {
            continue;
        };
        let (ours, theirs) = if *mapped {
            (to_mapped(ours), to_mapped(theirs))
        } else {
            (ours, theirs)
        };
        let (want_local, want_remote) = (proc_addr(theirs), proc_addr(ours));
        for line in std::io::BufReader::new(file).lines() {
            let Ok(line) = line else {
                break;
            };
            if let Some(uid) = uid_of(&line, &want_local, &want_remote) {
                return Some(uid);
            }
        }
    }
    None
}

/// `addr` as an IPv4-mapped IPv6 address (IPv6 addresses unchanged).
fn to_mapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

/// An address as the kernel writes it in those tables: each 32-bit word of the address in
/// hex, in the machine's byte order, then `:` and the port in hex.
fn proc_addr(addr: SocketAddr) -> String {
    let words: Vec<[u8; 4]> = match addr.ip() {
        IpAddr::V4(v4) => vec![v4.octets()],
        IpAddr::V6(v6) => v6
            .octets()
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
    };
    let mut out = String::with_capacity(38);
    for w in words {
        out.push_str(&format!("{:08X}", u32::from_ne_bytes(w)));
    }
    out.push_str(&format!(":{:04X}", addr.port()));
    out
}

/// The uid of a table line whose local and remote addresses are these.
fn uid_of(line: &str, local: &str, remote: &str) -> Option<u32> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    if fields.next()? != local || fields.next()? != remote {
        return None;
    }
    // st, tx_queue:rx_queue, tr:tm->when, retrnsmt, then uid.
    fields.nth(4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_the_kernel_writes_them() {
        let v4: SocketAddr = "127.0.0.1:8765".parse().unwrap();
        let v6: SocketAddr = "[::1]:443".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(proc_addr(v4), "0100007F:223D");
            assert_eq!(proc_addr(v6), "00000000000000000000000001000000:01BB");
            assert_eq!(
                proc_addr(to_mapped(v4)),
                "0000000000000000FFFF00000100007F:223D"
            );
        }
    }

    #[test]
    fn the_peer_line_gives_the_uid() {
        let ours: SocketAddr = "127.0.0.1:8765".parse().unwrap();
        let theirs: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (l, r) = (proc_addr(theirs), proc_addr(ours));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {r} 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0\n\
             1: {r} {l} 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 20 4 30 10 -1\n\
             2: {l} {r} 01 00000000:00000000 00:00000000 00000000  1234        0 3 1 0 20 4 30 10 -1\n"
        );
        let found: Vec<u32> = table
            .lines()
            .filter_map(|line| uid_of(line, &l, &r))
            .collect();
        assert_eq!(found, [1234], "only the peer's own socket counts");
        assert_eq!(uid_of("garbage", &l, &r), None);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_real_loopback_peer_is_found_as_this_user() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, theirs) = listener.accept().await.unwrap();
        let ours = server.local_addr().unwrap();
        assert_eq!(
            tcp_peer_uid(ours, theirs).await,
            PeerUid::Known(crate::local::current_uid())
        );
        drop(client);
        // A port nobody uses is not found.
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tcp_peer_uid(ours, nobody).await, PeerUid::NotFound);
    }
}
