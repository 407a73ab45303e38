//! Scale and memory: the daemon's resident memory when idle with 1 and with `endpoints`
//! endpoints (every one connected to a local upstream), and the memory each idle client
//! costs (`clients` clients that each did `hello` and `subscribe`).
//!
//! Every figure comes from a fresh daemon, read from `/proc/PID/status` (`VmRSS`) after the
//! connections are up and a short settling pause.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use super::{subscribers, Ctx, ENDPOINT};
use crate::harness::daemon::Config;
use crate::harness::upstream::Upstream;

/// Pause before reading memory, so that start-up transients are over.
const SETTLE: Duration = Duration::from_millis(500);

/// The scale case.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Endpoints of the many-endpoints measurement.
    pub endpoints: usize,
    /// Idle clients of the per-client measurement.
    pub clients: usize,
}

/// The figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// Idle RSS with one connected endpoint, KiB.
    pub idle_rss_1_endpoint_kib: u64,
    /// Endpoints of the next figure.
    pub endpoints: usize,
    /// Idle RSS with `endpoints` connected endpoints, KiB.
    pub idle_rss_n_endpoints_kib: u64,
    /// Idle clients of the per-client figure.
    pub clients: usize,
    /// RSS before the clients connected, KiB.
    pub rss_before_clients_kib: u64,
    /// RSS with the clients connected and subscribed, KiB.
    pub rss_with_clients_kib: u64,
    /// Difference per client, bytes.
    pub rss_per_client_bytes: u64,
    /// Peak RSS of that daemon, KiB.
    pub peak_rss_with_clients_kib: u64,
}

async fn idle_rss(ctx: &Ctx, endpoints: usize) -> Result<u64> {
    let upstream = Upstream::start()?;
    let config = if endpoints == 1 {
        Config::single(ENDPOINT, &upstream.url())
    } else {
        Config {
            endpoints: (0..endpoints)
                .map(|i| (format!("e{i:03}"), upstream.url_path(&format!("e{i:03}"))))
                .collect(),
            ..Config::default()
        }
    };
    let daemon = ctx.daemon.start(&config)?;
    let conns = upstream.wait_live(endpoints, Duration::from_secs(20))?;
    let mut paths: Vec<&str> = conns.iter().map(|c| c.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    if paths.len() != endpoints {
        bail!(
            "{endpoints} endpoints configured, but {} distinct upstream paths connected",
            paths.len()
        );
    }
    tokio::time::sleep(SETTLE).await;
    let rss = daemon.memory()?.rss_kib;
    daemon.stop()?;
    Ok(rss)
}

/// Runs the three measurements.
pub async fn run(ctx: &Ctx, case: Case) -> Result<Outcome> {
    let idle_1 = idle_rss(ctx, 1).await?;
    let idle_n = idle_rss(ctx, case.endpoints).await?;

    let upstream = Upstream::start()?;
    let config = Config {
        max_clients: Some(case.clients.max(1024) + 16),
        ..Config::single(ENDPOINT, &upstream.url())
    };
    let daemon = ctx.daemon.start(&config)?;
    upstream.wait_live(1, Duration::from_secs(10))?;
    tokio::time::sleep(SETTLE).await;
    let before = daemon.memory()?.rss_kib;
    let deadline = Instant::now() + ctx.timeout;
    let clients = subscribers(&daemon.socket, case.clients, deadline).await?;
    tokio::time::sleep(SETTLE).await;
    let with = daemon.memory()?;
    drop(clients);
    daemon.stop()?;

    Ok(Outcome {
        idle_rss_1_endpoint_kib: idle_1,
        endpoints: case.endpoints,
        idle_rss_n_endpoints_kib: idle_n,
        clients: case.clients,
        rss_before_clients_kib: before,
        rss_with_clients_kib: with.rss_kib,
        rss_per_client_bytes: with.rss_kib.saturating_sub(before) * 1024
            / case.clients.max(1) as u64,
        peak_rss_with_clients_kib: with.hwm_kib,
    })
}
