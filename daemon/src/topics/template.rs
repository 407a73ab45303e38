//! Sans-IO: subscribe and unsubscribe messages, rendered from their templates.
//!
//! Topics that go into one message must agree on every scalar field the template uses
//! (`{FIELD}`, `{FIELD|raw}`): they form a *group*. A message carries at most
//! `max_per_message` topics, and exactly one when the template uses `{topic}` or
//! `{topic|raw}`. Text is inserted as a JSON string escaped per RFC 8259, except with `|raw`.

use std::sync::Arc;

use wsmux_config::{Template, TemplatePart, TopicKey};

/// Most topics a message of `template` carries.
pub fn capacity(template: &Template, max_per_message: usize) -> usize {
    if template.one_topic() {
        1
    } else {
        max_per_message.max(1)
    }
}

/// The group of `topic` for `template`: its values of the template's scalar fields, in the
/// order of [`Template::scalar_fields`] (an absent field counts as empty).
pub fn group<'t>(key: &TopicKey, template: &Template, topic: &'t str) -> Vec<&'t str> {
    let names = template.scalar_fields();
    if names.is_empty() {
        return Vec::new();
    }
    let fields = key.split(topic).unwrap_or_default();
    names.iter().map(|n| lookup(&fields, n)).collect()
}

/// The message of `template` for `topics` (one group, at most [`capacity`] of them).
/// `id` fills `{id}` (`0` if absent); `item` renders `{items}` (without it, `{items}` is
/// rendered like `{topics}`). A topic that does not split into the key's fields has empty
/// fields.
pub fn render(
    key: &TopicKey,
    template: &Template,
    item: Option<&Template>,
    topics: &[Arc<str>],
    id: Option<u64>,
) -> String {
    let split: Vec<Vec<(&str, &str)>> = topics
        .iter()
        .map(|t| key.split(t).unwrap_or_default())
        .collect();
    let mut out = String::with_capacity(template.text.len() + topics.len() * 24);
    render_into(&mut out, template, item, topics, &split, id);
    out
}

/// [`render`] into `out`, with each topic's fields already split.
fn render_into(
    out: &mut String,
    template: &Template,
    item: Option<&Template>,
    topics: &[Arc<str>],
    split: &[Vec<(&str, &str)>],
    id: Option<u64>,
) {
    let first = topics.first().map_or("", |t| &**t);
    let first_fields: &[(&str, &str)] = split.first().map_or(&[], Vec::as_slice);
    for part in &template.parts {
        match part {
            TemplatePart::Literal(text) => out.push_str(text),
            TemplatePart::Topics => json_array(out, topics.iter().map(|t| &**t)),
            TemplatePart::Topic { raw: true } => out.push_str(first),
            TemplatePart::Topic { raw: false } => json_string(out, first),
            TemplatePart::Id => out.push_str(&id.unwrap_or(0).to_string()),
            TemplatePart::Field { name, raw } => {
                let value = lookup(first_fields, name);
                if *raw {
                    out.push_str(value);
                } else {
                    json_string(out, value);
                }
            }
            TemplatePart::FieldArray(name) => {
                json_array(out, split.iter().map(|f| lookup(f, name)));
            }
            TemplatePart::Items => match item {
                Some(item) => {
                    out.push('[');
                    for (i, topic) in topics.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        render_into(
                            out,
                            item,
                            None,
                            std::slice::from_ref(topic),
                            &split[i..=i],
                            id,
                        );
                    }
                    out.push(']');
                }
                None => json_array(out, topics.iter().map(|t| &**t)),
            },
        }
    }
}

/// The value of field `name` (empty if absent).
fn lookup<'t>(fields: &[(&str, &'t str)], name: &str) -> &'t str {
    fields
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, v)| v)
}

/// A JSON array of strings.
fn json_array<'s>(out: &mut String, items: impl Iterator<Item = &'s str>) {
    out.push('[');
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, s);
    }
    out.push(']');
}

