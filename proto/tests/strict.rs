//! Decoding is exact: a text message must be valid UTF-8, and an error keeps the request's
//! `id` whenever the `id` itself can be read.

use wsmux_proto::*;

/// A MessagePack map from already-encoded keys and values, written by hand so that the bodies
/// do not depend on the crate under test.
fn map(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = vec![0x80 | entries.len() as u8];
    for (k, v) in entries {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

/// A fixstr.
fn s(text: &[u8]) -> Vec<u8> {
    let mut out = vec![0xa0 | text.len() as u8];
    out.extend_from_slice(text);
    out
}

fn err(body: &[u8]) -> MessageError {
    decode_client(body).expect_err("must be rejected")
}

#[test]
fn a_str_that_is_not_utf8_is_invalid_data_not_a_binary_message() {
    for bad in [&b"\xff\xfe"[..], b"ok\xc3", b"\xed\xa0\x80"] {
        let body = map(&[
            (&s(b"type"), &s(b"send")),
            (&s(b"id"), &[21]),
            (&s(b"endpoint"), &s(b"feed")),
            (&s(b"data"), &s(bad)),
        ]);
        let e = err(&body);
        assert_eq!((e.code, e.id), (ErrorCode::InvalidData, Some(21)), "{e}");
    }
    // The same bytes as a `bin` are a binary message.
    let mut bin = vec![0xc4, 2];
    bin.extend_from_slice(b"\xff\xfe");
    let body = map(&[
        (&s(b"type"), &s(b"send")),
        (&s(b"endpoint"), &s(b"feed")),
        (&s(b"data"), &bin),
    ]);
    match decode_client(&body).unwrap() {
        ClientMsg::Send(m) => assert_eq!(m.data, Payload::Binary(b"\xff\xfe".to_vec().into())),
        other => panic!("{other:?}"),
    }
    // `undo` is a data field too; str 8 form as well as fixstr.
    let body = map(&[
        (&s(b"type"), &s(b"send")),
        (&s(b"id"), &[22]),
        (&s(b"endpoint"), &s(b"feed")),
        (&s(b"data"), &s(b"sub")),
        (&s(b"sticky"), &[0xc3]),
        (&s(b"undo"), &[0xd9, 1, 0x80]),
    ]);
    let e = err(&body);
    assert_eq!((e.code, e.id), (ErrorCode::InvalidData, Some(22)), "{e}");
    // And upstream text reaching a client: the daemon's `message` frames.
    let body = map(&[
        (&s(b"type"), &s(b"message")),
        (&s(b"endpoint"), &s(b"feed")),
        (&s(b"seq"), &[1]),
        (&s(b"data"), &s(b"\xff")),
    ]);
    let e = decode_server(&body).expect_err("must be rejected");
    assert_eq!(e.code, ErrorCode::InvalidData, "{e}");
}

#[test]
fn invalid_message_keeps_a_readable_id() {
    // `type` is not a str.
    let e = err(&map(&[(&s(b"type"), &[5]), (&s(b"id"), &[21])]));
    assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, Some(21)), "{e}");
    // The id first, then a bad `type`.
    let e = err(&map(&[
        (&s(b"id"), &[0xcd, 1, 0]),
        (&s(b"type"), &[0x92, 1, 2]),
    ]));
    assert_eq!(
        (e.code, e.id),
        (ErrorCode::InvalidMessage, Some(256)),
        "{e}"
    );
    // A duplicate `type` key.
    let e = err(&map(&[
        (&s(b"type"), &s(b"ping")),
        (&s(b"id"), &[23]),
        (&s(b"type"), &s(b"status")),
    ]));
    assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, Some(23)), "{e}");
    assert!(e.message.contains("type"), "{e}");
    // `type` that is not UTF-8.
    let e = err(&map(&[(&s(b"type"), &s(b"p\xffng")), (&s(b"id"), &[24])]));
    assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, Some(24)), "{e}");
    // A key that is not a str.
    let e = err(&map(&[
        (&s(b"type"), &s(b"ping")),
        (&s(b"id"), &[25]),
        (&[0], &[1]),
    ]));
    assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, Some(25)), "{e}");
    // A field of the wrong type, with the id in a signed form.
    let e = err(&map(&[
        (&s(b"type"), &s(b"subscribe")),
        (&s(b"id"), &[0xd0, 26]),
        (&s(b"endpoint"), &[1]),
    ]));
    assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, Some(26)), "{e}");
}

