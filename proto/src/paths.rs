//! Where the daemon listens by default. Shared by the daemon and every client so that both
//! find the same socket without configuration.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the socket path for the daemon and the clients.
pub const SOCKET_ENV: &str = "WSMUX_SOCKET";

/// File name of the socket inside its directory.
pub const SOCKET_FILE: &str = "wsmuxd.sock";

/// The default socket path, computed from the environment the caller passes in.
///
/// - Unix: `$XDG_RUNTIME_DIR/wsmux/wsmuxd.sock` when `XDG_RUNTIME_DIR` is set and absolute,
///   otherwise `<temp dir>/wsmux-<uid>/wsmuxd.sock` (a per-user directory the daemon creates
///   with mode 0700).
/// - Windows: the named pipe `\\.\pipe\wsmuxd-<user>`.
///
/// `WSMUX_SOCKET` is not consulted here: callers check it first, because it is an explicit
/// choice while this is only the fallback.
pub fn default_socket_path(xdg_runtime_dir: Option<&Path>, temp_dir: &Path, user: &str) -> PathBuf {
    if cfg!(windows) {
        return PathBuf::from(format!(r"\\.\pipe\wsmuxd-{user}"));
    }
    match xdg_runtime_dir {
        Some(dir) if dir.is_absolute() => dir.join("wsmux").join(SOCKET_FILE),
        _ => temp_dir.join(format!("wsmux-{user}")).join(SOCKET_FILE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn prefers_xdg_runtime_dir() {
        let p = default_socket_path(Some(Path::new("/run/user/1000")), Path::new("/tmp"), "1000");
        assert_eq!(p, PathBuf::from("/run/user/1000/wsmux/wsmuxd.sock"));
    }

    #[test]
    #[cfg(unix)]
    fn falls_back_to_per_user_temp_dir() {
        let p = default_socket_path(None, Path::new("/tmp"), "1000");
        assert_eq!(p, PathBuf::from("/tmp/wsmux-1000/wsmuxd.sock"));
        let relative = default_socket_path(Some(Path::new("run")), Path::new("/tmp"), "7");
        assert_eq!(relative, PathBuf::from("/tmp/wsmux-7/wsmuxd.sock"));
    }

    #[test]
    #[cfg(windows)]
    fn windows_uses_a_per_user_named_pipe() {
        let p = default_socket_path(None, Path::new(r"C:\Temp"), "alice");
        assert_eq!(p, PathBuf::from(r"\\.\pipe\wsmuxd-alice"));
    }
}
