//! Sans-IO: an app's own subscribe and unsubscribe messages, recognised by the endpoint's
//! `subscribe` and `unsubscribe` templates read backwards, and the local answers to them.
//!
//! A template that is JSON once its placeholders are filled in is matched by structure: the
//! app's message is parsed, and every key of every object in the template must be there with
//! a matching value (keys in another order, other whitespace and keys the template does not
//! name are fine). A placeholder that is a whole JSON value binds that value; one inside a
//! string binds the text between the string's literal parts. Any other template is matched as
//! text. The bound placeholders give the topics back the way [`crate::topics::template`] put
//! them in: `{topics}` directly, `{items}` through `item`, `{FIELD[]}` and `{FIELD}` joined
//! by the key's literal text, `{topic}` as is. `{id}` is the app's own id, kept as the JSON
//! value it sent, for the answer.

use std::collections::HashMap;

use serde_json::Value;
use wsmux_config::{KeyPart, Template, TemplatePart, TopicKey, TopicSettings};

use crate::topics::template::json_string;

/// What an app's text message is.
#[derive(Debug, PartialEq)]
pub enum Request {
    /// A subscribe message of the endpoint's format.
    Subscribe(Parsed),
    /// An unsubscribe message of the endpoint's format.
    Unsubscribe(Parsed),
    /// Anything else: it goes upstream as it is.
    Other,
}

/// The topics of a subscribe or unsubscribe message, and the app's id.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    /// The topics, in the order the message names them, without repeats.
    pub topics: Vec<String>,
    /// The `{id}` the app gave, as a JSON value (a string for an id inside a string).
    pub id: Option<Value>,
}

/// Recognises the subscribe and unsubscribe messages of one endpoint's topic settings.
#[derive(Debug)]
pub struct Interceptor {
    /// The key, which joins fields into topics.
    key: TopicKey,
    /// The subscribe template, read backwards.
    subscribe: Pattern,
    /// The unsubscribe template, read backwards.
    unsubscribe: Option<Pattern>,
    /// `item`, read backwards, for `{items}`.
    item: Option<Pattern>,
    /// `local_ack`.
    ack: Option<Template>,
    /// `local_unsubscribe_ack`.
    unsubscribe_ack: Option<Template>,
}

impl Interceptor {
    /// The interceptor of `settings`.
    pub fn new(settings: &TopicSettings) -> Interceptor {
        Interceptor {
            key: settings.key.clone(),
            subscribe: Pattern::new(&settings.subscribe),
            unsubscribe: settings.unsubscribe.as_ref().map(Pattern::new),
            item: settings.item.as_ref().map(Pattern::new),
            ack: settings.local_ack.clone(),
            unsubscribe_ack: settings.local_unsubscribe_ack.clone(),
        }
    }

    /// What `text` is. A message that has the shape of a template but names no topic that
    /// can be put together is [`Request::Other`].
    pub fn classify(&self, text: &str) -> Request {
        let json: Option<Value> = serde_json::from_str(text).ok();
        let parse = |p: &Pattern| {
            let bound = p.bind(text, json.as_ref())?;
            self.parsed(p, &bound)
        };
        if let Some(parsed) = parse(&self.subscribe) {
            return Request::Subscribe(parsed);
        }
        match self.unsubscribe.as_ref().and_then(parse) {
            Some(parsed) => Request::Unsubscribe(parsed),
            None => Request::Other,
        }
    }

