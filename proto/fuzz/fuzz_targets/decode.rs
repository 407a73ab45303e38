//! Feeds arbitrary bytes through the frame splitter and both message decoders, the way the
//! daemon and a client read a socket. Nothing may panic; whatever decodes must re-encode and
//! decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsmux_proto::frame::{check, encode_to_vec};
use wsmux_proto::{decode_client, decode_server, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some(total)) = check(buf, 1 << 20) {
        let body = &buf[HEADER_LEN..total];
        if let Ok(msg) = decode_client(body) {
            let again = encode_to_vec(&msg, usize::MAX).expect("re-encode");
            assert_eq!(decode_client(&again[HEADER_LEN..]).expect("round trip"), msg);
        }
        if let Ok(msg) = decode_server(body) {
            let again = encode_to_vec(&msg, usize::MAX).expect("re-encode");
            assert_eq!(decode_server(&again[HEADER_LEN..]).expect("round trip"), msg);
        }
        buf = &buf[total..];
    }
});
