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

/// How to start a daemon: [`Daemon::builder`].
pub struct Builder {
    /// Holds the config, the socket and the log.
    dir: TempDir,
    /// The socket path written into the config; `None` writes no `socket` key, so the
    /// daemon uses its default path.
    socket: Option<PathBuf>,
    /// TOML written after the `socket` key.
    config: String,
    /// Extra environment variables.
    env: Vec<(String, String)>,
    /// Variables of the test's environment the daemon does not inherit.
    unset: Vec<String>,
    /// `RLIMIT_NOFILE` (soft, hard) for the process.
    nofile: Option<(u64, u64)>,
    /// Run the daemon as this uid and gid (through `setpriv`, groups cleared).
    user: Option<u32>,
    /// Wait until the daemon is ready.
    wait: bool,
}

impl Builder {
    /// Uses `socket` instead of `<dir>/wsmuxd.sock`.
    pub fn socket(mut self, socket: PathBuf) -> Self {
        self.socket = Some(socket);
        self
    }

    /// Writes no `socket` key: the daemon picks its default path.
    pub fn default_socket(mut self) -> Self {
        self.socket = None;
        self
    }

    /// Holds everything in `dir` instead of a fresh temporary directory.
    pub fn dir(mut self, dir: TempDir) -> Self {
        if self.socket.as_deref() == Some(self.dir.path().join("wsmuxd.sock").as_path()) {
            self.socket = Some(dir.path().join("wsmuxd.sock"));
        }
        self.dir = dir;
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Leaves `key` out of the daemon's environment (the test's own may have it).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.unset.push(key.into());
        self
    }

    /// Starts the process with this `RLIMIT_NOFILE`.
    pub fn nofile(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Runs the daemon as `uid` (gid the same, no supplementary groups).
    pub fn user(mut self, uid: u32) -> Self {
        self.user = Some(uid);
        self
    }

    /// Returns as soon as the process is spawned (for daemons expected to fail).
    pub fn no_wait(mut self) -> Self {
        self.wait = false;
        self
    }

    /// Writes the config and starts the daemon; unless [`Builder::no_wait`], returns once it
    /// reported readiness.
    pub fn start(self) -> Daemon {
        let config_path = self.dir.path().join("wsmux.toml");
        let text = match &self.socket {
            Some(socket) => format!(
                "socket = {:?}\n{}",
                socket.display().to_string(),
                self.config
            ),
            None => self.config.clone(),
        };
        std::fs::write(&config_path, text).expect("write config");
        let custom_notify = self.env.iter().any(|(k, _)| k == "NOTIFY_SOCKET");
        let notify = (!custom_notify).then(|| {
            let path = self.dir.path().join("ready.sock");
            let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("notify socket");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("read timeout");
            if self.user.is_some() {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
            }
            (path, sock)
        });
        let mut d = Daemon {
            child: None,
            socket: self
                .socket
                .clone()
                .unwrap_or_else(|| PathBuf::from("(default)")),
            dir: self.dir,
            config: config_path,
        };
        let mut env = self.env;
        if let Some((path, _)) = &notify {
            env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
        }
        d.spawn(&env, &self.unset, self.nofile, self.user);
        if self.wait {
            d.wait_ready(notify.as_ref().map(|(_, s)| s));
        }
        d
    }
}

impl Daemon {
    /// A daemon in a fresh temporary directory with `config` (TOML without a `socket` key;
    /// one is added for `<dir>/wsmuxd.sock`).
    pub fn builder(config: &str) -> Builder {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("wsmuxd.sock");
        Builder {
            dir,
            socket: Some(socket),
            config: config.to_owned(),
            env: Vec::new(),
            unset: Vec::new(),
            nofile: None,
            user: None,
            wait: true,
        }
    }

    /// Writes `config` (TOML without a `socket` key; one is added) and starts the daemon,
    /// returning once it is ready.
    pub fn start(config: &str) -> Daemon {
        Self::builder(config).start()
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
        let mut b = Self::builder(config).dir(dir).socket(socket);
        for (k, v) in env {
            b = b.env(k, v);
        }
        b.start()
    }

    /// Starts the process without waiting.
    fn spawn(
        &mut self,
        env: &[(String, String)],
        unset: &[String],
        nofile: Option<(u64, u64)>,
        user: Option<u32>,
    ) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.dir.path().join("wsmuxd.log")).expect("log file");
        let mut cmd = match user {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(bin("wsmuxd"));
                c
            }
            None => Command::new(bin("wsmuxd")),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "wsmuxd=debug,info")
            .env_remove("WSMUX_SOCKET");
        for key in unset {
            cmd.env_remove(key);
        }
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((soft, hard)) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft as libc::rlim_t,
                        rlim_max: hard as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        self.child = Some(cmd.spawn().expect("spawn wsmuxd"));
    }

    /// Waits (10 s at most) until the daemon says it is ready: its systemd readiness datagram
    /// on `notify`, which it sends once it listens and every endpoint driver has started.
    /// Without one (a test that watches `NOTIFY_SOCKET` itself), until `hello` is answered.
    /// Readiness never occupies a client slot the test is about to count.
    fn wait_ready(&mut self, notify: Option<&std::os::unix::net::UnixDatagram>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = match notify {
                Some(sock) => {
                    let mut buf = [0u8; 256];
                    sock.recv(&mut buf).is_ok_and(|n| {
                        String::from_utf8_lossy(&buf[..n])
                            .lines()
                            .any(|l| l == "READY=1")
                    })
                }
                None => self.answers_hello(),
            };
            if ready {
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
                "wsmuxd was not ready within 10s:\n{}",
                self.log()
            );
            if notify.is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Whether the daemon answers `hello` on its socket (a blocking probe that then closes).
    fn answers_hello(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let hello = wsmux_proto::encode_to_vec(
            &wsmux_proto::ClientMsg::Hello(wsmux_proto::Hello {
                version: wsmux_proto::PROTOCOL_VERSION,
                client: Some("readiness".into()),
            }),
            usize::MAX,
        )
        .expect("encode hello");
        let mut header = [0u8; 4];
        s.write_all(&hello).is_ok() && s.read_exact(&mut header).is_ok()
    }

    /// Resident memory of the daemon process, in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Open file descriptors of the daemon process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("proc fd")
            .count()
    }

    /// The soft `RLIMIT_NOFILE` of the daemon process, from `/proc/PID/limits`.
    pub fn nofile_soft(&self) -> u64 {
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).expect("proc limits");
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .expect("Max open files")
    }

    /// Waits for the process to exit (10 s at most), then returns its status and log.
    pub fn wait_failure(&mut self) -> (ExitStatus, String) {
        let status = self.wait_exit();
        (status, self.log())
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("wsmuxd.log")).unwrap_or_default()
    }

    /// Fails the test if any of `secrets` shows in the log (which must hold `DEBUG` lines),
    /// in what `wsmuxd --check` prints for this configuration, or in `status` (what the test
    /// took from a status reply).
    pub fn assert_hidden(&self, status: &str, secrets: &[&str]) {
        let (ok, check) = run_wsmuxd(&["--check", "--config", self.config.to_str().unwrap()], &[]);
        assert!(ok.success(), "{check}");
        let log = self.log();
        assert!(
            log.contains("DEBUG"),
            "the daemon logs at debug or below: {log}"
        );
        for (what, text) in [
            ("--check", check.as_str()),
            ("the log", &log),
            ("status", status),
        ] {
            for secret in secrets {
                assert!(!text.contains(secret), "{what} shows `{secret}`:\n{text}");
            }
        }
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
