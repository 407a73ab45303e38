//! The wire contract: exact bytes for representative frames, round trips, and every kind of
//! bad input mapped to its stable error code.

use bytes::Bytes;
use serde_json::json;
use wsmux_proto::frame::{check, encode_to_vec};
use wsmux_proto::*;

const MAX: usize = DEFAULT_MAX_FRAME;

fn body(frame: &[u8]) -> &[u8] {
    let n = check(frame, MAX).unwrap().expect("whole frame");
    assert_eq!(n, frame.len());
    &frame[HEADER_LEN..]
}

/// Encodes an arbitrary map the way a client in another language would.
fn raw_map(entries: &[(&str, rmp_value::V)]) -> Vec<u8> {
    rmp_value::map(entries)
}

/// A tiny hand-rolled MessagePack writer, independent of the crate under test.
mod rmp_value {
    pub enum V {
        Str(&'static str),
        Bin(&'static [u8]),
        UInt(u8),
        Nil,
    }

    pub fn map(entries: &[(&str, V)]) -> Vec<u8> {
        let mut out = vec![0x80 | entries.len() as u8];
        for (k, v) in entries {
            str(&mut out, k);
            match v {
                V::Str(s) => str(&mut out, s),
                V::Bin(b) => {
                    out.push(0xc4);
                    out.push(b.len() as u8);
                    out.extend_from_slice(b);
                }
                V::UInt(n) => out.push(*n),
                V::Nil => out.push(0xc0),
            }
        }
        out
    }

    fn str(out: &mut Vec<u8>, s: &str) {
        assert!(s.len() < 32);
        out.push(0xa0 | s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
}

use rmp_value::V;

#[test]
fn ping_frame_has_the_documented_bytes() {
    let frame = encode_to_vec(&ClientMsg::Ping(Ping { id: Some(7) }), MAX).unwrap();
    // fixmap(2) "type" "ping" "id" 7
    let expected: &[u8] = &[
        0, 0, 0, 15, 0x82, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g', 0xa2, b'i',
        b'd', 7,
    ];
    assert_eq!(frame, expected);
}

#[test]
fn text_and_binary_data_use_str_and_bin() {
    let text = encode_to_vec(
        &ClientMsg::Send(Send::new(None, "e", Payload::Text("hi".into()))),
        MAX,
    )
    .unwrap();
    assert_eq!(
        body(&text),
        raw_map(&[
            ("type", V::Str("send")),
            ("endpoint", V::Str("e")),
            ("data", V::Str("hi"))
        ])
    );
    let bin = encode_to_vec(
        &ClientMsg::Send(Send::new(
            None,
            "e",
            Payload::Binary(Bytes::from_static(&[1, 2])),
        )),
        MAX,
    )
    .unwrap();
    assert_eq!(
        body(&bin),
        raw_map(&[
            ("type", V::Str("send")),
            ("endpoint", V::Str("e")),
            ("data", V::Bin(&[1, 2]))
        ])
    );
}

#[test]
fn data_message_fast_path_matches_the_generic_encoder() {
    let topics: [(Option<&str>, Option<u64>); 4] = [
        (None, None),
        (Some("btcusdt@trade"), Some(12)),
        (Some("btcusdt@trade"), None),
        (None, Some(3)),
    ];
    for data in [
        Payload::Text("{\"px\":1}".into()),
        Payload::Binary(Bytes::from_static(b"\x00\xff")),
    ] {
        for (topic, topic_seq) in topics {
            let fast = encode_data_message_fields("feed", 42, topic, topic_seq, data.as_ref(), MAX)
                .unwrap();
            let msg = DataMessage {
                topic: topic.map(str::to_owned),
                topic_seq,
                endpoint: "feed".into(),
                seq: 42,
                data: data.clone(),
            };
            let generic = encode_to_vec(&ServerMsg::Message(msg.clone()), MAX).unwrap();
            assert_eq!(&fast[..], &generic[..], "{topic:?} {topic_seq:?}");
            if let (Some(t), Some(n)) = (topic, topic_seq) {
                let pair =
                    encode_data_message("feed", 42, Some((t, n)), data.as_ref(), MAX).unwrap();
                assert_eq!(&pair[..], &generic[..]);
            }
            if (topic, topic_seq) == (None, None) {
                let none = encode_data_message("feed", 42, None, data.as_ref(), MAX).unwrap();
                assert_eq!(&none[..], &generic[..]);
            }
            assert_eq!(decode_server(body(&fast)).unwrap(), ServerMsg::Message(msg));
        }
    }
}

#[test]
fn every_client_message_round_trips() {
    let msgs = vec![
        ClientMsg::Hello(Hello {
            version: 1,
            client: Some("py".into()),
        }),
        ClientMsg::Hello(Hello {
            version: 1,
            client: None,
        }),
        ClientMsg::Subscribe(Subscribe {
            topics: None,
            id: Some(1),
            endpoint: "a".into(),
            ..Subscribe::default()
        }),
        ClientMsg::Unsubscribe(Unsubscribe {
            topics: None,
            id: None,
            endpoint: "a".into(),
        }),
        ClientMsg::Send(Send::new(
            Some(u64::MAX),
            "a",
            Payload::Binary(Bytes::from(vec![0u8; 300])),
        )),
        ClientMsg::Status(StatusRequest { id: Some(3) }),
        ClientMsg::Send(Send {
            queue: Some(false),
            sticky: Some(true),
            undo: Some(Payload::Text("unsub".into())),
            ..Send::new(Some(5), "a", "sub")
        }),
        ClientMsg::Reconnect(Reconnect {
            id: Some(6),
            endpoint: "a".into(),
        }),
        ClientMsg::Reload(Reload { id: None }),
        ClientMsg::Ping(Ping { id: None }),
    ];
    for m in msgs {
        let frame = encode_to_vec(&m, MAX).unwrap();
        assert_eq!(decode_client(body(&frame)).unwrap(), m);
    }
}

#[test]
fn every_server_message_round_trips() {
    let msgs = vec![
        ServerMsg::Welcome(Welcome {
            version: 1,
            server: "wsmuxd/0.1.0".into(),
            endpoints: vec![EndpointSummary {
                name: "a".into(),
                state: ConnState::Backoff,
            }],
            epoch: None,
        }),
        ServerMsg::State(StateEvent {
            endpoint: "a".into(),
            state: ConnState::Backoff,
            attempt: Some(3),
            retry_in_ms: Some(1500),
            reason: Some("HTTP 503".into()),
            reconnect: None,
            downtime_ms: None,
        }),
        ServerMsg::State(StateEvent {
            reconnect: Some(true),
            downtime_ms: Some(1234),
            ..StateEvent::new("a", ConnState::Open)
        }),
        ServerMsg::Ack(Ack {
            id: 9,
            queued: None,
            recovered: None,
            first_seq: None,
        }),
        ServerMsg::Ack(Ack {
            id: 10,
            queued: Some(true),
            recovered: None,
            first_seq: None,
        }),
        ServerMsg::Sent(Sent {
            id: Some(4),
            endpoint: "a".into(),
        }),
        ServerMsg::Dropped(Dropped {
            id: None,
            endpoint: "a".into(),
            code: ErrorCode::QueueFull,
            message: "full".into(),
        }),
        ServerMsg::Lagged(Lagged {
            endpoint: "a".into(),
            dropped: 17,
        }),
        ServerMsg::Error(ErrorMsg {
            endpoint: None,
            topic: None,
            id: None,
            code: ErrorCode::Lagged,
            message: "dropped 3".into(),
        }),
        ServerMsg::Status(StatusReply {
            id: Some(1),
            endpoints: vec![EndpointStatus {
                connections: 0,
                topics: Vec::new(),
                name: "a".into(),
                url: "wss://x/?token=***".into(),
                state: ConnState::Open,
                since: 1,
                attempt: None,
                connects: 2,
                last_error: Some("reset".into()),
                heartbeat_rtt_us: Some(250),
                messages_in: 3,
                bytes_in: 4,
                messages_out: 5,
                bytes_out: 6,
                subscribers: 7,
                reconnects: 1,
                queued: 2,
                lagged_drops: 3,
                history_messages: 0,
                history_bytes: 0,
                history_first_seq: None,
            }],
            epoch: None,
        }),
        ServerMsg::Pong(Pong { id: Some(2) }),
    ];
    for m in msgs {
        let frame = encode_to_vec(&m, MAX).unwrap();
        assert_eq!(decode_server(body(&frame)).unwrap(), m);
    }
}

#[test]
fn unknown_keys_are_ignored_and_nil_optionals_accepted() {
    let b = raw_map(&[
        ("type", V::Str("subscribe")),
        ("endpoint", V::Str("x")),
        ("future", V::UInt(5)),
        ("id", V::Nil),
    ]);
    assert_eq!(
        decode_client(&b).unwrap(),
        ClientMsg::Subscribe(Subscribe {
            topics: None,
            id: None,
            endpoint: "x".into(),
            ..Subscribe::default()
        })
    );
}

#[test]
fn incomplete_input_is_not_an_error() {
    let frame = encode_to_vec(&ClientMsg::Ping(Ping { id: None }), MAX).unwrap();
    for cut in 0..frame.len() {
        assert_eq!(check(&frame[..cut], MAX), Ok(None), "cut at {cut}");
    }
    assert_eq!(check(&frame, MAX), Ok(Some(frame.len())));
}

#[test]
fn oversized_length_is_a_frame_error() {
    assert_eq!(
        check(&[0x01, 0, 0, 1], 1024),
        Err(FrameError::TooLarge {
            len: 0x0100_0001,
            max: 1024
        })
    );
    // Text sent by mistake ("hell...") reads as a huge length.
    assert!(check(b"hello\n", MAX).is_err());
}

#[test]
fn bad_bodies_map_to_stable_codes() {
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (vec![], ErrorCode::InvalidMsgpack),
        (vec![0x93, 1, 2, 3], ErrorCode::NotAMap),
        (vec![0xa3, b'a', b'b', b'c'], ErrorCode::NotAMap),
        (vec![0x81, 0xa4, b't'], ErrorCode::InvalidMsgpack),
        (vec![0xc1], ErrorCode::NotAMap),
        (raw_map(&[("id", V::UInt(1))]), ErrorCode::MissingType),
        (
            raw_map(&[("type", V::Str("teleport"))]),
            ErrorCode::UnknownType,
        ),
        (
            raw_map(&[("type", V::Str("subscribe"))]),
            ErrorCode::InvalidMessage,
        ),
        (
            raw_map(&[
                ("type", V::Str("send")),
                ("endpoint", V::Str("e")),
                ("data", V::UInt(5)),
            ]),
            ErrorCode::InvalidData,
        ),
        (
            {
                let mut b = raw_map(&[("type", V::Str("ping"))]);
                b.push(0xc0);
                b
            },
            ErrorCode::InvalidMsgpack,
        ),
    ];
    for (b, code) in cases {
        let err = decode_client(&b).expect_err("must be rejected");
        assert_eq!(err.code, code, "{b:02x?}: {err}");
    }
}

#[test]
fn errors_keep_the_request_id() {
    let b = raw_map(&[
        ("type", V::Str("send")),
        ("id", V::UInt(12)),
        ("endpoint", V::Str("e")),
        ("data", V::Nil),
    ]);
    let err = decode_client(&b).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidData);
    assert_eq!(err.id, Some(12));
}

#[test]
fn encode_refuses_frames_over_the_maximum() {
    let msg = ClientMsg::Send(Send::new(None, "e", Payload::Text("x".repeat(100))));
    let mut buf = vec![9];
    assert!(matches!(
        encode(&msg, &mut buf, 50),
        Err(EncodeError::TooLarge { .. })
    ));
    assert_eq!(buf, vec![9], "buffer untouched on error");
}

#[test]
fn data_fast_path_refuses_exactly_where_the_generic_encoder_does() {
    let data = Payload::Text("x".repeat(300));
    let seq = 1 << 40;
    for (topic, topic_seq) in [(None, None), (Some("BTC-USD"), Some(70_000))] {
        let body = encode_to_vec(
            &ServerMsg::Message(DataMessage {
                topic: topic.map(str::to_owned),
                topic_seq,
                endpoint: "feed".into(),
                seq,
                data: data.clone(),
            }),
            usize::MAX,
        )
        .unwrap()
        .len()
            - HEADER_LEN;
        let fits =
            encode_data_message_fields("feed", seq, topic, topic_seq, data.as_ref(), body).unwrap();
        assert_eq!(fits.len(), HEADER_LEN + body);
        match encode_data_message_fields("feed", seq, topic, topic_seq, data.as_ref(), body - 1) {
            Err(EncodeError::TooLarge { len, max }) => assert_eq!((len, max), (body, body - 1)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn json_view_of_the_error_code_is_snake_case() {
    assert_eq!(
        serde_json::to_value(ErrorCode::UnknownEndpoint).unwrap(),
        json!("unknown_endpoint")
    );
    assert_eq!(ErrorCode::UnknownEndpoint.as_str(), "unknown_endpoint");
}

#[test]
fn data_fast_path_matches_at_every_size_boundary() {
    for len in [0usize, 1, 31, 32, 255, 256, 65_535, 65_536, 70_000] {
        for seq in [
            0u64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            for data in [
                Payload::Text("x".repeat(len)),
                Payload::Binary(Bytes::from(vec![7u8; len])),
            ] {
                let endpoint = "e".repeat(len.min(300));
                // A topic of the same length class, its counter at the same boundary.
                let topic = "t".repeat(len.min(300));
                for (topic, topic_seq) in [
                    (None, None),
                    (Some(topic.as_str()), Some(seq)),
                    (Some(topic.as_str()), None),
                ] {
                    let fast = encode_data_message_fields(
                        &endpoint,
                        seq,
                        topic,
                        topic_seq,
                        data.as_ref(),
                        MAX,
                    )
                    .unwrap();
                    let generic = encode_to_vec(
                        &ServerMsg::Message(DataMessage {
                            topic: topic.map(str::to_owned),
                            topic_seq,
                            endpoint: endpoint.clone(),
                            seq,
                            data: data.clone(),
                        }),
                        MAX,
                    )
                    .unwrap();
                    assert_eq!(
                        &fast[..],
                        &generic[..],
                        "len {len}, seq {seq}, topic_seq {topic_seq:?}"
                    );
                }
            }
        }
    }
}
