//! Resume from the history: a client that is `backlog` messages behind resumes with
//! `subscribe {since}` while `live` subscribers keep receiving a paced stream. Measures the
//! replay's throughput and what it does to the live subscribers' receive delay, before the
//! resume (idle) and during the replay, in the same run.
//!
//! 1. The resuming client subscribes, notes `since` (its `ack`'s `first_seq - 1`) and
//!    unsubscribes.
//! 2. The backlog is sent upstream as fast as the daemon reads it: it lands in the history
//!    (sized to hold everything) and reaches nobody.
//! 3. The live subscribers attach, each on a thread of its own (as in the latency scenario),
//!    and the upstream paces timestamped messages at `rate`.
//! 4. After the idle phase the client resumes. It is caught up once it has received every
//!    message sent before the resume: that count over the time since the resume is the
//!    replay's throughput. Live messages sent between the resume and that moment are
//!    "during the replay"; those sent before it are "idle".

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use wsmux_proto::{decode_server, ClientMsg, ServerMsg, StatusRequest, Subscribe, Unsubscribe};

use super::{on_own_thread, subscribers, warm_up_and_pace, Ctx, ENDPOINT};
use crate::harness::client::{encode_request, Client};
use crate::harness::daemon::Config;
use crate::harness::msgpack;
use crate::harness::payload::{self, now_ns};
use crate::harness::stats::Percentiles;
use crate::harness::track::Tracker;
use crate::harness::upstream::Upstream;

/// One replay case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Live subscribers.
    pub live: usize,
    /// Messages the resuming client is behind (sent while it was away).
    pub backlog: u64,
    /// Message size, bytes.
    pub size: usize,
    /// Live messages per second.
    pub rate: u64,
    /// How long the live stream runs before the resume.
    pub idle: Duration,
    /// How long it runs after the resume (the replay should end well within it).
    pub window: Duration,
}

/// The figures of one case.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// Live subscribers.
    pub live: usize,
    /// Messages sent while the client was away.
    pub backlog: u64,
    /// Message size, bytes.
    pub size: usize,
    /// Live messages per second.
    pub rate: u64,
    /// The resume's `ack` said `recovered: true` with `first_seq = since + 1`.
    pub recovered: bool,
    /// Messages replayed: everything sent before the resume (backlog, warm-up probes, the
    /// idle phase).
    pub replayed: u64,
    /// Seconds from sending the resume to receiving the last of them.
    pub replay_s: f64,
    /// Replayed messages per second.
    pub replay_msgs_per_s: f64,
    /// Replayed payload megabytes (10^6) per second.
    pub replay_mb_per_s: f64,
    /// The replay ended before the live stream did.
    pub replay_in_window: bool,
    /// Messages the resuming client received in all.
    pub resumer_received: u64,
    /// `seq` gaps or repeats the resuming client saw (must be 0).
    pub resumer_seq_errors: u64,
    /// `lagged` reports the resuming client got.
    pub resumer_lagged: u64,
    /// Live receive delays of messages sent before the resume, nanoseconds (all subscribers).
    pub idle: Percentiles,
    /// Live receive delays of messages sent during the replay.
    pub during: Percentiles,
    /// `during` minus `idle`: p50, p99 and max, nanoseconds.
    pub added_p50_ns: i64,
    /// p99 during the replay minus p99 idle.
    pub added_p99_ns: i64,
    /// Largest delay during the replay minus the largest idle.
    pub added_max_ns: i64,
    /// Live messages lost (must be 0).
    pub live_lost: u64,
    /// The daemon's peak resident memory, KiB.
    pub peak_rss_kib: u64,
}

impl Outcome {
    /// Whether the run was correct: recovered, every seq once, nothing lost anywhere.
    pub fn correct(&self) -> bool {
        self.recovered
            && self.resumer_seq_errors == 0
            && self.resumer_lagged == 0
            && self.live_lost == 0
            && self.replay_in_window
            && self.replayed >= self.backlog
    }
}

/// What the resuming client saw after its resume.
#[derive(Debug, Default)]
struct Resumed {
    /// The ack was `recovered: true, first_seq: since + 1`.
    recovered: bool,
    /// When the resume was sent (`now_ns`).
    sent_ns: u64,
    /// When the last message sent before the resume arrived.
    caught_up_ns: u64,
    /// Messages sent before the resume, received.
    replayed: u64,
    /// Their payload bytes.
    replayed_bytes: u64,
    /// Messages received in all.
    received: u64,
    /// `seq` not exactly one more than the previous.
    seq_errors: u64,
    /// `lagged` reports.
    lagged: u64,
}

