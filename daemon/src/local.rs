//! The platform parts of the local socket: binding (with stale-socket recovery, directory
//! checks and file mode), peer identity, and the default path. Everything else uses interprocess'
//! cross-platform local-socket API.

use std::io;
use std::path::{Path, PathBuf};

#[cfg(unix)]
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::ListenerOptions;

/// The local socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another daemon answers on the path.
    #[error(
        "another wsmuxd is already listening on {0}; stop it first, or choose another socket \
         with --socket PATH, the WSMUX_SOCKET variable or `socket = \"PATH\"` in the \
         configuration (clients then need the same path: `wsmux --socket PATH` or WSMUX_SOCKET)"
    )]
    AlreadyRunning(PathBuf),
    /// The path exists and is not a socket: never delete it.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The socket directory could not be created or is unsafe.
    #[error("socket directory {path}: {reason}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Binding failed.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The default socket path for this user (see `wsmux_proto::paths`).
pub fn default_socket_path() -> PathBuf {
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    wsmux_proto::paths::default_socket_path(xdg.as_deref(), &std::env::temp_dir(), &current_user())
}

/// The socket path to use: `WSMUX_SOCKET`, then the platform default.
pub fn resolve_socket_path(configured: Option<&Path>) -> PathBuf {
    match configured {
        Some(p) => p.to_owned(),
        None => std::env::var_os(wsmux_proto::paths::SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(default_socket_path),
    }
}

/// `AddrInUse` means a live listener owns the name; anything else is a plain I/O error.
fn listen_error(path: &Path, e: io::Error) -> BindError {
    if e.kind() == io::ErrorKind::AddrInUse {
        BindError::AlreadyRunning(path.to_owned())
    } else {
        BindError::Io {
            path: path.to_owned(),
            source: e,
        }
    }
}

#[cfg(unix)]
mod imp {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};

    use interprocess::local_socket::{GenericFilePath, ToFsName};

    use super::*;

    /// The effective uid of this process.
    pub fn current_uid() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    /// The user part of the default socket path: the uid.
    pub fn current_user() -> String {
        current_uid().to_string()
    }

    /// The effective uid of the peer, when the platform tells.
    pub fn peer_uid(stream: &Stream) -> Option<u32> {
        stream.peer_creds().ok().and_then(|c| c.euid())
    }

    /// Makes sure the socket's directory exists and belongs to us. A directory we create is
    /// mode 0700. `strict` is for the default directory under the temp dir (or
    /// `XDG_RUNTIME_DIR`), which other users may have planted: it is examined without
    /// following symlinks, and must be a real directory owned by this uid and writable by
    /// nobody else. An explicitly configured directory must be ours (or root's) and not
    /// writable by others unless sticky.
    fn prepare_dir(dir: &Path, strict: bool) -> Result<(), BindError> {
        let err = |reason: String| BindError::Directory {
            path: dir.to_owned(),
            reason,
        };
        let mut builder = std::fs::DirBuilder::new();
        // The default directory's parent (the temp dir, XDG_RUNTIME_DIR) must exist already;
        // a configured one is created with its parents.
        builder.mode(0o700).recursive(!strict);
        match builder.create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(format!("cannot create: {e}"))),
        }
        let uid = current_uid();
        if strict {
            let fix = "set XDG_RUNTIME_DIR to a private directory, or choose the socket with \
                       WSMUX_SOCKET or the `socket` setting";
            let meta = std::fs::symlink_metadata(dir).map_err(|e| err(e.to_string()))?;
            let ty = meta.file_type();
            if ty.is_symlink() {
                return Err(err(format!(
                    "is a symbolic link (someone may be redirecting the socket); remove it, or \
                     {fix}"
                )));
            }
            if !ty.is_dir() {
                return Err(err(format!("is not a directory; remove it, or {fix}")));
            }
            if meta.uid() != uid {
                return Err(err(format!(
                    "is owned by uid {}, not by this user ({uid}); {fix}",
                    meta.uid()
                )));
            }
            if meta.permissions().mode() & 0o022 != 0 {
                return Err(err(format!(
                    "is writable by other users (mode {:o}); chmod 700 it, or {fix}",
                    meta.permissions().mode() & 0o7777
                )));
            }
            return Ok(());
        }
        let meta = std::fs::metadata(dir).map_err(|e| err(e.to_string()))?;
        if !meta.is_dir() {
            return Err(err("not a directory".into()));
        }
        if meta.uid() != uid && meta.uid() != 0 {
            return Err(err(format!(
                "owned by uid {}, not by this user ({uid})",
                meta.uid()
            )));
        }
        let mode = meta.permissions().mode();
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(err("writable by everyone and not sticky".into()));
        }
        Ok(())
    }

    /// Removes a socket file left by a daemon that is gone; refuses if one answers.
    async fn clear_stale(path: &Path) -> Result<(), BindError> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(BindError::Io {
                    path: path.to_owned(),
                    source: e,
                })
            }
        };
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_owned()));
        }
        match tokio::net::UnixStream::connect(path).await {
            Ok(_) => Err(BindError::AlreadyRunning(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing stale socket");
                std::fs::remove_file(path).map_err(|e| BindError::Io {
                    path: path.to_owned(),
                    source: e,
                })
            }
            Err(e) => Err(BindError::Io {
                path: path.to_owned(),
                source: e,
            }),
        }
    }

    /// Binds the socket at `path` with file mode `mode`, replacing a stale socket file but
    /// never a live daemon's.
    ///
    /// The socket is created while the umask is `0177` (so never more open than `0600`), then
    /// given `mode` with `chmod`: there is no moment when it is more reachable than asked, and
    /// nothing depends on `fchmod` of an unbound socket, which macOS does not support.
    pub async fn bind(path: &Path, mode: u32) -> Result<Listener, BindError> {
        let io_err = |source| BindError::Io {
            path: path.to_owned(),
            source,
        };
        let strict = path == default_socket_path();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            prepare_dir(dir, strict)?;
        }
        clear_stale(path).await?;
        let name = path.to_fs_name::<GenericFilePath>().map_err(io_err)?;
        let listener = {
            let _umask = Umask::set(0o177);
            ListenerOptions::new()
                .name(name)
                .create_tokio()
                .map_err(|e| listen_error(path, e))?
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
        Ok(listener)
    }

    /// The process umask, set for a scope and restored on drop.
    struct Umask(libc::mode_t);

    impl Umask {
        fn set(mask: libc::mode_t) -> Self {
            // SAFETY: umask has no preconditions and cannot fail.
            Umask(unsafe { libc::umask(mask) })
        }
    }

    impl Drop for Umask {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { libc::umask(self.0) };
        }
    }
}