#[test]
fn an_id_that_cannot_be_read_is_left_out() {
    // Not an unsigned integer.
    let e = err(&map(&[(&s(b"type"), &[5]), (&s(b"id"), &s(b"21"))]));
    assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, None), "{e}");
    // Negative.
    let e = err(&map(&[(&s(b"type"), &[5]), (&s(b"id"), &[0xff])]));
    assert_eq!(e.id, None, "{e}");
    // Given twice: which one?
    let e = err(&map(&[
        (&s(b"type"), &[5]),
        (&s(b"id"), &[1]),
        (&s(b"id"), &[2]),
    ]));
    assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, None), "{e}");
}

#[test]
fn framing_faults_of_the_body_stay_invalid_msgpack() {
    // Truncated inside a nested value, a reserved marker, bytes after the map.
    let cases: [Vec<u8>; 3] = [
        map(&[(&s(b"type"), &s(b"ping")), (&s(b"x"), &[0x92, 1])]),
        map(&[(&s(b"type"), &s(b"ping")), (&s(b"x"), &[0xc1])]),
        {
            let mut b = map(&[(&s(b"type"), &s(b"ping"))]);
            b.push(0);
            b
        },
    ];
    for body in cases {
        let e = err(&body);
        assert_eq!(
            (e.code, e.id),
            (ErrorCode::InvalidMsgpack, None),
            "{body:02x?}: {e}"
        );
    }
    // Deeply nested unknown values are skipped, not a stack overflow.
    let mut deep = map(&[(&s(b"type"), &s(b"ping"))]);
    deep[0] = 0x82;
    deep.extend_from_slice(&s(b"x"));
    deep.extend(std::iter::repeat_n(0x91, 100_000));
    deep.push(0xc0);
    let e = err(&deep);
    assert_eq!(e.code, ErrorCode::InvalidMsgpack, "{e}");
}

/// An array of already-encoded values, in the smallest array form.
fn array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = match items.len() {
        n @ 0..=15 => vec![0x90 | n as u8],
        n @ 16..=0xffff => {
            let mut h = vec![0xdc];
            h.extend_from_slice(&(n as u16).to_be_bytes());
            h
        }
        n => {
            let mut h = vec![0xdd];
            h.extend_from_slice(&(n as u32).to_be_bytes());
            h
        }
    };
    for item in items {
        out.extend_from_slice(item);
    }
    out
}

/// A `subscribe` or `unsubscribe` with id 31, endpoint `feed` and `topics` set to `topics`
/// (already encoded).
fn with_topics(ty: &[u8], topics: &[u8]) -> Vec<u8> {
    map(&[
        (&s(b"type"), &s(ty)),
        (&s(b"id"), &[31]),
        (&s(b"endpoint"), &s(b"feed")),
        (&s(b"topics"), topics),
    ])
}

fn topics_of(msg: ClientMsg) -> Option<Vec<String>> {
    match msg {
        ClientMsg::Subscribe(m) => m.topics,
        ClientMsg::Unsubscribe(m) => m.topics,
        other => panic!("{other:?}"),
    }
}

