//! One WebSocket app: a subscriber with its own outbox, like a protocol session.
//!
//! The reader takes the app's messages: data goes upstream as a `send` (queued while the
//! endpoint is down, refused with `busy` when the send buffer stays full), and on an endpoint
//! with topics its own subscribe and unsubscribe messages are taken over. The writer drains
//! the outbox into the socket: data frames become WebSocket messages of the same type, sliced
//! out of the shared frame without a copy; what a protocol client would read as `state`,
//! `error` or `dropped` ends the connection with a close code and a reason, since an app
//! cannot be told otherwise:
//!
//! | Event | Close |
//! |---|---|
//! | the upstream is not `open` (unless `on_down = "stay"`) | 1012 service restart |
//! | the endpoint is closed (shutdown, removed by a reload) | 1001 going away |
//! | a message the app sent was refused or not written (`busy`, `queue_full`, `dropped`, ...) | 1013 try again later |
//! | a message larger than the endpoint's `max_message_size` | 1009 message too big |
//! | `slow_client = "disconnect"`, or a topic request refused (`too_many_topics`, ...) | 1008 policy violation |
//! | no answer to a ping within `ping_timeout` | 1011 |
//!
//! Under `slow_client = "drop"` an app that falls behind loses its oldest messages and keeps
//! going; the loss is counted (`wsmux_websocket_lagged_drops`, the endpoint's
//! `lagged_drops`) and logged, since a WebSocket has no way to say it.
//!
//! **One owner of teardown**: [`Session::run`]. Whichever half ends first closes the outbox;
//! the writer then delivers what is queued and stops, the reader waits (briefly) for the
//! app's answer to a close frame and stops. Only then does the session leave the endpoint.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use wsmux_config::{OnDown, TopicSettings, WebSocketSettings};
use wsmux_proto::{
    decode_server, encode_data_message_fields, ConnState, ErrorCode, Payload, PayloadRef,
    ServerMsg, HEADER_LEN,
};

use super::intercept::{Interceptor, Parsed, Request};
use super::keepalive::{Due, Keepalive};
use crate::deadline::LogLimit;
use crate::endpoint::{ClientId, Command, Endpoint, SendRequest, SubscribeError};
use crate::frames;
use crate::outbox::{charge, Outbox};
use crate::server::ServerContext;
use crate::text::escape;

/// How long the reader waits for the app's answer to a close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long a session may take to flush its last frames at daemon shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest close reason, in bytes (a close frame's payload is at most 125 bytes).
const MAX_REASON: usize = 123;

/// At most one line per this interval about an app losing messages.
const LAGGED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One app's connection to one endpoint.
pub(super) struct Session {
    /// Client id, for logs and the endpoint.
    id: ClientId,
    /// The endpoint named in the URL.
    endpoint: Arc<Endpoint>,
    /// Shared daemon state.
    ctx: Arc<ServerContext>,
    /// Frames waiting to be written to the app.
    outbox: Arc<Outbox>,
    /// `[websocket] on_down`.
    on_down: OnDown,
    /// Pings to a silent app.
    keepalive: Mutex<Keepalive>,
    /// `write_timeout`.
    write_timeout: Duration,
    /// Lines about lost messages.
    lagged_log: Mutex<LogLimit>,
}

/// What the writer does with one frame of the outbox.
#[derive(Debug, PartialEq)]
enum Out {
    /// Write this message.
    Message(Message),
    /// Close the connection with this code and reason.
    Close(CloseCode, String),
    /// Nothing for the app.
    Nothing,
}

impl Session {
    pub(super) fn new(
        id: ClientId,
        endpoint: Arc<Endpoint>,
        ctx: Arc<ServerContext>,
        settings: &WebSocketSettings,
    ) -> Session {
        let outbox = Arc::new(Outbox::new(ctx.queue_messages, ctx.queue_bytes));
        Session {
            id,
            endpoint,
            outbox,
            on_down: settings.on_down,
            keepalive: Mutex::new(Keepalive::new(
                settings.ping_interval,
                settings.ping_timeout,
                Instant::now().into_std(),
            )),
            write_timeout: ctx.limits.write,
            ctx,
            lagged_log: Mutex::new(LogLimit::new(LAGGED_LOG_INTERVAL)),
        }
    }

