//! The relays without a protocol, which the daemon is compared with: each shares one upstream
//! WebSocket with the clients of a Unix socket and writes every upstream message to all of
//! them as a raw payload.
//!
//! - **floor**: the floor relay of this benchmark (`crate::floor`), this program itself run
//!   as `wsmux-bench __floor-relay URL SOCKET`. Frames have a 4-byte big-endian length.
//! - **websocat** in shared-connection mode, in either of its framings:
//!
//!   ```text
//!   websocat -b --queue-len N lengthprefixed:unix-l:SOCKET reuse-broadcast:autoreconnect:ws://UPSTREAM/
//!   websocat -t --queue-len N unix-l:SOCKET reuse-broadcast:autoreconnect:ws://UPSTREAM/
//!   ```
//!
//!   The first frames each message with a 4-byte big-endian length (the framing wsmux uses
//!   too, with the raw payload as the body instead of a MessagePack map); the second, its line
//!   mode, ends each message with a newline, which the payloads never contain. The line mode
//!   was the faster of the two in earlier runs, so both run and the tables compare with the
//!   better one. `--queue-len` is websocat's per-client broadcast queue (default 16, after
//!   which it drops); the harness sets it to the same number of messages the daemon's
//!   per-client queue gets in that run. Checked against websocat 1.14.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::client::Framing;

/// Finds websocat: `explicit` if given, else `websocat` on `PATH`. Returns the path and its
/// `--version` line.
pub fn find(explicit: Option<&Path>) -> Option<(PathBuf, String)> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("websocat"))
                .find(|p| p.is_file())
        })?,
    };
    let out = Command::new(&path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some((path, version))
}

/// A running relay.
pub struct Relay {
    child: Option<Child>,
    dir: TempDir,
    /// The Unix socket clients connect to.
    pub socket: PathBuf,
    /// How its frames are delimited.
    pub framing: Framing,
}

impl Relay {
    /// Starts the floor relay for `upstream_url`. Returns once the socket accepts
    /// connections; the relay connects to the upstream right after.
    pub fn floor(upstream_url: &str) -> Result<Relay> {
        let exe = std::env::current_exe().context("finding this program to run the floor")?;
        Relay::spawn("floor", Framing::Prefixed, |socket| {
            let mut c = Command::new(exe);
            c.arg(crate::floor::ARG).arg(upstream_url).arg(socket);
            c
        })
    }

    /// Starts websocat (`bin`) sharing `upstream_url` with `framing`, with `queue_len`
    /// messages of queue per client. Returns once the socket accepts connections.
    pub fn websocat(
        bin: &Path,
        upstream_url: &str,
        queue_len: usize,
        framing: Framing,
    ) -> Result<Relay> {
        Relay::spawn("websocat", framing, |socket| {
            let mut c = Command::new(bin);
            match framing {
                Framing::Prefixed => c
                    .arg("-b")
                    .arg("--queue-len")
                    .arg(queue_len.to_string())
                    .arg(format!("lengthprefixed:unix-l:{}", socket.display())),
                Framing::Lines => c
                    .arg("-t")
                    .arg("--queue-len")
                    .arg(queue_len.to_string())
                    .arg(format!("unix-l:{}", socket.display())),
            };
            c.arg(format!("reuse-broadcast:autoreconnect:{upstream_url}"));
            c
        })
    }

    fn spawn(
        name: &str,
        framing: Framing,
        command: impl FnOnce(&Path) -> Command,
    ) -> Result<Relay> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wsmux-bench-{name}-"))
            .tempdir()?;
        let socket = dir.path().join(format!("{name}.sock"));
        let log = std::fs::File::create(dir.path().join("relay.log"))?;
        let child = command(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut w = Relay {
            child: Some(child),
            dir,
            socket,
            framing,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !w.socket.exists() {
            if let Some(status) = w.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                w.child = None;
                bail!("{name} exited at start with {status}:\n{}", w.log());
            }
            if Instant::now() >= deadline {
                bail!("{name} did not listen within 10 s:\n{}", w.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(w)
    }

    /// What the relay printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
