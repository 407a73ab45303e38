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

/// A daemon stand-in that greets and then never reads again: the client's writes stall.
async fn greet_then_stop_reading(listener: tokio::net::UnixListener) -> tokio::net::UnixStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wsmux_client::proto::{frame::check, ServerMsg, Welcome, HEADER_LEN, PROTOCOL_VERSION};

    let (mut stream, _) = listener.accept().await.unwrap();
    let mut buf = bytes::BytesMut::new();
    while check(&buf, 1024 * 1024).unwrap().is_none() {
        assert_ne!(stream.read_buf(&mut buf).await.unwrap(), 0, "no hello");
    }
    assert!(buf.len() >= HEADER_LEN);
    let welcome = ServerMsg::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        server: "stand-in".into(),
        endpoints: Vec::new(),
        epoch: None,
    });
    let frame = wsmux_client::proto::frame::encode_to_vec(&welcome, 1024 * 1024).unwrap();
    stream.write_all(&frame).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_daemon_never_takes_ends_the_connection_within_the_request_timeout() {
    use tokio::io::AsyncReadExt;

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stalls.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(greet_then_stop_reading(listener));
    // Without reconnecting, as before the client kept itself connected: the end is final.
    let client = Client::connect_with(
        ConnectOptions::new()
            .socket(&socket)
            .name("stalled")
            .request_timeout(Duration::from_millis(300))
            .reconnect(false),
    )
    .await
    .unwrap();
    let mut stream = server.await.unwrap();
    let big = Payload::Binary(vec![0x5a; BIG].into());
    let sent = within(
        10,
        "a send the daemon never reads",
        client.send("feed", big),
    )
    .await;
    // Its own deadline and the write's end at the same moment: either may be seen first.
    assert!(
        matches!(
            sent,
            Err(wsmux_client::ClientError::Timeout(_) | wsmux_client::ClientError::Closed)
        ),
        "{sent:?}"
    );
    // The frame cannot be finished or taken back: the client closes the connection and says why.
    let event = within(10, "the client giving up on the write", client.next_event()).await;
    assert!(
        matches!(&event, Some(Event::Error(e)) if e.code == wsmux_client::proto::ErrorCode::Timeout),
        "{event:?}"
    );
    assert!(within(10, "the end of events", client.next_event())
        .await
        .is_none());
    assert!(matches!(
        client.ping().await,
        Err(wsmux_client::ClientError::Closed)
    ));
    // The stand-in sees the end of the stream once it reads what was sent.
    let drained = async {
        let mut sink = vec![0; 64 * 1024];
        while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
    };
    within(10, "the connection closing", drained).await;
}