    /// Runs the session to its end: joins the endpoint (the whole of it, or, with topics,
    /// as a watcher until the app subscribes), then reads and writes until either side ends.
    pub(super) async fn run<S>(self, ws: WebSocketStream<S>, shutdown: CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let joined = if self.endpoint.topic_settings().is_some() {
            self.endpoint.watch(self.id, &self.outbox)
        } else {
            self.endpoint
                .subscribe(self.id, &self.outbox, None, None, None)
        };
        if let Err(e) = joined {
            self.refused(e);
        }
        let (mut sink, mut stream) = ws.split();
        let written = CancellationToken::new();
        let write_half = async {
            let result = self.write_loop(&mut sink).await;
            self.outbox.close();
            written.cancel();
            if let Err(e) = result {
                tracing::debug!(client = self.id, error = %e, "write to a WebSocket client failed");
            }
        };
        let read_half = async {
            self.read_loop(&mut stream, &written, &shutdown).await;
            self.outbox.close();
        };
        tokio::join!(read_half, async {
            tokio::select! {
                _ = write_half => {}
                _ = async {
                    shutdown.cancelled().await;
                    tokio::time::sleep(FLUSH_TIMEOUT).await;
                } => {}
            }
        });
        self.endpoint.unsubscribe(self.id, None);
        tracing::debug!(client = self.id, endpoint = %self.endpoint.name(), "WebSocket client disconnected");
    }

