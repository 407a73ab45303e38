//! `wsmuxd`: the daemon binary. Parses flags, loads settings, sets up logging and signals,
//! and calls [`wsmuxd::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Keeps one healthy upstream WebSocket per configured endpoint and shares it with local
/// processes over a local socket.
#[derive(Debug, Parser)]
#[command(name = "wsmuxd", version, about)]
struct Args {
    /// Configuration file (TOML). Default: $XDG_CONFIG_HOME/wsmux/wsmux.toml, then
    /// ~/.config/wsmux/wsmux.toml, then /etc/wsmux/wsmux.toml.
    #[arg(short, long, env = "WSMUX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Run with a built-in demo upstream on 127.0.0.1 instead of a configuration file.
    #[arg(long, conflicts_with = "config")]
    demo: bool,

    /// Run only the demo upstream, on this loopback address (e.g. 127.0.0.1:9001), for a
    /// daemon started with a configuration that points at it (examples/demo.toml).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["config", "demo", "check"])]
    demo_upstream: Option<std::net::SocketAddr>,

    /// Local socket path (overrides the configuration and WSMUX_SOCKET).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Validate the configuration, print a summary and exit.
    #[arg(long, conflicts_with = "demo")]
    check: bool,

    /// Log filter, e.g. `debug` or `wsmuxd=trace` (overrides the configuration).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsmuxd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_config() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(dir).join("wsmux/wsmux.toml"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(home).join(".config/wsmux/wsmux.toml"));
    }
    candidates.push(PathBuf::from("/etc/wsmux/wsmux.toml"));
    candidates.into_iter().find(|p| p.is_file())
}

fn real_main(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    if let Some(addr) = args.demo_upstream {
        return runtime.block_on(demo_upstream(addr));
    }
    let demo_cancel = CancellationToken::new();
    let mut config_path: Option<PathBuf> = None;
    let (mut settings, origin) = if args.demo {
        let addr = runtime
            .block_on(wsmuxd::demo::start(demo_cancel.clone()))
            .context("cannot start the demo upstream")?;
        (
            wsmuxd::demo::settings(addr, None),
            "built-in demo".to_owned(),
        )
    } else {
        let path = match args.config.clone().or_else(default_config) {
            Some(p) => p,
            None => bail!(
                "no configuration file: pass --config FILE (see config/wsmux.example.toml), \
                 or try `wsmuxd --demo`"
            ),
        };
        let settings = wsmux_config::load(&path)?;
        let origin = path.display().to_string();
        config_path = Some(path);
        (settings, origin)
    };
    if let Some(socket) = args.socket {
        settings.server.socket = Some(socket);
    }
    if let Some(level) = args.log_level {
        settings.log.level = level;
    }

    if args.check {
        let socket = wsmuxd::local::resolve_socket_path(settings.server.socket.as_deref());
        println!("{origin}: OK");
        println!("socket: {}", socket.display());
        for ep in &settings.endpoints {
            println!("endpoint {}: {}", ep.name, ep.url_redacted);
            if ep.proxy != wsmux_config::ProxySetting::Direct {
                println!("  proxy: {}", ep.proxy);
            }
        }
        if let Some(ws) = &settings.websocket {
            if let Some(addr) = ws.listen {
                let token = match &ws.token {
                    Some(_) => "token ***",
                    None => "no token (allow_anonymous)",
                };
                println!("websocket: ws://{addr}/NAME, {token}");
            }
            if let Some(path) = &ws.unix {
                println!("websocket socket: {}", path.display());
            }
        }
        return Ok(());
    }

    // Keep the guard until main returns so the file writer is flushed.
    let _log_guard = wsmuxd::logging::init(&settings.log)?;
    tracing::info!(config = %origin, version = env!("CARGO_PKG_VERSION"), "wsmuxd starting");
    #[cfg(unix)]
    fit_open_files(&mut settings.server.max_clients, settings.endpoints.len());

    let shutdown = CancellationToken::new();
    // Handlers are installed before the socket exists, so a signal sent as soon as the
    // daemon answers is never fatal.
    let signals = runtime.block_on(async { install_signals() })?;
    runtime.spawn(wait_for_signal(signals.shutdown, shutdown.clone()));
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    runtime.spawn(forward_sighup(signals.hangup, reload_tx));
    #[cfg(not(unix))]
    drop(reload_tx);
    // A reload re-reads the same file and re-applies the command-line overrides.
    let reloader: Option<wsmuxd::Reloader> = config_path.map(|path| {
        let overrides = (settings.server.socket.clone(), settings.log.level.clone());
        let reload: wsmuxd::Reloader = std::sync::Arc::new(move || {
            let mut s = wsmux_config::load(&path).map_err(|e| e.to_string())?;
            s.server.socket.clone_from(&overrides.0);
            s.log.level.clone_from(&overrides.1);
            Ok(s)
        });
        reload
    });
    let demo = args.demo;
    let ready: wsmuxd::ReadyHook = Box::new(move |path| {
        notify_ready();
        if demo {
            tracing::info!(
                "demo running: try `wsmux subscribe {}` (or `cargo run -p wsmux-client -- subscribe {}`) with WSMUX_SOCKET={}",
                wsmuxd::demo::ENDPOINT,
                wsmuxd::demo::ENDPOINT,
                path.display()
            );
        }
    });
    let options = wsmuxd::Options {
        ready: Some(ready),
        reloader,
        reload_signals: Some(reload_rx),
    };
    let result = runtime.block_on(wsmuxd::run_with(settings, shutdown, options));
    demo_cancel.cancel();
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(())
}

