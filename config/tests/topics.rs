//! `[endpoints.NAME.topics]`: the five exchange formats load into the expected settings, and
//! every mistake is an error naming the file and the key.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use wsmux_config::{
    ConfigError, KeyPart, Loader, Origin, Pointer, Rate, Settings, Template, TemplatePart,
    TopicKey, TopicSettings, Unmatched,
};

/// Name given to inline test texts; errors from them start with it.
const ORIGIN: &str = "wsmux.toml";

fn load_with(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Loader::new().toml_str(toml, ORIGIN).env(vars).load()
}

/// The topics of the only endpoint, `x`, with `table` as its `[endpoints.x.topics]`.
fn topics(table: &str) -> TopicSettings {
    let settings = load_with(&endpoint(table), &[]).unwrap_or_else(|e| panic!("{e}"));
    settings.endpoints[0]
        .topics
        .clone()
        .expect("the table turns topics on")
}

fn endpoint(table: &str) -> String {
    format!("[endpoints.x]\nurl = \"wss://example.com/\"\n[endpoints.x.topics]\n{table}")
}

/// The error for `table`, which must name `endpoints.x.topics.KEY` and the inline text.
fn error(table: &str, key: &str) -> String {
    let err = match load_with(&endpoint(table), &[]) {
        Ok(_) => panic!("should fail:\n{table}"),
        Err(e) => e,
    };
    let full = format!("endpoints.x.topics.{key}");
    assert_eq!(err.key(), Some(full.as_str()), "{table}\n{err}");
    assert_eq!(
        err.origin(),
        Origin::Inline(ORIGIN.into()),
        "{table}\n{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{ORIGIN}: {full}: ")),
        "{table}\n{text}"
    );
    text
}

fn pointer(text: &str) -> Pointer {
    Pointer {
        text: text.into(),
        tokens: text.split('/').skip(1).map(String::from).collect(),
    }
}

fn field(name: &str, at: &str) -> KeyPart {
    KeyPart::Field {
        name: name.into(),
        pointer: pointer(at),
    }
}

fn lit(text: &str) -> TemplatePart {
    TemplatePart::Literal(text.into())
}

fn scalar(name: &str) -> TemplatePart {
    TemplatePart::Field {
        name: name.into(),
        raw: false,
    }
}

fn template(text: &str, parts: Vec<TemplatePart>) -> Template {
    Template {
        text: text.into(),
        parts,
    }
}

/// Settings with every default, for `key` and `subscribe`.
fn defaults(key: Vec<KeyPart>, subscribe: Template) -> TopicSettings {
    TopicSettings {
        key: TopicKey::Json(key),
        subscribe,
        unsubscribe: None,
        item: None,
        max_per_message: 50,
        rate: Some(Rate {
            count: 5,
            per: Duration::from_secs(1),
        }),
        max_per_connection: None,
        unmatched: Unmatched::All,
        reply_id: None,
        reply_error: Some(pointer("/error")),
        reply_ok: None,
        reply_timeout: Duration::from_secs(10),
        max_per_client: 1024,
        max_topics: 65536,
        max_topic_bytes: 256,
        local_ack: None,
        local_unsubscribe_ack: None,
    }
}