    /// Reads the app's messages until it leaves or the daemon shuts down. Once the outbox is
    /// closed, what the app sends is no longer handled, but it is still read (so that pings
    /// are answered and the app's answer to a close frame arrives) until the writer is done
    /// (`written`) and [`CLOSE_WAIT`] has passed.
    async fn read_loop<R>(
        &self,
        stream: &mut R,
        written: &CancellationToken,
        shutdown: &CancellationToken,
    ) where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let mut intercept: Option<(Arc<TopicSettings>, Arc<Interceptor>)> = None;
        let mut closed = false;
        let mut until: Option<Instant> = None;
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = self.outbox.closed(), if !closed => {
                    closed = true;
                    continue;
                }
                _ = written.cancelled(), if until.is_none() => {
                    until = Some(Instant::now() + CLOSE_WAIT);
                    continue;
                }
                _ = tokio::time::sleep_until(until.unwrap_or(far)), if until.is_some() => return,
                next = stream.next() => next,
            };
            let message = match next {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(client = self.id, error = %e, "read from a WebSocket client failed");
                    return;
                }
                Some(Ok(m)) => m,
            };
            self.keepalive
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .input(Instant::now().into_std());
            if closed {
                continue;
            }
            // An app that sends requests but reads none of the answers is not read from
            // while its outbox is over its byte limit (answers are never dropped).
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = self.outbox.closed() => continue,
                _ = self.outbox.wait_below_limit() => {}
            }
            let data = match message {
                Message::Text(text) => {
                    if self.too_large(text.len()) {
                        continue;
                    }
                    if let Some(ic) = self.interceptor(&mut intercept) {
                        match ic.classify(text.as_str()) {
                            Request::Subscribe(parsed) => {
                                self.subscribe(&ic, parsed);
                                continue;
                            }
                            Request::Unsubscribe(parsed) => {
                                self.unsubscribe(&ic, parsed);
                                continue;
                            }
                            Request::Other => {}
                        }
                    }
                    Payload::Text(text.as_str().to_owned())
                }
                Message::Binary(bytes) => {
                    if self.too_large(bytes.len()) {
                        continue;
                    }
                    Payload::Binary(bytes)
                }
                // tungstenite answers pings and close frames itself.
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                    continue
                }
            };
            let send = self.endpoint.command(Command::Send(SendRequest {
                client: self.id,
                data,
                id: None,
                reply: Arc::clone(&self.outbox),
                queue: true,
                sticky: false,
                undo: None,
            }));
            // While the send buffer is full the app is not read from: backpressure.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.outbox.closed() => {}
                () = send => {}
            }
        }
    }

    /// Whether a message of `len` bytes is over the endpoint's `max_message_size`; if so the
    /// app is told (and closed) through the outbox.
    fn too_large(&self, len: usize) -> bool {
        let max = self.endpoint.max_message_size();
        if len <= max {
            return false;
        }
        self.outbox.push_control(frames::error(
            None,
            ErrorCode::TooLarge,
            format!("a message of {len} bytes is over max_message_size ({max})"),
        ));
        true
    }

    /// The interceptor of the endpoint's topic settings in force, rebuilt when a reload
    /// changed them; `None` without topics.
    fn interceptor(
        &self,
        cached: &mut Option<(Arc<TopicSettings>, Arc<Interceptor>)>,
    ) -> Option<Arc<Interceptor>> {
        let settings = self.endpoint.topic_settings()?;
        if let Some((s, ic)) = cached.as_ref() {
            if Arc::ptr_eq(s, &settings) {
                return Some(Arc::clone(ic));
            }
        }
        let ic = Arc::new(Interceptor::new(&settings));
        *cached = Some((settings, Arc::clone(&ic)));
        Some(ic)
    }

    /// The app's own subscribe: answered locally first (so that the answer comes before the
    /// topics' data, as it would from the upstream), then its topics are taken.
    fn subscribe(&self, ic: &Interceptor, parsed: Parsed) {
        if let Some(answer) = ic.answer(true, &parsed) {
            self.push_text(&answer);
        }
        if parsed.topics.is_empty() {
            return;
        }
        if let Err(e) =
            self.endpoint
                .subscribe(self.id, &self.outbox, None, Some(&parsed.topics), None)
        {
            self.refused(e);
        }
    }

    /// The app's own unsubscribe: its topics are left, then it is answered. An app that holds
    /// no topic any more keeps watching the endpoint's state.
    fn unsubscribe(&self, ic: &Interceptor, parsed: Parsed) {
        if !parsed.topics.is_empty() {
            self.endpoint.unsubscribe(self.id, Some(&parsed.topics));
            if !self.endpoint.is_subscribed(self.id) {
                if let Err(e) = self.endpoint.watch(self.id, &self.outbox) {
                    self.refused(e);
                }
            }
        }
        if let Some(answer) = ic.answer(false, &parsed) {
            self.push_text(&answer);
        }
    }

    /// Tells the app (with a close frame, through the outbox) why it cannot subscribe.
    fn refused(&self, error: SubscribeError) {
        let frame = match error {
            SubscribeError::Refused(code, message) => frames::error(None, code, message),
            SubscribeError::Stopped => frames::error(
                None,
                ErrorCode::ShuttingDown,
                format!("endpoint `{}` is shutting down", self.endpoint.name()),
            ),
        };
        self.outbox.push_control(frame);
    }

    /// Queues a text message of the daemon's own for the app (never dropped).
    fn push_text(&self, text: &str) {
        match encode_data_message_fields(
            self.endpoint.name(),
            0,
            None,
            None,
            PayloadRef::Text(text),
            usize::MAX,
        ) {
            Ok(frame) => self.outbox.push_control(frame),
            Err(e) => {
                tracing::warn!(client = self.id, error = %e, "a local answer could not be encoded")
            }
        }
    }

    /// Writes the outbox to the app, pinging it when it is silent, until the outbox is closed
    /// and drained or the connection is to be closed.
    async fn write_loop<W>(&self, sink: &mut W) -> Result<(), WsError>
    where
        W: Sink<Message, Error = WsError> + Unpin,
    {
        loop {
            let next = self
                .keepalive
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next();
            let batch = tokio::select! {
                batch = self.outbox.take() => batch,
                _ = tokio::time::sleep_until(Instant::from_std(next)) => {
                    let due = self
                        .keepalive
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .poll(Instant::now().into_std());
                    match due {
                        Due::Ping => self.timed(sink.send(Message::Ping(Bytes::new()))).await?,
                        Due::Expired => {
                            let timeout = self.keepalive.lock().unwrap_or_else(|e| e.into_inner()).timeout();
                            return self
                                .close(sink, CloseCode::Error, format!("no answer to a ping within ping_timeout ({timeout:?})"))
                                .await;
                        }
                        Due::Nothing => {}
                    }
                    if !self.endpoint.is_subscribed(self.id) && !self.outbox.is_closed() {
                        // A reload changed the endpoint under the app (its topics went).
                        return self
                            .close(sink, CloseCode::Restart, format!("endpoint `{}` was reconfigured", self.endpoint.name()))
                            .await;
                    }
                    continue;
                }
            };
            let lagged: u64 = batch.lagged().iter().map(|(_, n)| n).sum();
            if lagged > 0 {
                self.lagged(lagged);
            }
            let mut charged = 0;
            for frame in batch.frames() {
                charged += charge(frame.len());
                match translate(frame, self.endpoint.name(), self.on_down) {
                    Out::Message(m) => self.timed(sink.feed(m)).await?,
                    Out::Close(code, reason) => {
                        self.outbox.release(charged);
                        return self.close(sink, code, reason).await;
                    }
                    Out::Nothing => {}
                }
            }
            self.timed(sink.flush()).await?;
            self.outbox.release(charged);
            if batch.last {
                return Ok(());
            }
        }
    }

    /// Counts and logs (rate-limited) messages the app lost for not reading fast enough.
    fn lagged(&self, dropped: u64) {
        self.ctx
            .websocket
            .lagged_drops
            .fetch_add(dropped, Ordering::Relaxed);
        let mut log = self.lagged_log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(suppressed) = log.event(std::time::Instant::now()) {
            tracing::info!(
                client = self.id,
                endpoint = %self.endpoint.name(),
                dropped,
                suppressed,
                "a WebSocket client does not read fast enough: its oldest messages were dropped \
                 (slow_client = \"drop\"; suppressed: such lines since the last one)"
            );
        }
    }

    /// Sends a close frame (within `write_timeout`) and flushes it.
    async fn close<W>(&self, sink: &mut W, code: CloseCode, reason: String) -> Result<(), WsError>
    where
        W: Sink<Message, Error = WsError> + Unpin,
    {
        tracing::debug!(client = self.id, code = u16::from(code), reason = %escape(&reason, 200), "closing a WebSocket client");
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(cut(&reason, MAX_REASON)),
        };
        self.timed(sink.send(Message::Close(Some(frame)))).await
    }

    /// `write` within `write_timeout`.
    async fn timed(
        &self,
        write: impl std::future::Future<Output = Result<(), WsError>>,
    ) -> Result<(), WsError> {
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(r) => r,
            Err(_) => {
                tracing::info!(
                    client = self.id,
                    "closed a WebSocket client that read nothing for write_timeout ({:?})",
                    self.write_timeout
                );
                Err(WsError::Io(std::io::ErrorKind::TimedOut.into()))
            }
        }
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What one outbox frame means for an app.
fn translate(frame: &Bytes, endpoint: &str, on_down: OnDown) -> Out {
    if let Some(message) = data_message(frame) {
        return Out::Message(message);
    }
    let Some(body) = frame.get(HEADER_LEN..) else {
        return Out::Nothing;
    };
    let reason = |r: &Option<String>| r.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    match decode_server(body) {
        Ok(ServerMsg::State(event)) => match event.state {
            ConnState::Open => Out::Nothing,
            ConnState::Closed => Out::Close(
                CloseCode::Away,
                format!("endpoint `{endpoint}` closed{}", reason(&event.reason)),
            ),
            _ if on_down == OnDown::Stay => Out::Nothing,
            state => Out::Close(
                CloseCode::Restart,
                format!("upstream `{endpoint}` is {state}{}", reason(&event.reason)),
            ),
        },
        Ok(ServerMsg::Error(e)) => {
            let code = match e.code {
                // The app's other topics carry on; `status` shows the rejected one.
                ErrorCode::TopicRejected => {
                    tracing::info!(endpoint, topic = ?e.topic.as_deref().map(|t| escape(t, 128)), "the upstream rejected a topic a WebSocket client asked for: {}", escape(&e.message, 200));
                    return Out::Nothing;
                }
                ErrorCode::TooLarge => CloseCode::Size,
                ErrorCode::Lagged
                | ErrorCode::InvalidTopic
                | ErrorCode::TooManyTopics
                | ErrorCode::TopicsUnsupported
                | ErrorCode::TooManySubscriptions => CloseCode::Policy,
                ErrorCode::ShuttingDown => CloseCode::Away,
                ErrorCode::Busy
                | ErrorCode::QueueFull
                | ErrorCode::NotConnected
                | ErrorCode::SendFailed
                | ErrorCode::Expired
                | ErrorCode::Overflowed => CloseCode::Again,
                _ => CloseCode::Error,
            };
            Out::Close(code, format!("{}: {}", e.code, e.message))
        }
        Ok(ServerMsg::Dropped(d)) => Out::Close(
            CloseCode::Again,
            format!(
                "a message was not sent upstream ({}): {}",
                d.code, d.message
            ),
        ),
        _ => Out::Nothing,
    }
}

