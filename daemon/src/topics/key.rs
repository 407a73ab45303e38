//! Sans-IO: a message's topic, found without parsing the message into a tree.
//!
//! [`find`] walks the message's bytes only as deep as the pointer leads, skipping every other
//! value (strings with escapes, nested arrays and objects, numbers, literals) without
//! allocating and without recursion, so no input can exhaust the stack. The scanner is
//! lenient about malformed JSON it does not need (it may find a value in a message a strict
//! parser rejects) and never panics: on anything it cannot make sense of, there is no value.

use std::borrow::Cow;

use wsmux_config::{KeyPart, Pointer, TopicKey};
use wsmux_proto::PayloadRef;

/// A value found by [`find`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// A JSON string, unescaped (borrowed from the message when it has no escapes).
    Str(Cow<'a, str>),
    /// A JSON number, as written.
    Number(&'a str),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An object or an array: its raw JSON text, from its opening to its closing bracket.
    Other(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The text a key takes from this value: a string's text, a number as written; nothing
    /// for other values or for an empty string (an empty topic is no topic).
    pub fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Value::Str(s) if !s.is_empty() => Some(s),
            Value::Number(n) => Some(Cow::Borrowed(n)),
            _ => None,
        }
    }
}

/// The topic of a message, if its key finds one.
///
/// A pointer key gives the value at the pointer (see [`Value::into_text`]). A template key
/// needs every field: their texts joined with the literals between them. A `key_regex`
/// gives its capture group 1, which must be non-empty UTF-8. Binary messages are scanned like
/// text.
pub fn extract<'a>(key: &TopicKey, data: PayloadRef<'a>) -> Option<Cow<'a, str>> {
    let bytes: &'a [u8] = match data {
        PayloadRef::Text(t) => t.as_bytes(),
        PayloadRef::Binary(b) => b,
    };
    match key {
        TopicKey::Regex(re) => {
            let caps = re.captures(bytes)?;
            let group: &'a [u8] = caps.get(1)?.as_bytes();
            let text = std::str::from_utf8(group).ok()?;
            (!text.is_empty()).then_some(Cow::Borrowed(text))
        }
        TopicKey::Json(parts) => {
            if let [KeyPart::Field { pointer, .. }] = parts.as_slice() {
                return find(pointer, bytes)?.into_text();
            }
            let mut out = String::new();
            for part in parts {
                match part {
                    KeyPart::Literal(text) => out.push_str(text),
                    KeyPart::Field { pointer, .. } => {
                        out.push_str(&find(pointer, bytes)?.into_text()?);
                    }
                }
            }
            Some(Cow::Owned(out))
        }
    }
}

/// The value at `pointer` in the JSON text `data`, if there is one. The first of duplicate
/// object keys wins; a token of digits (without leading zeros) indexes an array.
pub fn find<'a>(pointer: &Pointer, data: &'a [u8]) -> Option<Value<'a>> {
    let mut c = Cursor { b: data, i: 0 };
    for token in &pointer.tokens {
        c.ws();
        match c.peek()? {
            b'{' => {
                c.i += 1;
                loop {
                    c.ws();
                    match c.peek()? {
                        b',' => c.i += 1,
                        b'"' => {
                            let (start, end, escaped) = c.string()?;
                            c.ws();
                            if c.peek()? != b':' {
                                return None;
                            }
                            c.i += 1;
                            if key_is(&data[start..end], escaped, token) {
                                break;
                            }
                            c.skip_value()?;
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                let wanted = index(token)?;
                c.i += 1;
                let mut n = 0usize;
                loop {
                    c.ws();
                    match c.peek()? {
                        b']' => return None,
                        b',' => c.i += 1,
                        _ if n == wanted => break,
                        _ => {
                            c.skip_value()?;
                            n += 1;
                        }
                    }
                }
            }
            _ => return None,
        }
    }
    c.ws();
    c.value()
}

/// An array index token: `0`, or digits without a leading zero.
fn index(token: &str) -> Option<usize> {
    let b = token.as_bytes();
    let digits = !b.is_empty() && b.iter().all(u8::is_ascii_digit);
    if !digits || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    token.parse().ok()
}

/// Whether the raw JSON string content `raw` is the key `token`.
fn key_is(raw: &[u8], escaped: bool, token: &str) -> bool {
    if !escaped {
        return raw == token.as_bytes();
    }
    // Escapes only make a key shorter (or keep it): no need to decode a longer one.
    raw.len() >= token.len() && unescape(raw).is_some_and(|k| k == token)
}

/// Whether `c` may follow a scalar.
fn delimiter(c: Option<&u8>) -> bool {
    matches!(
        c,
        None | Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b']' | b'}')
    )
}

/// A position in a message.
struct Cursor<'a> {
    /// The message.
    b: &'a [u8],
    /// The next byte to look at.
    i: usize,
}

