//! Property tests: every message round-trips through encode/decode, and no input makes the
//! decoders panic (a cheap, always-on complement to the cargo-fuzz target in `proto/fuzz`).

use bytes::Bytes;
use proptest::prelude::*;
use wsmux_proto::frame::{check, encode_to_vec};
use wsmux_proto::*;

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        ".{0,64}".prop_map(Payload::Text),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|v| Payload::Binary(Bytes::from(v))),
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,16}"
}

/// A topic: any text, short or long enough for a `str 8` header.
fn topic() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn topics() -> impl Strategy<Value = Option<Vec<String>>> {
    proptest::option::of(proptest::collection::vec(topic(), 0..6))
}

fn state() -> impl Strategy<Value = ConnState> {
    prop_oneof![
        Just(ConnState::Connecting),
        Just(ConnState::Open),
        Just(ConnState::Backoff),
        Just(ConnState::Failed),
        Just(ConnState::Closed),
    ]
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    let id = any::<Option<u64>>();
    prop_oneof![
        (any::<u32>(), proptest::option::of(".{0,16}"))
            .prop_map(|(version, client)| ClientMsg::Hello(Hello { version, client })),
        (id.clone(), name(), topics()).prop_map(|(id, endpoint, topics)| ClientMsg::Subscribe(
            Subscribe {
                topics,
                id,
                endpoint,
                ..Subscribe::default()
            }
        )),
        (id.clone(), name(), topics()).prop_map(|(id, endpoint, topics)| {
            ClientMsg::Unsubscribe(Unsubscribe {
                topics,
                id,
                endpoint,
            })
        }),
        (
            id.clone(),
            name(),
            payload(),
            any::<Option<bool>>(),
            any::<Option<bool>>(),
            proptest::option::of(payload())
        )
            .prop_map(|(id, endpoint, data, queue, sticky, undo)| {
                ClientMsg::Send(Send {
                    queue,
                    sticky,
                    undo,
                    ..Send::new(id, endpoint, data)
                })
            }),
        id.clone()
            .prop_map(|id| ClientMsg::Status(StatusRequest { id })),
        id.clone().prop_map(|id| ClientMsg::Ping(Ping { id })),
        (id.clone(), name())
            .prop_map(|(id, endpoint)| ClientMsg::Reconnect(Reconnect { id, endpoint })),
        id.prop_map(|id| ClientMsg::Reload(Reload { id })),
    ]
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    let id = any::<Option<u64>>();
    prop_oneof![
        (
            name(),
            any::<u64>(),
            payload(),
            proptest::option::of(topic()),
            any::<Option<u64>>()
        )
            .prop_map(|(endpoint, seq, data, topic, topic_seq)| {
                ServerMsg::Message(DataMessage {
                    topic,
                    topic_seq,
                    endpoint,
                    seq,
                    data,
                })
            }),
        (
            name(),
            state(),
            any::<Option<u32>>(),
            any::<Option<u64>>(),
            proptest::option::of(".{0,32}"),
            any::<Option<bool>>(),
            any::<Option<u64>>()
        )
            .prop_map(
                |(endpoint, state, attempt, retry_in_ms, reason, reconnect, downtime_ms)| {
                    ServerMsg::State(StateEvent {
                        endpoint,
                        state,
                        attempt,
                        retry_in_ms,
                        reason,
                        reconnect,
                        downtime_ms,
                    })
                }
            ),
        (any::<u64>(), any::<Option<bool>>()).prop_map(|(id, queued)| ServerMsg::Ack(Ack {
            id,
            queued,
            recovered: None,
            first_seq: None,
        })),
        (
            id.clone(),
            ".{0,32}",
            proptest::option::of(name()),
            proptest::option::of(topic())
        )
            .prop_map(|(id, message, endpoint, topic)| ServerMsg::Error(ErrorMsg {
                code: if topic.is_some() {
                    ErrorCode::TopicRejected
                } else {
                    ErrorCode::NotConnected
                },
                endpoint,
                topic,
                id,
                message
            })),
        (id.clone(), name()).prop_map(|(id, endpoint)| ServerMsg::Sent(Sent { id, endpoint })),
        (id.clone(), name(), ".{0,32}").prop_map(|(id, endpoint, message)| {
            ServerMsg::Dropped(Dropped {
                id,
                endpoint,
                code: ErrorCode::Expired,
                message,
            })
        }),
        (name(), any::<u64>())
            .prop_map(|(endpoint, dropped)| ServerMsg::Lagged(Lagged { endpoint, dropped })),
        id.prop_map(|id| ServerMsg::Pong(Pong { id })),
    ]
}

proptest! {
    #[test]
    fn client_messages_round_trip(msg in client_msg()) {
        let frame = encode_to_vec(&msg, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(check(&frame, DEFAULT_MAX_FRAME).unwrap(), Some(frame.len()));
        prop_assert_eq!(decode_client(&frame[HEADER_LEN..]).unwrap(), msg);
    }

    #[test]
    fn server_messages_round_trip(msg in server_msg()) {
        let frame = encode_to_vec(&msg, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(decode_server(&frame[HEADER_LEN..]).unwrap(), msg);
    }

    #[test]
    fn data_fast_path_matches_for_any_payload(endpoint in name(), seq in any::<u64>(), data in payload()) {
        let fast = encode_data_message(&endpoint, seq, None, data.as_ref(), DEFAULT_MAX_FRAME).unwrap();
        let slow = encode_to_vec(&ServerMsg::Message(DataMessage { topic: None, topic_seq: None,  endpoint, seq, data }), DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(&fast[..], &slow[..]);
    }

    #[test]
    fn data_fast_path_matches_for_any_topic(
        endpoint in name(),
        seq in any::<u64>(),
        data in payload(),
        topic in proptest::option::of(topic()),
        topic_seq in any::<Option<u64>>(),
    ) {
        let fast = encode_data_message_fields(&endpoint, seq, topic.as_deref(), topic_seq, data.as_ref(), DEFAULT_MAX_FRAME).unwrap();
        let msg = DataMessage { topic: topic.clone(), topic_seq, endpoint: endpoint.clone(), seq, data: data.clone() };
        let slow = encode_to_vec(&ServerMsg::Message(msg.clone()), DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(&fast[..], &slow[..]);
        if let (Some(t), Some(n)) = (topic.as_deref(), topic_seq) {
            let pair = encode_data_message(&endpoint, seq, Some((t, n)), data.as_ref(), DEFAULT_MAX_FRAME).unwrap();
            prop_assert_eq!(&pair[..], &slow[..]);
        }
        prop_assert_eq!(decode_server(&fast[HEADER_LEN..]).unwrap(), ServerMsg::Message(msg));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = check(&bytes, 1024);
        let _ = decode_client(&bytes);
        let _ = decode_server(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(msg in client_msg(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut frame = encode_to_vec(&msg, DEFAULT_MAX_FRAME).unwrap();
        for (at, byte) in flips {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        if let Ok(Some(total)) = check(&frame, DEFAULT_MAX_FRAME) {
            let _ = decode_client(&frame[HEADER_LEN..total]);
        }
    }
}
