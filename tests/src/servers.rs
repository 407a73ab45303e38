//! Real third-party servers for the interop tests: `nats-server`, `mosquitto`, WebSocket
//! servers written with Node's `ws` package, and the proxies `tinyproxy` (HTTP `CONNECT`)
//! and `microsocks` (SOCKS5). Each is a child process bound to 127.0.0.1 with its config and
//! log in a temporary directory, killed when dropped.
//!
//! `cargo xtask test` installs all of them. A test whose server is missing fails with a
//! message naming that command: it never skips silently.

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// The command that installs every prerequisite of the suite, then runs it.
pub const RUNNER: &str = "cargo xtask test";

/// How long a server gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many fresh ports a server is tried on before the test gives up (another process may
/// take a free port between our probe and the server's bind).
const START_TRIES: usize = 3;

/// The path of `program`, from `PATH` or the `sbin` directories (Debian installs
/// `nats-server` and `mosquitto` in `/usr/sbin`, which is not on every user's `PATH`).
///
/// Fails the test with the install command when it is missing.
pub fn require(program: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(sbin)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed (looked in PATH and the sbin directories): \
                 `{RUNNER}` installs it, or run `apt-get install {debian_package}`"
            )
        })
}

/// A TCP port on 127.0.0.1 that was free a moment ago, and that this process has not
/// handed out before (the kernel may give the same free port to two quick probes).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
    panic!("no fresh free port on 127.0.0.1 in 100 tries");
}

/// A server process and the directory that holds its config and log.
struct Process {
    /// What it is, for messages.
    name: &'static str,
    /// The process; `None` once reaped.
    child: Option<Child>,
    /// Config and log.
    dir: TempDir,
}

impl Process {
    /// The log file's path.
    fn log_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.log"))
    }

    /// Starts `program args` with stdout and stderr going to the log, and waits until the
    /// log has `ready` and `port` accepts TCP connections. An error (with the directory
    /// back, and the log) if the process exited first, as it does when another process took
    /// the port. (A connect alone could reach that other process.)
    fn start(
        name: &'static str,
        dir: TempDir,
        program: &Path,
        args: &[&str],
        port: u16,
        ready: &str,
    ) -> Result<Process, (TempDir, String)> {
        let log_path = Self::log_path(dir.path(), name);
        let log = std::fs::File::create(&log_path).expect("server log file");
        let log2 = log.try_clone().expect("server log file");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains(ready) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Process {
                    name,
                    child: Some(child),
                    dir,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err((dir, format!("{name} exited with {status}:\n{log}")));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(Self::log_path(self.dir.path(), self.name)).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("---- {} log ----\n{}", self.name, self.log());
            }
        }
    }
}

/// Tries `start(dir, port)` on up to [`START_TRIES`] fresh ports.
fn start_on_free_port(
    name: &str,
    mut start: impl FnMut(TempDir, u16) -> Result<Process, (TempDir, String)>,
) -> (Process, u16) {
    let mut dir = tempfile::tempdir().expect("tempdir");
    let mut last = String::new();
    for _ in 0..START_TRIES {
        let port = free_port();
        match start(dir, port) {
            Ok(p) => return (p, port),
            Err((d, why)) => {
                dir = d;
                last = why;
            }
        }
    }
    panic!("{name} did not start in {START_TRIES} tries: {last}");
}

/// A `nats-server` with a WebSocket listener (`no_tls`) on 127.0.0.1, tracing every protocol
/// line to its log.
pub struct NatsServer {
    /// The process.
    process: Process,
    /// The WebSocket port.
    pub ws_port: u16,
}

impl NatsServer {
    /// Starts a server that sends a `PING` every `ping_interval` (a NATS duration such as
    /// "2s") and closes a connection with `ping_max` unanswered pings.
    pub fn start(ping_interval: &str, ping_max: u32) -> NatsServer {
        let program = require("nats-server", "nats-server");
        let (process, ws_port) = start_on_free_port("nats-server", |dir, port| {
            let log = Process::log_path(dir.path(), "nats-server");
            let config = dir.path().join("nats.conf");
            let text = format!(
                "host: \"127.0.0.1\"\nport: -1\nping_interval: \"{ping_interval}\"\n\
                 ping_max: {ping_max}\ndebug: true\ntrace: true\nlogtime: true\n\
                 log_file: {log:?}\n\
                 websocket {{\n  host: \"127.0.0.1\"\n  port: {port}\n  no_tls: true\n}}\n",
                log = log.display().to_string(),
            );
            std::fs::write(&config, text).expect("write nats.conf");
            let config = config.display().to_string();
            let ready = format!("Listening for websocket clients on ws://127.0.0.1:{port}");
            Process::start("nats-server", dir, &program, &["-c", &config], port, &ready)
        });
        NatsServer { process, ws_port }
    }