    /// The local answer to a subscribe (`subscribe = true`) or unsubscribe, if one is
    /// configured.
    pub fn answer(&self, subscribe: bool, parsed: &Parsed) -> Option<String> {
        let template = if subscribe {
            self.ack.as_ref()
        } else {
            self.unsubscribe_ack.as_ref()
        }?;
        let mut out = String::with_capacity(template.text.len() + 16);
        let mut lexer = Lexer::default();
        for part in &template.parts {
            match part {
                TemplatePart::Literal(text) => {
                    lexer.feed(text);
                    out.push_str(text);
                }
                TemplatePart::Id => match (&parsed.id, lexer.in_string) {
                    (None, _) => out.push_str(if lexer.in_string { "" } else { "null" }),
                    // Inside a string: the text of a string id, else its JSON.
                    (Some(Value::String(s)), true) => {
                        let mut quoted = String::new();
                        json_string(&mut quoted, s);
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    }
                    (Some(v), _) => out.push_str(&v.to_string()),
                },
                TemplatePart::Topics => {
                    out.push('[');
                    for (i, t) in parsed.topics.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        json_string(&mut out, t);
                    }
                    out.push(']');
                }
                TemplatePart::Topic { raw } => {
                    let first = parsed.topics.first().map_or("", String::as_str);
                    if *raw {
                        out.push_str(first);
                    } else {
                        json_string(&mut out, first);
                    }
                }
                // Refused by validation.
                TemplatePart::Field { .. } | TemplatePart::FieldArray(_) | TemplatePart::Items => {}
            }
        }
        Some(out)
    }

    /// The topics and id of a message that matched `pattern` with `bound`.
    fn parsed(&self, pattern: &Pattern, bound: &Bound) -> Option<Parsed> {
        let mut topics = Vec::new();
        let mut scalars: HashMap<&str, String> = HashMap::new();
        let mut arrays: Vec<(&str, Vec<String>)> = Vec::new();
        let mut id = None;
        let mut items: Option<&Value> = None;
        let mut single = None;
        for (i, hole) in pattern.holes.iter().enumerate() {
            let Some(value) = bound.get(&i) else {
                continue;
            };
            match hole {
                TemplatePart::Topics => topics.extend(strings(value.as_value()?)?),
                TemplatePart::Items => items = Some(value.as_value()?),
                TemplatePart::Topic { .. } => single = Some(value.text()?),
                TemplatePart::Id => id = Some(value.to_value()),
                TemplatePart::Field { name, .. } => {
                    scalars.insert(name, value.text()?);
                }
                TemplatePart::FieldArray(name) => arrays.push((name, strings(value.as_value()?)?)),
                TemplatePart::Literal(_) => {}
            }
        }
        if let Some(items) = items {
            let Value::Array(list) = items else {
                return None;
            };
            for item in list {
                let topic = match &self.item {
                    // Without `item`, `{items}` is rendered like `{topics}`.
                    None => item.as_str()?.to_owned(),
                    Some(p) => {
                        let text = item.to_string();
                        let bound = p.bind(&text, Some(item))?;
                        let mut fields = scalars.clone();
                        let mut topic = None;
                        for (i, hole) in p.holes.iter().enumerate() {
                            match (hole, bound.get(&i)) {
                                (TemplatePart::Topic { .. }, Some(v)) => topic = Some(v.text()?),
                                (TemplatePart::Field { name, .. }, Some(v)) => {
                                    fields.insert(name, v.text()?);
                                }
                                _ => {}
                            }
                        }
                        match topic {
                            Some(t) => t,
                            None => join(&self.key, &fields)?,
                        }
                    }
                };
                topics.push(topic);
            }
        } else if !arrays.is_empty() {
            let n = arrays[0].1.len();
            if arrays.iter().any(|(_, a)| a.len() != n) {
                return None;
            }
            for k in 0..n {
                let mut fields = scalars.clone();
                for (name, values) in &arrays {
                    fields.insert(name, values[k].clone());
                }
                topics.push(join(&self.key, &fields)?);
            }
        } else if let Some(t) = single {
            topics.push(t);
        } else if topics.is_empty() && !scalars.is_empty() {
            topics.push(join(&self.key, &scalars)?);
        }
        if topics.is_empty() && !pattern.names_topics() {
            return None;
        }
        let mut seen = std::collections::HashSet::new();
        topics.retain(|t| seen.insert(t.clone()));
        Some(Parsed { topics, id })
    }
}

/// The topic the key makes of `fields`; `None` if one is missing.
fn join(key: &TopicKey, fields: &HashMap<&str, String>) -> Option<String> {
    let TopicKey::Json(parts) = key else {
        return None;
    };
    let mut out = String::new();
    for part in parts {
        match part {
            KeyPart::Literal(text) => out.push_str(text),
            KeyPart::Field { name, .. } => out.push_str(fields.get(name.as_str())?),
        }
    }
    Some(out)
}

/// The strings (or numbers, as written) of a JSON array.
fn strings(value: &Value) -> Option<Vec<String>> {
    let Value::Array(list) = value else {
        return None;
    };
    list.iter().map(scalar_text).collect()
}

/// A string's text or a number's digits.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What a placeholder matched.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    /// A whole JSON value.
    Value(Value),
    /// Text: inside a JSON string (unescaped), or from a template matched as text.
    Text(String),
}

impl Piece {
    /// As a JSON value; `None` for text (a template matched as text already read back what
    /// it could as JSON).
    fn as_value(&self) -> Option<&Value> {
        match self {
            Piece::Value(v) => Some(v),
            Piece::Text(_) => None,
        }
    }

