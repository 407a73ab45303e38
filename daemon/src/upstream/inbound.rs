//! Sans-IO: what one inbound frame is.
//!
//! [`Inbound::classify`] sorts a frame from the upstream into data for subscribers, a
//! heartbeat answer (with its round trip), a server ping to auto-reply to, a close, or a
//! control frame. The main link and a rotation's replacement run the same classification,
//! each with its own [`Liveness`], so the two paths cannot drift apart.

use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regex::bytes::Regex;
use tokio_tungstenite::tungstenite::Message;
use wsmux_config::{AutoReplyRule, Decompress, EndpointSettings, HeartbeatKind, HeartbeatReply};
use wsmux_proto::Payload;

use crate::text::{escape, escape_bytes, MAX_PEER_TEXT};

/// A close frame as the server sent it, before tungstenite's checks (see
/// [`super::connect::Tap`]): code and reason bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawClose {
    /// The status code, if the frame had one.
    pub code: Option<u16>,
    /// The reason bytes (not necessarily UTF-8).
    pub reason: Vec<u8>,
}

/// What an inbound frame is.
#[derive(Debug, PartialEq)]
pub enum Class {
    /// A data message for subscribers.
    Data,
    /// The answer to a heartbeat: not delivered. `rtt` when a heartbeat was outstanding.
    Heartbeat {
        /// Round trip of the outstanding heartbeat.
        rtt: Option<Duration>,
    },
    /// A server ping matched by an `auto_reply` rule: write `reply` upstream, and deliver the
    /// message too when `deliver`.
    AutoReply {
        /// The answer to write.
        reply: Payload,
        /// The rule has `hide = false`.
        deliver: bool,
    },
    /// The upstream closed the connection.
    Closed {
        /// What it said, escaped, e.g. `closed by upstream: 1006 Stale Connection`.
        reason: String,
        /// The code is listed in `fatal_close_codes`.
        fatal: bool,
    },
    /// A control frame (ping, pong that answers nothing): nothing to do.
    Control,
}

/// A compiled `auto_reply` rule.
#[derive(Debug)]
struct Rule {
    /// The pattern, anchored: it must match the whole message.
    regex: Regex,
    /// The configured rule.
    rule: AutoReplyRule,
}

/// The classification rules of one endpoint.
#[derive(Debug)]
pub struct Inbound {
    /// Compiled auto-reply rules, in order.
    rules: Vec<Rule>,
    /// How heartbeat answers look.
    heartbeat_reply: Option<HeartbeatReply>,
    /// What a heartbeat is.
    heartbeat_kind: HeartbeatKind,
    /// Close codes that mean `failed`.
    fatal_close_codes: Vec<u16>,
}

/// The liveness bookkeeping of one link.
#[derive(Debug, Default)]
pub struct Liveness {
    /// When the last heartbeat went out, until its answer is seen.
    heartbeat_sent: Option<Instant>,
    /// Payload of the last ping-frame heartbeat, to match its pong.
    ping_payload: u64,
}

impl Liveness {
    /// A heartbeat is written on this link at `now`.
    pub fn heartbeat_sent(&mut self, now: Instant) {
        self.heartbeat_sent = Some(now);
    }

    fn answered(&mut self, now: Instant) -> Option<Duration> {
        self.heartbeat_sent
            .take()
            .map(|sent| now.saturating_duration_since(sent))
    }
}

/// `pattern` anchored at both ends, so that a rule matches whole messages only (`a|ab` must
/// match `ab`, which a check on the leftmost match would miss).
pub fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

impl Inbound {
    /// The rules of `settings`.
    pub fn new(settings: &EndpointSettings) -> Self {
        let rules = settings
            .auto_reply
            .iter()
            .filter_map(|rule| match Regex::new(&anchored(&rule.pattern)) {
                Ok(regex) => Some(Rule {
                    regex,
                    rule: rule.clone(),
                }),
                Err(e) => {
                    // The configuration checked this already; keep going without the rule.
                    tracing::error!(endpoint = %settings.name, pattern = %rule.pattern, error = %e, "invalid auto_reply pattern");
                    None
                }
            })
            .collect();
        Inbound {
            rules,
            heartbeat_reply: settings.heartbeat.reply.clone(),
            heartbeat_kind: settings.heartbeat.kind.clone(),
            fatal_close_codes: settings.fatal_close_codes.clone(),
        }
    }

    /// The next heartbeat to write on a link (a ping frame gets a fresh payload).
    pub fn heartbeat(&self, live: &mut Liveness) -> Message {
        match &self.heartbeat_kind {
            HeartbeatKind::Ping => {
                live.ping_payload = live.ping_payload.wrapping_add(1);
                Message::Ping(Bytes::copy_from_slice(&live.ping_payload.to_be_bytes()))
            }
            HeartbeatKind::Text(t) => Message::text(t.clone()),
            HeartbeatKind::Binary(b) => Message::binary(b.clone()),
        }
    }

