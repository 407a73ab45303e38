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
    /// `local_ack`: what an app on the `[websocket]` listener gets, in place of the
    /// upstream's answer, for a subscribe message the daemon took over (`{id}` is the app's
    /// own id, `{topics}` and `{topic}` what it asked for). `None` (`"none"`, or absent when no
    /// template uses `{id}`): no answer.
    pub local_ack: Option<Template>,
    /// `local_unsubscribe_ack`: the same for an unsubscribe message. Default: `local_ack`.
    pub local_unsubscribe_ack: Option<Template>,
}

/// Most reference tokens in a pointer: deeper documents are not searched.
pub const MAX_POINTER_TOKENS: usize = 64;

/// Names a message template gives a meaning of its own; a key of two or more fields may not
/// use them as field names.
const RESERVED: [&str; 4] = ["topics", "topic", "id", "items"];

/// Whether `s` is `[A-Za-z_][A-Za-z0-9_]*`.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `text` for an error message: control characters escaped.
fn shown(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

impl Pointer {
    /// Parses an RFC 6901 pointer. `""` is the whole document (no tokens); anything else
    /// starts with `/`. `~0` is `~`, `~1` is `/`, any other `~` is an error. At most
    /// [`MAX_POINTER_TOKENS`] tokens. A token of digits also matches an array index.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{}` is not a JSON pointer: it must start with `/` (e.g. `/stream`)",
                shown(text)
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(format!(
                            "`{}`: `~` must be followed by `0` (for `~`) or `1` (for `/`)",
                            shown(text)
                        ))
                    }
                }
            }
            tokens.push(token);
        }
        if tokens.len() > MAX_POINTER_TOKENS {
            return Err(format!(
                "`{}` has {} levels; at most {MAX_POINTER_TOKENS} are allowed",
                shown(text),
                tokens.len()
            ));
        }
        Ok(Pointer {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The field name this pointer gets in a key: its last token that is not a number,
    /// if that is a name (`[A-Za-z_][A-Za-z0-9_]*`).
    fn field_name(&self) -> Option<&str> {
        self.tokens
            .iter()
            .rev()
            .find(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()))
            .map(String::as_str)
            .filter(|t| is_name(t))
    }
}

