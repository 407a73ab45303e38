//! Watching a daemon over time through a [`Raw`] connection: everything a subscriber
//! receives during a window, and an endpoint's status.

use std::time::Duration;

use wsmux_proto::{
    ClientMsg, ConnState, EndpointStatus, Payload, ServerMsg, StatusReply, StatusRequest,
};

use crate::raw::Raw;

/// A greeted connection subscribed to `endpoint`, returned once the endpoint is open
/// (within 10 s).
pub async fn subscribed_open(socket: &std::path::Path, endpoint: &str) -> Raw {
    let (mut c, _) = Raw::greeted(socket).await;
    crate::within(
        10,
        "the endpoint to open",
        c.subscribe_until(endpoint, ConnState::Open),
    )
    .await;
    c
}

/// Everything `c` receives during `window` (less if the daemon closes the connection).
pub async fn collect_for(c: &mut Raw, window: Duration) -> Vec<ServerMsg> {
    let deadline = tokio::time::Instant::now() + window;
    let mut got = Vec::new();
    // `Raw::recv_within` keeps partial frames in its buffer, so cancelling it is safe.
    while let Ok(msg) =
        tokio::time::timeout_at(deadline, c.recv_within(Duration::from_secs(3600))).await
    {
        match msg {
            Some(m) => got.push(m),
            None => break,
        }
    }
    got
}

/// The `state` events among `msgs`.
pub fn states(msgs: &[ServerMsg]) -> Vec<&wsmux_proto::StateEvent> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::State(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// The payloads of the data messages among `msgs`.
pub fn payloads(msgs: &[ServerMsg]) -> Vec<&Payload> {
    msgs.iter()
        .filter_map(|m| match m {
            ServerMsg::Message(d) => Some(&d.data),
            _ => None,
        })
        .collect()
}

/// The bytes of a payload, whatever its frame type.
pub fn bytes_of(p: &Payload) -> &[u8] {
    match p {
        Payload::Text(t) => t.as_bytes(),
        Payload::Binary(b) => b,
    }
}

/// Asks for the status of `endpoint` on a fresh connection.
pub async fn status(socket: &std::path::Path, endpoint: &str) -> EndpointStatus {
    status_reply(socket)
        .await
        .endpoints
        .into_iter()
        .find(|e| e.name == endpoint)
        .unwrap_or_else(|| panic!("no endpoint {endpoint} in the status"))
}

/// Asks for the whole status on a fresh connection.
pub async fn status_reply(socket: &std::path::Path) -> StatusReply {
    let (mut c, _) = Raw::greeted(socket).await;
    c.send(&ClientMsg::Status(StatusRequest { id: Some(7) }))
        .await;
    loop {
        match c.recv().await {
            Some(ServerMsg::Status(s)) => return s,
            Some(_) => {}
            None => panic!("the daemon closed the connection before its status reply"),
        }
    }
}

/// The daemon's Prometheus page: `GET /metrics` on 127.0.0.1:`port` (`metrics_listen`).
pub async fn scrape_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut http = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the metrics listener");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("the request");
    let mut response = String::new();
    http.read_to_string(&mut response)
        .await
        .expect("the response");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response
}
