use std::os::unix::fs::PermissionsExt;

use wsmux_proto::ErrorCode;
use wsmux_tests::daemon::{bin, run_wsmuxd, Daemon};
use wsmux_tests::raw::Raw;
use wsmux_tests::upstream::Upstream;

use crate::endpoint_toml;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_file_is_private_by_default() {
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_from_a_crashed_daemon_is_replaced() {
    let up = Upstream::start().await;
    let mut first = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    first.kill(); // SIGKILL: no cleanup, the socket file stays.
    assert!(
        first.socket.exists(),
        "a crashed daemon leaves its socket behind"
    );
    let dir = tempfile::tempdir().unwrap();
    let second = Daemon::start_in(
        dir,
        first.socket.clone(),
        &endpoint_toml("feed", &up.url(), ""),
    );
    let (_c, welcome) = Raw::greeted(&second.socket).await;
    assert!(matches!(welcome, wsmux_proto::ServerMsg::Welcome(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_socket_is_refused_and_the_first_keeps_serving() {
    let up = Upstream::start().await;
    let d = Daemon::start(&endpoint_toml("feed", &up.url(), ""));
    let (status, out) = run_wsmuxd(&["--config", d.config.to_str().unwrap()], &[]);
    assert!(!status.success());
    assert!(out.contains("already listening"), "{out}");
    assert!(
        out.contains("--socket PATH") && out.contains("WSMUX_SOCKET"),
        "says how to choose another socket: {out}"
    );
    assert!(
        d.socket.exists(),
        "the live daemon's socket was not touched"
    );
    let (_c, welcome) = Raw::greeted(&d.socket).await;
    assert!(matches!(welcome, wsmux_proto::ServerMsg::Welcome(_)));
}

/// `wsmux status` run as `uid` (gid the same, no supplementary groups) through `setpriv`.
fn status_as(uid: u32, socket: &std::path::Path) -> std::process::Output {
    std::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(bin("wsmux"))
        .args(["--socket", socket.to_str().unwrap(), "status"])
        .env_remove("WSMUX_SOCKET")
        .output()
        .expect("run setpriv (util-linux)")
}

/// A daemon whose socket everyone may open, so that only the uid check decides.
fn open_daemon(up: &Upstream, extra: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("wsmuxd.sock");
    let config = format!(
        "socket_mode = \"0666\"\n{extra}{}",
        endpoint_toml("feed", &up.url(), "")
    );
    Daemon::start_in(dir, socket, &config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_uid_is_refused_unless_allowed() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test plays another user (uid 65534) and needs root, as CI runs it"
    );
    let up = Upstream::start().await;
    let d = open_daemon(&up, "");
    let out = status_as(65534, &d.socket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(ErrorCode::PermissionDenied.as_str()),
        "{stderr}"
    );
    // The daemon's own user is still welcome.
    let (_c, welcome) = Raw::greeted(&d.socket).await;
    assert!(matches!(welcome, wsmux_proto::ServerMsg::Welcome(_)));

    // `allowed_uids` admits that user, and only that one.
    let d = open_daemon(&up, "allowed_uids = [65534]\n");
    let out = status_as(65534, &d.socket);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("feed"), "{stdout}");
    let out = status_as(65533, &d.socket);
    assert_eq!(out.status.code(), Some(4));
}
