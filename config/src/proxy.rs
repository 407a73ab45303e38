//! `proxy`: reaching an upstream through an HTTP (`CONNECT`) or SOCKS5 proxy.
//!
//! `proxy = "http://user:pass@host:3128"`, `"socks5://..."` or `"socks5h://..."` names one;
//! the scheme, the host and the port are required and credentials are percent-encoded.
//! `proxy = "env"` reads the environment the way curl does (curl 8's `detect_proxy` and
//! `Curl_check_noproxy`):
//!
//! - a `wss://` upstream takes the first of `wss_proxy`, `WSS_PROXY`, `https_proxy`,
//!   `HTTPS_PROXY`, `all_proxy`, `ALL_PROXY` that is set and not empty; a `ws://` upstream the
//!   first of `ws_proxy`, `WS_PROXY`, `http_proxy`, `HTTP_PROXY`, `all_proxy`, `ALL_PROXY`.
//!   (curl skips uppercase `HTTP_PROXY` because in a CGI program a client's `Proxy:` header
//!   sets it, "httpoxy"; the daemon is no CGI program and reads it only when `proxy = "env"`
//!   asks it to, so it is honoured, after the lowercase one.)
//! - a value without a scheme is an HTTP proxy, and one without a port uses 1080.
//! - `no_proxy` (or, when it is unset or empty, `NO_PROXY`) lists hosts that are reached
//!   directly (see [`no_proxy_matches`]).
//!
//! Nothing here does IO: the environment comes in as a lookup function.

use std::fmt;
use std::net::IpAddr;

/// The protocol spoken to a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `http://`: an HTTP `CONNECT` tunnel.
    Http,
    /// `socks5://`: SOCKS5; the daemon resolves the upstream's name and sends an address.
    Socks5,
    /// `socks5h://`: SOCKS5; the upstream's name is sent and the proxy resolves it.
    Socks5h,
}

impl ProxyKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        }
    }
}

/// A proxy's user name and password, percent-decoded. `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyCredentials {
    /// The user name.
    pub username: String,
    /// The password (may be empty for HTTP).
    pub password: String,
}

impl fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyCredentials(***)")
    }
}

/// A proxy an endpoint connects through. `Debug` shows the redacted URL only.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// HTTP or SOCKS5.
    pub kind: ProxyKind,
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Credentials from the URL's user info, if any.
    pub credentials: Option<ProxyCredentials>,
    /// The URL as logs and `--check` show it: `http://***:***@proxy.example:3128`.
    pub redacted: String,
}

impl Proxy {
    /// `host:port` (an IPv6 address in brackets): how reasons name the proxy.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({})", self.redacted)
    }
}

/// How an endpoint reaches its upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProxySetting {
    /// No `proxy` key: directly.
    #[default]
    Direct,
    /// `proxy = URL`.
    Url(Proxy),
    /// `proxy = "env"`: what the environment said when the configuration was loaded.
    Env {
        /// The proxy it names; `None` to connect directly.
        proxy: Option<Proxy>,
        /// What was decided and why, for the log: `HTTPS_PROXY`, `no proxy variable is
        /// set (...)`, `no_proxy matches the host`.
        decision: String,
    },
}

impl ProxySetting {
    /// The proxy to connect through, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        match self {
            ProxySetting::Direct => None,
            ProxySetting::Url(proxy) => Some(proxy),
            ProxySetting::Env { proxy, .. } => proxy.as_ref(),
        }
    }
}

/// As logs and `--check` show it: `direct`, the redacted URL, or `env: ` and the decision.
impl fmt::Display for ProxySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySetting::Direct => f.write_str("direct"),
            ProxySetting::Url(proxy) => f.write_str(&proxy.redacted),
            ProxySetting::Env { decision, .. } => write!(f, "env: {decision}"),
        }
    }
}