/// A `{"method":METHOD,"params":{topics},"id":{id}}` template (Binance).
fn binance_template(method: &str) -> Template {
    template(
        &format!(r#"{{"method":"{method}","params":{{topics}},"id":{{id}}}}"#),
        vec![
            lit(&format!(r#"{{"method":"{method}","params":"#)),
            TemplatePart::Topics,
            lit(r#","id":"#),
            TemplatePart::Id,
            lit("}"),
        ],
    )
}

#[test]
fn binance() {
    let settings = topics(
        r#"
        key = "/stream"
        subscribe = '{"method":"SUBSCRIBE","params":{topics},"id":{id}}'
        unsubscribe = '{"method":"UNSUBSCRIBE","params":{topics},"id":{id}}'
        max_per_message = 50
        rate = "5/s"
        max_per_connection = 1024
        "#,
    );
    assert_eq!(
        settings,
        TopicSettings {
            unsubscribe: Some(binance_template("UNSUBSCRIBE")),
            max_per_connection: Some(1024),
            // A template uses `{id}`: answers carry it at `/id`.
            reply_id: Some(pointer("/id")),
            ..defaults(
                vec![field("stream", "/stream")],
                binance_template("SUBSCRIBE")
            )
        }
    );
}

#[test]
fn okx() {
    let settings = topics(
        r#"
        key = "{/arg/channel}:{/arg/instId}"
        subscribe = '{"op":"subscribe","args":{items}}'
        unsubscribe = '{"op":"unsubscribe","args":{items}}'
        item = '{"channel":{channel},"instId":{instId}}'
        "#,
    );
    let op = |op: &str| {
        template(
            &format!(r#"{{"op":"{op}","args":{{items}}}}"#),
            vec![
                lit(&format!(r#"{{"op":"{op}","args":"#)),
                TemplatePart::Items,
                lit("}"),
            ],
        )
    };
    assert_eq!(
        settings,
        TopicSettings {
            unsubscribe: Some(op("unsubscribe")),
            item: Some(template(
                r#"{"channel":{channel},"instId":{instId}}"#,
                vec![
                    lit(r#"{"channel":"#),
                    scalar("channel"),
                    lit(r#","instId":"#),
                    scalar("instId"),
                    lit("}"),
                ],
            )),
            // No `{id}`: answers are not matched.
            reply_id: None,
            ..defaults(
                vec![
                    field("channel", "/arg/channel"),
                    KeyPart::Literal(":".into()),
                    field("instId", "/arg/instId"),
                ],
                op("subscribe"),
            )
        }
    );
    assert_eq!(
        settings.key.split("tickers:BTC-USDT"),
        Some(vec![("channel", "tickers"), ("instId", "BTC-USDT")])
    );
}

#[test]
fn bybit() {
    let settings = topics(
        r#"
        key = "/topic"
        subscribe = '{"op":"subscribe","args":{topics},"req_id":"{id}"}'
        unsubscribe = '{"op":"unsubscribe","args":{topics},"req_id":"{id}"}'
        max_per_message = 10
        reply_id = "/req_id"
        reply_ok = "/success"
        reply_error = "/ret_msg"
        "#,
    );
    let op = |op: &str| {
        template(
            &format!(r#"{{"op":"{op}","args":{{topics}},"req_id":"{{id}}"}}"#),
            vec![
                lit(&format!(r#"{{"op":"{op}","args":"#)),
                TemplatePart::Topics,
                lit(r#","req_id":""#),
                TemplatePart::Id,
                lit(r#""}"#),
            ],
        )
    };
    assert_eq!(
        settings,
        TopicSettings {
            unsubscribe: Some(op("unsubscribe")),
            max_per_message: 10,
            reply_id: Some(pointer("/req_id")),
            reply_ok: Some(pointer("/success")),
            reply_error: Some(pointer("/ret_msg")),
            ..defaults(vec![field("topic", "/topic")], op("subscribe"))
        }
    );
}

#[test]
fn kraken() {
    let settings = topics(
        r#"
        key = "{/channel}:{/data/0/symbol}"
        subscribe = '{"method":"subscribe","params":{"channel":{channel},"symbol":{symbol[]}},"req_id":{id}}'
        unsubscribe = '{"method":"unsubscribe","params":{"channel":{channel},"symbol":{symbol[]}},"req_id":{id}}'
        reply_id = "/req_id"
        "#,
    );
    let method = |method: &str| {
        template(
            &format!(
                r#"{{"method":"{method}","params":{{"channel":{{channel}},"symbol":{{symbol[]}}}},"req_id":{{id}}}}"#
            ),
            vec![
                lit(&format!(r#"{{"method":"{method}","params":{{"channel":"#)),
                scalar("channel"),
                lit(r#","symbol":"#),
                TemplatePart::FieldArray("symbol".into()),
                lit(r#"},"req_id":"#),
                TemplatePart::Id,
                lit("}"),
            ],
        )
    };
    assert_eq!(
        settings,
        TopicSettings {
            unsubscribe: Some(method("unsubscribe")),
            reply_id: Some(pointer("/req_id")),
            ..defaults(
                vec![
                    field("channel", "/channel"),
                    KeyPart::Literal(":".into()),
                    field("symbol", "/data/0/symbol"),
                ],
                method("subscribe"),
            )
        }
    );
}

#[test]
fn deribit() {
    let settings = topics(
        r#"
        key = "/params/channel"
        subscribe = '{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":{topics}},"id":{id}}'
        unsubscribe = '{"jsonrpc":"2.0","method":"public/unsubscribe","params":{"channels":{topics}},"id":{id}}'
        "#,
    );
    let method = |method: &str| {
        template(
            &format!(
                r#"{{"jsonrpc":"2.0","method":"public/{method}","params":{{"channels":{{topics}}}},"id":{{id}}}}"#
            ),
            vec![
                lit(&format!(
                    r#"{{"jsonrpc":"2.0","method":"public/{method}","params":{{"channels":"#
                )),
                TemplatePart::Topics,
                lit(r#"},"id":"#),
                TemplatePart::Id,
                lit("}"),
            ],
        )
    };
    assert_eq!(
        settings,
        TopicSettings {
            unsubscribe: Some(method("unsubscribe")),
            reply_id: Some(pointer("/id")),
            ..defaults(
                vec![field("channel", "/params/channel")],
                method("subscribe")
            )
        }
    );
}

#[test]
fn without_a_topics_table_there_are_no_topics() {
    let settings = load_with("[endpoints.x]\nurl = \"wss://example.com/\"\n", &[]).unwrap();
    assert_eq!(settings.endpoints[0].topics, None);
}

#[test]
fn every_other_key_and_value() {
    let settings = topics(
        r#"
        key_regex = '"topic":"([^"]+)"'
        subscribe = 'SUB {topic|raw} $HOME $$ ${{X}} {id}'
        rate = "100/10s"
        unmatched = "drop"
        reply_id = "none"
        reply_error = "none"
        reply_timeout = "2s"
        max_per_client = 3
        max_topics = 7
        max_topic_bytes = 65536
        max_per_message = 10000
        max_per_connection = 1
        "#,
    );
    match &settings.key {
        TopicKey::Regex(regex) => assert_eq!(regex.as_str(), r#""topic":"([^"]+)""#),
        other => panic!("{other:?}"),
    }
    // Templates are not secrets: `$` stays as written (`{{` and `}}` are braces).
    assert_eq!(
        settings.subscribe.parts,
        [
            lit("SUB "),
            TemplatePart::Topic { raw: true },
            lit(" $HOME $$ ${X} "),
            TemplatePart::Id,
        ]
    );
    assert_eq!(
        settings.rate,
        Some(Rate {
            count: 100,
            per: Duration::from_secs(10)
        })
    );
    assert_eq!(settings.unmatched, Unmatched::Drop);
    // "none": an `{id}` that the upstream does not echo, and no error field.
    assert_eq!(settings.reply_id, None);
    assert_eq!(settings.reply_error, None);
    assert_eq!(settings.reply_timeout, Duration::from_secs(2));
    assert_eq!(
        (
            settings.max_per_client,
            settings.max_topics,
            settings.max_topic_bytes,
            settings.max_per_message,
            settings.max_per_connection
        ),
        (3, 7, 65536, 10000, Some(1))
    );

    let unpaced = topics("key = \"/s\"\nsubscribe = '{topics}'\nrate = \"none\"");
    assert_eq!(unpaced.rate, None);
    assert_eq!(unpaced.reply_id, None, "no `{{id}}`, no reply_id");
    // A single pointer is one field, named after its last token: `{s}` is the topic too.
    let by_field = topics("key = \"/data/0/s\"\nsubscribe = 'sub {s}'");
    assert_eq!(by_field.subscribe.parts, [lit("sub "), scalar("s")]);
    let named = topics(
        "key = \"{sym=/data/0/symbol}@{/kind}\"\nsubscribe = '{\"s\":{sym[]},\"k\":{kind}}'",
    );
    assert_eq!(named.key.field_names(), ["sym", "kind"]);
}

#[test]
fn which_topic_is_found_and_how() {
    let key_regex = "key_regex = '\"t\":\"([^\"]+)\"'\nsubscribe = '{topics}'";
    for (table, key, says) in [
        (
            "key = \"/a\"\nkey_regex = '(a)'\nsubscribe = '{topics}'",
            "key_regex",
            "cannot be combined with `key`",
        ),
        ("subscribe = '{topics}'", "key", "is required"),
        ("key = \"\"\nsubscribe = '{topics}'", "key", "empty"),
        (
            "key = \"stream\"\nsubscribe = '{topics}'",
            "key",
            "must start with `/`",
        ),
        (
            "key = \"{/a}{/b}\"\nsubscribe = '{topics}'",
            "key",
            "literal text between",
        ),
        (
            "key_regex = 'no group'\nsubscribe = '{topics}'",
            "key_regex",
            "needs a capture group",
        ),
        (
            "key_regex = '(unclosed'\nsubscribe = '{topics}'",
            "key_regex",
            "invalid regular expression",
        ),
        // A regex's topics have no fields.
        (
            &format!("{key_regex}\nunsubscribe = '{{\"c\":{{channel}},\"t\":{{topic}}}}'"),
            "unsubscribe",
            "unknown field `channel`",
        ),
    ] {
        let text = error(table, key);
        assert!(text.contains(says), "{table}\n{text}");
    }
}

#[test]
fn template_mistakes() {
    let okx = "key = \"{/arg/channel}:{/arg/instId}\"\n";
    for (table, key, says) in [
        ("key = \"/s\"", "subscribe", "is required"),
        (
            "key = \"/s\"\nsubscbe = '{topics}'",
            "subscbe",
            "did you mean `subscribe`",
        ),
        // A field the key does not have.
        (
            &format!("{okx}subscribe = '{{\"args\":{{instid[]}}}}'"),
            "subscribe",
            "unknown field `instid`",
        ),
        (
            &format!("{okx}subscribe = '{{\"c\":{{channel}},\"i\":{{instId}},\"t\":{{topics}}}}'\nunsubscribe = '{{\"x\":{{sym}}}}'"),
            "unsubscribe",
            "unknown field `sym`",
        ),
        // `{items}` and `item` go together.
        (
            &format!("{okx}subscribe = '{{\"args\":{{items}}}}'"),
            "subscribe",
            "needs `item`",
        ),
        (
            &format!("{okx}subscribe = '{{\"args\":{{topics}}}}'\nunsubscribe = '{{\"args\":{{items}}}}'"),
            "unsubscribe",
            "needs `item`",
        ),
        (
            &format!("{okx}subscribe = '{{\"args\":{{topics}}}}'\nitem = '{{topic}}'"),
            "item",
            "only used by `{items}`",
        ),
        (
            &format!("{okx}subscribe = '{{\"args\":{{items}}}}'\nitem = '{{\"all\":{{topics}}}}'"),
            "item",
            "{topics}",
        ),
        (
            &format!("{okx}subscribe = '{{\"args\":{{items}}}}'\nitem = '{{\"c\":{{channel}}}}'"),
            "item",
            "does not say which topic it is about",
        ),
        // `{topic}` is one topic per message.
        (
            "key = \"/s\"\nsubscribe = '{\"one\":{topic},\"all\":{topics}}'",
            "subscribe",
            "cannot be combined with `{topics}`",
        ),
        (
            &format!("{okx}subscribe = '{{\"t\":{{topic}},\"a\":{{items}}}}'\nitem = '{{topic}}'"),
            "subscribe",
            "cannot be combined with `{items}`",
        ),
        (
            &format!("{okx}subscribe = '{{\"t\":{{topic|raw}},\"c\":{{channel[]}}}}'"),
            "subscribe",
            "cannot be combined with `{channel[]}`",
        ),
        // A message must say which topics it is about.
        (
            "key = \"/s\"\nsubscribe = '{\"op\":\"ping\",\"id\":{id}}'",
            "subscribe",
            "does not say which topics",
        ),
        (
            &format!("{okx}subscribe = '{{\"c\":{{channel}}}}'"),
            "subscribe",
            "every field of the key: `{channel}`, `{instId}`",
        ),
    ] {
        let text = error(table, key);
        assert!(text.contains(says), "{table}\n{text}");
    }
}

#[test]
fn answers_and_limits() {
    let base = "key = \"/s\"\nsubscribe = '{\"p\":{topics},\"id\":{id}}'\n";
    let no_id = "key = \"/s\"\nsubscribe = '{topics}'\n";
    for (table, key, says) in [
        (
            format!("{no_id}reply_id = \"/id\""),
            "reply_id",
            "neither template has one",
        ),
        (
            format!("{no_id}reply_ok = \"/success\""),
            "reply_ok",
            "no effect without `reply_id`",
        ),
        (
            format!("{no_id}reply_error = \"/err\""),
            "reply_error",
            "no effect without `reply_id`",
        ),
        (
            format!("{base}reply_id = \"none\"\nreply_ok = \"/ok\""),
            "reply_ok",
            "no effect",
        ),
        (format!("{base}reply_id = \"id\""), "reply_id", "`/`"),
        (
            format!("{base}reply_ok = \"\""),
            "reply_ok",
            "must not be empty",
        ),
        (
            format!("{base}reply_error = \"/a~2\""),
            "reply_error",
            "`~`",
        ),
        (
            format!("{base}reply_timeout = \"0s\""),
            "reply_timeout",
            "greater than zero",
        ),
        (
            format!("{base}reply_timeout = \"400d\""),
            "reply_timeout",
            "too long",
        ),
        (
            format!("{base}reply_timeout = 5"),
            "reply_timeout",
            "duration",
        ),
        (
            format!("{base}max_per_message = 0"),
            "max_per_message",
            "between 1 and 10000",
        ),
        (
            format!("{base}max_per_message = 10001"),
            "max_per_message",
            "between 1 and 10000",
        ),
        (
            format!("{base}max_per_connection = 0"),
            "max_per_connection",
            "at least 1",
        ),
        (
            format!("{base}max_per_connection = 1099511627777"),
            "max_per_connection",
            "too large",
        ),
        (
            format!("{base}max_per_client = 0"),
            "max_per_client",
            "at least 1",
        ),
        (
            format!("{base}max_per_client = 1099511627777"),
            "max_per_client",
            "too large",
        ),
        (format!("{base}max_topics = 0"), "max_topics", "at least 1"),
        (
            format!("{base}max_topics = 1099511627777"),
            "max_topics",
            "too large",
        ),
        (
            format!("{base}max_topic_bytes = 0"),
            "max_topic_bytes",
            "between 1 and 65536",
        ),
        (
            format!("{base}max_topic_bytes = 65537"),
            "max_topic_bytes",
            "between 1 and 65536",
        ),
        (
            format!("{base}max_topics = -1"),
            "max_topics",
            "invalid value",
        ),
        (
            format!("{base}unmatched = \"some\""),
            "unmatched",
            "must be `all` or `drop`",
        ),
        (format!("{base}rate = \"5/x\""), "rate", "not a rate"),
        (format!("{base}rate = \"0/s\""), "rate", "at least 1"),
        (format!("{base}rate = \"1/2d\""), "rate", "at most one day"),
        (format!("{base}rate = 5"), "rate", "a string"),
    ] {
        let text = error(&table, key);
        assert!(text.contains(says), "{table}\n{text}");
    }
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsmux.toml");
    std::fs::write(
        &path,
        endpoint("key = \"/s\"\nsubscribe = '{topics}'\nmax_per_message = 0\n"),
    )
    .unwrap();
    let err = Loader::new()
        .file(&path)
        .env(HashMap::new())
        .load()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: endpoints.x.topics.max_per_message: must be between 1 and 10000",
            path.display()
        )
    );
}

#[test]
fn environment_overrides() {
    let toml = endpoint("key = \"/stream\"\nsubscribe = '{\"p\":{topics},\"id\":{id}}'\n");
    let settings = load_with(
        &toml,
        &[
            ("WSMUX_ENDPOINTS__X__TOPICS__RATE", "10/m"),
            ("WSMUX_ENDPOINTS__X__TOPICS__MAX_PER_CLIENT", "5"),
            ("WSMUX_ENDPOINTS__X__TOPICS__UNMATCHED", "drop"),
            ("WSMUX_ENDPOINTS__X__TOPICS__REPLY_TIMEOUT", "3s"),
            (
                "WSMUX_ENDPOINTS__X__TOPICS__UNSUBSCRIBE",
                r#"{"u":{topics},"id":{id}}"#,
            ),
        ],
    )
    .unwrap();
    let topics = settings.endpoints[0].topics.as_ref().unwrap();
    assert_eq!(
        topics.rate,
        Some(Rate {
            count: 10,
            per: Duration::from_secs(60)
        })
    );
    assert_eq!(topics.max_per_client, 5);
    assert_eq!(topics.unmatched, Unmatched::Drop);
    assert_eq!(topics.reply_timeout, Duration::from_secs(3));
    assert_eq!(
        topics.unsubscribe.as_ref().map(|t| t.text.as_str()),
        Some(r#"{"u":{topics},"id":{id}}"#)
    );

    // The environment alone can turn topics on.
    let settings = load_with(
        "",
        &[
            ("WSMUX_ENDPOINTS__ENV__URL", "wss://example.com/"),
            ("WSMUX_ENDPOINTS__ENV__TOPICS__KEY", "/topic"),
            ("WSMUX_ENDPOINTS__ENV__TOPICS__SUBSCRIBE", "{topics}"),
        ],
    )
    .unwrap();
    let topics = settings.endpoints[0].topics.as_ref().unwrap();
    assert_eq!(topics.key.field_names(), ["topic"]);

    // Errors name the variable.
    let err = load_with(&toml, &[("WSMUX_ENDPOINTS__X__TOPICS__MAX_TOPICS", "0")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable WSMUX_ENDPOINTS__X__TOPICS__MAX_TOPICS: \
         endpoints.x.topics.max_topics: must be at least 1"
    );
    let err = load_with(&toml, &[("WSMUX_ENDPOINTS__X__TOPICS__RATES", "1/s")]).unwrap_err();
    assert!(err.to_string().contains("did you mean `rate`"), "{err}");
    let err = load_with(&toml, &[("WSMUX_ENDPOINTS_X_TOPICS_RATE", "1/s")]).unwrap_err();
    assert!(err.to_string().contains("separated by `__`"), "{err}");
}

#[test]
fn a_changed_template_changes_the_endpoint() {
    let load = |subscribe: &str| {
        load_with(
            &endpoint(&format!("key = \"/s\"\nsubscribe = '{subscribe}'\n")),
            &[],
        )
        .unwrap()
        .endpoints
        .remove(0)
    };
    let a = load(r#"{"op":"sub","args":{topics}}"#);
    assert_eq!(a, load(r#"{"op":"sub","args":{topics}}"#));
    assert_ne!(a, load(r#"{"op":"subscribe","args":{topics}}"#));
    let mut other_key = a.clone();
    if let Some(topics) = other_key.topics.as_mut() {
        topics.key = TopicKey::parse_key("/t").unwrap();
    }
    assert_ne!(a, other_key);
    let mut none = a.clone();
    none.topics = None;
    assert_ne!(a, none);
}

#[test]
fn the_example_file_loads_its_topics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("wsmux.example.toml");
    let env: HashMap<String, String> = [("FEED_TOKEN", "ft"), ("PRICES_TOKEN", "pt")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let settings = Loader::new()
        .file(&path)
        .env(env)
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    let trades = settings
        .endpoints
        .iter()
        .find(|e| e.name == "trades")
        .expect("the example has a `trades` endpoint");
    let binance_ack = template(
        r#"{"result":null,"id":{id}}"#,
        vec![lit(r#"{"result":null,"id":"#), TemplatePart::Id, lit("}")],
    );
    assert_eq!(
        trades.topics,
        Some(TopicSettings {
            unsubscribe: Some(binance_template("UNSUBSCRIBE")),
            max_per_connection: Some(1024),
            reply_id: Some(pointer("/id")),
            local_ack: Some(binance_ack.clone()),
            local_unsubscribe_ack: Some(binance_ack),
            ..defaults(
                vec![field("stream", "/stream")],
                binance_template("SUBSCRIBE")
            )
        }),
        "the example spells out the defaults, besides max_per_connection and Binance's answer"
    );
    // The other endpoints have none.
    assert!(settings
        .endpoints
        .iter()
        .all(|e| e.name == "trades" || e.topics.is_none()));

    // The commented exchange blocks load as they are, once uncommented.
    let text = std::fs::read_to_string(&path).unwrap();
    let blocks: String = text
        .lines()
        .skip_while(|line| !line.starts_with("# OKX v5"))
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| line.starts_with('[') || line.contains(" = "))
        .map(|line| format!("{line}\n"))
        .collect();
    let settings = Loader::new()
        .toml_str(blocks, "example blocks")
        .env(HashMap::new())
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = settings.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["bybit", "deribit", "kraken", "okx"]);
    assert!(settings.endpoints.iter().all(|e| e.topics.is_some()));
}