impl TopicKey {
    /// Parses `key`: either one pointer (`/stream`; its field is named after its last
    /// non-numeric token, or `topic` when that is not a name), or a template of fields and
    /// literal text (`{/arg/channel}:{/arg/instId}`, `{sym=/data/0/symbol}`), where `{{` and
    /// `}}` are literal braces. A template has at least one field, never two fields without
    /// literal text between them, no two fields of one name, names that are
    /// `[A-Za-z_][A-Za-z0-9_]*` and, with two or more fields, none of `topics`, `topic`,
    /// `id`, `items`. A field's pointer starts with `/` (the whole message, `""`, is no
    /// topic) and cannot contain `}`.
    pub fn parse_key(text: &str) -> Result<TopicKey, String> {
        if text.is_empty() {
            return Err("is empty: write a JSON pointer such as `/stream`".to_owned());
        }
        if !text.contains(['{', '}']) {
            let pointer = Pointer::parse(text)?;
            let name = pointer.field_name().unwrap_or("topic").to_owned();
            return Ok(TopicKey::Json(vec![KeyPart::Field { name, pointer }]));
        }
        let mut parts: Vec<KeyPart> = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        // The first field without a usable name of its own: fine alone (it is the topic).
        let mut unnamed: Option<(&str, &str)> = None;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{{") {
                literal.push('{');
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix("}}") {
                literal.push('}');
                rest = after;
                continue;
            }
            match c {
                '}' => {
                    return Err(format!(
                        "`{}`: unmatched `}}` (write `}}}}` for a literal brace)",
                        shown(text)
                    ))
                }
                '{' => {
                    let Some(end) = rest.find('}') else {
                        return Err(format!(
                            "`{}`: unclosed `{{` (write `{{{{` for a literal brace)",
                            shown(text)
                        ));
                    };
                    let inner = &rest[1..end];
                    rest = &rest[end + 1..];
                    let (name, pointer_text) = match inner.split_once('=') {
                        Some((name, p)) if !inner.starts_with('/') => (Some(name), p),
                        _ => (None, inner),
                    };
                    if pointer_text.is_empty() {
                        return Err(format!(
                            "`{{{}}}`: a field needs a pointer that starts with `/`",
                            shown(inner)
                        ));
                    }
                    if !pointer_text.starts_with('/') {
                        return Err(format!(
                            "`{{{}}}` is not a field: write `{{/pointer}}` or `{{name=/pointer}}`",
                            shown(inner)
                        ));
                    }
                    let pointer = Pointer::parse(pointer_text)?;
                    let name = match name {
                        Some(name) if is_name(name) => name.to_owned(),
                        Some(name) => {
                            return Err(format!(
                                "`{}` is not a field name: a name is a letter or `_`, then letters, digits or `_`",
                                shown(name)
                            ))
                        }
                        None => match pointer.field_name() {
                            Some(name) => name.to_owned(),
                            None => {
                                unnamed.get_or_insert((inner, pointer_text));
                                "topic".to_owned()
                            }
                        },
                    };
                    if !literal.is_empty() {
                        parts.push(KeyPart::Literal(std::mem::take(&mut literal)));
                    }
                    if let Some(KeyPart::Field { pointer: prev, .. }) = parts.last() {
                        return Err(format!(
                            "`{}`: fields `{{{}}}` and `{{{}}}` need literal text between them, or a topic could not be split back into its fields",
                            shown(text),
                            shown(&prev.text),
                            shown(&pointer.text)
                        ));
                    }
                    let duplicate = parts
                        .iter()
                        .any(|p| matches!(p, KeyPart::Field { name: n, .. } if *n == name));
                    if duplicate {
                        return Err(format!(
                            "`{}`: two fields are named `{name}`; name one explicitly, e.g. `{{other={}}}`",
                            shown(text),
                            shown(&pointer.text)
                        ));
                    }
                    parts.push(KeyPart::Field { name, pointer });
                }
                _ => {
                    literal.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !literal.is_empty() {
            parts.push(KeyPart::Literal(literal));
        }
        let key = TopicKey::Json(parts);
        let names = key.field_names();
        if names.is_empty() {
            return Err(format!(
                "`{}` has no field: write `{{/pointer}}` for the part of a message that names its topic",
                shown(text)
            ));
        }
        if names.len() > 1 {
            if let Some((inner, pointer_text)) = unnamed {
                return Err(format!(
                    "`{{{}}}` has no usable field name: write `{{name={}}}`",
                    shown(inner),
                    shown(pointer_text)
                ));
            }
            if let Some(name) = names.iter().find(|n| RESERVED.contains(n)) {
                return Err(format!(
                    "`{}`: a field may not be named `{name}` (a message template gives that name its own meaning); name it explicitly, e.g. `{{{name}_=/pointer}}`",
                    shown(text)
                ));
            }
        }
        Ok(key)
    }
}

/// How a placeholder name is followed inside its braces.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Suffix {
    /// `{name}`.
    Plain,
    /// `{name|raw}`.
    Raw,
    /// `{name[]}`.
    Array,
}

impl Template {
    /// Parses a message template. `fields` are the key's field names.
    ///
    /// A `{` starts a placeholder only when the text up to the next `}` is a placeholder
    /// name: `topics`, `topic`, `topic|raw`, `id`, `items`, `NAME`, `NAME|raw`, `NAME[]`
    /// (a name is `[A-Za-z_][A-Za-z0-9_]*`); any other `{` is literal text, so JSON needs no
    /// escaping. A name that is not a placeholder or a field, or a suffix that does not fit,
    /// is an error. `{{` is a literal `{`; `}}` is a literal `}` after a `{{` (so `{{id}}`
    /// is the text `{id}`), and elsewhere `}` is literal text as is (JSON's `}}` stays).
    pub fn parse(text: &str, fields: &[&str]) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut escapes = 0usize;
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{{") {
                literal.push('{');
                escapes += 1;
                rest = after;
                continue;
            }
            if escapes > 0 {
                if let Some(after) = rest.strip_prefix("}}") {
                    literal.push('}');
                    escapes -= 1;
                    rest = after;
                    continue;
                }
            }
            if c == '{' {
                if let Some(end) = rest.find('}') {
                    if let Some(part) = placeholder(&rest[1..end], fields)? {
                        if !literal.is_empty() {
                            parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                        }
                        parts.push(part);
                        rest = &rest[end + 1..];
                        continue;
                    }
                }
            }
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    /// Whether it carries one topic per message (`{topic}` or `{topic|raw}`).
    pub fn one_topic(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, TemplatePart::Topic { .. }))
    }

    /// Whether it uses `{id}`.
    pub fn uses_id(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, TemplatePart::Id))
    }