/// The WebSocket message a `message` frame of the daemon carries, sliced out of the frame
/// (no copy). The frame is the daemon's own, laid out by `encode_data_message_fields`:
/// `type`, `endpoint`, `seq`, then `data`. `None` for any other frame.
fn data_message(frame: &Bytes) -> Option<Message> {
    const HEAD: &[u8] = b"\xa4type\xa7message\xa8endpoint";
    let body = frame.get(HEADER_LEN..)?;
    if !(0x84..=0x86).contains(body.first()?) || !body.get(1..)?.starts_with(HEAD) {
        return None;
    }
    let mut pos = 1 + HEAD.len();
    // The endpoint name: a str.
    let (len, header) = str_len(body, pos)?;
    pos += header + len;
    if body.get(pos..pos + 4)? != b"\xa3seq" {
        return None;
    }
    pos += 4;
    pos += match *body.get(pos)? {
        0x00..=0x7f => 1,
        0xcc => 2,
        0xcd => 3,
        0xce => 5,
        0xcf => 9,
        _ => return None,
    };
    if body.get(pos..pos + 5)? != b"\xa4data" {
        return None;
    }
    pos += 5;
    let start = HEADER_LEN + pos;
    let marker = *body.get(pos)?;
    if matches!(marker, 0xc4..=0xc6) {
        let (len, header) = bin_len(body, pos)?;
        let data = frame.get(start + header..start + header + len)?;
        return Some(Message::Binary(frame.slice_ref(data)));
    }
    let (len, header) = str_len(body, pos)?;
    let data = frame.get(start + header..start + header + len)?;
    Utf8Bytes::try_from(frame.slice_ref(data))
        .ok()
        .map(Message::Text)
}

