//! A real `wsmuxd` process: found on disk, given a config file in a temporary directory,
//! started, watched through `/proc`, and stopped with SIGTERM.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::stats::{self, Memory};

/// How long the daemon may take to listen (six times that under valgrind).
const START_LIMIT: Duration = Duration::from_secs(10);

/// Where the daemon binary is: `--wsmuxd PATH` or `$WSMUXD`, else `wsmuxd` next to this
/// program (`target/release/` when run through `cargo run --release`), else the workspace's
/// `target/release/wsmuxd`.
pub fn find_wsmuxd(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        bail!(
            "wsmuxd not found at {} (given with --wsmuxd or WSMUXD)",
            p.display()
        );
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        candidates.push(dir.join("wsmuxd"));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    candidates.push(workspace.join("target/release/wsmuxd"));
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize().unwrap_or_else(|_| c.clone()));
        }
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    bail!(
        "the daemon binary was not found (looked at {}).\n\
         Build it first:  cargo build --release -p wsmuxd\n\
         or point at one: --wsmuxd PATH (or WSMUXD=PATH)",
        looked.join(", ")
    )
}

/// The parts of the daemon configuration the scenarios vary.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `(name, url)` of every endpoint.
    pub endpoints: Vec<(String, String)>,
    /// `client_queue_messages`; `None` keeps the daemon's default (65 536).
    pub queue_messages: Option<usize>,
    /// `client_queue_bytes`; `None` keeps the daemon's default (64 MiB).
    pub queue_bytes: Option<usize>,
    /// `max_clients`; `None` keeps the daemon's default (1024).
    pub max_clients: Option<usize>,
    /// TOML appended after the endpoints as it is (e.g. an `[endpoints.NAME.topics]` table).
    pub extra: String,
}

impl Config {
    /// One endpoint called `name` at `url`, everything else default.
    pub fn single(name: &str, url: &str) -> Config {
        Config {
            endpoints: vec![(name.to_owned(), url.to_owned())],
            ..Config::default()
        }
    }

    /// The TOML text, with the socket at `socket`.
    pub fn toml(&self, socket: &Path) -> String {
        let mut t = format!("socket = {:?}\n", socket.display().to_string());
        if let Some(n) = self.queue_messages {
            let _ = writeln!(t, "client_queue_messages = {n}");
        }
        if let Some(n) = self.queue_bytes {
            let _ = writeln!(t, "client_queue_bytes = {n}");
        }
        if let Some(n) = self.max_clients {
            let _ = writeln!(t, "max_clients = {n}");
        }
        for (name, url) in &self.endpoints {
            let _ = write!(t, "\n[endpoints.{name}]\nurl = {url:?}\n");
        }
        if !self.extra.is_empty() {
            t.push('\n');
            t.push_str(&self.extra);
        }
        t
    }
}

/// Starts daemons: the binary, and optionally under `valgrind --tool=callgrind`.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// The `wsmuxd` binary.
    pub bin: PathBuf,
    /// Run under callgrind, writing its profiles into this directory.
    pub callgrind: Option<PathBuf>,
}

impl Launcher {
    /// Writes `config` and starts the daemon, returning once its socket accepts connections.
    pub fn start(&self, config: &Config) -> Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("wsmux-bench-").tempdir()?;
        let socket = dir.path().join("wsmuxd.sock");
        let config_path = dir.path().join("wsmux.toml");
        std::fs::write(&config_path, config.toml(&socket))?;
        let log = std::fs::File::create(dir.path().join("wsmuxd.log"))?;
        let mut cmd = match &self.callgrind {
            Some(out) => {
                std::fs::create_dir_all(out)?;
                let mut c = Command::new("valgrind");
                c.arg("--tool=callgrind")
                    .arg(format!(
                        "--callgrind-out-file={}/callgrind.out.%p",
                        out.display()
                    ))
                    .arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .arg("--config")
            .arg(&config_path)
            .env_remove("WSMUX_SOCKET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let mut d = Daemon {
            child: Some(child),
            dir,
            socket,
            profiled: self.callgrind.is_some(),
        };
        let limit = if d.profiled {
            START_LIMIT * 6
        } else {
            START_LIMIT
        };
        d.wait_ready(limit)?;
        Ok(d)
    }
}

/// A running daemon; killed on drop if not stopped before.
pub struct Daemon {
    child: Option<Child>,
    dir: TempDir,
    /// The local socket.
    pub socket: PathBuf,
    /// Runs under callgrind.
    profiled: bool,
}

impl Daemon {
    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("wsmuxd exited at start with {status}:\n{}", self.log());
            }
            if Instant::now() >= deadline {
                bail!("wsmuxd did not listen within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("wsmuxd.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// CPU seconds (user + system) used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        stats::cpu_seconds(self.pid())
    }

    /// Resident and peak resident memory now.
    pub fn memory(&self) -> Result<Memory> {
        stats::memory(self.pid())
    }

    /// Under callgrind: zeroes the cost counters, so that the next dump holds only what
    /// follows (the measured phase). No-op otherwise.
    pub fn profile_zero(&self) -> Result<()> {
        self.callgrind_control("--zero")
    }

    /// Under callgrind: writes the costs collected since [`Daemon::profile_zero`] to a
    /// numbered profile file. No-op otherwise.
    pub fn profile_dump(&self) -> Result<()> {
        self.callgrind_control("--dump")
    }

    fn callgrind_control(&self, what: &str) -> Result<()> {
        if !self.profiled {
            return Ok(());
        }
        let out = Command::new("callgrind_control")
            .arg(what)
            .arg(self.pid().to_string())
            .output()
            .context("running callgrind_control")?;
        if !out.status.success() {
            bail!(
                "callgrind_control {what} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.child = None;
            bail!("wsmuxd exited unexpectedly with {status}:\n{}", self.log());
        }
        Ok(())
    }

    /// SIGTERM, then waits up to 10 s (60 s under valgrind) for a clean exit (SIGKILL after
    /// that). An exit status other than success is an error.
    pub fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("wsmuxd was not running");
        };
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let limit = Duration::from_secs(if self.profiled { 60 } else { 10 });
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("wsmuxd exited with {status} after SIGTERM:\n{}", self.log());
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("wsmuxd did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_text() {
        let mut c = Config::single("feed", "ws://127.0.0.1:1/");
        c.queue_messages = Some(10);
        let t = c.toml(Path::new("/tmp/x.sock"));
        assert!(t.starts_with("socket = \"/tmp/x.sock\"\nclient_queue_messages = 10\n"));
        assert!(t.ends_with("[endpoints.feed]\nurl = \"ws://127.0.0.1:1/\"\n"));
    }
}