    /// The WebSocket URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws_port)
    }

    /// What the server logged so far (with `trace`, every protocol line in both directions).
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// A `mosquitto` broker with one WebSocket listener on 127.0.0.1, logging everything
/// (each PINGREQ included).
pub struct Mosquitto {
    /// The process.
    process: Process,
    /// The WebSocket port.
    pub port: u16,
}

impl Mosquitto {
    /// Starts a broker that allows anonymous clients.
    pub fn start() -> Mosquitto {
        let program = require("mosquitto", "mosquitto");
        let (process, port) = start_on_free_port("mosquitto", |dir, port| {
            let config = dir.path().join("mosquitto.conf");
            // mosquitto 2.0.11 (Debian 12) refuses to start with only WebSocket listeners
            // ("Unable to start any listening sockets"), so a plain MQTT listener comes first;
            // and its WebSocket listener binds every interface unless `socket_domain ipv4`.
            let mqtt_port = free_port();
            let text = format!(
                "listener {mqtt_port} 127.0.0.1\n\
                 listener {port} 127.0.0.1\nsocket_domain ipv4\nprotocol websockets\n\
                 allow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\n\
                 connection_messages true\nlog_timestamp true\n"
            );
            std::fs::write(&config, text).expect("write mosquitto.conf");
            let config = config.display().to_string();
            let ready = " running";
            Process::start("mosquitto", dir, &program, &["-c", &config], port, ready)
        });
        Mosquitto { process, port }
    }

    /// The WebSocket URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/mqtt", self.port)
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// `tinyproxy`, an HTTP proxy that tunnels `CONNECT` to any port, logging every request line.
pub struct TinyProxy {
    /// The process.
    process: Process,
    /// Where it listens.
    pub port: u16,
}

impl TinyProxy {
    /// Starts a proxy on a free port; with `auth`, it requires that user name and password
    /// (tinyproxy takes only letters, digits, `-`, `_` and `.` in them).
    pub fn start(auth: Option<(&str, &str)>) -> TinyProxy {
        let (process, port) =
            start_on_free_port("tinyproxy", |dir, port| Self::spawn(dir, port, auth));
        TinyProxy { process, port }
    }

    /// Starts a proxy on `port` (one a test reserved with [`free_port`]).
    pub fn start_on(port: u16, auth: Option<(&str, &str)>) -> TinyProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        match Self::spawn(dir, port, auth) {
            Ok(process) => TinyProxy { process, port },
            Err((_, why)) => panic!("tinyproxy did not start on port {port}: {why}"),
        }
    }

    fn spawn(
        dir: TempDir,
        port: u16,
        auth: Option<(&str, &str)>,
    ) -> Result<Process, (TempDir, String)> {
        let program = require("tinyproxy", "tinyproxy");
        let config = dir.path().join("tinyproxy.conf");
        // No `ConnectPort` line: CONNECT to every port. Without `LogFile` or `Syslog`,
        // `-d` logs to stderr.
        let mut text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Info\nMaxClients 64\n\
             Allow 127.0.0.1\nDisableViaHeader Yes\n"
        );
        if let Some((user, password)) = auth {
            text.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        std::fs::write(&config, text).expect("write tinyproxy.conf");
        let config = config.display().to_string();
        let ready = "Accepting connections";
        Process::start(
            "tinyproxy",
            dir,
            &program,
            &["-d", "-c", &config],
            port,
            ready,
        )
    }