    /// A string's text, a number's digits, or the text itself.
    fn text(&self) -> Option<String> {
        match self {
            Piece::Value(v) => scalar_text(v),
            Piece::Text(t) => Some(t.clone()),
        }
    }

    /// As a JSON value for the answer: text becomes a JSON string.
    fn to_value(&self) -> Value {
        match self {
            Piece::Value(v) => v.clone(),
            Piece::Text(t) => Value::String(t.clone()),
        }
    }
}

/// Placeholder index to what it matched.
type Bound = HashMap<usize, Piece>;

/// Tracks whether a position in JSON text is inside a string.
#[derive(Debug, Default)]
struct Lexer {
    /// Inside a string.
    in_string: bool,
    /// The previous character was a backslash inside a string.
    escaped: bool,
}

impl Lexer {
    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            if !self.in_string {
                self.in_string = c == '"';
            } else if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = false;
            }
        }
    }
}

/// Marks a placeholder in the JSON form of a template (a character no template holds).
const MARK: char = '\u{0}';

/// A template, read backwards.
#[derive(Debug)]
struct Pattern {
    /// The placeholders, by index.
    holes: Vec<TemplatePart>,
    /// How a message is matched.
    shape: Shape,
}

/// How a message is matched against a template.
#[derive(Debug)]
enum Shape {
    /// By JSON structure.
    Json(Node),
    /// As text: literal text and placeholders, in order.
    Text(Vec<Segment>),
}

/// Part of a string (or of a text template): literal text, or placeholder `i`.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Hole(usize),
}

/// A JSON template with its placeholders.
#[derive(Debug)]
enum Node {
    /// A value that must be equal.
    Literal(Value),
    /// A whole value that placeholder `i` binds.
    Hole(usize),
    /// A string with placeholders inside.
    Text(Vec<Segment>),
    /// An object: each of these keys must be there and match.
    Object(Vec<(String, Node)>),
    /// An array of exactly these elements.
    Array(Vec<Node>),
}

impl Pattern {
    fn new(template: &Template) -> Pattern {
        let mut holes = Vec::new();
        let mut json = String::with_capacity(template.text.len() + 16);
        let mut segments = Vec::new();
        let mut lexer = Lexer::default();
        for part in &template.parts {
            match part {
                TemplatePart::Literal(text) => {
                    lexer.feed(text);
                    json.push_str(text);
                    segments.push(Segment::Literal(text.clone()));
                }
                hole => {
                    let i = holes.len();
                    holes.push(hole.clone());
                    // Inside a string, the mark is part of the string; elsewhere it is a
                    // string of its own, standing for the whole value.
                    if lexer.in_string {
                        json.push_str(&format!("\\u0000{i}\\u0000"));
                    } else {
                        json.push_str(&format!("\"\\u0000{i}\\u0000\""));
                    }
                    segments.push(Segment::Hole(i));
                }
            }
        }
        let shape = match serde_json::from_str::<Value>(&json) {
            Ok(value) => Shape::Json(Node::of(value)),
            Err(_) => Shape::Text(segments),
        };
        Pattern { holes, shape }
    }

    /// Whether the template names topics at all (a template without any cannot tell a
    /// subscribe from another message).
    fn names_topics(&self) -> bool {
        self.holes.iter().any(|h| {
            matches!(
                h,
                TemplatePart::Topics
                    | TemplatePart::Topic { .. }
                    | TemplatePart::Items
                    | TemplatePart::Field { .. }
                    | TemplatePart::FieldArray(_)
            )
        })
    }

    /// Binds the placeholders to the parts of a message (its text, and its JSON if it is
    /// JSON); `None` if it does not match.
    fn bind(&self, text: &str, json: Option<&Value>) -> Option<Bound> {
        let mut bound = Bound::new();
        match &self.shape {
            Shape::Json(node) => node.bind(json?, &mut bound)?,
            Shape::Text(segments) => {
                for (i, piece) in split(segments, text)? {
                    let piece = match &self.holes[i] {
                        TemplatePart::Topic { raw: true }
                        | TemplatePart::Field { raw: true, .. } => Piece::Text(piece.to_owned()),
                        // A JSON value written into text: read it back, or keep the text (an
                        // `{id}` of digits is a number either way).
                        _ => match serde_json::from_str::<Value>(piece) {
                            Ok(v) => Piece::Value(v),
                            Err(_) => Piece::Text(piece.to_owned()),
                        },
                    };
                    bound.insert(i, piece);
                }
            }
        }
        Some(bound)
    }
}