/// Length and header size of the MessagePack `str` at `pos`.
fn str_len(body: &[u8], pos: usize) -> Option<(usize, usize)> {
    match *body.get(pos)? {
        m @ 0xa0..=0xbf => Some((usize::from(m & 0x1f), 1)),
        0xd9 => sized(body, pos, 1),
        0xda => sized(body, pos, 2),
        0xdb => sized(body, pos, 4),
        _ => None,
    }
}

/// Length and header size of the MessagePack `bin` at `pos`.
fn bin_len(body: &[u8], pos: usize) -> Option<(usize, usize)> {
    match *body.get(pos)? {
        0xc4 => sized(body, pos, 1),
        0xc5 => sized(body, pos, 2),
        0xc6 => sized(body, pos, 4),
        _ => None,
    }
}

/// The big-endian length of `n` bytes after the marker at `pos`, and the header size.
fn sized(body: &[u8], pos: usize, n: usize) -> Option<(usize, usize)> {
    let bytes = body.get(pos + 1..pos + 1 + n)?;
    let len = bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((len, 1 + n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsmux_proto::StateEvent;

    #[test]
    fn data_frames_become_messages_of_their_type_at_every_size_boundary() {
        let sizes = [0usize, 1, 31, 32, 255, 256, 65_535, 65_536, 70_000];
        let seqs = [
            0u64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX) + 1,
        ];
        for (n, &size) in sizes.iter().enumerate() {
            let seq = seqs[n % seqs.len()];
            let text: String = "é".repeat(size / 2) + &"x".repeat(size % 2);
            let bin = vec![7u8; size];
            let names = ["f", &"n".repeat(40), &"n".repeat(300)];
            for name in names {
                for topic in [None, Some(("btcusdt@trade", Some(3))), Some(("t", None))] {
                    let (t, ts) = topic.map_or((None, None), |(t, s)| (Some(t), s));
                    for (data, want) in [
                        (PayloadRef::Text(&text), Message::text(text.clone())),
                        (PayloadRef::Binary(&bin), Message::binary(bin.clone())),
                    ] {
                        let frame =
                            encode_data_message_fields(name, seq, t, ts, data, usize::MAX).unwrap();
                        assert_eq!(data_message(&frame), Some(want), "{size} {seq}");
                    }
                }
            }
        }
        // Other frames are not data.
        assert_eq!(data_message(&frames::ack(3)), None);
        assert_eq!(data_message(&Bytes::from_static(b"\x00\x00")), None);
    }

    fn state(s: ConnState, reason: Option<&str>) -> Bytes {
        let mut e = StateEvent::new("feed", s);
        e.reason = reason.map(str::to_owned);
        frames::encode(&ServerMsg::State(e))
    }

    #[test]
    fn events_an_app_cannot_read_become_close_codes() {
        let close = |f: &Bytes, on_down| match translate(f, "feed", on_down) {
            Out::Close(code, reason) => Some((u16::from(code), reason)),
            _ => None,
        };
        assert_eq!(close(&state(ConnState::Open, None), OnDown::Close), None);
        assert_eq!(
            close(
                &state(ConnState::Backoff, Some("connection reset")),
                OnDown::Close
            ),
            Some((1012, "upstream `feed` is backoff: connection reset".into()))
        );
        assert_eq!(close(&state(ConnState::Backoff, None), OnDown::Stay), None);
        assert_eq!(
            close(&state(ConnState::Connecting, None), OnDown::Stay),
            None
        );
        assert_eq!(
            close(&state(ConnState::Closed, None), OnDown::Stay).map(|c| c.0),
            Some(1001)
        );
        let error = |code| frames::error(None, code, "why");
        for (code, want) in [
            (ErrorCode::Busy, Some(1013)),
            (ErrorCode::QueueFull, Some(1013)),
            (ErrorCode::TooLarge, Some(1009)),
            (ErrorCode::Lagged, Some(1008)),
            (ErrorCode::TooManyTopics, Some(1008)),
            (ErrorCode::ShuttingDown, Some(1001)),
            (ErrorCode::TopicRejected, None),
            (ErrorCode::Internal, Some(1011)),
        ] {
            assert_eq!(
                close(&error(code), OnDown::Close).map(|c| c.0),
                want,
                "{code}"
            );
        }
        let dropped = frames::encode(&ServerMsg::Dropped(wsmux_proto::Dropped {
            id: None,
            endpoint: "feed".into(),
            code: ErrorCode::Overflowed,
            message: "pushed out".into(),
        }));
        assert_eq!(close(&dropped, OnDown::Stay).map(|c| c.0), Some(1013));
        assert_eq!(
            translate(&frames::ack(1), "feed", OnDown::Close),
            Out::Nothing
        );
        assert_eq!(cut("ééé", 5), "éé");
        assert_eq!(cut("abc", 123), "abc");
    }
}
