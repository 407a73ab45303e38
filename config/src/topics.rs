//! `[endpoints.NAME.topics]`: how the daemon finds a message's topic and how it subscribes
//! and unsubscribes upstream, in parsed form. Parsing and validation live in `validate.rs`
//! (errors name the key and the file); the daemon only ever sees these types.
//!
//! Three small languages:
//! - a **pointer** is an RFC 6901 JSON pointer (`/arg/channel`, `/data/0/symbol`);
//! - the **key** is one pointer (`/stream`) or a template of pointers and literal text
//!   (`{/arg/channel}:{/arg/instId}`); each pointer is a *field*, named by its last
//!   non-numeric token (`channel`, `instId`, `symbol`) or explicitly (`{sym=/data/0/symbol}`).
//!   The same template takes a topic string apart into its fields (see [`TopicKey::split`]);
//! - a **message template** (`subscribe`, `unsubscribe`, `item`) is literal text with
//!   placeholders: `{topics}`, `{topic}`, `{id}`, `{FIELD}`, `{FIELD[]}`, `{items}`, and
//!   `{topic|raw}` / `{FIELD|raw}` for text inserted without JSON quoting.

use std::time::Duration;

/// An RFC 6901 JSON pointer, split into unescaped reference tokens (`~1` is `/`, `~0` is `~`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointer {
    /// As written in the configuration, e.g. `/arg/instId`.
    pub text: String,
    /// The unescaped reference tokens, e.g. `["arg", "instId"]`.
    pub tokens: Vec<String>,
}

/// One part of a key template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// Literal text between fields.
    Literal(String),
    /// A field: the value at `pointer` (a JSON string as is, a number as written).
    Field {
        /// Its name in message templates.
        name: String,
        /// Where it is in a message.
        pointer: Pointer,
    },
}

/// Where a message names its topic.
#[derive(Clone, Debug)]
pub enum TopicKey {
    /// `key`: pointers and literal text. Never two fields without a literal between them, so
    /// a topic string splits back into its fields without ambiguity.
    Json(Vec<KeyPart>),
    /// `key_regex`: capture group 1 of this pattern, over the message's bytes (text or
    /// binary). Topics of a regex key have no fields.
    Regex(regex::bytes::Regex),
}

impl PartialEq for TopicKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TopicKey::Json(a), TopicKey::Json(b)) => a == b,
            (TopicKey::Regex(a), TopicKey::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl TopicKey {
    /// Names of the fields, in order (empty for `key_regex`).
    pub fn field_names(&self) -> Vec<&str> {
        match self {
            TopicKey::Json(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    KeyPart::Field { name, .. } => Some(name.as_str()),
                    KeyPart::Literal(_) => None,
                })
                .collect(),
            TopicKey::Regex(_) => Vec::new(),
        }
    }

    /// Takes a topic string apart into `(field name, value)` pairs, left to right: a field's
    /// value ends at the first occurrence of the literal that follows it; the last field takes
    /// the rest. `None` if `topic` does not have the key's shape (a missing literal, an empty
    /// field). A regex key, or a key of one field, gives `[(name, topic)]` or nothing.
    pub fn split<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let TopicKey::Json(parts) = self else {
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        let mut rest = topic;
        let mut i = 0;
        while i < parts.len() {
            match &parts[i] {
                KeyPart::Literal(lit) => {
                    rest = rest.strip_prefix(lit.as_str())?;
                    i += 1;
                }
                KeyPart::Field { name, .. } => {
                    let value = match parts.get(i + 1) {
                        Some(KeyPart::Literal(lit)) => {
                            let end = rest.find(lit.as_str())?;
                            &rest[..end]
                        }
                        _ => rest,
                    };
                    if value.is_empty() {
                        return None;
                    }
                    out.push((name.as_str(), value));
                    rest = &rest[value.len()..];
                    i += 1;
                }
            }
        }
        rest.is_empty().then_some(out)
    }
}

/// One part of a message template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplatePart {
    /// Literal text.
    Literal(String),
    /// `{topics}`: a JSON array of the message's topic strings.
    Topics,
    /// `{topic}` (a JSON string) or `{topic|raw}` (the text as is): the one topic; a template
    /// with it carries one topic per message.
    Topic {
        /// Without JSON quoting.
        raw: bool,
    },
    /// `{id}`: the request counter, as digits (the daemon increments it per message).
    Id,
    /// `{FIELD}` (a JSON string) or `{FIELD|raw}`: the field shared by every topic of the
    /// message (topics are grouped so that they share it).
    Field {
        /// Field name from the key.
        name: String,
        /// Without JSON quoting.
        raw: bool,
    },
    /// `{FIELD[]}`: a JSON array of the field's values, one per topic of the message.
    FieldArray(String),
    /// `{items}`: a JSON array of the `item` template rendered once per topic.
    Items,
}

/// A parsed message template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// As written.
    pub text: String,
    /// Literal text and placeholders, in order.
    pub parts: Vec<TemplatePart>,
}

/// A rate: at most `count` messages in any `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Messages allowed per window (also the burst).
    pub count: u32,
    /// The window.
    pub per: Duration,
}

/// What happens to messages in which no topic is found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unmatched {
    /// Every subscriber of the endpoint gets them (topic subscribers included).
    #[default]
    All,
    /// Only whole-endpoint subscribers get them.
    Drop,
}

/// `[endpoints.NAME.topics]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicSettings {
    /// `key` or `key_regex`.
    pub key: TopicKey,
    /// `subscribe`: the message that subscribes to topics.
    pub subscribe: Template,
    /// `unsubscribe`: the message that unsubscribes; `None` never unsubscribes upstream (the
    /// daemon only stops routing the topic).
    pub unsubscribe: Option<Template>,
    /// `item`: what `{items}` renders per topic.
    pub item: Option<Template>,
    /// `max_per_message`: most topics in one subscribe or unsubscribe message. Default 50.
    pub max_per_message: usize,
    /// `rate`: most subscribe and unsubscribe messages per connection; `None` (`rate = "none"`)
    /// does not pace. Default 5/s.
    pub rate: Option<Rate>,
    /// `max_per_connection`: most topics on one upstream connection; more open another
    /// connection. `None`: one connection. Default `None`.
    pub max_per_connection: Option<usize>,
    /// `unmatched`. Default `all`.
    pub unmatched: Unmatched,
    /// `reply_id`: where an upstream answer carries the `{id}` it answers (a number, or a
    /// string of digits). Default `/id` when a template uses `{id}`, else `None` (topics are
    /// `active` as soon as their subscribe is written).
    pub reply_id: Option<Pointer>,
    /// `reply_error`: where an answer says it failed; present and not `null`, `false` or `""`
    /// means rejected. Its text: a string as is, an object's `msg` or `message`, else the
    /// JSON. Default `/error`.
    pub reply_error: Option<Pointer>,
    /// `reply_ok`: where an answer says whether it succeeded (e.g. Bybit's `/success`). When
    /// set, an answer is rejected exactly when this value is `false`, and `reply_error` only
    /// gives the text. Default `None`.
    pub reply_ok: Option<Pointer>,
    /// `reply_timeout`: how long an answer may take; a topic without one by then counts as
    /// `active`. Default 10 s.
    pub reply_timeout: Duration,
    /// `max_per_client`: most topics one client may hold on this endpoint. Default 1,024.
    pub max_per_client: usize,
    /// `max_topics`: most distinct topics on this endpoint. Default 65,536.
    pub max_topics: usize,
    /// `max_topic_bytes`: longest topic, in bytes. Default 256.
    pub max_topic_bytes: usize,
}