impl Node {
    /// The node of a template's JSON, with its marks turned back into placeholders.
    fn of(value: Value) -> Node {
        match value {
            Value::String(s) if s.contains(MARK) => {
                let segments = marks(&s);
                match segments.as_slice() {
                    [Segment::Hole(i)] => Node::Hole(*i),
                    _ => Node::Text(segments),
                }
            }
            Value::Object(map) => {
                Node::Object(map.into_iter().map(|(k, v)| (k, Node::of(v))).collect())
            }
            Value::Array(list) => Node::Array(list.into_iter().map(Node::of).collect()),
            other => Node::Literal(other),
        }
    }

    fn bind(&self, value: &Value, bound: &mut Bound) -> Option<()> {
        match (self, value) {
            (Node::Literal(want), got) => (want == got).then_some(()),
            (Node::Hole(i), got) => {
                bound.insert(*i, Piece::Value(got.clone()));
                Some(())
            }
            (Node::Text(segments), Value::String(s)) => {
                for (i, piece) in split(segments, s)? {
                    bound.insert(i, Piece::Text(piece.to_owned()));
                }
                Some(())
            }
            (Node::Object(entries), Value::Object(map)) => {
                for (key, node) in entries {
                    node.bind(map.get(key)?, bound)?;
                }
                Some(())
            }
            (Node::Array(nodes), Value::Array(list)) if nodes.len() == list.len() => {
                for (node, v) in nodes.iter().zip(list) {
                    node.bind(v, bound)?;
                }
                Some(())
            }
            _ => None,
        }
    }
}

/// A string of the template's JSON cut at its marks (`\0` index `\0`).
fn marks(s: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for (n, piece) in s.split(MARK).enumerate() {
        if n % 2 == 1 {
            if let Ok(i) = piece.parse() {
                out.push(Segment::Hole(i));
                continue;
            }
        }
        if !piece.is_empty() {
            out.push(Segment::Literal(piece.to_owned()));
        }
    }
    out
}

