//! Test harness for the end-to-end suite: a scriptable WebSocket upstream, a TCP proxy that
//! can blackhole or reset traffic, a Unix-socket proxy that can kill local connections or stop
//! reading, a real `wsmuxd` process, and a raw protocol client.
//!
//! Everything listens on 127.0.0.1 port 0 or in a temporary directory.

pub mod apps;
pub mod cli;
pub mod daemon;
pub mod example;
pub mod exchanges;
pub mod mqtt;
pub mod observe;
pub mod proxy;
pub mod raw;
pub mod servers;
pub mod tls;
pub mod unix_proxy;
pub mod upstream;

use std::future::Future;
use std::time::Duration;

/// Waits for `fut` at most `secs` seconds, failing the test with `what` otherwise.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s waiting for {what}"),
    }
}