/// Where a proxy URL was written: the rules differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// The `proxy` key: scheme and port are required.
    Key,
    /// An environment variable: curl's defaults apply (`http://`, port 1080).
    Env,
}

/// The port curl assumes for a proxy URL without one.
const CURL_DEFAULT_PORT: u16 = 1080;

/// Longest SOCKS5 user name or password (RFC 1929: one length byte, and at least one byte).
const MAX_SOCKS_CREDENTIAL: usize = 255;

/// The error for a proxy URL without a host.
const NO_HOST: &str = "the proxy URL must have a host";

/// Parses a proxy URL. The error never quotes the text, which may hold a password.
pub(crate) fn parse(text: &str, form: Form) -> Result<Proxy, String> {
    let with_scheme;
    let text = if form == Form::Env && !text.contains("://") {
        with_scheme = format!("http://{text}");
        &with_scheme
    } else {
        text
    };
    let Some((scheme, _)) = text.split_once("://") else {
        return Err(
            "needs a scheme: `http://`, `socks5://` or `socks5h://` (or `env` to read the \
             environment)"
                .into(),
        );
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "http" => ProxyKind::Http,
        "socks5" => ProxyKind::Socks5,
        "socks5h" => ProxyKind::Socks5h,
        "https" => {
            return Err(
                "`https` proxies (TLS to the proxy) are not supported: use `http`, `socks5` \
                 or `socks5h` (TLS to the upstream runs through any of them)"
                    .into(),
            )
        }
        other => {
            return Err(format!(
                "the scheme must be `http`, `socks5` or `socks5h`, not `{}`",
                escape_scheme(other)
            ))
        }
    };
    // `url`'s errors never quote the input.
    let url = url::Url::parse(text).map_err(|e| match e {
        url::ParseError::EmptyHost => NO_HOST.to_owned(),
        e => format!("invalid proxy URL: {e}"),
    })?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => return Err(NO_HOST.into()),
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err("a proxy URL has only a scheme, credentials, a host and a port".into());
    }
    // `url` forgets a port that is the scheme's default (`http://proxy:80`).
    let port = match (url.port(), has_port(text)) {
        (Some(port), _) => port,
        (None, true) => url.port_or_known_default().unwrap_or(CURL_DEFAULT_PORT),
        (None, false) if form == Form::Env => CURL_DEFAULT_PORT,
        (None, false) => {
            return Err("the proxy URL must have a port (`host:3128`, `host:1080`)".into())
        }
    };
    let credentials = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        let username = percent_decode(url.username())
            .map_err(|e| format!("the user name in the proxy URL {e}"))?;
        let password = percent_decode(url.password().unwrap_or(""))
            .map_err(|e| format!("the password in the proxy URL {e}"))?;
        let fits = |s: &str| (1..=MAX_SOCKS_CREDENTIAL).contains(&s.len());
        if kind != ProxyKind::Http && !(fits(&username) && fits(&password)) {
            return Err(format!(
                "SOCKS5 credentials are a user name and a password of 1 to \
                 {MAX_SOCKS_CREDENTIAL} bytes each"
            ));
        }
        Some(ProxyCredentials { username, password })
    };
    let redacted = crate::redact::redact_proxy(kind.scheme(), &host, port, &credentials);
    Ok(Proxy {
        kind,
        host,
        port,
        credentials,
        redacted,
    })
}

/// A scheme as an error may quote it: short, printable ASCII only.
fn escape_scheme(scheme: &str) -> String {
    scheme
        .chars()
        .take(16)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Whether the authority of `url` (text with a scheme) ends in `:PORT`.
fn has_port(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let after_host = match host_port.rfind(']') {
        Some(i) => &host_port[i + 1..],
        None => host_port,
    };
    after_host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// Decodes `%XX` escapes strictly: every `%` starts two hex digits and the result is UTF-8.
/// The error completes "the user name in the proxy URL ...".
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                let h = std::str::from_utf8(h).ok()?;
                u8::from_str_radix(h, 16).ok()
            });
            let Some(byte) = hex else {
                return Err(
                    "is not valid percent-encoding: `%` must start two hex digits (`%25` for \
                     `%` itself)"
                        .into(),
                );
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "does not decode to UTF-8".into())
}

