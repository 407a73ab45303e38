//! Upstream direction: `clients` clients send `send` requests with ids through one endpoint;
//! the upstream counts what arrives. Each client keeps at most `window` requests without an
//! `ack` (a closed loop, so the ack latency is a round trip through the daemon and not the
//! length of an ever-growing queue); a writer task batches whatever the window allows into
//! one write, a reader task matches `ack`s by id.
//!
//! Measured: messages per second arriving upstream (first to last arrival) and the time from
//! writing a request to reading its `ack`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Semaphore;
use wsmux_proto::PayloadRef;

use super::{rate, Ctx, ENDPOINT};
use crate::harness::client::{encode_request, Client, FrameReader, SendRef};
use crate::harness::daemon::Config;
use crate::harness::msgpack;
use crate::harness::payload::{self, now_ns};
use crate::harness::stats::{self, Percentiles};
use crate::harness::upstream::Upstream;

/// Requests gathered into one write at most.
const WRITE_BATCH: usize = 64;

/// One upstream-direction case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Sending clients.
    pub clients: usize,
    /// Messages in all (split evenly).
    pub messages: u64,
    /// Message size, bytes.
    pub size: usize,
    /// Most unacknowledged requests per client.
    pub window: usize,
}

/// The figures of one case.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// `wsmux`, or `floor` for the floor sender (no hop: straight to the WebSocket).
    pub system: &'static str,
    /// Sending clients.
    pub clients: usize,
    /// Messages sent, all clients.
    pub messages: u64,
    /// Message size, bytes.
    pub size: usize,
    /// Window per client.
    pub window: usize,
    /// `ack`s received.
    pub acked: u64,
    /// `error` replies received.
    pub errors: u64,
    /// Messages that arrived upstream.
    pub upstream_received: u64,
    /// Payload bytes that arrived upstream.
    pub upstream_bytes: u64,
    /// Seconds from the first request to the last arrival upstream.
    pub elapsed_s: f64,
    /// Messages arriving upstream per second.
    pub upstream_msgs_per_s: f64,
    /// Request-to-ack time, nanoseconds.
    pub ack: Percentiles,
    /// Daemon CPU seconds during the run.
    pub cpu_s: f64,
    /// Daemon CPU per message, nanoseconds.
    pub cpu_ns_per_msg: f64,
    /// CPU seconds of the benchmark process during the run.
    pub harness_cpu_s: f64,
}

struct ClientResult {
    acked: u64,
    errors: u64,
    latencies: Vec<u64>,
}

