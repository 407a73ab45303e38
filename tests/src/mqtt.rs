//! The few MQTT 3.1.1 packets the interop tests send and read, built from the specification
//! (OASIS MQTT 3.1.1, chapter 3), so the bytes in a config are checked against a real broker.

/// PINGREQ: the client's keep-alive packet.
pub const PINGREQ: [u8; 2] = [0xc0, 0x00];
/// PINGRESP: the broker's answer to PINGREQ.
pub const PINGRESP: [u8; 2] = [0xd0, 0x00];

/// Appends the "remaining length" variable-length integer.
fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
    assert!(len < 268_435_456, "MQTT packets are under 256 MiB");
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

/// Appends a UTF-8 string with its two-byte length.
fn string(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("MQTT strings are under 64 KiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A packet: fixed header byte, remaining length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    remaining_length(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT with a clean session, no credentials, no will.
pub fn connect(client_id: &str, keep_alive_secs: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(4); // protocol level 4 = 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&keep_alive_secs.to_be_bytes());
    string(&mut body, client_id);
    packet(0x10, &body)
}

/// SUBSCRIBE to one topic filter at QoS 0.
pub fn subscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    string(&mut body, filter);
    body.push(0); // QoS 0
    packet(0x82, &body)
}

/// PUBLISH at QoS 0, not retained.
pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// The topic and payload of a QoS 0 PUBLISH packet, or `None` for any other packet.
pub fn parse_publish(bytes: &[u8]) -> Option<(String, Vec<u8>)> {
    let (&first, mut rest) = bytes.split_first()?;
    if first & 0xf0 != 0x30 || first & 0x06 != 0 {
        return None;
    }
    let mut len = 0usize;
    for shift in 0..4 {
        let (&b, r) = rest.split_first()?;
        rest = r;
        len |= usize::from(b & 0x7f) << (7 * shift);
        if b & 0x80 == 0 {
            break;
        }
    }
    if rest.len() != len || len < 2 {
        return None;
    }
    let topic_len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let topic = rest.get(2..2 + topic_len)?;
    let payload = rest.get(2 + topic_len..)?;
    Some((String::from_utf8(topic.to_vec()).ok()?, payload.to_vec()))
}

/// `bytes` as the hex a config's `hex = "..."` takes, a space between bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_match_the_specification_examples() {
        // CONNECT "wsmux", keep-alive 60: remaining length 17.
        assert_eq!(
            hex(&connect("wsmux", 60)),
            "10 11 00 04 4d 51 54 54 04 02 00 3c 00 05 77 73 6d 75 78"
        );
        assert_eq!(hex(&subscribe(1, "a/b")), "82 08 00 01 00 03 61 2f 62 00");
        let p = publish("a/b", b"hi");
        assert_eq!(hex(&p), "30 07 00 03 61 2f 62 68 69");
        assert_eq!(parse_publish(&p), Some(("a/b".into(), b"hi".to_vec())));
        assert_eq!(parse_publish(&PINGRESP), None);
        // A two-byte remaining length.
        let big = publish("t", &[7; 200]);
        assert_eq!(&big[..3], &[0x30, 0xcb, 0x01]);
        assert_eq!(parse_publish(&big), Some(("t".into(), vec![7; 200])));
    }
}
