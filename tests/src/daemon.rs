//! A real `wsmuxd` process with its own temporary directory, config file and socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Path of a binary built from this workspace (`wsmuxd` or `wsmux`).
///
/// `cargo test --workspace` builds them before any test runs, because the packages that own
/// them have integration tests of their own.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} not found: run the suite with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// A running daemon. Killed on drop.
pub struct Daemon {
    /// The process.
    child: Option<Child>,
    /// Holds the config, the socket and the log.
    pub dir: TempDir,
    /// The local socket.
    pub socket: PathBuf,
    /// The config file.
    pub config: PathBuf,
}

impl Daemon {
    /// Writes `config` (TOML without a `socket` key; one is added) and starts the daemon,
    /// returning once its socket accepts connections.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("wsmuxd.sock");
        Self::start_in(dir, socket, config)
    }

    /// Like [`Daemon::start`] with a chosen socket path inside (or outside) `dir`.
    pub fn start_in(dir: TempDir, socket: PathBuf, config: &str) -> Daemon {
        Self::start_with_env(dir, socket, config, &[])
    }

    /// Like [`Daemon::start_in`] with extra environment variables for the process.
    pub fn start_with_env(
        dir: TempDir,
        socket: PathBuf,
        config: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let config_path = dir.path().join("wsmux.toml");
        let text = format!("socket = {:?}\n{config}", socket.display().to_string());
        std::fs::write(&config_path, text).expect("write config");
        let mut d = Daemon {
            child: None,
            dir,
            socket,
            config: config_path,
        };
        d.spawn(env);
        d.wait_ready();
        d
    }

    /// Starts the process without waiting.
    fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.path().join("wsmuxd.log")).expect("log file");
        let child = Command::new(bin("wsmuxd"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "wsmuxd=debug,info")
            .env_remove("WSMUX_SOCKET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn wsmuxd");
        self.child = Some(child);
    }

    /// Waits until the socket accepts a connection (10 s at most).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("wsmuxd exited early with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "wsmuxd did not listen within 10s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("wsmuxd.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with a pid we spawned.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit (10 s at most).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "wsmuxd did not exit within 10s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process hard (as a crash would), leaving its socket file behind.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- wsmuxd log ----\n{}", self.log());
        }
    }
}

/// Runs `wsmuxd` with `args` to completion (for flags like `--check`), returning its status
/// and combined output.
pub fn run_wsmuxd(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(bin("wsmuxd"));
    cmd.args(args).env_remove("WSMUX_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run wsmuxd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}