impl<'a> Cursor<'a> {
    /// The next byte.
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips whitespace.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// At a `"`: the string's content as `(start, end, has escapes)`; the cursor moves past
    /// the closing quote. `None` if it does not end.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.b.get(self.i)? {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Some((start, end, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                _ => self.i += 1,
            }
        }
    }

    /// Skips one value, whatever its depth, with a counter rather than recursion.
    fn skip_value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                        }
                        b'{' | b'[' => {
                            depth += 1;
                            self.i += 1;
                        }
                        b'}' | b']' => {
                            depth -= 1;
                            self.i += 1;
                            if depth == 0 {
                                return Some(());
                            }
                        }
                        _ => self.i += 1,
                    }
                }
            }
            _ => {
                let start = self.i;
                while !delimiter(self.b.get(self.i)) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// The value that starts here.
    fn value(&mut self) -> Option<Value<'a>> {
        let b = self.b;
        let start = self.i;
        match self.peek()? {
            b'"' => {
                let (s, e, escaped) = self.string()?;
                let raw = &b[s..e];
                if escaped {
                    unescape(raw).map(|t| Value::Str(Cow::Owned(t)))
                } else {
                    std::str::from_utf8(raw)
                        .ok()
                        .map(|t| Value::Str(Cow::Borrowed(t)))
                }
            }
            b'{' | b'[' => {
                self.skip_value()?;
                Some(Value::Other(&b[start..self.i]))
            }
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            b'-' | b'0'..=b'9' => {
                let end = number_end(b, start)?;
                if !delimiter(b.get(end)) {
                    return None;
                }
                self.i = end;
                // A number is ASCII.
                std::str::from_utf8(&b[start..end]).ok().map(Value::Number)
            }
            _ => None,
        }
    }

    /// `word` followed by a delimiter.
    fn literal(&mut self, word: &[u8], value: Value<'a>) -> Option<Value<'a>> {
        let rest = self.b.get(self.i..)?;
        if rest.starts_with(word) && delimiter(rest.get(word.len())) {
            self.i += word.len();
            Some(value)
        } else {
            None
        }
    }
}

/// Where the JSON number at `start` ends (`-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`),
/// if one starts there.
fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let from = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

/// The text of a JSON string's content with escapes: `None` on a bad escape, a lone
/// surrogate or bytes that are not UTF-8.
fn unescape(raw: &[u8]) -> Option<String> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let escape = *raw.get(i + 1)?;
        i += 2;
        let ch = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = hex4(raw.get(i..i + 4)?)?;
                i += 4;
                let code = if (0xD800..0xDC00).contains(&high) {
                    if raw.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let low = hex4(raw.get(i + 2..i + 6)?)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    i += 6;
                    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    high
                };
                char::from_u32(code)?
            }
            _ => return None,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out).ok()
}

