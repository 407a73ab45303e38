//! The default socket directory under the temp dir is examined without following symlinks:
//! another user cannot plant it (as a symlink, as their own directory, as a shared one) and
//! have the daemon bind where they can reach.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::Upstream;

use crate::endpoint_toml;

/// The user that plays the other user.
const NOBODY: u32 = 65534;

fn as_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests play another user (chown, setpriv) and need root, as CI runs them"
    );
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A daemon with no `socket` setting, `TMPDIR` = its own directory and no usable
/// `XDG_RUNTIME_DIR`, run as `user` (root when `None`). Returns the builder's result and
/// the default socket directory it will use.
fn default_daemon(
    up: &Upstream,
    user: Option<u32>,
    plant: impl FnOnce(&Path),
) -> (Daemon, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let uid = user.unwrap_or(0);
    let sock_dir = dir.path().join(format!("wsmux-{uid}"));
    plant(&sock_dir);
    let mut b = Daemon::builder(&endpoint_toml("feed", &up.url(), ""))
        .dir(dir)
        .default_socket()
        .env("XDG_RUNTIME_DIR", "")
        .no_wait();
    b = b.env("TMPDIR", &sock_dir.parent().unwrap().display().to_string());
    if let Some(uid) = user {
        b = b.user(uid);
    }
    (b.start(), sock_dir)
}

fn refused(d: &mut Daemon, expect: &str) {
    let (status, log) = d.wait_failure();
    assert!(!status.success(), "{log}");
    assert!(log.contains(expect), "{log}");
    assert!(
        log.contains("XDG_RUNTIME_DIR") && log.contains("WSMUX_SOCKET"),
        "says what to do instead: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_symlink_is_refused() {
    as_root();
    let up = Upstream::start().await;
    let (d, sock_dir) = default_daemon(&up, None, |sock_dir| {
        // Another user points the name at a shared sticky directory they can write to.
        let shared = sock_dir.with_file_name("shared");
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777);
        std::os::unix::fs::symlink(&shared, sock_dir).unwrap();
        std::os::unix::fs::lchown(sock_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    });
    let shared = sock_dir.with_file_name("shared");
    let mut d = d;
    refused(&mut d, "symbolic link");
    assert!(
        std::fs::read_dir(&shared).unwrap().next().is_none(),
        "nothing was bound through the link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_another_user_is_refused() {
    as_root();
    let up = Upstream::start().await;
    let (d, _) = default_daemon(&up, None, |sock_dir| {
        std::fs::create_dir(sock_dir).unwrap();
        chmod(sock_dir, 0o700);
        std::os::unix::fs::chown(sock_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    });
    refused(&mut { d }, &format!("owned by uid {NOBODY}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_writable_directory_is_refused() {
    as_root();
    let up = Upstream::start().await;
    let (d, _) = default_daemon(&up, None, |sock_dir| {
        std::fs::create_dir(sock_dir).unwrap();
        chmod(sock_dir, 0o770);
    });
    refused(&mut { d }, "writable by other users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_owned_sticky_directory_is_refused_for_another_user() {
    as_root();
    let up = Upstream::start().await;
    let (d, _) = default_daemon(&up, Some(NOBODY), |sock_dir| {
        std::fs::create_dir(sock_dir).unwrap();
        chmod(sock_dir, 0o1777);
    });
    refused(&mut { d }, "owned by uid 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_default_directory_is_created_private_and_used() {
    as_root();
    let up = Upstream::start().await;
    let (mut d, sock_dir) = default_daemon(&up, None, |_| {});
    d.socket = sock_dir.join("wsmuxd.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !d.socket.exists() {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let meta = std::fs::symlink_metadata(&sock_dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.uid(), 0);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let (_c, welcome) = Raw::greeted(&d.socket).await;
    assert!(matches!(welcome, wsmux_proto::ServerMsg::Welcome(_)));
}