/// `s` as a JSON string (RFC 8259): `"` and `\` escaped, control characters as `\n`, `\r`,
/// `\t`, `\b`, `\f` or `\u00XX`; everything else as is.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut rest = s;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.push_str(&rest[..at]);
        let c = rest.as_bytes()[at];
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => out.push_str(&format!("\\u{c:04x}")),
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A key and its parsed templates, as the config crate builds them.
    struct Format {
        key: TopicKey,
        subscribe: Template,
        item: Option<Template>,
    }

    fn format(key: &str, subscribe: &str, item: Option<&str>) -> Format {
        let key = TopicKey::parse_key(key).unwrap();
        let fields = key.field_names();
        let subscribe = Template::parse(subscribe, &fields).unwrap();
        let item = item.map(|i| Template::parse(i, &fields).unwrap());
        Format {
            key,
            subscribe,
            item,
        }
    }

    fn arcs(topics: &[&str]) -> Vec<Arc<str>> {
        topics.iter().map(|t| Arc::from(*t)).collect()
    }

    /// `topics`, in order, cut into the topic lists of messages of `template`: per group, in the
    /// order each group first appears, at most [`capacity`] topics each.
    fn batches(
        key: &TopicKey,
        template: &Template,
        max_per_message: usize,
        topics: impl IntoIterator<Item = Arc<str>>,
    ) -> Vec<Vec<Arc<str>>> {
        let cap = capacity(template, max_per_message);
        let mut out: Vec<Vec<Arc<str>>> = Vec::new();
        // Per group, the index in `out` of its batch that still has room.
        let mut open: HashMap<Vec<String>, usize> = HashMap::new();
        for topic in topics {
            let g: Vec<String> = group(key, template, &topic)
                .into_iter()
                .map(str::to_owned)
                .collect();
            match open.get(&g) {
                Some(&i) if out[i].len() < cap => out[i].push(topic),
                _ => {
                    open.insert(g, out.len());
                    out.push(vec![topic]);
                }
            }
        }
        out
    }

    fn render_all(f: &Format, topics: &[&str], max: usize) -> Vec<String> {
        batches(&f.key, &f.subscribe, max, arcs(topics))
            .iter()
            .enumerate()
            .map(|(i, b)| render(&f.key, &f.subscribe, f.item.as_ref(), b, Some(i as u64 + 1)))
            .collect()
    }

    #[test]
    fn renders_the_five_formats() {
        let binance = format(
            "/stream",
            r#"{"method":"SUBSCRIBE","params":{topics},"id":{id}}"#,
            None,
        );
        let okx = format(
            "{/arg/channel}:{/arg/instId}",
            r#"{"op":"subscribe","args":{items}}"#,
            Some(r#"{"channel":{channel},"instId":{instId}}"#),
        );
        let bybit = format(
            "/topic",
            r#"{"op":"subscribe","args":{topics},"req_id":"{id}"}"#,
            None,
        );
        let kraken = format(
            "{/channel}:{/data/0/symbol}",
            r#"{"method":"subscribe","params":{"channel":{channel},"symbol":{symbol[]}},"req_id":{id}}"#,
            None,
        );
        let deribit = format(
            "/params/channel",
            r#"{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":{topics}},"id":{id}}"#,
            None,
        );
        let cases: Vec<(&Format, Vec<&str>, Vec<&str>)> = vec![
            (
                &binance,
                vec!["btcusdt@trade", "ethusdt@depth"],
                vec![r#"{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@depth"],"id":1}"#],
            ),
            (
                &okx,
                vec!["tickers:BTC-USDT", "trades:ETH-USDT"],
                vec![
                    r#"{"op":"subscribe","args":[{"channel":"tickers","instId":"BTC-USDT"},{"channel":"trades","instId":"ETH-USDT"}]}"#,
                ],
            ),
            (
                &bybit,
                vec!["publicTrade.BTCUSDT"],
                vec![r#"{"op":"subscribe","args":["publicTrade.BTCUSDT"],"req_id":"1"}"#],
            ),
            (
                &kraken,
                vec!["ticker:BTC/USD", "book:BTC/USD", "ticker:ETH/USD"],
                vec![
                    r#"{"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","ETH/USD"]},"req_id":1}"#,
                    r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"]},"req_id":2}"#,
                ],
            ),
            (
                &deribit,
                vec!["ticker.BTC-PERPETUAL.raw"],
                vec![
                    r#"{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":["ticker.BTC-PERPETUAL.raw"]},"id":1}"#,
                ],
            ),
        ];
        for (f, topics, want) in cases {
            let got = render_all(f, &topics, 50);
            assert_eq!(got, want, "{}", f.subscribe.text);
            for message in &got {
                serde_json::from_str::<serde_json::Value>(message).unwrap();
            }
        }
    }

    #[test]
    fn escapes_and_raw_text() {
        let f = format(
            "{/a}:{/b}",
            r#"{"t":{topic},"r":"{topic|raw}","a":{a},"ar":{a|raw},"bs":{b[]}}"#,
            None,
        );
        let got = render(&f.key, &f.subscribe, None, &arcs(&["q\"\\:\n\u{1}é"]), None);
        assert_eq!(
            got,
            "{\"t\":\"q\\\"\\\\:\\n\\u0001é\",\"r\":\"q\"\\:\n\u{1}é\",\"a\":\"q\\\"\\\\\",\"ar\":q\"\\,\"bs\":[\"\\n\\u0001é\"]}"
        );
        let mut out = String::new();
        json_string(&mut out, "\u{8}\u{c}\t\r\u{1f}\u{7f}/");
        assert_eq!(out, "\"\\b\\f\\t\\r\\u001f\u{7f}/\"");
        // Every control character comes out as valid JSON that reads back the same.
        let all: String = (0u8..0x80).map(char::from).collect();
        let mut out = String::new();
        json_string(&mut out, &all);
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), all);
    }

    #[test]
    fn items_without_an_item_template_and_topics_that_do_not_split() {
        let f = format("{/a}:{/b}", r#"{"args":{items},"a":{a},"id":{id}}"#, None);
        let got = render(&f.key, &f.subscribe, None, &arcs(&["x:y", "nosplit"]), None);
        assert_eq!(got, r#"{"args":["x:y","nosplit"],"a":"x","id":0}"#);
        let got = render(&f.key, &f.subscribe, None, &[], Some(3));
        assert_eq!(got, r#"{"args":[],"a":"","id":3}"#);
    }
}