    /// Classifies one frame of a link. `raw_close` is what the tap saw of a close frame.
    pub fn classify(
        &self,
        msg: &Message,
        raw_close: Option<&RawClose>,
        live: &mut Liveness,
        now: Instant,
    ) -> Class {
        match msg {
            Message::Text(t) => self.data(t.as_bytes(), false, live, now),
            Message::Binary(b) => self.data(b, true, live, now),
            Message::Pong(p) => {
                if p.as_ref() == live.ping_payload.to_be_bytes() {
                    Class::Heartbeat {
                        rtt: live.answered(now),
                    }
                } else {
                    Class::Control
                }
            }
            // tungstenite queues the pong itself; it goes out with the next read or write.
            Message::Ping(_) | Message::Frame(_) => Class::Control,
            Message::Close(frame) => {
                let parsed = frame
                    .as_ref()
                    .map(|f| (u16::from(f.code), f.reason.as_bytes().to_vec()));
                self.closed(raw_close, parsed)
            }
        }
    }

    /// The upstream closed: what it said, from the raw frame when the tap saw one (tungstenite
    /// replaces codes the RFC reserves with `1002 Protocol violation`).
    pub fn closed(&self, raw_close: Option<&RawClose>, parsed: Option<(u16, Vec<u8>)>) -> Class {
        let (code, reason) = match (raw_close, parsed) {
            (Some(raw), _) => (raw.code, raw.reason.clone()),
            (None, Some((code, reason))) => (Some(code), reason),
            (None, None) => (None, Vec::new()),
        };
        let reason_text = escape_bytes(&reason, MAX_PEER_TEXT);
        let text = match (code, reason_text.is_empty()) {
            (None, _) => "closed by upstream".to_owned(),
            (Some(code), true) => format!("closed by upstream: {code}"),
            (Some(code), false) => format!("closed by upstream: {code} {reason_text}"),
        };
        Class::Closed {
            reason: text,
            fatal: code.is_some_and(|c| self.fatal_close_codes.contains(&c)),
        }
    }

    fn data(&self, bytes: &[u8], binary: bool, live: &mut Liveness, now: Instant) -> Class {
        let heartbeat = match &self.heartbeat_reply {
            Some(HeartbeatReply::Text(prefix)) => !binary && bytes.starts_with(prefix.as_bytes()),
            Some(HeartbeatReply::Binary(prefix)) => binary && bytes.starts_with(prefix),
            None => false,
        };
        if heartbeat {
            return Class::Heartbeat {
                rtt: live.answered(now),
            };
        }
        match self.auto_reply(bytes, binary) {
            Some((reply, hide)) => Class::AutoReply {
                reply,
                deliver: !hide,
            },
            None => Class::Data,
        }
    }

    /// The reply to a server ping, if a rule matches `bytes`, and whether to hide it.
    fn auto_reply(&self, bytes: &[u8], binary: bool) -> Option<(Payload, bool)> {
        // Per method: the limit it was inflated with, and the outcome. Each rule compares
        // against its own limit; a larger limit than the cached one inflates again.
        let mut inflated: [Option<(usize, Option<Vec<u8>>)>; 2] = [None, None];
        for r in &self.rules {
            let (subject, decompressed): (&[u8], bool) = match (binary, r.rule.decompress) {
                (false, _) | (true, Decompress::None) => (bytes, false),
                (true, method) => {
                    let slot = &mut inflated[usize::from(method == Decompress::Deflate)];
                    let limit = r.rule.max_decompressed_bytes;
                    let stale = match slot {
                        None => true,
                        // Nothing within the cached limit: only a larger one may differ.
                        Some((cached, None)) => limit > *cached,
                        Some((_, Some(_))) => false,
                    };
                    if stale {
                        *slot = Some((limit, decompress(bytes, method, limit)));
                    }
                    match slot {
                        Some((_, Some(out))) if out.len() <= limit => (out.as_slice(), true),
                        _ => continue,
                    }
                }
            };
            let Some(caps) = r.regex.captures(subject) else {
                continue;
            };
            let mut out = Vec::new();
            caps.expand(r.rule.reply.as_bytes(), &mut out);
            let as_binary = r.rule.reply_binary.unwrap_or(binary && !decompressed);
            let reply = if as_binary {
                Payload::Binary(out.into())
            } else {
                match String::from_utf8(out) {
                    Ok(t) => Payload::Text(t),
                    Err(e) => {
                        tracing::warn!(pattern = %escape(&r.rule.pattern, MAX_PEER_TEXT), "auto_reply: the reply is not UTF-8 text; answering in binary");
                        Payload::Binary(e.into_bytes().into())
                    }
                }
            };
            return Some((reply, r.rule.hide));
        }
        None
    }
}

