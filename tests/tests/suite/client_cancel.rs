//! The Rust client library under cancellation: a request dropped by its caller (a `timeout`,
//! a `select!`) leaves no waiter behind and never cuts a frame in half.

use std::time::Duration;

use wsmux_client::proto::Payload;
use wsmux_client::{Client, ConnectOptions, Event};
use wsmux_tests::within;

use crate::daemon_with_feed;

/// How many requests each test cancels.
const CANCELLED: usize = 200;

/// Larger than any socket buffer, so writing it takes many polls.
const BIG: usize = 4 * 1024 * 1024;

async fn connect(socket: &std::path::Path) -> Client {
    Client::connect_with(
        ConnectOptions::new()
            .socket(socket)
            .name("cancels")
            .request_timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap()
}

/// Polls `request` once, as a `select!` or `timeout` whose other branch won would, then drops it.
async fn poll_once_and_drop<T>(request: impl std::future::Future<Output = T>) {
    let request = std::pin::pin!(request);
    let _ = futures_util::poll!(request);
}

/// The connection is still open and no event says the daemon saw a broken frame.
async fn assert_no_error_event(client: &Client) {
    for _ in 0..100_000 {
        match tokio::time::timeout(Duration::from_millis(100), client.next_event()).await {
            Err(_) => return,
            Ok(None) => panic!("the connection was closed"),
            Ok(Some(Event::Error(e))) => panic!("the daemon complained: {e:?}"),
            Ok(Some(_)) => {}
        }
    }
    panic!("endless events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_leave_no_waiter_behind() {
    let (_up, d) = daemon_with_feed("").await;
    let client = connect(&d.socket).await;
    for _ in 0..CANCELLED {
        // Polled once: the request is registered and written, then dropped before any reply.
        poll_once_and_drop(client.status()).await;
        poll_once_and_drop(client.ping()).await;
    }
    assert_eq!(client.pending_requests(), 0, "cancelled requests leaked");
    within(10, "a ping after the cancellations", client.ping())
        .await
        .expect("ping after cancelled requests");
    let status = within(10, "a status after the cancellations", client.status())
        .await
        .expect("status after cancelled requests");
    assert_eq!(status[0].name, "feed");
    assert_eq!(client.pending_requests(), 0);
    assert_no_error_event(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cancelled_in_the_middle_of_its_frame_does_not_break_the_connection() {
    let (_up, d) = daemon_with_feed("").await;
    let client = connect(&d.socket).await;
    let big = Payload::Binary(vec![0x5a; BIG].into());
    for _ in 0..8 {
        // One poll is far too few to write megabytes through a socket buffer.
        poll_once_and_drop(client.send("feed", big.clone())).await;
        // A request right behind the cut one must still be framed whole.
        poll_once_and_drop(client.ping()).await;
    }
    for _ in 0..3 {
        within(20, "a ping after the cancelled sends", client.ping())
            .await
            .expect("ping after a send cancelled mid-frame");
        let status = within(20, "a status after the cancelled sends", client.status())
            .await
            .expect("status after a send cancelled mid-frame");
        assert_eq!(status[0].name, "feed");
    }
    assert_eq!(client.pending_requests(), 0, "cancelled requests leaked");
    assert_no_error_event(&client).await;
}
