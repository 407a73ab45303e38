//! What logs, `--check` and `status` show of an endpoint's URL: never its secrets.
//!
//! Credentials (`user:password@`) and every query value are always hidden. Path segments are
//! hidden when they came from a `${VAR}` or `${file:...}` reference, when they look like a
//! token (long, and mixing letters with digits), or when they match one of the endpoint's
//! `redact_segments` patterns. `wss://me:pw@host/ws/<listenKey>?token=abc` is shown as
//! `wss://***@host/ws/***?token=***`.

use regex::Regex;

/// What hides a path segment.
pub(crate) struct SegmentRules<'a> {
    /// Indexes of path segments that came from a reference (0 is the first after the host).
    pub interpolated: &'a [usize],
    /// The endpoint's own patterns, matched against each segment.
    pub patterns: &'a [Regex],
}

/// Shortest path segment that can look like a token.
const MIN_TOKEN_LEN: usize = 16;

/// The URL as logs and status show it.
pub(crate) fn redact_url(url: &url::Url, rules: &SegmentRules<'_>) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("***");
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, _)| (k.into_owned(), "***".to_owned()))
            .collect();
        u.set_query(None);
        if !pairs.is_empty() {
            let mut q = u.query_pairs_mut();
            for (k, v) in &pairs {
                q.append_pair(k, v);
            }
        }
    }
    let segments: Option<Vec<String>> = u.path_segments().map(|segs| {
        segs.enumerate()
            .map(|(i, s)| {
                let hide = !s.is_empty()
                    && (rules.interpolated.contains(&i)
                        || looks_like_a_token(s)
                        || rules.patterns.iter().any(|p| p.is_match(s)));
                if hide {
                    "***".to_owned()
                } else {
                    s.to_owned()
                }
            })
            .collect()
    });
    if let Some(segments) = segments {
        u.set_path(&format!("/{}", segments.join("/")));
    }
    u.to_string()
}

/// A proxy URL as logs and `--check` show it: `http://***:***@proxy.example:3128` (`***@`
/// for a user name without a password). Host and port are not secret.
pub(crate) fn redact_proxy(
    scheme: &str,
    host: &str,
    port: u16,
    credentials: &Option<crate::ProxyCredentials>,
) -> String {
    let userinfo = match credentials {
        None => "",
        Some(c) if c.password.is_empty() => "***@",
        Some(_) => "***:***@",
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("{scheme}://{userinfo}{host}:{port}")
}

/// A path segment that looks like a key, token or id rather than a word: at least
/// [`MIN_TOKEN_LEN`] characters, only letters, digits and `-_.~%+=`, with letters and digits
/// mixed (`a1B2...`, a UUID, a hex digest, a JWT part).
pub(crate) fn looks_like_a_token(segment: &str) -> bool {
    segment.len() >= MIN_TOKEN_LEN
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~%+=".contains(&b))
        && segment.bytes().any(|b| b.is_ascii_digit())
        && segment.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Which path segments of the resolved URL came from a reference in `template` (the `url` as
/// written, before `${...}` were resolved). A reference can put `/` into the path; from the
/// first interpolated segment on, segments are then counted as interpolated unless they
/// equal the template's literal segment at the same place from the end.
pub(crate) fn interpolated_segments(template: &str, resolved: &url::Url) -> Vec<usize> {
    let Some(resolved) = resolved.path_segments() else {
        return Vec::new();
    };
    let resolved: Vec<&str> = resolved.collect();
    // The template's path: after `scheme://authority`, before `?` or `#`.
    let after_scheme = template
        .split_once("://")
        .map_or(template, |(_, rest)| rest);
    let path = match after_scheme.find('/') {
        Some(i) => &after_scheme[i + 1..],
        None => return Vec::new(),
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let template: Vec<&str> = path.split('/').collect();
    let is_ref = |s: &str| s.contains("${");
    if !template.iter().any(|s| is_ref(s)) {
        return Vec::new();
    }
    if template.len() == resolved.len() {
        return (0..template.len())
            .filter(|&i| is_ref(template[i]))
            .collect();
    }
    // Segment counts differ: a reference held `/`. Trust literal segments only before the
    // first reference, and literal ones at the same distance from the end after the last.
    let first = template.iter().position(|s| is_ref(s)).unwrap_or(0);
    let last = template.iter().rposition(|s| is_ref(s)).unwrap_or(0);
    let tail_literals = template.len() - 1 - last;
    let tail_start = resolved.len().saturating_sub(tail_literals).max(first);
    (first..tail_start).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(url: &str, template: &str, patterns: &[&str]) -> String {
        let u = url::Url::parse(url).unwrap();
        let patterns: Vec<Regex> = patterns.iter().map(|p| Regex::new(p).unwrap()).collect();
        let interpolated = interpolated_segments(template, &u);
        redact_url(
            &u,
            &SegmentRules {
                interpolated: &interpolated,
                patterns: &patterns,
            },
        )
    }

    #[test]
    fn credentials_and_query_values_are_always_hidden() {
        let u = "wss://me:secret@feed.example/ws?token=abc&x=1";
        let r = show(u, u, &[]);
        assert_eq!(r, "wss://***@feed.example/ws?token=***&x=***");
        let plain = "ws://127.0.0.1:9000/feed";
        assert_eq!(show(plain, plain, &[]), plain);
    }

    #[test]
    fn token_like_path_segments_are_hidden_words_are_not() {
        let key = "pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1";
        let u = format!("wss://stream.example.com:9443/ws/{key}");
        assert_eq!(show(&u, &u, &[]), "wss://stream.example.com:9443/ws/***");
        let words = "wss://ws.example.com/v5/public/linear/btcusdt@trade/market-data-stream";
        assert_eq!(show(words, words, &[]), words);
        let uuid = "wss://x.example/session/3f2b8c1e-9d4a-4f6b-8e2a-1c5d7e9f0a3b/feed";
        assert_eq!(show(uuid, uuid, &[]), "wss://x.example/session/***/feed");
    }

    #[test]
    fn referenced_segments_are_hidden_even_when_short() {
        let t = "wss://x.example/ws/${KEY}/live";
        assert_eq!(
            show("wss://x.example/ws/abc/live", t, &[]),
            "wss://x.example/ws/***/live"
        );
        // A reference that held a slash: everything it could have produced is hidden.
        assert_eq!(
            show("wss://x.example/ws/ab/cd/live", t, &[]),
            "wss://x.example/ws/***/***/live"
        );
    }

    #[test]
    fn the_endpoints_own_patterns_hide_more() {
        let u = "wss://x.example/feed/acct-42/ticks";
        assert_eq!(show(u, u, &["^acct-"]), "wss://x.example/feed/***/ticks");
    }
}