/// Takes `text` apart along `segments`: literal text must be where the template has it; a
/// placeholder takes what lies up to the first occurrence of the literal after it (up to
/// the end for the last one). `None` if the text does not fit.
fn split<'t>(segments: &[Segment], text: &'t str) -> Option<Vec<(usize, &'t str)>> {
    let mut out = Vec::new();
    let mut rest = text;
    for (n, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Literal(lit) => rest = rest.strip_prefix(lit.as_str())?,
            Segment::Hole(i) => {
                let piece = match segments.get(n + 1) {
                    None => rest,
                    // The last literal ends the text.
                    Some(Segment::Literal(lit)) if n + 2 == segments.len() => {
                        rest.strip_suffix(lit.as_str())?
                    }
                    Some(Segment::Literal(lit)) => &rest[..rest.find(lit.as_str())?],
                    // Two placeholders in a row cannot be told apart.
                    Some(Segment::Hole(_)) => return None,
                };
                out.push((*i, piece));
                rest = &rest[piece.len()..];
            }
        }
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::json;
    use wsmux_config::Unmatched;

    /// Topic settings for a key, templates and local answers.
    fn settings(
        key: &str,
        subscribe: &str,
        unsubscribe: Option<&str>,
        item: Option<&str>,
        ack: Option<&str>,
    ) -> TopicSettings {
        let key = TopicKey::parse_key(key).unwrap();
        let fields = key.field_names();
        let t = |text: &str| Template::parse(text, &fields).unwrap();
        TopicSettings {
            subscribe: t(subscribe),
            unsubscribe: unsubscribe.map(t),
            item: item.map(t),
            max_per_message: 50,
            rate: None,
            max_per_connection: None,
            unmatched: Unmatched::All,
            reply_id: None,
            reply_error: None,
            reply_ok: None,
            reply_timeout: Duration::from_secs(10),
            max_per_client: 1024,
            max_topics: 65536,
            max_topic_bytes: 256,
            local_ack: ack.map(t),
            local_unsubscribe_ack: ack.map(t),
            key,
        }
    }

    fn binance() -> Interceptor {
        Interceptor::new(&settings(
            "/stream",
            r#"{"method":"SUBSCRIBE","params":{topics},"id":{id}}"#,
            Some(r#"{"method":"UNSUBSCRIBE","params":{topics},"id":{id}}"#),
            None,
            Some(r#"{"result":null,"id":{id}}"#),
        ))
    }

    fn sub(topics: &[&str], id: Option<Value>) -> Request {
        Request::Subscribe(Parsed {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            id,
        })
    }

    fn unsub(topics: &[&str], id: Option<Value>) -> Request {
        Request::Unsubscribe(Parsed {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            id,
        })
    }

    #[test]
    fn binance_messages_as_sdks_write_them() {
        let b = binance();
        let cases = [
            (
                r#"{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@trade"],"id":1}"#,
                sub(&["btcusdt@trade", "ethusdt@trade"], Some(json!(1))),
            ),
            // Python's json.dumps: spaces; another key order; an id the app chose.
            (
                r#"{"id": "abc", "method": "SUBSCRIBE", "params": ["btcusdt@trade"]}"#,
                sub(&["btcusdt@trade"], Some(json!("abc"))),
            ),
            (
                r#"{"method":"UNSUBSCRIBE","params":["btcusdt@trade","btcusdt@trade"],"id":7}"#,
                unsub(&["btcusdt@trade"], Some(json!(7))),
            ),
            // Keys the template does not name are let through.
            (
                r#"{"method":"SUBSCRIBE","params":["a@trade"],"id":2,"extra":true}"#,
                sub(&["a@trade"], Some(json!(2))),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(b.classify(text), want, "{text}");
        }
        for other in [
            r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#,
            r#"{"method":"SUBSCRIBE","params":["a@trade"]}"#,
            r#"{"method":"SUBSCRIBE","params":"a@trade","id":1}"#,
            r#"{"method":"SUBSCRIBE","params":[{"x":1}],"id":1}"#,
            r#"["SUBSCRIBE"]"#,
            "not json",
            "",
        ] {
            assert_eq!(b.classify(other), Request::Other, "{other}");
        }
    }

    #[test]
    fn answers_carry_the_apps_id_as_it_was_given() {
        let b = binance();
        let Request::Subscribe(p) =
            b.classify(r#"{"method":"SUBSCRIBE","params":["a@trade"],"id":1}"#)
        else {
            panic!()
        };
        assert_eq!(
            b.answer(true, &p).as_deref(),
            Some(r#"{"result":null,"id":1}"#)
        );
        let Request::Subscribe(p) =
            b.classify(r#"{"method":"SUBSCRIBE","params":["a@trade"],"id":"x\"y"}"#)
        else {
            panic!()
        };
        assert_eq!(
            b.answer(true, &p).as_deref(),
            Some(r#"{"result":null,"id":"x\"y"}"#)
        );
        // A quoted `{id}` in the answer takes a string id's text, or a number's digits.
        let bybit = Interceptor::new(&settings(
            "/topic",
            r#"{"op":"subscribe","args":{topics},"req_id":"{id}"}"#,
            None,
            None,
            Some(
                r#"{"success":true,"ret_msg":"","op":"subscribe","req_id":"{id}","args":{topics}}"#,
            ),
        ));
        let parsed = Parsed {
            topics: vec!["publicTrade.BTCUSDT".into()],
            id: Some(json!("a\"1")),
        };
        assert_eq!(
            bybit.answer(true, &parsed).as_deref(),
            Some(
                r#"{"success":true,"ret_msg":"","op":"subscribe","req_id":"a\"1","args":["publicTrade.BTCUSDT"]}"#
            )
        );
        let numeric = Parsed {
            id: Some(json!(5)),
            ..parsed
        };
        assert!(bybit
            .answer(true, &numeric)
            .unwrap()
            .contains(r#""req_id":"5""#));
        // No answer template: no answer.
        let silent = Interceptor::new(&settings(
            "/topic",
            r#"{"args":{topics}}"#,
            None,
            None,
            None,
        ));
        assert_eq!(silent.answer(true, &numeric), None);
    }

    #[test]
    fn the_five_formats_read_backwards() {
        let okx = Interceptor::new(&settings(
            "{/arg/channel}:{/arg/instId}",
            r#"{"op":"subscribe","args":{items}}"#,
            Some(r#"{"op":"unsubscribe","args":{items}}"#),
            Some(r#"{"channel":{channel},"instId":{instId}}"#),
            None,
        ));
        assert_eq!(
            okx.classify(r#"{"op":"subscribe","args":[{"channel":"tickers","instId":"BTC-USDT"},{"instId":"ETH-USDT","channel":"trades"}]}"#),
            sub(&["tickers:BTC-USDT", "trades:ETH-USDT"], None)
        );
        assert_eq!(
            okx.classify(
                r#"{"op":"unsubscribe","args":[{"channel":"tickers","instId":"BTC-USDT"}]}"#
            ),
            unsub(&["tickers:BTC-USDT"], None)
        );
        let bybit = Interceptor::new(&settings(
            "/topic",
            r#"{"op":"subscribe","args":{topics},"req_id":"{id}"}"#,
            None,
            None,
            None,
        ));
        assert_eq!(
            bybit.classify(r#"{"req_id":"17","op":"subscribe","args":["publicTrade.BTCUSDT"]}"#),
            sub(&["publicTrade.BTCUSDT"], Some(json!("17")))
        );
        // Without an unsubscribe template, an unsubscribe is just a message.
        assert_eq!(
            bybit.classify(r#"{"req_id":"1","op":"unsubscribe","args":["x"]}"#),
            Request::Other
        );
        let kraken = Interceptor::new(&settings(
            "{/channel}:{/data/0/symbol}",
            r#"{"method":"subscribe","params":{"channel":{channel},"symbol":{symbol[]}},"req_id":{id}}"#,
            None,
            None,
            None,
        ));
        assert_eq!(
            kraken.classify(r#"{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","ETH/USD"],"snapshot":true},"req_id":4}"#),
            sub(&["ticker:BTC/USD", "ticker:ETH/USD"], Some(json!(4)))
        );
        let deribit = Interceptor::new(&settings(
            "/params/channel",
            r#"{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":{topics}},"id":{id}}"#,
            None,
            None,
            None,
        ));
        assert_eq!(
            deribit.classify(r#"{"jsonrpc":"2.0","id":9,"method":"public/subscribe","params":{"channels":["ticker.BTC-PERPETUAL.raw"]}}"#),
            sub(&["ticker.BTC-PERPETUAL.raw"], Some(json!(9)))
        );
        // The literal `jsonrpc` must match.
        assert_eq!(
            deribit.classify(r#"{"jsonrpc":"1.0","id":9,"method":"public/subscribe","params":{"channels":["x"]}}"#),
            Request::Other
        );
    }

    #[test]
    fn placeholders_inside_strings_and_one_topic_per_message() {
        let f = Interceptor::new(&settings(
            "{/a}.{/b}",
            r#"{"sub":"market.{a|raw}.{b|raw}","id":"r{id}"}"#,
            None,
            None,
            None,
        ));
        assert_eq!(
            f.classify(r#"{"id":"r12","sub":"market.btc.kline"}"#),
            sub(&["btc.kline"], Some(json!("12")))
        );
        assert_eq!(
            f.classify(r#"{"id":"x12","sub":"market.btc.kline"}"#),
            Request::Other
        );
        let one = Interceptor::new(&settings(
            "/t",
            r#"{"op":"sub","t":{topic}}"#,
            None,
            None,
            None,
        ));
        assert_eq!(one.classify(r#"{"t":"x","op":"sub"}"#), sub(&["x"], None));
        assert_eq!(one.classify(r#"{"t":5,"op":"sub"}"#), sub(&["5"], None));
    }

    #[test]
    fn templates_that_are_not_json_match_as_text() {
        let nats = Interceptor::new(&settings(
            r#"{/subject}"#,
            "SUB {topic|raw} {id}\r\n",
            Some("UNSUB {id} {topic|raw}\r\n"),
            None,
            None,
        ));
        assert_eq!(
            nats.classify("SUB updates 1\r\n"),
            sub(&["updates"], Some(json!(1)))
        );
        assert_eq!(
            nats.classify("UNSUB 1 updates\r\n"),
            unsub(&["updates"], Some(json!(1)))
        );
        assert_eq!(nats.classify("PUB updates 5\r\n"), Request::Other);
    }

    #[test]
    fn splitting_strings() {
        use Segment::{Hole, Literal};
        let l = |s: &str| Literal(s.to_owned());
        assert_eq!(
            split(&[l("a."), Hole(0), l("."), Hole(1), l("!")], "a.x.y.z!"),
            Some(vec![(0, "x"), (1, "y.z")])
        );
        assert_eq!(split(&[Hole(0)], "anything"), Some(vec![(0, "anything")]));
        assert_eq!(split(&[l("a"), Hole(0)], "b"), None);
        assert_eq!(split(&[Hole(0), Hole(1)], "ab"), None);
        assert_eq!(split(&[l("x")], "xy"), None);
    }
}
