//! The `wsmux` CLI as a child process whose output is read line by line.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::bin;

/// A running `wsmux` whose standard output is read line by line; killed on drop.
pub struct Cli {
    /// The process.
    pub child: Child,
    /// Lines of its standard output, from a reader thread.
    lines: mpsc::Receiver<String>,
    /// Its standard input, when it was asked for.
    stdin: Option<ChildStdin>,
}

impl Cli {
    /// `wsmux --socket SOCKET ARGS...`, standard input closed, standard error discarded.
    pub fn spawn(socket: &Path, args: &[&str]) -> Cli {
        Self::start(socket, args, false)
    }

    /// Like [`Cli::spawn`], with standard input for [`Cli::write_line`].
    pub fn spawn_with_stdin(socket: &Path, args: &[&str]) -> Cli {
        Self::start(socket, args, true)
    }

    fn start(socket: &Path, args: &[&str], stdin: bool) -> Cli {
        let mut child = Command::new(bin("wsmux"))
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env_remove("WSMUX_SOCKET")
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wsmux");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Cli {
            child,
            lines,
            stdin,
        }
    }

    /// The next line of output as JSON, within 10 s.
    pub async fn next(&self) -> Value {
        let line = tokio::task::block_in_place(|| self.lines.recv_timeout(Duration::from_secs(10)))
            .expect("a line from wsmux within 10s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// The next line whose `type` is `kind`, within 10 s; the lines skipped must satisfy
    /// `skipped`.
    pub async fn next_of(&self, kind: &str, skipped: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no {kind} line within 10s");
            let line = self.next().await;
            if line["type"] == kind {
                return line;
            }
            assert!(
                skipped(&line),
                "unexpected while waiting for {kind}: {line}"
            );
        }
    }

    /// Every line still to come, once the process has ended.
    pub fn rest(&self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}")));
        }
        out
    }

    /// Writes one line to its standard input.
    pub fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("spawned with stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to wsmux");
        stdin.flush().expect("flush to wsmux");
    }

    /// Waits at most 10 s for the process to end.
    pub async fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "wsmux did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
