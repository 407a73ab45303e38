//! Who serves the socket. A socket path can be taken by anyone who can write to its directory
//! before the daemon starts (or after it stopped), so before saying anything the client asks
//! the kernel which user the listening process runs as: it must be this user, root, or the
//! one user the application named (PROTOCOL.md section 2.3).

use std::io;

use interprocess::local_socket::tokio::Stream;

/// Environment variable naming one more uid the daemon may run as.
pub const DAEMON_UID_ENV: &str = "WSMUX_DAEMON_UID";

/// The users a daemon may run as for this client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TrustedUids {
    /// This process's effective uid.
    pub(crate) own: u32,
    /// One more uid the application named (option or [`DAEMON_UID_ENV`]).
    pub(crate) expected: Option<u32>,
}

impl TrustedUids {
    /// Whether a daemon running as `uid` is trusted: ours, root's, or the named one.
    pub(crate) fn allows(&self, uid: u32) -> bool {
        uid == self.own || uid == 0 || Some(uid) == self.expected
    }
}

/// Parses the value of [`DAEMON_UID_ENV`]: a decimal uid.
pub(crate) fn parse_uid(text: &str) -> Result<u32, String> {
    text.trim().parse::<u32>().map_err(|_| {
        format!(
            "{DAEMON_UID_ENV} must be a numeric user id, not {:?}",
            text.chars().take(40).collect::<String>()
        )
    })
}

/// This process's effective uid (0 where there are no uids).
pub(crate) fn own_uid() -> u32 {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// The effective uid of the process at the other end of `stream`, or `None` where the
/// platform has no uids to ask for (Windows: the pipe's security descriptor decides).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn peer_uid(stream: &Stream) -> io::Result<Option<u32>> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = match stream {
        Stream::UdSocket(s) => s.as_fd().as_raw_fd(),
    };
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket borrowed from `stream` for the duration of the call,
    // and `cred`/`len` describe a writable buffer of exactly the size passed.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(cred.uid))
}

/// The effective uid of the process at the other end of `stream` (`LOCAL_PEERCRED` on macOS
/// and the BSDs, through interprocess).
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
pub(crate) fn peer_uid(stream: &Stream) -> io::Result<Option<u32>> {
    use interprocess::local_socket::tokio::prelude::*;
    Ok(stream.peer_creds()?.euid())
}

/// Windows: no uids; access to the pipe is governed by its security descriptor.
#[cfg(windows)]
pub(crate) fn peer_uid(_stream: &Stream) -> io::Result<Option<u32>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_uid_root_and_the_named_uid_are_trusted_nobody_else() {
        let t = TrustedUids {
            own: 1000,
            expected: None,
        };
        assert!(t.allows(1000));
        assert!(t.allows(0));
        assert!(!t.allows(1001));
        assert!(!t.allows(65534));
        let t = TrustedUids {
            own: 1000,
            expected: Some(998),
        };
        assert!(t.allows(998));
        assert!(t.allows(1000));
        assert!(!t.allows(65534));
    }

    #[test]
    fn the_environment_value_is_a_decimal_uid() {
        assert_eq!(parse_uid("998"), Ok(998));
        assert_eq!(parse_uid(" 0\n"), Ok(0));
        assert!(parse_uid("daemon").unwrap_err().contains(DAEMON_UID_ENV));
        assert!(parse_uid("-1").is_err());
        assert!(parse_uid("").is_err());
    }
}