    /// `http://user:password@127.0.0.1:PORT` (or without credentials).
    pub fn url(&self, auth: Option<(&str, &str)>) -> String {
        match auth {
            Some((user, password)) => format!("http://{user}:{password}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// What the proxy logged so far (`Request (file descriptor N): CONNECT host:port ...`).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// How many `CONNECT` requests it logged so far.
    pub fn connects(&self) -> usize {
        self.log().matches("): CONNECT ").count()
    }
}

/// `microsocks`, a SOCKS5 server with user name and password authentication, logging the
/// target of every connection it makes (`client[N] 127.0.0.1: connected to host:port`).
pub struct SocksProxy {
    /// The process.
    process: Process,
    /// Where it listens.
    pub port: u16,
}

impl SocksProxy {
    /// Starts a SOCKS5 server on a free port that requires `user` and `password`.
    pub fn start(user: &str, password: &str) -> SocksProxy {
        let program = require("microsocks", "microsocks");
        let (process, port) = start_on_free_port("microsocks", |dir, port| {
            let port_text = port.to_string();
            let args = [
                "-i",
                "127.0.0.1",
                "-p",
                &port_text,
                "-u",
                user,
                "-P",
                password,
            ];
            // It prints nothing until a client comes: listening is the readiness.
            Process::start("microsocks", dir, &program, &args, port, "")
        });
        SocksProxy { process, port }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// The JSON lines a child process writes, as they come (a line that is not JSON arrives as
/// `{"event":"output","line":...}`).
pub fn json_lines(stdout: tokio::process::ChildStdout) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let v = serde_json::from_str(&line)
                .unwrap_or_else(|_| serde_json::json!({ "event": "output", "line": line }));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}

/// The directory of the Node servers and apps (`tests/node`), with the `ws` package
/// installed (or the test fails naming the command that installs it).
pub fn node_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    assert!(
        dir.join("node_modules/ws/package.json").is_file(),
        "the `ws` package is not installed in {}: `{RUNNER}` installs it, or run \
         `npm ci --prefix tests/node`",
        dir.display()
    );
    dir
}

/// A WebSocket server from `tests/node/server.mjs`, built on the `ws` package, reporting what
/// happens as JSON lines (`{"event":"connection",...}`, `{"event":"pong",...}`, ...).
pub struct NodeWs {
    /// The process; killed on drop, and it exits by itself when its stdin closes.
    child: tokio::process::Child,
    /// Where it listens.
    pub port: u16,
    /// Events not yet taken by [`NodeWs::events`].
    rx: mpsc::UnboundedReceiver<Value>,
    /// Every event so far, in order.
    seen: Vec<Value>,
    /// Its stderr.
    stderr: PathBuf,
    /// Holds the stderr file.
    _dir: TempDir,
}

impl NodeWs {
    /// Starts `server.mjs --mode MODE --interval MS` and waits until it listens.
    pub async fn start(mode: &str, interval: Duration) -> NodeWs {
        let node = require("node", "nodejs");
        let dir = node_dir();
        let tmp = tempfile::tempdir().expect("tempdir");
        let stderr = tmp.path().join("node.stderr");
        let mut child = tokio::process::Command::new(node)
            .arg(dir.join("server.mjs"))
            .args(["--mode", mode, "--interval"])
            .arg(interval.as_millis().to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start node");
        let rx = json_lines(child.stdout.take().expect("piped stdout"));
        let mut s = NodeWs {
            child,
            port: 0,
            rx,
            seen: Vec::new(),
            stderr,
            _dir: tmp,
        };
        let listening = s.wait_for("listening", START_TIMEOUT).await;
        s.port = listening["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("a port in the listening event");
        s
    }

    /// The WebSocket URL clients connect to.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Every event reported so far.
    pub fn events(&mut self) -> &[Value] {
        while let Ok(v) = self.rx.try_recv() {
            self.seen.push(v);
        }
        &self.seen
    }

    /// How many events named `event` were reported so far.
    pub fn count(&mut self, event: &str) -> usize {
        self.events().iter().filter(|v| v["event"] == event).count()
    }

    /// Waits (at most `limit`) for the next event named `event`, keeping the others.
    pub async fn wait_for(&mut self, event: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if v["event"] == event {
                        return v;
                    }
                }
                Ok(None) => panic!(
                    "the node server exited while waiting for {event:?}: {:?}\n{}",
                    self.seen,
                    self.stderr()
                ),
                Err(_) => panic!(
                    "no {event:?} event from the node server within {limit:?}: {:?}\n{}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// What the server wrote to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for NodeWs {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "---- node server events ----\n{:?}\n---- stderr ----\n{}",
                self.seen,
                self.stderr()
            );
        }
    }
}

/// The DOM of `url` as headless Chromium renders it (`--dump-dom`), with a fresh profile, a
/// virtual-time budget of 5 s (the page's fetches and first render finish before the dump),
/// nothing in the background, and `extra` flags. Fails the test if Chromium is missing,
/// fails, or takes more than a minute.
pub async fn chromium_dom(url: &str, extra: &[&str]) -> String {
    let chromium = require("chromium", "chromium");
    let profile = tempfile::tempdir().expect("tempdir");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished in time")
    .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}