    /// Whether it uses `{items}`.
    pub fn uses_items(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, TemplatePart::Items))
    }

    /// The fields every topic of one message must share (`{FIELD}`, `{FIELD|raw}`), in
    /// order of first use, without repeats.
    pub fn scalar_fields(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.parts {
            if let TemplatePart::Field { name, .. } = p {
                if !out.contains(&name.as_str()) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Checks an `item` template: it may use only `{topic}`, `{topic|raw}`, `{FIELD}` and
    /// `{FIELD|raw}` (it describes one topic).
    pub fn check_item(&self) -> Result<(), String> {
        for p in &self.parts {
            let bad = match p {
                TemplatePart::Topics => "{topics}",
                TemplatePart::Id => "{id}",
                TemplatePart::Items => "{items}",
                TemplatePart::FieldArray(_) => "a `{FIELD[]}` array",
                _ => continue,
            };
            return Err(format!(
                "`{}` uses {bad}; an item describes one topic: only `{{topic}}`, `{{topic|raw}}`, `{{FIELD}}` and `{{FIELD|raw}}` fit",
                shown(&self.text)
            ));
        }
        Ok(())
    }
}

/// What the text between `{` and `}` means: `Ok(None)` for literal text.
fn placeholder(inner: &str, fields: &[&str]) -> Result<Option<TemplatePart>, String> {
    let (name, suffix) = if let Some(name) = inner.strip_suffix("[]") {
        (name, Suffix::Array)
    } else if let Some((name, modifier)) = inner.split_once('|') {
        if !is_name(name) || !is_name(modifier) {
            return Ok(None);
        }
        if modifier != "raw" {
            return Err(format!(
                "`{{{inner}}}`: unknown modifier `|{modifier}` (only `|raw` exists)"
            ));
        }
        (name, Suffix::Raw)
    } else {
        (inner, Suffix::Plain)
    };
    if !is_name(name) {
        return Ok(None);
    }
    let part = match (name, suffix) {
        ("topics", Suffix::Plain) => TemplatePart::Topics,
        ("topic", Suffix::Plain) => TemplatePart::Topic { raw: false },
        ("topic", Suffix::Raw) => TemplatePart::Topic { raw: true },
        ("id", Suffix::Plain) => TemplatePart::Id,
        ("items", Suffix::Plain) => TemplatePart::Items,
        ("topics" | "topic" | "id" | "items", _) => {
            return Err(format!(
                "`{{{inner}}}` is not a placeholder (`{{topics}}`, `{{topic}}`, `{{topic|raw}}`, `{{id}}` and `{{items}}` are)"
            ))
        }
        (field, suffix) if fields.contains(&field) => match suffix {
            Suffix::Plain => TemplatePart::Field {
                name: field.to_owned(),
                raw: false,
            },
            Suffix::Raw => TemplatePart::Field {
                name: field.to_owned(),
                raw: true,
            },
            Suffix::Array => TemplatePart::FieldArray(field.to_owned()),
        },
        (unknown, _) => {
            let known = if fields.is_empty() {
                "the key has no fields".to_owned()
            } else {
                format!("the key's fields are {}", fields.join(", "))
            };
            return Err(format!(
                "`{{{inner}}}`: unknown field `{unknown}` ({known}; write `{{{{` for a literal brace)"
            ));
        }
    };
    Ok(Some(part))
}

/// Largest `rate` count (the daemon remembers that many write times per connection).
pub const MAX_RATE_COUNT: u32 = 100_000;

/// Longest `rate` window.
const MAX_RATE_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

impl Rate {
    /// Parses `N/DURATION` (`5/s`, `10/m`, `100/10s`, `1/250ms`; a unit alone means one of
    /// it; units `ms`, `s`, `m`, `h`, `d`), or `none` (`Ok(None)`: not paced). `N` is at
    /// least 1 and at most [`MAX_RATE_COUNT`]; the window is more than zero and at most one
    /// day.
    pub fn parse(text: &str) -> Result<Option<Rate>, String> {
        let text = text.trim();
        if text == "none" {
            return Ok(None);
        }
        let usage = || {
            format!(
                "`{}` is not a rate: write `N/DURATION` such as `5/s`, `100/10s` or `1/250ms`, or `none`",
                shown(text)
            )
        };
        let (count, window) = text.split_once('/').ok_or_else(usage)?;
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(usage());
        }
        let count: u32 = count.parse().map_err(|_| {
            format!(
                "`{}`: the count is too large (at most {})",
                shown(text),
                u32::MAX
            )
        })?;
        if count == 0 {
            return Err(format!("`{}`: the count must be at least 1", shown(text)));
        }
        if count > MAX_RATE_COUNT {
            return Err(format!(
                "`{}`: the count may be at most {MAX_RATE_COUNT}",
                shown(text)
            ));
        }
        let window = window.trim();
        let digits = window.bytes().take_while(u8::is_ascii_digit).count();
        let (amount, unit) = window.split_at(digits);
        let amount: u64 = if amount.is_empty() {
            1
        } else {
            amount.parse().map_err(|_| usage())?
        };
        let unit_ms: u64 = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(usage()),
        };
        let per = amount
            .checked_mul(unit_ms)
            .map(Duration::from_millis)
            .filter(|d| *d <= MAX_RATE_WINDOW)
            .ok_or_else(|| format!("`{}`: the window may be at most one day", shown(text)))?;
        if per.is_zero() {
            return Err(format!(
                "`{}`: the window must be longer than zero",
                shown(text)
            ));
        }
        Ok(Some(Rate { count, per }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    fn field(name: &str, pointer: &str) -> KeyPart {
        KeyPart::Field {
            name: name.to_owned(),
            pointer: ptr(pointer),
        }
    }

    fn lit(text: &str) -> KeyPart {
        KeyPart::Literal(text.to_owned())
    }

    #[test]
    fn pointers() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("/", &[""]),
            ("/stream", &["stream"]),
            ("/arg/instId", &["arg", "instId"]),
            ("/data/0/symbol", &["data", "0", "symbol"]),
            ("/a~1b/c~0d", &["a/b", "c~d"]),
            ("/~01", &["~1"]),
            ("//x", &["", "x"]),
        ];
        for (text, tokens) in cases {
            let p = ptr(text);
            assert_eq!(p.text, *text);
            assert_eq!(p.tokens, *tokens, "{text}");
        }
        for bad in ["stream", "a/b", "/a~", "/a~2", "/~x"] {
            assert!(Pointer::parse(bad).is_err(), "{bad}");
        }
        let deep = "/a".repeat(MAX_POINTER_TOKENS + 1);
        assert!(Pointer::parse(&deep).unwrap_err().contains("levels"));
        assert!(Pointer::parse(&"/a".repeat(MAX_POINTER_TOKENS)).is_ok());
    }

    #[test]
    fn keys_of_the_five_formats() {
        let cases: Vec<(&str, Vec<KeyPart>)> = vec![
            ("/stream", vec![field("stream", "/stream")]),
            (
                "{/arg/channel}:{/arg/instId}",
                vec![
                    field("channel", "/arg/channel"),
                    lit(":"),
                    field("instId", "/arg/instId"),
                ],
            ),
            ("/topic", vec![field("topic", "/topic")]),
            (
                "{/channel}:{/data/0/symbol}",
                vec![
                    field("channel", "/channel"),
                    lit(":"),
                    field("symbol", "/data/0/symbol"),
                ],
            ),
            ("/params/channel", vec![field("channel", "/params/channel")]),
        ];
        for (text, parts) in cases {
            assert_eq!(
                TopicKey::parse_key(text),
                Ok(TopicKey::Json(parts)),
                "{text}"
            );
        }
    }

    #[test]
    fn keys() {
        let cases: Vec<(&str, Vec<KeyPart>)> = vec![
            ("{sym=/data/0/symbol}", vec![field("sym", "/data/0/symbol")]),
            (
                "x.{/a}.{b2=/c/0}!",
                vec![
                    lit("x."),
                    field("a", "/a"),
                    lit("."),
                    field("b2", "/c/0"),
                    lit("!"),
                ],
            ),
            ("/0", vec![field("topic", "/0")]),
            ("/a-b", vec![field("topic", "/a-b")]),
            ("{{{/a}}}", vec![lit("{"), field("a", "/a"), lit("}")]),
            ("{/a=b}", vec![field("topic", "/a=b")]),
            ("{/topic}", vec![field("topic", "/topic")]),
            ("a{/0}", vec![lit("a"), field("topic", "/0")]),
        ];
        for (text, parts) in cases {
            assert_eq!(
                TopicKey::parse_key(text),
                Ok(TopicKey::Json(parts)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_keys() {
        let cases = [
            ("", "empty"),
            ("stream", "must start with `/`"),
            ("{/a}{/b}", "literal text between them"),
            ("{/a/x}:{/b/x}", "two fields are named `x`"),
            ("{/a}:{a=/b}", "two fields are named `a`"),
            ("{1x=/a}", "not a field name"),
            ("{a-b=/a}", "not a field name"),
            ("{=/a}", "not a field name"),
            ("{/a-b}:{/c}", "no usable field name"),
            ("{/0}:{/c}", "no usable field name"),
            ("{}", "needs a pointer"),
            ("{a=}", "needs a pointer"),
            ("{a}", "not a field"),
            ("{/a", "unclosed"),
            ("/a}", "unmatched"),
            ("literal", "must start with `/`"),
            ("{{x}}", "has no field"),
            ("{/id}:{/b}", "may not be named `id`"),
            ("{/a~2}", "`~` must be followed"),
        ];
        for (text, needle) in cases {
            let err = TopicKey::parse_key(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn parsed_keys_split_topics() {
        let key = TopicKey::parse_key("{/arg/channel}:{/arg/instId}").unwrap();
        assert_eq!(
            key.split("tickers:BTC-USDT"),
            Some(vec![("channel", "tickers"), ("instId", "BTC-USDT")])
        );
        assert_eq!(key.split("tickers"), None);
        let key = TopicKey::parse_key("/stream").unwrap();
        assert_eq!(
            key.split("btcusdt@trade"),
            Some(vec![("stream", "btcusdt@trade")])
        );
    }

    fn t(text: &str, fields: &[&str]) -> Vec<TemplatePart> {
        Template::parse(text, fields).unwrap().parts
    }

    fn l(text: &str) -> TemplatePart {
        TemplatePart::Literal(text.to_owned())
    }

    fn f(name: &str, raw: bool) -> TemplatePart {
        TemplatePart::Field {
            name: name.to_owned(),
            raw,
        }
    }

    #[test]
    fn templates_of_the_five_formats() {
        use TemplatePart::*;
        let cases: Vec<(&str, &[&str], Vec<TemplatePart>)> = vec![
            (
                r#"{"method":"SUBSCRIBE","params":{topics},"id":{id}}"#,
                &["stream"],
                vec![
                    l(r#"{"method":"SUBSCRIBE","params":"#),
                    Topics,
                    l(r#","id":"#),
                    Id,
                    l("}"),
                ],
            ),
            (
                r#"{"op":"subscribe","args":{items}}"#,
                &["channel", "instId"],
                vec![l(r#"{"op":"subscribe","args":"#), Items, l("}")],
            ),
            (
                r#"{"channel":{channel},"instId":{instId}}"#,
                &["channel", "instId"],
                vec![
                    l(r#"{"channel":"#),
                    f("channel", false),
                    l(r#","instId":"#),
                    f("instId", false),
                    l("}"),
                ],
            ),
            (
                r#"{"op":"subscribe","args":{topics},"req_id":"{id}"}"#,
                &["topic"],
                vec![
                    l(r#"{"op":"subscribe","args":"#),
                    Topics,
                    l(r#","req_id":""#),
                    Id,
                    l(r#""}"#),
                ],
            ),
            (
                r#"{"method":"subscribe","params":{"channel":{channel},"symbol":{symbol[]}},"req_id":{id}}"#,
                &["channel", "symbol"],
                vec![
                    l(r#"{"method":"subscribe","params":{"channel":"#),
                    f("channel", false),
                    l(r#","symbol":"#),
                    FieldArray("symbol".to_owned()),
                    l(r#"},"req_id":"#),
                    Id,
                    l("}"),
                ],
            ),
            (
                r#"{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":{topics}},"id":{id}}"#,
                &["channel"],
                vec![
                    l(r#"{"jsonrpc":"2.0","method":"public/subscribe","params":{"channels":"#),
                    Topics,
                    l(r#"},"id":"#),
                    Id,
                    l("}"),
                ],
            ),
        ];
        for (text, fields, parts) in cases {
            let template = Template::parse(text, fields).unwrap();
            assert_eq!(template.parts, parts, "{text}");
            assert_eq!(template.text, text);
        }
    }

    #[test]
    fn templates() {
        use TemplatePart::*;
        let cases: Vec<(&str, Vec<TemplatePart>)> = vec![
            ("", vec![]),
            ("{topic}", vec![Topic { raw: false }]),
            ("x{topic|raw}y", vec![l("x"), Topic { raw: true }, l("y")]),
            ("{a|raw}", vec![f("a", true)]),
            ("{{id}}", vec![l("{id}")]),
            ("{{{id}}}", vec![l("{"), Id, l("}")]),
            (r#"{"a":{"b":1}}"#, vec![l(r#"{"a":{"b":1}}"#)]),
            ("{ id }", vec![l("{ id }")]),
            ("{a b}", vec![l("{a b}")]),
            ("{", vec![l("{")]),
            ("}", vec![l("}")]),
            ("}}", vec![l("}}")]),
            ("{id", vec![l("{id")]),
            ("{\"x\":{id}}", vec![l("{\"x\":"), Id, l("}")]),
            ("{a[]}{a}", vec![FieldArray("a".to_owned()), f("a", false)]),
            ("é{id}ü", vec![l("é"), Id, l("ü")]),
            ("{a|b|c}", vec![l("{a|b|c}")]),
        ];
        for (text, parts) in cases {
            assert_eq!(t(text, &["a"]), parts, "{text}");
        }
    }

    #[test]
    fn bad_templates() {
        let cases = [
            ("{foo}", "unknown field `foo`"),
            ("{foo[]}", "unknown field `foo`"),
            ("{foo|raw}", "unknown field `foo`"),
            ("{a|json}", "unknown modifier `|json`"),
            ("{topics[]}", "not a placeholder"),
            ("{topic[]}", "not a placeholder"),
            ("{id|raw}", "not a placeholder"),
            ("{items|raw}", "not a placeholder"),
            ("{topics|raw}", "not a placeholder"),
        ];
        for (text, needle) in cases {
            let err = Template::parse(text, &["a", "b"]).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let err = Template::parse("{x}", &[]).unwrap_err();
        assert!(err.contains("the key has no fields"), "{err}");
        let err = Template::parse("{x}", &["a", "b"]).unwrap_err();
        assert!(err.contains("the key's fields are a, b"), "{err}");
    }

    #[test]
    fn template_queries() {
        let kraken = Template::parse(
            r#"{"channel":{channel},"symbol":{symbol[]},"x":{channel|raw},"req_id":{id}}"#,
            &["channel", "symbol"],
        )
        .unwrap();
        assert!(kraken.uses_id());
        assert!(!kraken.one_topic());
        assert!(!kraken.uses_items());
        assert_eq!(kraken.scalar_fields(), ["channel"]);
        let item = Template::parse(r#"{"channel":{channel},"t":{topic}}"#, &["channel"]).unwrap();
        assert!(item.check_item().is_ok());
        assert!(item.one_topic());
        for bad in ["{items}", "{topics}", "{id}", "{channel[]}"] {
            let item = Template::parse(bad, &["channel"]).unwrap();
            assert!(item.check_item().is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        let ms = Duration::from_millis;
        let cases = [
            ("5/s", Some((5, ms(1_000)))),
            ("10/m", Some((10, ms(60_000)))),
            ("100/10s", Some((100, ms(10_000)))),
            ("1/250ms", Some((1, ms(250)))),
            ("3/h", Some((3, ms(3_600_000)))),
            ("7/1d", Some((7, ms(86_400_000)))),
            ("100000/d", Some((100_000, ms(86_400_000)))),
            (" 5 / s ", Some((5, ms(1_000)))),
            ("none", None),
        ];
        for (text, want) in cases {
            let want = want.map(|(count, per)| Rate { count, per });
            assert_eq!(Rate::parse(text), Ok(want), "{text}");
        }
        let bad = [
            ("0/s", "at least 1"),
            ("5/0s", "longer than zero"),
            ("5/0ms", "longer than zero"),
            ("5/2d", "at most one day"),
            ("5/25h", "at most one day"),
            ("5/99999999999999999999s", "not a rate"),
            ("5/18446744073709551615d", "at most one day"),
            ("99999999999/s", "too large"),
            ("100001/s", "at most 100000"),
            ("5", "not a rate"),
            ("5/", "not a rate"),
            ("/s", "not a rate"),
            ("-1/s", "not a rate"),
            ("5/sec", "not a rate"),
            ("5/1.5s", "not a rate"),
            ("None", "not a rate"),
            ("", "not a rate"),
        ];
        for (text, needle) in bad {
            let err = Rate::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
