//! A squatted socket path must not impersonate the daemon: the Rust client library and the
//! `wsmux` CLI check who serves the socket before saying anything (PROTOCOL.md section 2.3).
//!
//! The impostor is a real `wsmuxd` run as uid 65534 (`setpriv`), so it speaks the protocol
//! perfectly and only the uid check can stop a client; the CLI runs as uid 65533. Both use
//! copies of the binaries in a directory every user can read. Needs Linux and root, as in CI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wsmux_client::{Client, ClientError, ConnectOptions};
use wsmux_tests::daemon::bin;
use wsmux_tests::upstream::Upstream;

use crate::endpoint_toml;

/// The impostor's uid.
const SQUATTER: u32 = 65534;
/// The uid the CLI runs as.
const USER: u32 = 65533;

/// Whether this process may switch uids; the tests print why they skip otherwise.
fn can_switch_uids() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = cfg!(target_os = "linux") && unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: switching uids needs Linux and root");
    }
    root
}

/// `setpriv` running `program` as `uid` with no supplementary groups.
fn as_user(uid: u32, program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(program)
        .env_remove("WSMUX_SOCKET")
        .env_remove("WSMUX_DAEMON_UID");
    c
}

/// A directory tree every user can use: `bin/` with copies of the binaries, `run/` like /tmp.
struct World {
    /// Removed on drop.
    root: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let root = tempfile::tempdir().unwrap();
        set_mode(root.path(), 0o755);
        for sub in ["bin", "run"] {
            std::fs::create_dir(root.path().join(sub)).unwrap();
        }
        set_mode(&root.path().join("bin"), 0o755);
        set_mode(&root.path().join("run"), 0o1777);
        for name in ["wsmux", "wsmuxd"] {
            let copy = root.path().join("bin").join(name);
            std::fs::copy(bin(name), &copy).unwrap();
            set_mode(&copy, 0o755);
        }
        World { root }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.root.path().join("bin").join(name)
    }

    /// Starts a real daemon as `uid` (`None`: as root) on `run/<name>.sock`, reachable by
    /// root and [`USER`].
    fn daemon(&self, name: &str, uid: Option<u32>, upstream: &str) -> RunningDaemon {
        let socket = self.root.path().join("run").join(format!("{name}.sock"));
        let config = self.root.path().join(format!("{name}.toml"));
        let text = format!(
            "socket = {:?}\nsocket_mode = \"0666\"\nallowed_uids = [0, {USER}]\n{}",
            socket.display().to_string(),
            endpoint_toml("feed", upstream, "")
        );
        std::fs::write(&config, text).unwrap();
        set_mode(&config, 0o644);
        let log = std::fs::File::create(self.root.path().join(format!("{name}.log"))).unwrap();
        let mut cmd = match uid {
            Some(uid) => as_user(uid, &self.bin("wsmuxd")),
            None => Command::new(self.bin("wsmuxd")),
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .env_remove("WSMUX_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn wsmuxd (is setpriv installed?)");
        let mut d = RunningDaemon { child, socket };
        d.wait_listening();
        d
    }
}

/// A daemon started by [`World::daemon`]; killed on drop.
struct RunningDaemon {
    /// The process.
    child: Child,
    /// Its socket.
    socket: PathBuf,
}

impl RunningDaemon {
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wsmuxd exited with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "wsmuxd did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `wsmux --socket SOCKET ARGS...` as [`USER`]: exit code and standard error.
fn cli_as_user(world: &World, socket: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = as_user(USER, &world.bin("wsmux"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_refuses_a_daemon_of_another_user_unless_named() {
    if !can_switch_uids() {
        return;
    }
    let up = Upstream::start().await;
    let world = World::new();
    let squatter = world.daemon("squatter", Some(SQUATTER), &up.url());
    match Client::connect(Some(&squatter.socket), "impostor-test").await {
        Err(ClientError::UntrustedDaemon { path, uid, .. }) => {
            assert_eq!(path, squatter.socket);
            assert_eq!(uid, SQUATTER);
        }
        Err(other) => panic!("expected UntrustedDaemon, got {other}"),
        Ok(_) => panic!("connected to another user's daemon"),
    }
    let named = ConnectOptions::new()
        .socket(&squatter.socket)
        .daemon_uid(SQUATTER);
    let client = Client::connect_with(named)
        .await
        .expect("the named uid is trusted");
    client.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_a_squatter_with_exit_code_3_and_trusts_root_and_a_named_uid() {
    if !can_switch_uids() {
        return;
    }
    let up = Upstream::start().await;
    let world = World::new();
    let squatter = world.daemon("squatter", Some(SQUATTER), &up.url());
    let root = world.daemon("root", None, &up.url());
    let own = world.daemon("own", Some(USER), &up.url());
    let (cli_world, s, r, o) = (&world, &squatter.socket, &root.socket, &own.socket);
    let (refused, named, env_named, by_root, by_own) = tokio::task::block_in_place(|| {
        (
            cli_as_user(cli_world, s, &["status"]),
            cli_as_user(
                cli_world,
                s,
                &["--daemon-uid", &SQUATTER.to_string(), "status"],
            ),
            {
                let out = as_user(USER, &cli_world.bin("wsmux"))
                    .env("WSMUX_DAEMON_UID", SQUATTER.to_string())
                    .arg("--socket")
                    .arg(s)
                    .arg("ping")
                    .output()
                    .unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            },
            cli_as_user(cli_world, r, &["ping"]),
            cli_as_user(cli_world, o, &["ping"]),
        )
    });
    let (code, err) = refused;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains(&format!("uid {SQUATTER}")), "{err}");
    assert!(err.contains(&s.display().to_string()), "{err}");
    assert_eq!(named.0, Some(0), "--daemon-uid: {}", named.1);
    assert_eq!(env_named.0, Some(0), "WSMUX_DAEMON_UID: {}", env_named.1);
    assert_eq!(by_root.0, Some(0), "daemon as root: {}", by_root.1);
    assert_eq!(by_own.0, Some(0), "daemon as the same user: {}", by_own.1);
}
