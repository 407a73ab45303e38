//! Apps with plain WebSocket clients that nobody here wrote, for the daemon's `[websocket]`
//! listener: Python's `websockets` package (`tests/apps/ws_app.py`) and Node's `ws` package
//! (`tests/node/app.mjs`), each a child process that reports what happens as JSON lines and
//! takes commands the same way; and `websocat`, run as it is.
//!
//! `cargo xtask test` installs all three. A test whose client is missing fails with a message
//! naming that command: it never skips silently.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::servers::{json_lines, node_dir, require, RUNNER};

/// Which client library an app uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    /// Python's `websockets` (its synchronous client).
    Python,
    /// Node's `ws`.
    Node,
}

/// How an app connects.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// The `Origin` header.
    pub origin: Option<String>,
    /// Connect over this Unix socket (the URL then only names the path).
    pub unix: Option<PathBuf>,
    /// Report messages by length and first characters only (for floods).
    pub brief: bool,
    /// Run as this uid (and gid), through `setpriv`.
    pub uid: Option<u32>,
    /// Do not answer pings (Node only), and report each one (`{"event":"ping"}`).
    pub no_pong: bool,
}

impl Options {
    /// With `Authorization: Bearer TOKEN`.
    pub fn bearer(token: &str) -> Options {
        Options {
            headers: vec![("Authorization".into(), format!("Bearer {token}"))],
            ..Options::default()
        }
    }
}

/// A running app. Killed on drop.
pub struct App {
    /// Which library.
    pub lib: Lib,
    /// The process.
    child: Child,
    /// Where commands go.
    stdin: ChildStdin,
    /// Events not yet taken.
    rx: mpsc::UnboundedReceiver<Value>,
    /// Every event so far.
    seen: Vec<Value>,
}

/// The Python interpreter, with `websockets` importable.
fn python() -> PathBuf {
    let python = require("python3", "python3");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import websockets"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the Python package `websockets` is not installed: `{RUNNER}` installs it, or run \
         `python3 -m pip install websockets`"
    );
    python
}

/// `websocat`, from `PATH` or the cargo bin directory (`cargo install` puts it there; it is
/// not a Debian package).
pub fn websocat() -> PathBuf {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|d| d.join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join("websocat"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "websocat is not installed (looked in PATH and the cargo bin directory): \
                 `{RUNNER}` installs it, or run `cargo install websocat --locked`"
            )
        })
}

impl App {
    /// Starts an app of `lib` connecting to `url`.
    pub async fn start(lib: Lib, url: &str, options: &Options) -> App {
        let (program, mut args, dir) = match lib {
            Lib::Python => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/ws_app.py");
                (python(), vec![script.display().to_string()], None)
            }
            Lib::Node => {
                let dir = node_dir();
                let node = require("node", "nodejs");
                (
                    node,
                    vec![dir.join("app.mjs").display().to_string()],
                    Some(dir),
                )
            }
        };
        let url = match (&options.unix, lib) {
            (Some(path), Lib::Node) => {
                let name = url.split_once("://").map_or(url, |(_, rest)| rest);
                let request = name.find('/').map_or("/", |at| &name[at..]);
                format!("ws+unix://{}:{request}", path.display())
            }
            (Some(path), Lib::Python) => {
                args.extend(["--unix".into(), path.display().to_string()]);
                url.to_owned()
            }
            (None, _) => url.to_owned(),
        };
        args.insert(1, url);
        for (name, value) in &options.headers {
            args.extend(["--header".into(), format!("{name}:{value}")]);
        }
        if let Some(origin) = &options.origin {
            args.extend(["--origin".into(), origin.clone()]);
        }
        if options.brief {
            args.extend(["--brief".into(), "1".into()]);
        }
        if options.no_pong {
            assert_eq!(
                lib,
                Lib::Node,
                "only the Node app can leave pings unanswered"
            );
            args.extend(["--no-pong".into(), "1".into()]);
        }
        let mut cmd = match options.uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(&program);
                c
            }
            None => Command::new(&program),
        };
        cmd.args(&args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let rx = json_lines(child.stdout.take().expect("piped stdout"));
        let stdin = child.stdin.take().expect("piped stdin");
        App {
            lib,
            child,
            stdin,
            rx,
            seen: Vec::new(),
        }
    }

    /// Starts an app and waits until it is connected (failing with what it saw otherwise).
    pub async fn open(lib: Lib, url: &str, options: &Options) -> App {
        let mut app = App::start(lib, url, options).await;
        let first = app.next(Duration::from_secs(10)).await;
        assert_eq!(first["event"], "open", "{lib:?} did not connect: {first}");
        app
    }

    /// Sends a command line.
    pub async fn command(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the app");
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) {
        self.command(json!({ "send": text })).await;
    }

    /// Sends a binary message.
    pub async fn send_binary(&mut self, data: &[u8]) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        self.command(json!({ "send_b64": b64 })).await;
    }

    /// The next event, within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Value {
        match tokio::time::timeout(limit, self.rx.recv()).await {
            Ok(Some(v)) => {
                self.seen.push(v.clone());
                v
            }
            Ok(None) => panic!("the {:?} app exited; it saw {:?}", self.lib, self.seen),
            Err(_) => panic!(
                "nothing from the {:?} app within {limit:?}; it saw {:?}",
                self.lib, self.seen
            ),
        }
    }

    /// The next event, if one comes within `limit`.
    pub async fn try_next(&mut self, limit: Duration) -> Option<Value> {
        match tokio::time::timeout(limit, self.rx.recv()).await {
            Ok(Some(v)) => {
                self.seen.push(v.clone());
                Some(v)
            }
            _ => None,
        }
    }

    /// The next `message` event (failing on anything else).
    pub async fn message(&mut self, limit: Duration) -> Value {
        let v = self.next(limit).await;
        assert_eq!(v["event"], "message", "{:?} app: {v}", self.lib);
        v
    }

    /// The next text message's text.
    pub async fn text(&mut self, limit: Duration) -> String {
        let v = self.message(limit).await;
        assert_eq!(v["binary"], false, "{:?} app: {v}", self.lib);
        v["data"].as_str().expect("text").to_owned()
    }

    /// Waits for the connection's close, skipping messages; its code and reason.
    pub async fn closed(&mut self, limit: Duration) -> (u64, String) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.next(left).await;
            match v["event"].as_str() {
                Some("message") => continue,
                Some("close") => {
                    return (
                        v["code"].as_u64().expect("a close code"),
                        v["reason"].as_str().unwrap_or_default().to_owned(),
                    )
                }
                _ => panic!("{:?} app: expected a close, got {v}", self.lib),
            }
        }
    }

    /// Every event so far.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("---- {:?} app events ----\n{:?}", self.lib, self.seen);
        }
    }
}

/// What an app refused at its upgrade reports: status, `Retry-After`, body.
pub async fn refused(lib: Lib, url: &str, options: &Options) -> (u64, Option<String>, String) {
    let mut app = App::start(lib, url, options).await;
    let v = app.next(Duration::from_secs(10)).await;
    assert_eq!(v["event"], "refused", "{lib:?}: {v}");
    (
        v["status"].as_u64().expect("a status"),
        v["retry_after"].as_str().map(str::to_owned),
        v["body"].as_str().unwrap_or_default().to_owned(),
    )
}
