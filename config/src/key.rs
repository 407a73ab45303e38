//! Dotted key paths such as `endpoints.feed.headers.Authorization`, and "did you mean" hints.

use std::fmt;

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Segment {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A path to a value, from the root of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The root (the empty path).
    pub(crate) fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a table key.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    /// This path extended by an array index.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    /// The table keys along the path, array indexes left out.
    pub(crate) fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|segment| match segment {
                Segment::Key(key) => Some(key.as_str()),
                Segment::Index(_) => None,
            })
            .collect()
    }

    /// Parses a key as the `config` crate writes it in its errors: `a.b[2].c`, or `a.b[2]c`,
    /// as it writes a key below an array element (without the dot).
    ///
    /// Keys containing `.` or `[` cannot be told apart from nesting; they are rare (and
    /// invalid here anyway), and the worst outcome is a less precise origin.
    pub(crate) fn parse(text: &str) -> Self {
        let mut path = KeyPath::root();
        for part in text.split('.') {
            // Keys and `[index]`es, alternating: `name[1][2]next[3]`.
            let mut rest = part;
            loop {
                let (name, tail) = match rest.find('[') {
                    Some(at) => rest.split_at(at),
                    None => (rest, ""),
                };
                if !name.is_empty() {
                    path = path.key(name);
                }
                let Some(inner) = tail.strip_prefix('[') else {
                    break;
                };
                let Some(end) = inner.find(']') else { break };
                if let Ok(index) = inner[..end].trim().parse() {
                    path = path.index(index);
                }
                rest = &inner[end + 1..];
            }
        }
        path
    }

    /// Converts a path reported by `serde_ignored`.
    pub(crate) fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        use serde_ignored::Path;
        match path {
            Path::Root => KeyPath::root(),
            Path::Seq { parent, index } => KeyPath::from_ignored(parent).index(*index),
            Path::Map { parent, key } => KeyPath::from_ignored(parent).key(key),
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => KeyPath::from_ignored(parent),
        }
    }
}

/// Whether `key` can be written bare in TOML (and in a dotted path) without quotes.
fn is_bare(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare(key) {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The entry of `known` closest to `unknown`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let unknown = unknown.to_ascii_lowercase();
    known
        .iter()
        .map(|candidate| (edit_distance(&unknown, candidate), *candidate))
        .filter(|(distance, candidate)| {
            let longest = unknown.chars().count().max(candidate.chars().count());
            *distance <= (longest / 4).max(1)
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance between two strings, by characters, counting insertions, deletions,
/// substitutions and transpositions of neighbours (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_parses_paths() {
        let path = KeyPath::root()
            .key("endpoints")
            .key("feed")
            .key("subprotocols")
            .index(2);
        assert_eq!(path.to_string(), "endpoints.feed.subprotocols[2]");
        assert_eq!(KeyPath::parse("endpoints.feed.subprotocols[2]"), path);
        assert_eq!(path.keys(), ["endpoints", "feed", "subprotocols"]);
        let below = KeyPath::root()
            .key("endpoints")
            .key("feed")
            .key("on_connect")
            .index(1)
            .key("text");
        assert_eq!(below.to_string(), "endpoints.feed.on_connect[1].text");
        assert_eq!(KeyPath::parse("endpoints.feed.on_connect[1].text"), below);
        assert_eq!(KeyPath::parse("endpoints.feed.on_connect[1]text"), below);
        assert_eq!(
            KeyPath::parse("a[1][2]b[3]").to_string(),
            "a[1][2].b[3]",
            "nested arrays"
        );
        let odd = KeyPath::root().key("endpoints").key("my feed").key("url");
        assert_eq!(odd.to_string(), r#"endpoints."my feed".url"#);
        assert_eq!(KeyPath::root().key("").to_string(), r#""""#);
    }

    #[test]
    fn suggests_close_keys_only() {
        let known = ["interval", "timeout", "message", "message_hex", "reply"];
        assert_eq!(suggest("intervall", &known), Some("interval"));
        assert_eq!(suggest("timout", &known), Some("timeout"));
        assert_eq!(suggest("Reply", &known), Some("reply"));
        assert_eq!(suggest("frequency", &known), None);
        assert_eq!(suggest("levle", &["level", "dir", "json"]), Some("level"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