async fn one_client(
    client: Client,
    first_id: u64,
    count: u64,
    size: usize,
    window: usize,
    deadline: Instant,
) -> Result<ClientResult> {
    let (mut reader, mut writer) = client.into_parts();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let permits = Arc::new(Semaphore::new(window.max(1)));

    let writer_sent = Arc::clone(&sent_at);
    let writer_permits = Arc::clone(&permits);
    let write_task = tokio::spawn(async move {
        let mut body = vec![0u8; size.max(payload::HEADER)];
        payload::fill(&mut body, 0, 0);
        let mut buf = Vec::with_capacity(WRITE_BATCH * (size + 64));
        let mut i = 0u64;
        while i < count {
            let first = writer_permits.acquire().await.context("window")?;
            first.forget();
            let mut n = 1;
            while n < WRITE_BATCH && i + (n as u64) < count {
                match writer_permits.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            buf.clear();
            let now = now_ns();
            for k in 0..n as u64 {
                let idx = i + k;
                payload::stamp(&mut body, first_id + idx, now);
                encode_request(
                    &SendRef {
                        ty: "send",
                        id: idx,
                        endpoint: ENDPOINT,
                        data: PayloadRef::Binary(&body),
                    },
                    &mut buf,
                )?;
                writer_sent[idx as usize].store(now, Ordering::Relaxed);
            }
            writer.write_all(&buf).await.context("writing requests")?;
            i += n as u64;
        }
        Ok::<_, anyhow::Error>(writer)
    });

    let mut result = ClientResult {
        acked: 0,
        errors: 0,
        latencies: Vec::with_capacity(count as usize),
    };
    let mut unexpected = None;
    let finished = reader
        .read_frames(deadline, |body| {
            let f = msgpack::fields(body)?;
            let idx = f.id.filter(|&id| id < count);
            match (f.ty, idx) {
                ("ack", Some(id)) => {
                    let at = sent_at[id as usize].load(Ordering::Relaxed);
                    result.latencies.push(now_ns().saturating_sub(at));
                    result.acked += 1;
                    permits.add_permits(1);
                }
                ("error", Some(_)) => {
                    result.errors += 1;
                    if unexpected.is_none() {
                        unexpected = Some(format!("{:?}: {:?}", f.code, f.message));
                    }
                    permits.add_permits(1);
                }
                _ => {}
            }
            Ok(result.acked + result.errors >= count)
        })
        .await?;
    if let Some(e) = unexpected {
        eprintln!("  send: error replies, the first: {e}");
    }
    if !finished {
        write_task.abort();
        return Ok(result);
    }
    let _writer = write_task.await.context("writer task")??;
    Ok(result)
}

/// Runs one case.
pub async fn run(ctx: &Ctx, case: Case) -> Result<Outcome> {
    let upstream = Upstream::start()?;
    let daemon = ctx
        .daemon
        .start(&Config::single(ENDPOINT, &upstream.url()))?;
    let conns = upstream.wait_live(1, Duration::from_secs(10))?;
    let conn = Arc::clone(&conns[0]);
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    let clients = super::subscribers(&daemon.socket, case.clients, setup_deadline).await?;
    let per_client = case.messages / case.clients.max(1) as u64;
    let total = per_client * case.clients as u64;
    if total == 0 {
        bail!("fewer messages than clients");
    }

    daemon.profile_zero()?;
    let cpu0 = daemon.cpu_seconds()?;
    let own0 = stats::own_cpu_seconds()?;
    let t0 = now_ns();
    let deadline = Instant::now() + ctx.timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for (k, c) in clients.into_iter().enumerate() {
        let first_id = k as u64 * per_client;
        tasks.spawn(one_client(
            c,
            first_id,
            per_client,
            case.size,
            case.window,
            deadline,
        ));
    }
    let mut results = Vec::new();
    while let Some(r) = tasks.join_next().await {
        results.push(r.context("client task")??);
    }
    // The last ack can overtake nothing (acks follow the write), but wait for the count.
    let wait_until = Instant::now() + Duration::from_secs(5);
    while conn.received().messages < total && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu1 = daemon.cpu_seconds()?;
    let own1 = stats::own_cpu_seconds()?;
    daemon.profile_dump()?;
    let rx = conn.received();
    daemon.stop()?;

    let mut latencies: Vec<u64> = results
        .iter_mut()
        .flat_map(|r| r.latencies.drain(..))
        .collect();
    let elapsed = rx.last_ns.saturating_sub(t0);
    let cpu = (cpu1 - cpu0).max(0.0);
    Ok(Outcome {
        system: "wsmux",
        clients: case.clients,
        messages: total,
        size: case.size,
        window: case.window,
        acked: results.iter().map(|r| r.acked).sum(),
        errors: results.iter().map(|r| r.errors).sum(),
        upstream_received: rx.messages,
        upstream_bytes: rx.bytes,
        elapsed_s: elapsed as f64 / 1e9,
        upstream_msgs_per_s: rate(rx.messages, elapsed),
        ack: Percentiles::of(&mut latencies),
        cpu_s: cpu,
        cpu_ns_per_msg: if rx.messages > 0 {
            cpu * 1e9 / rx.messages as f64
        } else {
            0.0
        },
        harness_cpu_s: (own1 - own0).max(0.0),
    })
}

/// The floor of the upstream direction: one thread of this process writes the same messages
/// straight to a WebSocket of its own with tungstenite, as fast as the socket takes them (no
/// local hop, no acks; tungstenite gathers frames in its write buffer). Its CPU time is that
/// thread's own.
pub async fn run_floor(ctx: &Ctx, case: Case) -> Result<Outcome> {
    use tokio_tungstenite::tungstenite::{self, Message};

    let upstream = Upstream::start()?;
    let url = upstream.url();
    let (messages, size) = (case.messages, case.size.max(payload::HEADER));
    let sender = tokio::task::spawn_blocking(move || {
        let (mut ws, _) =
            tungstenite::connect(url.as_str()).map_err(|e| anyhow::anyhow!("connecting: {e}"))?;
        if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            tcp.set_nodelay(true)?;
        }
        let mut body = vec![0u8; size];
        payload::fill(&mut body, 0, 0);
        let t0 = now_ns();
        let cpu0 = stats::thread_cpu_seconds();
        for i in 0..messages {
            payload::stamp(&mut body, i, now_ns());
            ws.write(Message::binary(body.clone()))
                .map_err(|e| anyhow::anyhow!("writing: {e}"))?;
        }
        ws.flush().map_err(|e| anyhow::anyhow!("flushing: {e}"))?;
        let cpu = stats::thread_cpu_seconds() - cpu0;
        Ok::<_, anyhow::Error>((t0, cpu, ws))
    });
    let conns = upstream.wait_live(1, Duration::from_secs(10))?;
    let (t0, cpu, _ws) = tokio::time::timeout(ctx.timeout, sender)
        .await
        .context("the floor sender timed out")?
        .context("floor sender thread")??;
    let wait_until = Instant::now() + Duration::from_secs(5);
    while conns[0].received().messages < messages && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rx = conns[0].received();
    let elapsed = rx.last_ns.saturating_sub(t0);
    Ok(Outcome {
        system: "floor",
        clients: 1,
        messages,
        size,
        window: 0,
        acked: 0,
        errors: 0,
        upstream_received: rx.messages,
        upstream_bytes: rx.bytes,
        elapsed_s: elapsed as f64 / 1e9,
        upstream_msgs_per_s: rate(rx.messages, elapsed),
        ack: Percentiles::default(),
        cpu_s: cpu,
        cpu_ns_per_msg: if rx.messages > 0 {
            cpu * 1e9 / rx.messages as f64
        } else {
            0.0
        },
        harness_cpu_s: 0.0,
    })
}