#[cfg(windows)]
mod imp {
    use std::os::windows::io::{FromRawHandle, OwnedHandle};

    use interprocess::local_socket::{GenericNamespaced, ToNsName};
    use interprocess::os::windows::local_socket::ListenerOptionsExt;
    use interprocess::os::windows::security_descriptor::SecurityDescriptor;
    use widestring::{U16CStr, U16CString};
    use windows_sys::Win32::Foundation::{LocalFree, HANDLE};
    use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
    use windows_sys::Win32::Security::{GetTokenInformation, TokenUser, TOKEN_QUERY, TOKEN_USER};
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    use super::*;

    /// Upper bound for the `TOKEN_USER` buffer: a SID is at most 68 bytes.
    const TOKEN_USER_MAX: u32 = 1024;

    /// Windows has no uids; access is governed by the pipe's security descriptor.
    pub fn current_uid() -> u32 {
        0
    }

    /// The user part of the default pipe name: `USERNAME`.
    pub fn current_user() -> String {
        std::env::var("USERNAME").unwrap_or_else(|_| "default".into())
    }

    /// Every peer passes the uid check: the pipe's security descriptor already let in only
    /// this account.
    pub fn peer_uid(_stream: &Stream) -> Option<u32> {
        Some(0)
    }

    /// The string SID (`S-1-5-21-...`) of the account this process runs as.
    fn current_user_sid() -> io::Result<String> {
        let mut raw: HANDLE = std::ptr::null_mut();
        // SAFETY: the pseudo handle needs no closing; `raw` is a valid out pointer.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut raw) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: OpenProcessToken succeeded, so `raw` is a token handle we own.
        let token = unsafe { OwnedHandle::from_raw_handle(raw) };
        let mut len = 0u32;
        // SAFETY: a null buffer of length 0 only asks for the size.
        unsafe { GetTokenInformation(raw, TokenUser, std::ptr::null_mut(), 0, &mut len) };
        if len == 0 || len > TOKEN_USER_MAX {
            return Err(io::Error::other(format!("token user size {len}")));
        }
        // u64 elements keep the TOKEN_USER (pointer first) aligned.
        let mut buf = vec![0u64; (len as usize).div_ceil(8)];
        // SAFETY: `buf` has at least `len` writable bytes.
        let ok =
            unsafe { GetTokenInformation(raw, TokenUser, buf.as_mut_ptr().cast(), len, &mut len) };
        drop(token);
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: GetTokenInformation wrote a TOKEN_USER at the start of the aligned buffer.
        let user = unsafe { &*buf.as_ptr().cast::<TOKEN_USER>() };
        let mut text: *mut u16 = std::ptr::null_mut();
        // SAFETY: the SID points into `buf`, which lives until the end of this function.
        if unsafe { ConvertSidToStringSidW(user.User.Sid, &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: on success `text` is a NUL-terminated string allocated with LocalAlloc.
        let sid = unsafe { U16CStr::from_ptr_str(text) }.to_string_lossy();
        // SAFETY: `text` came from LocalAlloc and is not used after this.
        unsafe { LocalFree(text.cast()) };
        Ok(sid)
    }

    /// The pipe's security descriptor: owned by `sid`, a protected DACL with one entry that
    /// gives `sid` full access. Nobody else (not even Administrators or LocalSystem) may open
    /// it, and no inherited entry widens it.
    fn pipe_sddl(sid: &str) -> String {
        format!("O:{sid}D:P(A;;GA;;;{sid})")
    }

    /// Creates the named pipe for `path` (`\\.\pipe\NAME` or `NAME`), accessible only to the
    /// account the daemon runs as. `mode` is a Unix file mode and does not apply here.
    pub async fn bind(path: &Path, _mode: u32) -> Result<Listener, BindError> {
        let io_err = |source| BindError::Io {
            path: path.to_owned(),
            source,
        };
        let pipe = path
            .to_string_lossy()
            .trim_start_matches(r"\\.\pipe\")
            .to_owned();
        let name = pipe.to_ns_name::<GenericNamespaced>().map_err(io_err)?;
        let sddl = pipe_sddl(&current_user_sid().map_err(io_err)?);
        let wide = U16CString::from_str(&sddl)
            .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let sd = SecurityDescriptor::deserialize(&wide).map_err(io_err)?;
        tracing::debug!(pipe = %path.display(), sddl = %sddl, "named pipe security descriptor");
        ListenerOptions::new()
            .name(name)
            .security_descriptor(sd)
            .create_tokio()
            .map_err(|e| match e.kind() {
                // The first instance is created with FILE_FLAG_FIRST_PIPE_INSTANCE: if the
                // name exists already, CreateNamedPipe answers ERROR_ACCESS_DENIED.
                io::ErrorKind::PermissionDenied => BindError::AlreadyRunning(path.to_owned()),
                _ => listen_error(path, e),
            })
    }
}

pub use imp::{bind, current_uid, current_user, peer_uid};
