//! `wsmux-bench`: the benchmark harness of wsmux.
//!
//! ```text
//! cargo build --release -p wsmuxd
//! cargo run --release -p wsmux-bench -- [SCENARIO...] [--json out.jsonl] [options]
//! cargo run --release -p wsmux-bench -- --smoke
//! ```
//!
//! The upstream WebSocket server and every client live in this process; the daemon runs as
//! a separate real process (`target/release/wsmuxd`), and so does websocat when it is on
//! `PATH`. Everything talks over 127.0.0.1 and Unix sockets in temporary directories. See
//! BENCHMARKS.md for what each figure means.

mod floor;
mod harness;
mod plan;
mod report;
mod run;
mod scenarios;
mod tables;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use harness::payload;
use report::{Host, JsonSink};
use scenarios::Ctx;

/// Benchmarks wsmuxd: fan-out throughput, added latency, the upstream direction, memory at
/// scale, a large burst, topic routing and resuming from the history, next to the floor (the
/// cheapest possible relay, built in) and websocat when it is on PATH.
#[derive(Debug, Parser)]
#[command(name = "wsmux-bench", version)]
pub struct Args {
    /// Scenarios to run [default: all].
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,

    /// Every wsmux scenario with tiny sizes, in a few seconds; exits non-zero on any failure
    /// (for CI). Ignores the size options and skips websocat.
    #[arg(long)]
    pub smoke: bool,

    /// Append one JSON object per case to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// The daemon binary [default: wsmuxd next to this program, or target/release/wsmuxd].
    #[arg(long, env = "WSMUXD", value_name = "PATH")]
    pub wsmuxd: Option<PathBuf>,

    /// The websocat binary for the comparison leg [default: websocat on PATH].
    #[arg(long, env = "WEBSOCAT", value_name = "PATH")]
    pub websocat: Option<PathBuf>,

    /// Skip the websocat comparison leg.
    #[arg(long)]
    pub no_websocat: bool,

    /// Fan-out: numbers of subscribers.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pub subscribers: Vec<usize>,

    /// Fan-out: message sizes in bytes (at least 16).
    #[arg(long, value_delimiter = ',', default_value = "100,4096")]
    pub sizes: Vec<usize>,

    /// Fan-out: messages per case [default: about 4 M deliveries per case for sizes up to
    /// 1 KiB, 0.5 M for larger ones, see BENCHMARKS.md].
    #[arg(long)]
    pub messages: Option<u64>,

    /// Latency: messages per second, one set of cases per rate.
    #[arg(long, value_delimiter = ',', default_value = "2000,20000")]
    pub rates: Vec<u64>,

    /// Latency: numbers of receiving clients, one set of cases per number.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub latency_subscribers: Vec<usize>,

    /// Latency: seconds measured (after 0.1 s of warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,

    /// Latency: rounds per system (each with a fresh daemon); the targets use the median.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,

    /// Latency and upstream direction: message size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,

    /// Upstream direction: numbers of sending clients.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub senders: Vec<usize>,

    /// Upstream direction: messages per case, all clients together.
    #[arg(long, default_value_t = 200_000)]
    pub send_messages: u64,

    /// Upstream direction: most unacknowledged `send`s per client.
    #[arg(long, default_value_t = 32)]
    pub window: usize,

    /// Burst: messages sent at once to a subscriber of a daemon with default settings.
    #[arg(long, default_value_t = 300_000)]
    pub burst: u64,

    /// Burst: subscribers.
    #[arg(long, default_value_t = 1)]
    pub burst_subscribers: usize,

    /// Scale: endpoints of the many-endpoints idle measurement.
    #[arg(long, default_value_t = 100)]
    pub endpoints: usize,

    /// Scale: idle clients of the per-client measurement.
    #[arg(long, default_value_t = 1000)]
    pub idle_clients: usize,

    /// Run the daemon under `valgrind --tool=callgrind`, writing profiles into DIR; the
    /// counters are zeroed before each fan-out or send measurement and dumped after it, so
    /// each numbered profile holds exactly one measured phase. Timing and memory figures are
    /// meaningless in this mode.
    #[arg(long, value_name = "DIR")]
    pub callgrind: Option<PathBuf>,

    /// Worker threads of the runtime that runs the clients.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,

    /// Routing: topics of the feed (at most 10 000).
    #[arg(long, default_value_t = 1000)]
    pub route_topics: usize,

    /// Routing: clients (each holds `--route-topics-per-client` topics on the routed leg).
    #[arg(long, default_value_t = 100)]
    pub route_clients: usize,

    /// Routing: topics each client holds on the routed leg.
    #[arg(long, default_value_t = 10)]
    pub route_topics_per_client: usize,

    /// Routing: messages per leg (the same messages on every leg).
    #[arg(long, default_value_t = 200_000)]
    pub route_messages: u64,

    /// Replay: messages the resuming client is behind.
    #[arg(long, default_value_t = 100_000)]
    pub replay_backlog: u64,