/// `messages_in` of the endpoint, from a `status` on a fresh connection.
async fn messages_in(socket: &Path, deadline: Instant) -> Result<u64> {
    let mut c = Client::connect(socket, deadline).await?;
    c.request(&ClientMsg::Status(StatusRequest { id: Some(9) }))
        .await?;
    let (mut reader, _) = c.into_parts();
    loop {
        let body = reader.next_body(deadline).await?;
        if let Ok(ServerMsg::Status(s)) = decode_server(&body) {
            return s
                .endpoints
                .iter()
                .find(|e| e.name == ENDPOINT)
                .map(|e| e.messages_in)
                .context("the endpoint is not in the status");
        }
    }
}

/// Waits until the daemon has numbered at least `n` messages.
async fn wait_numbered(socket: &Path, n: u64, deadline: Instant) -> Result<()> {
    loop {
        if messages_in(socket, deadline).await? >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the daemon did not receive the backlog before the deadline");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs one case.
pub async fn run(ctx: &Ctx, case: Case) -> Result<Outcome> {
    let upstream = Upstream::start()?;
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    let run_deadline = setup_deadline + ctx.timeout;
    let idle_count = (case.rate as f64 * case.idle.as_secs_f64()).ceil() as u64;
    let count = idle_count + (case.rate as f64 * case.window.as_secs_f64()).ceil() as u64;
    let warmup = (case.rate / 10).max(10).min(idle_count / 2);
    // The history holds everything the run sends, probes included, with room to spare.
    let held = case.backlog + count + 100_000;
    let mut config = Config::single(ENDPOINT, &upstream.url());
    config.extra = format!(
        "[endpoints.{ENDPOINT}.history]\nmax_messages = {held}\nmax_bytes = {}\nmax_age = \"1h\"\n",
        held * (case.size as u64 + 64 + 64)
    );
    let daemon = ctx.daemon.start(&config)?;
    let conns = upstream.wait_live(1, Duration::from_secs(10))?;
    let socket = daemon.socket.clone();

    // 1. The resuming client notes where it is and leaves.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let s = socket.clone();
    let resumer = on_own_thread("resumer", move || async move {
        let mut c = Client::connect(&s, setup_deadline).await?;
        c.request(&ClientMsg::Subscribe(Subscribe {
            id: Some(1),
            endpoint: ENDPOINT.into(),
            ..Subscribe::default()
        }))
        .await?;
        let (mut reader, mut writer) = c.into_parts();
        let first_seq = loop {
            let body = reader.next_body(setup_deadline).await?;
            if let Ok(ServerMsg::Ack(a)) = decode_server(&body) {
                break a.first_seq.context("the subscribe ack has no first_seq")?;
            }
        };
        let since = first_seq - 1;
        let mut buf = Vec::new();
        encode_request(
            &ClientMsg::Unsubscribe(Unsubscribe {
                id: Some(2),
                endpoint: ENDPOINT.into(),
                topics: None,
            }),
            &mut buf,
        )?;
        writer.write_all(&buf).await?;
        loop {
            let body = reader.next_body(setup_deadline).await?;
            if matches!(decode_server(&body), Ok(ServerMsg::Ack(a)) if a.id == 2) {
                break;
            }
        }
        let _ = ready_tx.send(());
        go_rx.await.context("the run ended before the resume")?;

        // 4. Resume, and receive until the last live message.
        buf.clear();
        encode_request(
            &ClientMsg::Subscribe(Subscribe {
                id: Some(3),
                endpoint: ENDPOINT.into(),
                since: Some(since),
                ..Subscribe::default()
            }),
            &mut buf,
        )?;
        let mut r = Resumed {
            sent_ns: now_ns(),
            ..Resumed::default()
        };
        writer.write_all(&buf).await?;
        let mut last_seq = since;
        let mut failure = None;
        let done = reader
            .read_frames(run_deadline, |body| {
                let f = msgpack::fields(body)?;
                match f.ty {
                    "ack" if f.id == Some(3) => {
                        match decode_server(body) {
                            Ok(ServerMsg::Ack(a)) => {
                                r.recovered =
                                    a.recovered == Some(true) && a.first_seq == Some(since + 1);
                            }
                            other => failure = Some(format!("a bad ack: {other:?}")),
                        }
                        Ok(false)
                    }
                    "message" => {
                        let (Some(seq), Some(data)) = (f.seq, f.data) else {
                            bail!("a message without seq or data");
                        };
                        r.received += 1;
                        if seq != last_seq + 1 {
                            r.seq_errors += 1;
                        }
                        last_seq = seq;
                        let Some((n, stamp)) = payload::read(data) else {
                            bail!("a message without the benchmark's payload");
                        };
                        if stamp < r.sent_ns {
                            r.replayed += 1;
                            r.replayed_bytes += data.len() as u64;
                            r.caught_up_ns = now_ns();
                        }
                        Ok(n == count - 1 && stamp >= r.sent_ns)
                    }
                    "lagged" => {
                        r.lagged += 1;
                        Ok(false)
                    }
                    _ => Ok(false),
                }
            })
            .await?;
        if let Some(f) = failure {
            bail!("{f}");
        }
        if !done {
            bail!("the resuming client did not receive the last live message in time");
        }
        Ok(r)
    })?;
    ready_rx
        .await
        .context("the resuming client failed to start")?;

    // 2. The backlog, into the history.
    let c0 = Arc::clone(&conns[0]);
    let (backlog, size) = (case.backlog, case.size);
    tokio::task::spawn_blocking(move || c0.blast(0, backlog, size))
        .await
        .context("backlog thread")??;
    wait_numbered(&socket, case.backlog, setup_deadline).await?;

    // 3. The live subscribers, each on a thread of its own.
    let attached = Arc::new(AtomicUsize::new(0));
    let mut live = Vec::new();
    for i in 0..case.live {
        let (s, a) = (socket.clone(), Arc::clone(&attached));
        live.push(on_own_thread(&format!("live-{i}"), move || async move {
            let mut c = subscribers(&s, 1, setup_deadline).await?.remove(0);
            let mut t = Tracker::with_delays(count, warmup).keeping_stamps();
            c.until_attached(&mut t, setup_deadline).await?;
            a.fetch_add(1, Ordering::SeqCst);
            c.receive(&mut t, run_deadline).await?;
            t.finish();
            Ok(t)
        })?);
    }
    let (pacer, _stop) =
        warm_up_and_pace(conns, attached, case.live, (case.rate, count, case.size)).await?;
    tokio::time::sleep(case.idle).await;
    let _ = go_tx.send(());

    let resumed = resumer.await.context("resumer thread")??;
    let mut trackers = Vec::new();
    for t in live {
        trackers.push(t.await.context("live thread")??);
    }
    let paced = pacer.await.context("pacer thread")??;
    let peak_rss_kib = daemon.memory().map(|m| m.hwm_kib).unwrap_or(0);
    daemon.stop()?;

    let (mut idle, mut during) = (Vec::new(), Vec::new());
    let mut live_lost = 0;
    for t in &trackers {
        live_lost += t.lost();
        for (&stamp, &delay) in t.stamps.iter().zip(&t.delays) {
            if stamp < resumed.sent_ns {
                idle.push(delay);
            } else if stamp <= resumed.caught_up_ns {
                during.push(delay);
            }
        }
    }
    let idle = Percentiles::of(&mut idle);
    let during = Percentiles::of(&mut during);
    let replay_ns = resumed.caught_up_ns.saturating_sub(resumed.sent_ns);
    let replay_s = replay_ns as f64 / 1e9;
    let per_s = |x: f64| if replay_s > 0.0 { x / replay_s } else { 0.0 };
    let diff = |a: u64, b: u64| a as i64 - b as i64;
    Ok(Outcome {
        live: case.live,
        backlog: case.backlog,
        size: case.size,
        rate: case.rate,
        recovered: resumed.recovered,
        replayed: resumed.replayed,
        replay_s,
        replay_msgs_per_s: per_s(resumed.replayed as f64),
        replay_mb_per_s: per_s(resumed.replayed_bytes as f64 / 1e6),
        replay_in_window: resumed.caught_up_ns > 0
            && resumed.caught_up_ns < resumed.sent_ns + case.window.as_nanos() as u64
            && paced.sent == count,
        resumer_received: resumed.received,
        resumer_seq_errors: resumed.seq_errors,
        resumer_lagged: resumed.lagged,
        added_p50_ns: diff(during.p50, idle.p50),
        added_p99_ns: diff(during.p99, idle.p99),
        added_max_ns: diff(during.max, idle.max),
        idle,
        during,
        live_lost,
        peak_rss_kib,
    })
}