/// `--demo-upstream ADDR`: the demo service alone, until SIGINT or SIGTERM.
async fn demo_upstream(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let signals = install_signals()?;
    let cancel = CancellationToken::new();
    let addr = wsmuxd::demo::start_on(addr, cancel.clone())
        .await
        .with_context(|| format!("cannot start the demo upstream on {addr}"))?;
    // Printed on stdout for scripts that asked for port 0.
    println!("demo upstream listening on ws://{addr}/ticker");
    eprintln!(
        "wsmuxd: the demo upstream is running; start a daemon that points at it, e.g. \
         `wsmuxd --config examples/demo.toml`; Ctrl-C stops it"
    );
    wait_for_signal(signals.shutdown, cancel.clone()).await;
    Ok(())
}

/// Tells systemd (`Type=notify`) that the daemon is ready, when started by it.
fn notify_ready() {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let target = target.to_string_lossy().into_owned();
        let addr = match target.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(&target),
        };
        let sent = addr.and_then(|addr| {
            let sock = UnixDatagram::unbound()?;
            sock.send_to_addr(b"READY=1\nSTATUS=listening", &addr)
        });
        match sent {
            Ok(_) => tracing::debug!("notified systemd: ready"),
            Err(e) => tracing::warn!(error = %e, socket = %target, "cannot notify systemd"),
        }
    }
}

/// Signal streams, created before the daemon starts listening.
struct Signals {
    /// SIGTERM and SIGINT (Ctrl-C elsewhere).
    #[cfg(unix)]
    shutdown: (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    /// Ctrl-C and Ctrl-Break.
    #[cfg(windows)]
    shutdown: (
        tokio::signal::windows::CtrlC,
        tokio::signal::windows::CtrlBreak,
    ),
    /// SIGHUP.
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
fn install_signals() -> anyhow::Result<Signals> {
    use tokio::signal::unix::{signal, SignalKind};
    Ok(Signals {
        shutdown: (
            signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        ),
        hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
    })
}

#[cfg(windows)]
fn install_signals() -> anyhow::Result<Signals> {
    use tokio::signal::windows::{ctrl_break, ctrl_c};
    Ok(Signals {
        shutdown: (
            ctrl_c().context("cannot handle Ctrl-C")?,
            ctrl_break().context("cannot handle Ctrl-Break")?,
        ),
    })
}

/// Turns every SIGHUP into a reload request.
#[cfg(unix)]
async fn forward_sighup(mut hup: tokio::signal::unix::Signal, tx: tokio::sync::mpsc::Sender<()>) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the configuration");
        if tx.send(()).await.is_err() {
            return;
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal(
    (mut term, mut int): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

#[cfg(windows)]
async fn wait_for_signal(
    (mut ctrl_c, mut ctrl_break): (
        tokio::signal::windows::CtrlC,
        tokio::signal::windows::CtrlBreak,
    ),
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = ctrl_c.recv() => tracing::info!("Ctrl-C received"),
        _ = ctrl_break.recv() => tracing::info!("Ctrl-Break received"),
    }
    shutdown.cancel();
}

/// File descriptors kept free besides one per client: the listener, upstream connections
/// (two per endpoint during a rotation), metrics, logs, TLS roots, a refusal in progress.
#[cfg(unix)]
const FD_RESERVE: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` toward the hard limit so that `max_clients` clients fit,
/// and lowers `max_clients` (with a warning) when even the hard limit is too small: extra
/// clients are then told `too_many_clients` instead of hanging on a failed `accept`.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every Unix.
fn fit_open_files(max_clients: &mut usize, endpoints: usize) {
    let reserve = FD_RESERVE + 4 * endpoints as u64;
    let wanted = (*max_clients as u64).saturating_add(reserve);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-files limit");
        return;
    }
    let soft = lim.rlim_cur as u64;
    let hard = lim.rlim_max as u64;
    let mut now = soft;
    if soft < wanted {
        // macOS refuses soft limits above OPEN_MAX (10240) even when the hard limit is higher.
        let cap = if cfg!(target_os = "macos") {
            10240
        } else {
            u64::MAX
        };
        let target = wanted.min(hard).min(cap).max(soft);
        let raised = libc::rlimit {
            rlim_cur: target as libc::rlim_t,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            now = target;
            tracing::info!(from = soft, to = target, "raised the open-files limit");
        } else {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot raise the open-files limit"
            );
        }
    }
    if now < wanted {
        let fit = now.saturating_sub(reserve).max(1) as usize;
        tracing::warn!(
            limit = now,
            hard,
            max_clients = *max_clients,
            lowered_to = fit,
            "the open-files limit leaves room for only {fit} clients: max_clients lowered to \
             {fit} (raise the hard limit, e.g. LimitNOFILE= in the systemd unit or ulimit -Hn)"
        );
        *max_clients = fit;
    }
}