/// Four hex digits.
fn hex4(b: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(b).ok()?;
    if !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    fn s(text: &str) -> Value<'_> {
        Value::Str(Cow::Borrowed(text))
    }

    const BINANCE: &str =
        r#"{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","p":"0.001"}}"#;
    const OKX: &str =
        r#"{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"last":"9999.99"}]}"#;
    const BYBIT: &str = r#"{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":[{"T":1,"s":"BTCUSDT"}]}"#;
    const KRAKEN: &str =
        r#"{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":0.1}]}"#;
    const DERIBIT: &str = r#"{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.BTC-PERPETUAL.raw","data":{"x":[1,{"y":"}"}]}}}"#;

    #[test]
    fn finds_values_in_the_five_formats() {
        let cases: &[(&str, &str, Option<Value<'_>>)] = &[
            (BINANCE, "/stream", Some(s("btcusdt@trade"))),
            (BINANCE, "/data/s", Some(s("BTCUSDT"))),
            (BINANCE, "/data/x", None),
            (BINANCE, "/id", None),
            (OKX, "/arg/channel", Some(s("tickers"))),
            (OKX, "/arg/instId", Some(s("BTC-USDT"))),
            (OKX, "/data/0/last", Some(s("9999.99"))),
            (OKX, "/data/1/last", None),
            (BYBIT, "/topic", Some(s("publicTrade.BTCUSDT"))),
            (BYBIT, "/ts", Some(Value::Number("1672304486868"))),
            (KRAKEN, "/channel", Some(s("ticker"))),
            (KRAKEN, "/data/0/symbol", Some(s("BTC/USD"))),
            (KRAKEN, "/data/0/bid", Some(Value::Number("0.1"))),
            (
                KRAKEN,
                "/data/0",
                Some(Value::Other(br#"{"symbol":"BTC/USD","bid":0.1}"#)),
            ),
            (
                DERIBIT,
                "/params/channel",
                Some(s("ticker.BTC-PERPETUAL.raw")),
            ),
            (DERIBIT, "/params/data/x/1/y", Some(s("}"))),
            (DERIBIT, "/method/0", None),
        ];
        for (doc, pointer, want) in cases {
            assert_eq!(
                find(&p(pointer), doc.as_bytes()),
                *want,
                "{pointer} in {doc}"
            );
        }
    }

    #[test]
    fn finds_scalars_and_skips_everything_else() {
        let cases: &[(&str, &str, Option<Value<'_>>)] = &[
            (r#"{"a":true}"#, "/a", Some(Value::Bool(true))),
            (r#"{"a":false}"#, "/a", Some(Value::Bool(false))),
            (r#"{"a":null}"#, "/a", Some(Value::Null)),
            (r#"{"a":-1.5e+3}"#, "/a", Some(Value::Number("-1.5e+3"))),
            (r#"{"a":0}"#, "/a", Some(Value::Number("0"))),
            (r#"{"a":[]}"#, "/a", Some(Value::Other(b"[]"))),
            (" \n{ \"a\" :\t\"x\" } ", "/a", Some(s("x"))),
            (r#""top""#, "", Some(s("top"))),
            (r#"{"a":1}"#, "", Some(Value::Other(br#"{"a":1}"#))),
            // Skipped: strings with escaped quotes and brackets, nested containers.
            (
                r#"{"x":"a\"}]b","y":[[{"z":"]"}],{}],"n":-0.5,"t":true,"a":"found"}"#,
                "/a",
                Some(s("found")),
            ),
            // The first of duplicate keys wins.
            (r#"{"a":"1","a":"2"}"#, "/a", Some(s("1"))),
            // Keys with escapes are compared unescaped.
            (r#"{"\u0061":"esc"}"#, "/a", Some(s("esc"))),
            (r#"{"a\/b":"slash"}"#, "/a~1b", Some(s("slash"))),
            (r#"{"a/b":"slash"}"#, "/a~1b", Some(s("slash"))),
            (r#"{"m~n":"tilde"}"#, "/m~0n", Some(s("tilde"))),
            (r#"{"":"empty key"}"#, "/", Some(s("empty key"))),
            // Array indices: digits without leading zeros.
            ("[10,11,12]", "/2", Some(Value::Number("12"))),
            ("[10,11,12]", "/3", None),
            ("[10,11,12]", "/01", None),
            ("[10,11,12]", "/-", None),
            ("[10,11,12]", "/x", None),
            ("{\"0\":\"zero\"}", "/0", Some(s("zero"))),
            // Not scalars, or not JSON.
            (r#"{"a":tru}"#, "/a", None),
            (r#"{"a":truex}"#, "/a", None),
            (r#"{"a":01}"#, "/a", None),
            (r#"{"a":1.}"#, "/a", None),
            (r#"{"a":-}"#, "/a", None),
            (r#"{"a":"unterminated}"#, "/a", None),
            (r#"{"a" "x"}"#, "/a", None),
            (r#"{"b":"x"#, "/a", None),
            ("", "/a", None),
            ("", "", None),
            ("plain text", "/a", None),
        ];
        for (doc, pointer, want) in cases {
            assert_eq!(
                find(&p(pointer), doc.as_bytes()),
                *want,
                "{pointer} in {doc}"
            );
        }
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let doc = br#"{"plain":"BTC-USDT","esc":"a\"b\\c\/d\n\u00e9\ud83d\ude00","bad":"\ud800x","badesc":"\q"}"#;
        match find(&p("/plain"), doc) {
            Some(Value::Str(Cow::Borrowed("BTC-USDT"))) => {}
            other => panic!("{other:?}"),
        }
        match find(&p("/esc"), doc) {
            Some(Value::Str(Cow::Owned(t))) => assert_eq!(t, "a\"b\\c/d\né😀"),
            other => panic!("{other:?}"),
        }
        assert_eq!(find(&p("/bad"), doc), None);
        assert_eq!(find(&p("/badesc"), doc), None);
        assert_eq!(find(&p("/a"), b"{\"a\":\"\xff\"}"), None);
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let n = 100_000;
        let mut doc = String::from(r#"{"skip":"#);
        doc.push_str(&"[".repeat(n));
        doc.push_str(&"]".repeat(n));
        doc.push_str(r#","a":"after"}"#);
        assert_eq!(find(&p("/a"), doc.as_bytes()), Some(s("after")));
        let open = format!(r#"{{"skip":{}"#, "{\"x\":[".repeat(n));
        assert_eq!(find(&p("/a"), open.as_bytes()), None);
        assert!(find(&p(""), "[".repeat(n).as_bytes()).is_none());
    }

    fn key(text: &str) -> TopicKey {
        TopicKey::parse_key(text).unwrap()
    }

    #[test]
    fn extracts_topics() {
        let regex = TopicKey::Regex(regex::bytes::Regex::new(r#""sym":"([^"]*)""#).unwrap());
        let cases: Vec<(TopicKey, &str, Option<&str>)> = vec![
            (key("/stream"), BINANCE, Some("btcusdt@trade")),
            (
                key("{/arg/channel}:{/arg/instId}"),
                OKX,
                Some("tickers:BTC-USDT"),
            ),
            (key("/topic"), BYBIT, Some("publicTrade.BTCUSDT")),
            (
                key("{/channel}:{/data/0/symbol}"),
                KRAKEN,
                Some("ticker:BTC/USD"),
            ),
            (
                key("/params/channel"),
                DERIBIT,
                Some("ticker.BTC-PERPETUAL.raw"),
            ),
            // A number as written; anything else is no topic.
            (key("/ts"), BYBIT, Some("1672304486868")),
            (key("/data"), BYBIT, None),
            (key("/a"), r#"{"a":true}"#, None),
            (key("/a"), r#"{"a":null}"#, None),
            (key("/a"), r#"{"a":""}"#, None),
            // A template needs every field.
            (key("{/channel}:{/data/0/x}"), KRAKEN, None),
            (
                key("{/channel}.{/n}"),
                r#"{"channel":"c","n":7}"#,
                Some("c.7"),
            ),
            (regex.clone(), r#"{"sym":"BTC"}"#, Some("BTC")),
            (regex.clone(), r#"{"sym":""}"#, None),
            (regex, r#"{"other":"BTC"}"#, None),
        ];
        for (key, doc, want) in cases {
            let got = extract(&key, PayloadRef::Text(doc));
            assert_eq!(got.as_deref(), want, "{key:?} in {doc}");
            let got = extract(&key, PayloadRef::Binary(doc.as_bytes()));
            assert_eq!(got.as_deref(), want, "binary: {key:?} in {doc}");
        }
        let regex = TopicKey::Regex(regex::bytes::Regex::new(r"^(..)").unwrap());
        assert_eq!(extract(&regex, PayloadRef::Binary(b"\xff\xfe")), None);
        match extract(&key("/stream"), PayloadRef::Text(BINANCE)) {
            Some(Cow::Borrowed(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    /// Every pointer into `v` that leads to a value, with that value.
    fn paths(v: &serde_json::Value, at: String, out: &mut Vec<(String, serde_json::Value)>) {
        out.push((at.clone(), v.clone()));
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let token = k.replace('~', "~0").replace('/', "~1");
                    paths(child, format!("{at}/{token}"), out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    paths(child, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            (-1e6f64..1e6).prop_map(|n| serde_json::json!(n)),
            "[a-z\"\\\\/\\n\u{e9}\u{1F600}{}\\[\\]~]{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z~/\"]{0,4}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// What `find` should say about `v` (as its text reads back: floats may not round-trip).
    fn expected(v: &serde_json::Value) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap();
        match &v {
            serde_json::Value::String(s) => format!("str:{s}"),
            serde_json::Value::Number(n) => format!("num:{n}"),
            serde_json::Value::Bool(b) => format!("bool:{b}"),
            serde_json::Value::Null => "null".to_owned(),
            other => format!("other:{other}"),
        }
    }

    fn got(v: Option<Value<'_>>) -> String {
        match v {
            Some(Value::Str(s)) => format!("str:{s}"),
            Some(Value::Number(n)) => {
                let n: serde_json::Value = serde_json::from_str(n).unwrap();
                format!("num:{n}")
            }
            Some(Value::Bool(b)) => format!("bool:{b}"),
            Some(Value::Null) => "null".to_owned(),
            Some(Value::Other(raw)) => {
                let v: serde_json::Value = serde_json::from_slice(raw).unwrap();
                format!("other:{v}")
            }
            None => "none".to_owned(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// On valid JSON (compact or pretty), `find` agrees with a real parser at every
        /// pointer that leads somewhere, and finds nothing one step further into a scalar.
        #[test]
        fn agrees_with_a_parser(v in json(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            let mut all = Vec::new();
            paths(&v, String::new(), &mut all);
            for (pointer, value) in all {
                let Ok(ptr) = Pointer::parse(&pointer) else { continue };
                // serde_json keeps the last of duplicate keys; generated maps have none.
                prop_assert_eq!(got(find(&ptr, text.as_bytes())), expected(&value), "{} in {}", pointer, text);
                if !value.is_object() && !value.is_array() {
                    let deeper = Pointer::parse(&format!("{pointer}/0")).unwrap();
                    prop_assert_eq!(find(&deeper, text.as_bytes()), None);
                }
            }
        }

        /// Any bytes, any pointer: no panic.
        #[test]
        fn never_panics_on_any_bytes(
            // Mostly JSON's own bytes, some of any kind (a wide `prop_oneof!` is slow).
            data in prop::collection::vec(any::<(u8, u8)>().prop_map(|(pick, raw)| {
                const JSON: &[u8] = b"{}[]\":,a0u \\";
                if pick < 200 { JSON[usize::from(pick) % JSON.len()] } else { raw }
            }), 0..200),
            pointer in prop::collection::vec(prop_oneof![Just("a"), Just("0"), Just("u"), Just("-"), Just("")], 0..4),
        ) {
            let text: String = pointer.iter().map(|t| format!("/{t}")).collect();
            let ptr = Pointer::parse(&text).unwrap();
            let _ = find(&ptr, &data);
            let key = TopicKey::Json(vec![KeyPart::Field { name: "a".into(), pointer: ptr }]);
            let _ = extract(&key, PayloadRef::Binary(&data));
        }

        /// Every prefix of a real message: no panic.
        #[test]
        fn truncated_messages(v in json()) {
            let text = serde_json::to_string(&v).unwrap();
            let mut all = Vec::new();
            paths(&v, String::new(), &mut all);
            for cut in 0..text.len() {
                let Some(prefix) = text.as_bytes().get(..cut) else { continue };
                for (pointer, _) in all.iter().take(8) {
                    let Ok(ptr) = Pointer::parse(pointer) else { continue };
                    let _ = find(&ptr, prefix);
                }
            }
        }
    }
}