    /// Replay: live subscribers receiving at `--replay-rate` meanwhile.
    #[arg(long, default_value_t = 10)]
    pub replay_live: usize,

    /// Replay: messages per second to the live subscribers.
    #[arg(long, default_value_t = 2000)]
    pub replay_rate: u64,

    /// Longest one case may run once set up, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Fan-out throughput, K subscribers, sizes 100 B and 4 KiB.
    Fanout,
    /// Added latency over a direct WebSocket client at a fixed rate.
    Latency,
    /// Upstream direction: `send` requests with acks.
    Send,
    /// Idle memory with 1 and N endpoints, and per idle client.
    Scale,
    /// A large burst to a daemon with default settings.
    Burst,
    /// Topic routing (1000 topics, 100 clients with 10 each) next to plain fan-out.
    Route,
    /// A client resuming 100 000 messages behind from the history while 10 live
    /// subscribers receive at `--replay-rate`.
    Replay,
    /// All of the above.
    All,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(floor::ARG) {
        return match floor::main(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor relay: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let args = Args::parse();
    match real_main(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("wsmux-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the plan; `Ok(false)` when some check failed.
fn real_main(args: Args) -> Result<bool> {
    let min = payload::HEADER;
    if args.sizes.iter().chain([&args.size]).any(|&s| s < min) {
        bail!("message sizes must be at least {min} bytes (sequence number and timestamp)");
    }
    if args.subscribers.contains(&0)
        || args.senders.contains(&0)
        || args.latency_subscribers.contains(&0)
        || args.rates.contains(&0)
        || args.replay_rate == 0
    {
        bail!(
            "--subscribers, --senders, --latency-subscribers, --rates and --replay-rate must be \
             greater than zero"
        );
    }
    let route = scenarios::route::Case {
        leg: scenarios::route::Leg::Routed,
        topics: args.route_topics,
        clients: args.route_clients,
        per_client: args.route_topics_per_client,
        messages: args.route_messages,
    };
    route.validate().context("--route-* options")?;
    payload::init_clock();
    let fds = harness::stats::raise_fd_limit();
    let wsmuxd = harness::daemon::find_wsmuxd(args.wsmuxd.as_deref())?;
    let websocat = if args.smoke || args.no_websocat {
        None
    } else {
        harness::relay::find(args.websocat.as_deref())
    };
    let host = Host::current();
    let run_id = format!("{}-{}", report::unix_now(), std::process::id());
    let mut json = JsonSink::open(args.json.as_deref(), run_id)?;

    println!("wsmux-bench {}", if args.smoke { "(smoke)" } else { "" });
    println!(
        "date {}  nproc {}  cpu {}  kernel {}",
        host.date, host.nproc, host.cpu, host.kernel
    );
    if host.load1 > 0.5 {
        println!(
            "warning: load average {:.2}: other processes are busy on this machine; figures \
             will be noisy",
            host.load1
        );
    }
    println!("wsmuxd   {}", wsmuxd.display());
    if wsmuxd.components().any(|c| c.as_os_str() == "debug") {
        println!("warning: this looks like a debug build of wsmuxd; figures will be poor");
    }
    match (&websocat, args.smoke || args.no_websocat) {
        (Some((p, v)), _) => println!("websocat {} ({v})", p.display()),
        (None, true) => println!("websocat comparison skipped (--smoke / --no-websocat)"),
        (None, false) => println!(
            "note: websocat not found on PATH (or --websocat/WEBSOCAT): comparison leg skipped; \
             `cargo install websocat` to enable it"
        ),
    }
    println!(
        "clients on {} runtime thread(s); open-file limit {fds}",
        args.client_threads
    );
    json.record(
        "meta",
        &serde_json::json!({
            "host": host,
            "wsmuxd": wsmuxd.display().to_string(),
            "websocat": websocat.as_ref().map(|(_, v)| v.clone()),
            "smoke": args.smoke,
        }),
    )?;

    let plan = plan::plan(&args, websocat.is_some());
    let ctx = Ctx {
        daemon: harness::daemon::Launcher {
            bin: wsmuxd,
            callgrind: args.callgrind.clone(),
        },
        websocat,
        timeout: Duration::from_secs(if args.smoke && args.callgrind.is_none() {
            20
        } else {
            args.timeout
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let started = Instant::now();
    let (results, failures) =
        runtime.block_on(run::run_plan(&ctx, &plan, &mut json, args.smoke))?;

    if !args.smoke {
        let verdicts = targets::evaluate(&results);
        for v in &verdicts {
            json.record("target", v)?;
        }
        print!("{}", targets::table(&verdicts).render());
    }
    println!("\nfinished in {:.1} s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        println!("all checks passed");
        Ok(true)
    } else {
        println!("{} check(s) FAILED:", failures.len());
        for f in &failures {
            println!("  - {f}");
        }
        Ok(false)
    }
}
