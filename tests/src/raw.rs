//! A raw protocol connection: write any bytes, read typed frames. For tests that speak the
//! protocol badly on purpose, or that check exact ordering.

use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wsmux_proto::frame::{check, encode_to_vec};
use wsmux_proto::{
    decode_server, ClientMsg, ConnState, Hello, ServerMsg, StateEvent, Subscribe, HEADER_LEN,
    PROTOCOL_VERSION,
};

/// Reads the next frame from `reader` into `buf` within `limit`; `None` on end of stream or a
/// reset. Fails the test when nothing whole arrives in time or the frame does not decode.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    limit: Duration,
) -> Option<ServerMsg> {
    let read = async {
        loop {
            if let Some(total) = check(buf, usize::MAX).expect("frame") {
                let frame = buf.split_to(total);
                return Some(decode_server(&frame[HEADER_LEN..]).expect("decodable frame"));
            }
            match reader.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .expect("no frame from the daemon in time")
}

/// A connection to the daemon's socket.
pub struct Raw {
    /// The connection.
    stream: UnixStream,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
}

/// The reading half of a [`Raw`] connection, after [`Raw::split`].
pub struct RawReader {
    /// The reading half.
    half: tokio::net::unix::OwnedReadHalf,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
}

impl RawReader {
    /// Reads the next frame within `limit`; `None` on end of stream or a reset.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<ServerMsg> {
        read_frame(&mut self.half, &mut self.buf, limit).await
    }
}

impl Raw {
    /// Connects without saying anything.
    pub async fn connect(socket: &Path) -> Raw {
        Raw {
            stream: UnixStream::connect(socket)
                .await
                .expect("connect to daemon"),
            buf: BytesMut::new(),
        }
    }

    /// Connects and completes `hello`/`welcome`.
    pub async fn greeted(socket: &Path) -> (Raw, ServerMsg) {
        let mut raw = Self::connect(socket).await;
        raw.send(&ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            client: Some("test".into()),
        }))
        .await;
        let welcome = raw.recv().await.expect("welcome");
        assert!(matches!(welcome, ServerMsg::Welcome(_)), "{welcome:?}");
        (raw, welcome)
    }

    /// Splits the connection, so that one task can write while another reads.
    pub fn split(self) -> (RawReader, tokio::net::unix::OwnedWriteHalf) {
        let (half, write) = self.stream.into_split();
        (
            RawReader {
                half,
                buf: self.buf,
            },
            write,
        )
    }

    /// Writes raw bytes, failing if the daemon does not take them within `limit` (or closed
    /// the connection).
    pub async fn try_write(&mut self, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
        match tokio::time::timeout(limit, self.stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Writes one framed message.
    pub async fn send(&mut self, msg: &ClientMsg) {
        let frame = encode_to_vec(msg, usize::MAX).expect("encode");
        self.write(&frame).await;
    }

    /// Writes one frame with an arbitrary body.
    pub async fn send_body(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.write(&frame).await;
    }

    /// Reads the next frame; `None` on end of stream. Fails the test after 10 s.
    pub async fn recv(&mut self) -> Option<ServerMsg> {
        self.recv_within(Duration::from_secs(10)).await
    }

    /// Reads the next frame within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<ServerMsg> {
        read_frame(&mut self.stream, &mut self.buf, limit).await
    }

    /// Subscribes (with id 1000) and returns the initial state event, checking the ack.
    pub async fn subscribe(&mut self, endpoint: &str) -> StateEvent {
        self.send(&ClientMsg::Subscribe(Subscribe {
            id: Some(1000),
            endpoint: endpoint.into(),
            ..Subscribe::default()
        }))
        .await;
        match self.recv().await {
            Some(ServerMsg::Ack(a)) if a.id == 1000 => {}
            other => panic!("expected ack, got {other:?}"),
        }
        match self.recv().await {
            Some(ServerMsg::State(s)) => s,
            other => panic!("expected state, got {other:?}"),
        }
    }

    /// Subscribes and returns the first state event (the current state, or a later one) that
    /// is `state`.
    pub async fn subscribe_until(&mut self, endpoint: &str, state: ConnState) -> StateEvent {
        let first = self.subscribe(endpoint).await;
        if first.state == state {
            return first;
        }
        self.until_state(state).await
    }

    /// Reads frames until a `state` event with `state` arrives; returns it.
    pub async fn until_state(&mut self, state: ConnState) -> StateEvent {
        loop {
            match self.recv().await {
                Some(ServerMsg::State(s)) if s.state == state => return s,
                Some(_) => {}
                None => panic!("connection closed while waiting for state {state}"),
            }
        }
    }
}

/// A MessagePack map of short `str` keys (under 32 bytes) and already-encoded values, written
/// by hand so that bad request bodies do not depend on the crate under test.
pub fn msgpack_map(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = vec![0x80 | entries.len() as u8];
    for (k, v) in entries {
        out.push(0xa0 | k.len() as u8);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// A short MessagePack `str` (under 32 bytes), written by hand.
pub fn msgpack_str(v: &str) -> Vec<u8> {
    let mut out = vec![0xa0 | v.len() as u8];
    out.extend_from_slice(v.as_bytes());
    out
}