/// Sends with acks timed while the upstream is idle and then while it blasts (the same run,
/// the same daemon): the driver must keep serving commands between inbound batches.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FirehoseOutcome {
    /// Sends timed per phase (one at a time: each waits for its ack).
    pub sends: u64,
    /// Request-to-ack time with an idle upstream, nanoseconds.
    pub idle: Percentiles,
    /// Request-to-ack time while the upstream blasts, nanoseconds.
    pub firehose: Percentiles,
    /// Messages the upstream blasted during the second phase.
    pub blasted: u64,
    /// Sends that got no ack in time or an error.
    pub failed: u64,
}

/// One send at a time, `count` times; the ack latencies.
async fn timed_sends(
    reader: &mut FrameReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    first_id: u64,
    count: u64,
    limit: Duration,
) -> Result<(Vec<u64>, u64)> {
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut buf = Vec::new();
    let body = vec![0u8; 64];
    for k in 0..count {
        let id = first_id + k;
        buf.clear();
        encode_request(
            &SendRef {
                ty: "send",
                id,
                endpoint: ENDPOINT,
                data: PayloadRef::Binary(&body),
            },
            &mut buf,
        )?;
        let t = now_ns();
        writer.write_all(&buf).await.context("writing a send")?;
        let mut acked = false;
        let deadline = Instant::now() + limit;
        reader
            .read_frames(deadline, |b| {
                let f = msgpack::fields(b)?;
                if f.id == Some(id) {
                    acked = f.ty == "ack";
                    return Ok(true);
                }
                Ok(false)
            })
            .await?;
        if acked {
            latencies.push(now_ns().saturating_sub(t));
        } else {
            failed += 1;
            if failed >= 3 {
                // Starved: the rest would only wait out their limits too.
                failed += count - k - 1;
                break;
            }
        }
    }
    Ok((latencies, failed))
}

/// Runs the firehose comparison: `sends` timed sends idle, then `sends` while the upstream
/// blasts 100-byte messages (bounded by `max_blast` messages).
pub async fn run_firehose(ctx: &Ctx, sends: u64, max_blast: u64) -> Result<FirehoseOutcome> {
    let upstream = Upstream::start()?;
    let daemon = ctx
        .daemon
        .start(&Config::single(ENDPOINT, &upstream.url()))?;
    let conns = upstream.wait_live(1, Duration::from_secs(10))?;
    let conn = Arc::clone(&conns[0]);
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    let mut clients = super::subscribers(&daemon.socket, 1, setup_deadline).await?;
    let subscriber = clients.pop().context("a subscriber")?;
    // The sender is not subscribed: its acks do not queue behind the flood.
    let (mut reader, mut writer) = Client::connect(&daemon.socket, setup_deadline)
        .await?
        .into_parts();
    // The subscriber reads and discards, so fan-out does real work.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reading = {
        let (mut reader, _writer) = subscriber.into_parts();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            let _ = reader
                .read_frames(deadline, |_| Ok(stop.load(Ordering::Relaxed)))
                .await;
        })
    };
    let limit = Duration::from_secs(10);
    let (mut idle, failed_idle) = timed_sends(&mut reader, &mut writer, 0, sends, limit).await?;
    let blasting = {
        let conn = Arc::clone(&conn);
        let stop = Arc::clone(&stop);
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && sent < max_blast {
                if conn.blast(sent, 10_000, 100).is_err() {
                    break;
                }
                sent += 10_000;
            }
            sent
        })
    };
    // Let the flood build up first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut busy, failed_busy) =
        timed_sends(&mut reader, &mut writer, 1_000_000, sends, limit).await?;
    stop.store(true, Ordering::Relaxed);
    let blasted = blasting.await.context("blast task")?;
    reading.abort();
    daemon.stop()?;
    Ok(FirehoseOutcome {
        sends,
        idle: Percentiles::of(&mut idle),
        firehose: Percentiles::of(&mut busy),
        blasted,
        failed: failed_idle + failed_busy,
    })
}
