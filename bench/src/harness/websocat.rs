//! websocat in shared-connection mode, the comparison leg:
//!
//! ```text
//! websocat -b --queue-len N lengthprefixed:unix-l:SOCKET reuse-broadcast:autoreconnect:ws://UPSTREAM/
//! ```
//!
//! Every client of the Unix socket shares one upstream WebSocket; upstream messages reach
//! every client as frames with a 4-byte big-endian length prefix (the framing wsmux uses too,
//! with the raw payload as the body instead of a MessagePack map). `--queue-len` is
//! websocat's per-client broadcast queue (default 16, after which it drops); the harness sets
//! it to the same number of messages the daemon's per-client queue gets in that run.
//! Checked against websocat 1.14.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::stats::{self, Memory};

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

/// A running websocat.
pub struct Websocat {
    child: Option<Child>,
    dir: TempDir,
    /// The Unix socket clients connect to.
    pub socket: PathBuf,
}

impl Websocat {
    /// Starts `bin` sharing `upstream_url` on a new socket, with `queue_len` messages of
    /// queue per client. Returns once the socket accepts connections.
    pub fn start(bin: &Path, upstream_url: &str, queue_len: usize) -> Result<Websocat> {
        let dir = tempfile::Builder::new()
            .prefix("wsmux-bench-websocat-")
            .tempdir()?;
        let socket = dir.path().join("websocat.sock");
        let log = std::fs::File::create(dir.path().join("websocat.log"))?;
        let child = Command::new(bin)
            .arg("-b")
            .arg("--queue-len")
            .arg(queue_len.to_string())
            .arg(format!("lengthprefixed:unix-l:{}", socket.display()))
            .arg(format!("reuse-broadcast:autoreconnect:{upstream_url}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut w = Websocat {
            child: Some(child),
            dir,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !w.socket.exists() {
            if let Some(status) = w.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                w.child = None;
                bail!("websocat exited at start with {status}:\n{}", w.log());
            }
            if Instant::now() >= deadline {
                bail!("websocat did not listen within 10 s:\n{}", w.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(w)
    }

    /// What websocat printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("websocat.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Result<f64> {
        stats::cpu_seconds(self.pid())
    }

    /// Resident and peak resident memory now.
    pub fn memory(&self) -> Result<Memory> {
        stats::memory(self.pid())
    }
}

impl Drop for Websocat {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