/// Decompresses a binary message for auto-reply matching, within `limit` bytes of output.
/// `None` when it is not valid compressed data, when the output would exceed `limit` (no
/// match on a truncated message), or when the input is too large to be a ping at all.
pub fn decompress(data: &[u8], method: Decompress, limit: usize) -> Option<Vec<u8>> {
    // Deflate never makes small data much larger: compressed input beyond the output limit
    // plus headers cannot decompress to something within it worth matching.
    if data.len() > limit.saturating_add(64) {
        return None;
    }
    let cap = limit as u64 + 1;
    let read = |r: &mut dyn Read| {
        let mut out = Vec::new();
        r.take(cap).read_to_end(&mut out).ok()?;
        (out.len() <= limit).then_some(out)
    };
    match method {
        Decompress::None => None,
        Decompress::Gzip => read(&mut flate2::read::GzDecoder::new(data)),
        Decompress::Deflate => read(&mut flate2::read::ZlibDecoder::new(data))
            .or_else(|| read(&mut flate2::read::DeflateDecoder::new(data))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    fn rule(pattern: &str, reply: &str) -> AutoReplyRule {
        AutoReplyRule {
            pattern: pattern.into(),
            reply: reply.into(),
            reply_binary: None,
            decompress: Decompress::None,
            hide: true,
            max_decompressed_bytes: 64 * 1024,
        }
    }

    fn inbound(rules: Vec<AutoReplyRule>) -> Inbound {
        let mut s = EndpointSettings::new("e", "ws://127.0.0.1:1/".parse().unwrap());
        s.auto_reply = rules;
        s.fatal_close_codes = vec![4001];
        Inbound::new(&s)
    }

    fn classify(i: &Inbound, m: Message) -> Class {
        i.classify(&m, None, &mut Liveness::default(), Instant::now())
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn binary_pings_are_answered_in_binary_text_ones_in_text() {
        let i = inbound(vec![rule("PING\r\n", "PONG\r\n")]);
        let expect = |reply| Class::AutoReply {
            reply,
            deliver: false,
        };
        assert_eq!(
            classify(&i, Message::binary(&b"PING\r\n"[..])),
            expect(Payload::Binary(Bytes::from_static(b"PONG\r\n")))
        );
        assert_eq!(
            classify(&i, Message::text("PING\r\n")),
            expect(Payload::Text("PONG\r\n".into()))
        );
        assert_eq!(classify(&i, Message::text("PING\r\nx")), Class::Data);
        // `reply_binary` overrides the frame type either way.
        let mut r = rule("PING\r\n", "PONG\r\n");
        r.reply_binary = Some(false);
        let i = inbound(vec![r]);
        assert_eq!(
            classify(&i, Message::binary(&b"PING\r\n"[..])),
            expect(Payload::Text("PONG\r\n".into()))
        );
    }

    #[test]
    fn patterns_are_anchored_when_compiled() {
        let i = inbound(vec![rule("a|ab", "x")]);
        assert!(matches!(
            classify(&i, Message::text("ab")),
            Class::AutoReply { .. }
        ));
        assert!(matches!(
            classify(&i, Message::text("a")),
            Class::AutoReply { .. }
        ));
        assert_eq!(classify(&i, Message::text("abc")), Class::Data);
        assert_eq!(classify(&i, Message::text("xab")), Class::Data);
    }

    #[test]
    fn decompression_is_bounded_and_overflow_never_matches() {
        let mut r = rule("x*", "pong");
        r.decompress = Decompress::Gzip;
        r.max_decompressed_bytes = 100;
        let i = inbound(vec![r]);
        let small = gzip(&[b'x'; 100]);
        assert!(matches!(
            classify(&i, Message::binary(small)),
            Class::AutoReply { .. }
        ));
        // 101 bytes inflated: truncated at 100 it would match; it must not.
        let big = gzip(&[b'x'; 101]);
        assert_eq!(classify(&i, Message::binary(big)), Class::Data);
        // A bomb is cut at the limit, not inflated.
        assert_eq!(
            decompress(&gzip(&vec![b'x'; 1 << 24]), Decompress::Gzip, 100),
            None
        );
        // Compressed input larger than any ping is not even tried.
        let noise: Vec<u8> = (0..10_000u32).map(|n| (n * 7919 % 251) as u8).collect();
        assert_eq!(decompress(&gzip(&noise), Decompress::Gzip, 100), None);
        // Gzip-compressed pings are answered with text by default.
        let mut r = rule(r#"\{"ping":(\d+)\}"#, r#"{"pong":$1}"#);
        r.decompress = Decompress::Gzip;
        let i = inbound(vec![r]);
        assert_eq!(
            classify(&i, Message::binary(gzip(br#"{"ping":42}"#))),
            Class::AutoReply {
                reply: Payload::Text(r#"{"pong":42}"#.into()),
                deliver: false
            }
        );
    }

    #[test]
    fn each_rule_sees_the_decompressed_message_within_its_own_limit() {
        // (first rule's limit, second rule's limit, inflated size, which rule answers)
        let table: [(usize, usize, usize, Option<&str>); 5] = [
            (100, 64 * 1024, 1024, Some("b")),
            (64 * 1024, 100, 1024, Some("a")),
            (100, 200, 150, Some("b")),
            (200, 100, 150, Some("a")),
            (100, 120, 1024, None),
        ];
        for (la, lb, size, want) in table {
            let mut a = rule("x*", "a");
            a.decompress = Decompress::Gzip;
            a.max_decompressed_bytes = la;
            let mut b = rule("x*", "b");
            b.decompress = Decompress::Gzip;
            b.max_decompressed_bytes = lb;
            let i = inbound(vec![a, b]);
            let got = match classify(&i, Message::binary(gzip(&vec![b'x'; size]))) {
                Class::AutoReply {
                    reply: Payload::Text(t),
                    ..
                } => Some(t),
                Class::Data => None,
                other => panic!("{other:?}"),
            };
            assert_eq!(got.as_deref(), want, "limits {la}/{lb}, {size} bytes");
        }
    }

    #[test]
    fn decompresses_gzip_and_both_deflate_flavours() {
        let text = br#"{"ping":1712345678}"#;
        assert_eq!(
            decompress(&gzip(text), Decompress::Gzip, 1024).as_deref(),
            Some(&text[..])
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text).unwrap();
        assert_eq!(
            decompress(&z.finish().unwrap(), Decompress::Deflate, 1024).as_deref(),
            Some(&text[..])
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(text).unwrap();
        assert_eq!(
            decompress(&raw.finish().unwrap(), Decompress::Deflate, 1024).as_deref(),
            Some(&text[..])
        );
        assert_eq!(decompress(b"not compressed", Decompress::Gzip, 1024), None);
    }

    #[test]
    fn close_reasons_say_what_the_server_sent() {
        let i = inbound(vec![]);
        // What tungstenite reports for a reserved code, and what the tap saw.
        let substituted = Message::Close(Some(CloseFrame {
            code: CloseCode::Protocol,
            reason: "Protocol violation".into(),
        }));
        for (code, text) in [(1006u16, "Stale Connection"), (999, "x"), (5000, "y")] {
            let raw = RawClose {
                code: Some(code),
                reason: text.as_bytes().to_vec(),
            };
            let got = i.classify(
                &substituted,
                Some(&raw),
                &mut Liveness::default(),
                Instant::now(),
            );
            assert_eq!(
                got,
                Class::Closed {
                    reason: format!("closed by upstream: {code} {text}"),
                    fatal: false
                }
            );
        }
        let forged = RawClose {
            code: Some(4001),
            reason: b"bye\nERROR forged\x1b[31m".to_vec(),
        };
        assert_eq!(
            i.closed(Some(&forged), None),
            Class::Closed {
                reason: "closed by upstream: 4001 bye\\nERROR forged\\u{1b}[31m".into(),
                fatal: true
            }
        );
        assert_eq!(
            i.closed(None, None),
            Class::Closed {
                reason: "closed by upstream".into(),
                fatal: false
            }
        );
    }

    #[test]
    fn heartbeat_answers_measure_the_round_trip_on_their_own_link() {
        let mut s = EndpointSettings::new("e", "ws://127.0.0.1:1/".parse().unwrap());
        s.heartbeat.reply = Some(HeartbeatReply::Text("hb".into()));
        let i = Inbound::new(&s);
        let t0 = Instant::now();
        let mut main = Liveness::default();
        let mut other = Liveness::default();
        let ping = i.heartbeat(&mut main);
        main.heartbeat_sent(t0);
        let later = t0 + Duration::from_millis(30);
        assert_eq!(
            i.classify(&Message::text("hb ok"), None, &mut main, later),
            Class::Heartbeat {
                rtt: Some(Duration::from_millis(30))
            }
        );
        assert_eq!(
            i.classify(&Message::text("hb ok"), None, &mut other, later),
            Class::Heartbeat { rtt: None }
        );
        let Message::Ping(p) = ping else { panic!() };
        main.heartbeat_sent(t0);
        assert_eq!(
            i.classify(&Message::Pong(p), None, &mut main, later),
            Class::Heartbeat {
                rtt: Some(Duration::from_millis(30))
            }
        );
    }
}