/// What the environment says for an upstream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EnvChoice {
    /// Connect through the proxy in variable `var`.
    Proxy {
        /// The variable's name.
        var: &'static str,
        /// Its value (may hold credentials: never log it).
        value: String,
    },
    /// Connect directly; the reason, for the log.
    Direct(String),
}

/// The variables that exempt hosts from the proxy, the one read first first.
pub(crate) const NO_PROXY_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// The proxy variables for a `ws`/`wss` upstream, in curl's order.
pub(crate) fn proxy_vars(scheme: &str) -> &'static [&'static str] {
    if scheme == "wss" {
        &[
            "wss_proxy",
            "WSS_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ]
    } else {
        &[
            "ws_proxy",
            "WS_PROXY",
            "http_proxy",
            "HTTP_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ]
    }
}

/// Chooses as curl does for the upstream `url` (`ws` or `wss`). `lookup` returns a variable's
/// value; empty values count as unset.
pub(crate) fn from_env<'a>(url: &url::Url, lookup: impl Fn(&str) -> Option<&'a str>) -> EnvChoice {
    let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
    let vars = proxy_vars(url.scheme());
    let Some((var, value)) = vars.iter().find_map(|&v| get(v).map(|value| (v, value))) else {
        let why = format!("no proxy variable is set ({})", vars.join(", "));
        return EnvChoice::Direct(why);
    };
    let [lower, upper] = NO_PROXY_VARS;
    let (no_proxy_var, no_proxy) = match get(lower) {
        Some(v) => (lower, Some(v)),
        None => (upper, get(upper)),
    };
    if let Some(list) = no_proxy {
        let port = url.port_or_known_default().unwrap_or(443);
        if let Some(host) = url.host() {
            if no_proxy_matches(list, &host, port) {
                return EnvChoice::Direct(format!(
                    "{no_proxy_var} matches the upstream's host (otherwise {var} would be used)"
                ));
            }
        }
    }
    EnvChoice::Proxy {
        var,
        value: value.to_owned(),
    }
}

/// Whether `no_proxy` (a `NO_PROXY` value) says to reach `host` on `port` directly.
///
/// As curl reads it: `*` alone matches every host; otherwise entries are separated by
/// commas or blanks. A name entry matches the host itself and its subdomains, case
/// insensitively, with a leading and a trailing `.` ignored (`example.com` and
/// `.example.com` both match `example.com` and `www.example.com`, not `myexample.com`). An
/// IP entry (`192.168.1.5`, `::1`, or a CIDR range `10.0.0.0/8`, `fd00::/8`) matches only a
/// host written as an IP address: no name is resolved.
///
/// One addition to curl: an entry may end in `:PORT` (`example.com:8443`, `[::1]:443`) to
/// match that port only. curl compares such an entry as a name, so it never matches.
pub fn no_proxy_matches(no_proxy: &str, host: &url::Host<&str>, port: u16) -> bool {
    if no_proxy == "*" {
        return true;
    }
    no_proxy
        .split([',', ' ', '\t'])
        .filter(|entry| !entry.is_empty())
        .any(|entry| entry_matches(entry, host, port))
}

/// One `NO_PROXY` entry against a host and port.
fn entry_matches(entry: &str, host: &url::Host<&str>, port: u16) -> bool {
    let (pattern, entry_port) = split_port(entry);
    if entry_port.is_some_and(|p| p != port) {
        return false;
    }
    match host {
        url::Host::Domain(name) => {
            let name = name.strip_suffix('.').unwrap_or(name);
            let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
            let pattern = pattern.strip_prefix('.').unwrap_or(pattern);
            if pattern.is_empty() || pattern.len() > name.len() {
                return false;
            }
            let tail = &name[name.len() - pattern.len()..];
            tail.eq_ignore_ascii_case(pattern)
                && (name.len() == pattern.len()
                    || name.as_bytes()[name.len() - pattern.len() - 1] == b'.')
        }
        url::Host::Ipv4(ip) => ip_matches(pattern, IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => ip_matches(pattern, IpAddr::V6(*ip)),
    }
}

/// An entry without its `:PORT`, and the port. `::1` and `fd00::/8` have none; `[::1]:443`
/// has one (brackets go).
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, "")) => (ip, None),
            Some((ip, tail)) => match tail.strip_prefix(':').and_then(|p| p.parse().ok()) {
                Some(port) => (ip, Some(port)),
                None => (entry, None),
            },
            None => (entry, None),
        };
    }
    match entry.rsplit_once(':') {
        // More than one `:`: an IPv6 address, not `host:port`.
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

/// Whether `pattern` (an IP address, or `IP/BITS`) covers `ip`. IPv4 entries match IPv4
/// hosts only, IPv6 entries IPv6 hosts.
fn ip_matches(pattern: &str, ip: IpAddr) -> bool {
    let (addr, bits) = match pattern.split_once('/') {
        Some((addr, bits)) => match bits.parse::<u32>() {
            Ok(bits) => (addr, Some(bits)),
            Err(_) => return false,
        },
        None => (pattern, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            prefix_matches(&net.octets(), &ip.octets(), bits.unwrap_or(32))
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            prefix_matches(&net.octets(), &ip.octets(), bits.unwrap_or(128))
        }
        _ => false,
    }
}

/// Whether the first `bits` bits of `a` and `b` agree; more bits than there are never match.
fn prefix_matches(a: &[u8], b: &[u8], bits: u32) -> bool {
    let total = (a.len() * 8) as u32;
    if bits > total {
        return false;
    }
    let whole = (bits / 8) as usize;
    let rest = bits % 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        (a[whole] ^ b[whole]) & mask == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Each `(NO_PROXY, upstream URL, whether it matches)`.
    fn check(cases: &[(&str, &str, bool)]) {
        for &(no_proxy, url, want) in cases {
            let parsed = url::Url::parse(url).unwrap();
            let port = parsed.port_or_known_default().unwrap();
            let got = no_proxy_matches(no_proxy, &parsed.host().unwrap(), port);
            assert_eq!(got, want, "{no_proxy:?} vs {url}");
        }
    }

    #[test]
    fn no_proxy_names_match_the_host_and_its_subdomains() {
        let cases = [
            ("example.com", "wss://example.com/", true),
            ("example.com", "wss://www.example.com/", true),
            ("example.com", "wss://WWW.Example.COM/", true),
            (".example.com", "wss://example.com/", true),
            (".example.com", "wss://a.b.example.com/", true),
            ("example.com.", "wss://example.com./", true),
            ("example.com", "wss://myexample.com/", false),
            ("example.com", "wss://example.com.evil/", false),
            ("www.example.com", "wss://example.com/", false),
            ("other.org, example.com", "wss://example.com/", true),
            ("other.org example.com", "wss://example.com/", true),
            ("other.org,,\texample.com", "wss://example.com/", true),
            ("*", "wss://anything.example/", true),
            ("*", "wss://10.1.2.3/", true),
            // `*` only counts alone, as in curl.
            ("*,other.org", "wss://anything.example/", false),
            ("*.example.com", "wss://www.example.com/", false),
            ("", "wss://example.com/", false),
            (".", "wss://example.com/", false),
        ];
        check(&cases);
    }

    #[test]
    fn no_proxy_ips_and_ranges_match_ip_hosts_only() {
        let cases = [
            ("127.0.0.1", "ws://127.0.0.1:9000/", true),
            ("127.0.0.1", "ws://127.0.0.2:9000/", false),
            ("127.0.0.0/8", "ws://127.200.0.1/", true),
            ("10.0.0.0/8", "ws://11.0.0.1/", false),
            ("192.168.0.0/23", "ws://192.168.1.77/", true),
            ("192.168.0.0/23", "ws://192.168.2.1/", false),
            ("0.0.0.0/0", "ws://8.8.8.8/", true),
            ("10.0.0.0/33", "ws://10.0.0.1/", false),
            ("10.0.0.0/x", "ws://10.0.0.1/", false),
            ("::1", "ws://[::1]:80/", true),
            ("[::1]", "ws://[::1]:80/", true),
            ("fd00::/8", "ws://[fd12::5]/", true),
            ("fd00::/8", "ws://[fe80::1]/", false),
            // No resolution: a name is not its address, an address is not its name.
            ("127.0.0.1", "ws://localhost/", false),
            ("localhost", "ws://127.0.0.1/", false),
            // Families do not mix.
            ("127.0.0.1", "ws://[::ffff:127.0.0.1]/", false),
        ];
        check(&cases);
    }

    #[test]
    fn no_proxy_entries_with_a_port_match_that_port_only() {
        let cases = [
            ("example.com:443", "wss://example.com/", true),
            ("example.com:443", "wss://example.com:8443/", false),
            ("example.com:8443", "wss://api.example.com:8443/", true),
            ("127.0.0.1:9000", "ws://127.0.0.1:9000/", true),
            ("127.0.0.1:9000", "ws://127.0.0.1:9001/", false),
            ("[::1]:443", "wss://[::1]/", true),
            ("[::1]:443", "wss://[::1]:444/", false),
            ("example.com:notaport", "wss://example.com/", false),
        ];
        check(&cases);
    }

    fn choose(url: &str, vars: &[(&str, &str)]) -> EnvChoice {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        from_env(&url::Url::parse(url).unwrap(), |name| {
            vars.get(name).copied()
        })
    }

    fn via(var: &'static str, value: &str) -> EnvChoice {
        EnvChoice::Proxy {
            var,
            value: value.into(),
        }
    }

    #[test]
    fn the_environment_is_read_in_curls_order() {
        let all = [
            ("wss_proxy", "a"),
            ("WSS_PROXY", "b"),
            ("https_proxy", "c"),
            ("HTTPS_PROXY", "d"),
            ("all_proxy", "e"),
            ("ALL_PROXY", "f"),
            ("ws_proxy", "g"),
            ("WS_PROXY", "h"),
            ("http_proxy", "i"),
            ("HTTP_PROXY", "j"),
        ];
        // Take the variables away one by one, from the first: the next one answers.
        let wss = ["a", "b", "c", "d", "e", "f"];
        for (skip, want) in wss.iter().enumerate() {
            let vars: Vec<_> = all
                .iter()
                .copied()
                .filter(|(_, v)| !wss[..skip].contains(v))
                .collect();
            match choose("wss://x.example/", &vars) {
                EnvChoice::Proxy { value, .. } => assert_eq!(value, *want),
                other => panic!("{other:?}"),
            }
        }
        let ws = ["g", "h", "i", "j", "e", "f"];
        for (skip, want) in ws.iter().enumerate() {
            let vars: Vec<_> = all
                .iter()
                .copied()
                .filter(|(_, v)| !ws[..skip].contains(v))
                .collect();
            match choose("ws://x.example/", &vars) {
                EnvChoice::Proxy { value, .. } => assert_eq!(value, *want),
                other => panic!("{other:?}"),
            }
        }
        // Empty is unset.
        assert_eq!(
            choose("wss://x/", &[("https_proxy", ""), ("HTTPS_PROXY", "d")]),
            via("HTTPS_PROXY", "d")
        );
    }

    #[test]
    fn uppercase_http_proxy_is_read_after_the_lowercase_one() {
        assert_eq!(
            choose("ws://x.example/", &[("HTTP_PROXY", "p:1")]),
            via("HTTP_PROXY", "p:1")
        );
        match choose("wss://x.example/", &[]) {
            EnvChoice::Direct(why) => {
                assert!(why.starts_with("no proxy variable is set"), "{why}");
                assert!(why.contains("HTTPS_PROXY"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_proxy_lowercase_wins_and_sends_the_host_direct() {
        let proxy = ("HTTPS_PROXY", "http://p:3128");
        let direct = |c: EnvChoice| matches!(c, EnvChoice::Direct(why) if why.contains("matches"));
        assert!(direct(choose(
            "wss://api.example.com/",
            &[proxy, ("NO_PROXY", "example.com")]
        )));
        assert!(direct(choose(
            "wss://api.example.com/",
            &[proxy, ("no_proxy", ".example.com")]
        )));
        // The lowercase variable is read first, the uppercase one only when it is unset or
        // empty.
        assert_eq!(
            choose(
                "wss://api.example.com/",
                &[
                    proxy,
                    ("no_proxy", "other.org"),
                    ("NO_PROXY", "example.com")
                ]
            ),
            via("HTTPS_PROXY", "http://p:3128")
        );
        assert!(direct(choose(
            "wss://api.example.com/",
            &[proxy, ("no_proxy", ""), ("NO_PROXY", "example.com")]
        )));
        assert!(direct(choose(
            "wss://127.0.0.1:9443/",
            &[proxy, ("NO_PROXY", "127.0.0.0/8")]
        )));
    }

    #[test]
    fn proxy_urls_parse_with_their_rules() {
        let p = parse("http://al%40ice:p%3Ass@Proxy.Example:3128", Form::Key).unwrap();
        assert_eq!(p.kind, ProxyKind::Http);
        assert_eq!((p.host.as_str(), p.port), ("proxy.example", 3128));
        let c = p.credentials.clone().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("al@ice", "p:ss")
        );
        assert_eq!(p.redacted, "http://***:***@proxy.example:3128");
        assert_eq!(format!("{p:?}"), "Proxy(http://***:***@proxy.example:3128)");

        let p = parse("socks5h://[::1]:1080/", Form::Key).unwrap();
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (ProxyKind::Socks5h, "::1", 1080)
        );
        assert_eq!(p.address(), "[::1]:1080");
        assert_eq!(p.redacted, "socks5h://[::1]:1080");
        // The scheme's default port, written out, is kept.
        assert_eq!(parse("http://p:80", Form::Key).unwrap().port, 80);
        // The environment gets curl's defaults.
        let p = parse("proxy.corp:8080", Form::Env).unwrap();
        assert_eq!((p.kind, p.port), (ProxyKind::Http, 8080));
        assert_eq!(parse("http://proxy.corp", Form::Env).unwrap().port, 1080);
        assert_eq!(
            parse("socks5://u@p:1", Form::Env).map(|_| ()),
            Err("SOCKS5 credentials are a user name and a password of 1 to 255 bytes each".into())
        );

        for (text, why) in [
            ("proxy.corp:3128", "needs a scheme"),
            ("https://p:443", "not supported"),
            ("socks4://p:1080", "not `socks4`"),
            ("http://p", "must have a port"),
            ("http://:3128", "must have a host"),
            ("http://u:p@", "must have a host"),
            ("socks5://:1080", "must have a host"),
            ("http://p:3128/path", "only a scheme"),
            ("http://p:3128?x=1", "only a scheme"),
            (
                "http://u:p%zz@p:3128",
                "password in the proxy URL is not valid percent-encoding",
            ),
            (
                "http://u%4:p@p:3128",
                "user name in the proxy URL is not valid percent-encoding",
            ),
            ("http://u:%ff@p:3128", "does not decode to UTF-8"),
        ] {
            let err = parse(text, Form::Key).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
            assert!(!err.contains("%zz") && !err.contains("u%4"), "{err}");
        }
    }
}