#[test]
fn topics_must_be_an_array_of_str() {
    for ty in [&b"subscribe"[..], b"unsubscribe"] {
        // Well-formed: fixstr, str 8, an empty array (the daemon judges emptiness), array 16.
        let ok = with_topics(ty, &array(&[s(b"a"), vec![0xd9, 2, b'b', b'c']]));
        assert_eq!(
            topics_of(decode_client(&ok).unwrap()),
            Some(vec!["a".to_owned(), "bc".to_owned()])
        );
        let empty = with_topics(ty, &array(&[]));
        assert_eq!(topics_of(decode_client(&empty).unwrap()), Some(vec![]));
        let many: Vec<Vec<u8>> = (0..20u8).map(|i| s(&[b'a' + i])).collect();
        let long = with_topics(ty, &array(&many));
        assert_eq!(
            topics_of(decode_client(&long).unwrap()).map(|t| t.len()),
            Some(20)
        );
        // `nil` is "not given": the whole endpoint.
        let nil = with_topics(ty, &[0xc0]);
        assert_eq!(topics_of(decode_client(&nil).unwrap()), None);

        // Not an array.
        for bad in [
            s(b"a"),
            vec![1],
            vec![0x81, 0xa1, b'a', 0xa1, b'b'],
            vec![0xc3],
        ] {
            let e = err(&with_topics(ty, &bad));
            assert_eq!(
                (e.code, e.id),
                (ErrorCode::InvalidMessage, Some(31)),
                "{bad:02x?}: {e}"
            );
            assert!(e.message.contains("topics"), "{e}");
        }
        // An element that is not a str: an integer, a `bin` (even valid UTF-8), nil, an array.
        for bad in [vec![7], vec![0xc4, 1, b'x'], vec![0xc0], array(&[s(b"a")])] {
            let e = err(&with_topics(ty, &array(&[s(b"ok"), bad.clone()])));
            assert_eq!(
                (e.code, e.id),
                (ErrorCode::InvalidMessage, Some(31)),
                "{bad:02x?}: {e}"
            );
            assert!(e.message.contains("topics"), "{e}");
        }
        // A str that is not UTF-8.
        for bad in [&b"\xff"[..], b"ok\xc3", b"\xed\xa0\x80"] {
            let e = err(&with_topics(ty, &array(&[s(b"ok"), s(bad)])));
            assert_eq!(
                (e.code, e.id),
                (ErrorCode::InvalidData, Some(31)),
                "{bad:02x?}: {e}"
            );
            assert!(e.message.contains("topics"), "{e}");
        }
    }
}

#[test]
fn at_most_ten_thousand_topics_per_request() {
    assert_eq!(MAX_TOPICS_PER_REQUEST, 10_000);
    let topic = s(b"t");
    let items = vec![topic; MAX_TOPICS_PER_REQUEST];
    for ty in [&b"subscribe"[..], b"unsubscribe"] {
        let body = with_topics(ty, &array(&items));
        assert_eq!(
            topics_of(decode_client(&body).unwrap()).map(|t| t.len()),
            Some(MAX_TOPICS_PER_REQUEST)
        );
        let mut over = items.clone();
        over.push(s(b"u"));
        let e = err(&with_topics(ty, &array(&over)));
        assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, Some(31)), "{e}");
        assert!(e.message.contains("10000"), "{e}");
        // An announced count far above the cap in a short body is a truncated body, not a
        // long loop.
        let e = err(&with_topics(ty, &[0xdd, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(e.code, ErrorCode::InvalidMsgpack, "{e}");
    }
}

#[test]
fn topics_in_other_requests_are_an_unknown_key() {
    let body = map(&[
        (&s(b"type"), &s(b"ping")),
        (&s(b"id"), &[32]),
        (&s(b"topics"), &[7]),
    ]);
    assert_eq!(
        decode_client(&body).unwrap(),
        ClientMsg::Ping(Ping { id: Some(32) })
    );
}

#[test]
fn since_needs_an_id_and_epoch_needs_since() {
    let ok = map(&[
        (&s(b"type"), &s(b"subscribe")),
        (&s(b"id"), &[5]),
        (&s(b"endpoint"), &s(b"feed")),
        (&s(b"since"), &[0xcd, 0x04, 0x12]),
        (&s(b"epoch"), &s(b"e1")),
    ]);
    match decode_client(&ok).unwrap() {
        ClientMsg::Subscribe(m) => {
            assert_eq!(m.since, Some(1042));
            assert_eq!(m.epoch.as_deref(), Some("e1"));
        }
        other => panic!("{other:?}"),
    }
    let no_id = map(&[
        (&s(b"type"), &s(b"subscribe")),
        (&s(b"endpoint"), &s(b"feed")),
        (&s(b"since"), &[7]),
    ]);
    let e = err(&no_id);
    assert_eq!(e.code, ErrorCode::InvalidMessage);
    assert!(e.message.contains("`since` needs an `id`"), "{e}");
    let no_since = map(&[
        (&s(b"type"), &s(b"subscribe")),
        (&s(b"id"), &[6]),
        (&s(b"endpoint"), &s(b"feed")),
        (&s(b"epoch"), &s(b"e1")),
    ]);
    let e = err(&no_since);
    assert_eq!((e.code, e.id), (ErrorCode::InvalidMessage, Some(6)));
    let negative = map(&[
        (&s(b"type"), &s(b"subscribe")),
        (&s(b"id"), &[6]),
        (&s(b"endpoint"), &s(b"feed")),
        (&s(b"since"), &[0xff]),
    ]);
    assert_eq!(err(&negative).code, ErrorCode::InvalidMessage);
}
