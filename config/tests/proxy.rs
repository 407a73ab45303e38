//! `proxy`: URLs, `env`, and the errors that name the key, the file or the variable.

use std::collections::HashMap;

use wsmux_config::{ConfigError, Loader, Origin, ProxyKind, ProxySetting, Settings};

fn load_with(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Loader::new().toml_str(toml, "wsmux.toml").env(vars).load()
}

fn endpoint(url: &str, proxy: &str) -> String {
    format!("[endpoints.feed]\nurl = \"{url}\"\nproxy = \"{proxy}\"\n")
}

fn setting(url: &str, proxy: &str, env: &[(&str, &str)]) -> ProxySetting {
    let settings = load_with(&endpoint(url, proxy), env).unwrap_or_else(|e| panic!("{e}"));
    settings.endpoints[0].proxy.clone()
}

fn error(url: &str, proxy: &str, env: &[(&str, &str)]) -> String {
    match load_with(&endpoint(url, proxy), env) {
        Ok(s) => panic!("should fail, got {:?}", s.endpoints[0].proxy),
        Err(e) => e.to_string(),
    }
}

#[test]
fn no_proxy_key_is_direct_and_the_environment_is_not_read() {
    let settings = load_with(
        "[endpoints.feed]\nurl = \"wss://x.example/\"\n",
        &[
            ("HTTPS_PROXY", "http://p:3128"),
            ("ALL_PROXY", "socks5://p:1080"),
        ],
    )
    .unwrap();
    assert_eq!(settings.endpoints[0].proxy, ProxySetting::Direct);
    assert_eq!(settings.endpoints[0].proxy.proxy(), None);
}

#[test]
fn a_proxy_url_with_references_and_percent_encoded_credentials() {
    let p = setting(
        "wss://x.example/",
        "socks5h://${PROXY_USER}:${PROXY_PASS}@proxy.corp:1080",
        &[("PROXY_USER", "bob"), ("PROXY_PASS", "p%40ss%3Aw0rd")],
    );
    let ProxySetting::Url(p) = p else {
        panic!("{p:?}")
    };
    assert_eq!(p.kind, ProxyKind::Socks5h);
    assert_eq!(p.address(), "proxy.corp:1080");
    let c = p.credentials.as_ref().unwrap();
    assert_eq!(
        (c.username.as_str(), c.password.as_str()),
        ("bob", "p@ss:w0rd")
    );
    assert_eq!(p.redacted, "socks5h://***:***@proxy.corp:1080");
}

#[test]
fn bad_proxy_urls_name_the_file_and_the_key_and_never_the_password() {
    for (proxy, why) in [
        (
            "ftp://p:21",
            "the scheme must be `http`, `socks5` or `socks5h`, not `ftp`",
        ),
        ("p:3128", "needs a scheme"),
        ("http://p", "must have a port"),
        ("http://:3128", "must have a host"),
        (
            "http://u:s3cr%zz@p:3128",
            "password in the proxy URL is not valid percent-encoding",
        ),
        ("socks5://u:@p:1080", "SOCKS5 credentials"),
        ("", "is empty"),
    ] {
        let e = error("wss://x.example/", proxy, &[]);
        assert!(
            e.starts_with("wsmux.toml: endpoints.feed.proxy: "),
            "{proxy}: {e}"
        );
        assert!(e.contains(why), "{proxy}: {e}");
        assert!(!e.contains("s3cr"), "{e}");
    }
    let e = error("wss://x.example/", "${P}", &[("P", "http://p")]);
    assert!(e.contains("with `${VAR}` references resolved"), "{e}");
}

#[test]
fn env_takes_the_variable_for_the_scheme_and_says_which() {
    let env = [
        ("HTTPS_PROXY", "http://alice:s3cret@proxy.corp:3128"),
        ("http_proxy", "socks5://plain.corp:1080"),
    ];
    match setting("wss://x.example/", "env", &env) {
        ProxySetting::Env {
            proxy: Some(p),
            decision,
        } => {
            assert_eq!(
                (p.kind, p.address().as_str()),
                (ProxyKind::Http, "proxy.corp:3128")
            );
            assert_eq!(decision, "http://***:***@proxy.corp:3128 from HTTPS_PROXY");
        }
        other => panic!("{other:?}"),
    }
    match setting("ws://x.example/", "env", &env) {
        ProxySetting::Env { proxy: Some(p), .. } => assert_eq!(p.kind, ProxyKind::Socks5),
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_with_nothing_set_or_no_proxy_matching_is_direct_not_an_error() {
    match setting("wss://x.example/", "env", &[]) {
        ProxySetting::Env {
            proxy: None,
            decision,
        } => assert!(
            decision.starts_with("direct: no proxy variable is set"),
            "{decision}"
        ),
        other => panic!("{other:?}"),
    }
    let env = [
        ("HTTPS_PROXY", "http://p:3128"),
        ("NO_PROXY", "localhost,.example"),
    ];
    match setting("wss://feed.x.example/", "env", &env) {
        ProxySetting::Env {
            proxy: None,
            decision,
        } => assert!(decision.contains("NO_PROXY matches"), "{decision}"),
        other => panic!("{other:?}"),
    }
    assert!(setting("wss://other.org/", "env", &env).proxy().is_some());
}

#[test]
fn an_unusable_proxy_variable_is_an_error_naming_it() {
    let e = error(
        "wss://x.example/",
        "env",
        &[("HTTPS_PROXY", "https://u:s3cret@p:443")],
    );
    assert!(
        e.starts_with("environment variable HTTPS_PROXY: endpoints.feed.proxy: "),
        "{e}"
    );
    assert!(e.contains("not supported"), "{e}");
    assert!(e.contains("reads this variable"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    match load_with(
        &endpoint("wss://x/", "env"),
        &[("ALL_PROXY", "http://p:1/x")],
    ) {
        Err(e @ ConfigError::Invalid { .. }) => {
            assert_eq!(e.origin(), Origin::EnvVar("ALL_PROXY".into()));
            assert_eq!(e.key(), Some("endpoints.feed.proxy"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_proxy_key_can_come_from_the_environment() {
    let settings = load_with(
        "[endpoints.feed]\nurl = \"wss://x.example/\"\n",
        &[("WSMUX_ENDPOINTS__FEED__PROXY", "http://p:3128")],
    )
    .unwrap();
    assert_eq!(
        settings.endpoints[0]
            .proxy
            .proxy()
            .map(|p| p.redacted.as_str()),
        Some("http://p:3128")
    );
}

#[test]
fn debug_output_hides_proxy_credentials() {
    let settings = load_with(
        &endpoint("wss://x.example/", "http://alice:s3cret@p:3128"),
        &[],
    )
    .unwrap();
    let debug = format!("{:?}", settings.endpoints[0]);
    assert!(debug.contains("http://***:***@p:3128"), "{debug}");
    assert!(
        !debug.contains("s3cret") && !debug.contains("alice"),
        "{debug}"
    );
}
