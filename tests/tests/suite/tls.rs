//! `wss://` against a local TLS WebSocket server with certificates made in the test.

use wsmux_proto::{ConnState, Payload, ServerMsg};
use wsmux_tests::daemon::Daemon;
use wsmux_tests::raw::Raw;
use wsmux_tests::tls::{server, Pki};
use wsmux_tests::within;

use crate::endpoint_toml;

fn tls_table(entries: &[(&str, &std::path::Path)]) -> String {
    let mut s = String::from("[endpoints.feed.tls]\n");
    for (k, v) in entries {
        s.push_str(&format!("{k} = {:?}\n", v.display().to_string()));
    }
    s
}

async fn first_outcome(d: &Daemon) -> ServerMsg {
    let (mut c, _) = Raw::greeted(&d.socket).await;
    let mut state = c.subscribe("feed").await;
    loop {
        match state.state {
            ConnState::Open => return within(15, "greeting", c.recv()).await.unwrap(),
            ConnState::Backoff | ConnState::Failed => return ServerMsg::State(state),
            _ => {}
        }
        state = match within(10, "state", c.recv()).await {
            Some(ServerMsg::State(s)) => s,
            other => panic!("unexpected {other:?}"),
        };
    }
}

fn reason(msg: ServerMsg) -> String {
    match msg {
        ServerMsg::State(s) => s.reason.unwrap_or_default(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_private_ca_works_and_unknown_ca_or_wrong_name_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "private");
    let (cert, key) = pki.leaf("localhost", &["localhost"], false);
    let addr = server(&cert, &key, None).await;
    let url = format!("wss://localhost:{}/", addr.port());

    // Trusted through ca_file.
    let tls = tls_table(&[("ca_file", &pki.ca_file("private"))]);
    let d = Daemon::start(&endpoint_toml("feed", &url, &tls));
    match first_outcome(&d).await {
        ServerMsg::Message(m) => assert_eq!(m.data, Payload::Text("hello tls".into())),
        other => panic!("expected the greeting, got {other:?}"),
    }
    drop(d);

    // Without it, the CA is unknown.
    let d = Daemon::start(&endpoint_toml("feed", &url, ""));
    let why = reason(first_outcome(&d).await);
    assert!(
        why.contains("UnknownIssuer") || why.contains("unknown issuer"),
        "{why}"
    );
    drop(d);

    // A certificate for another name.
    let (cert, key) = pki.leaf("other", &["other.example"], false);
    let other = server(&cert, &key, None).await;
    let url = format!("wss://localhost:{}/", other.port());
    let tls = tls_table(&[("ca_file", &pki.ca_file("private"))]);
    let d = Daemon::start(&endpoint_toml("feed", &url, &tls));
    let why = reason(first_outcome(&d).await);
    assert!(
        why.contains("NotValidForName") || why.contains("not valid for name"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "private");
    let (cert, key) = pki.leaf("localhost", &["localhost"], false);
    pki.leaf("client", &["wsmuxd"], true);
    let addr = server(&cert, &key, Some(&pki.ca_pem)).await;
    let url = format!("wss://localhost:{}/", addr.port());
    let with_cert = tls_table(&[
        ("ca_file", &pki.ca_file("private")),
        ("client_cert", &dir.path().join("client.pem")),
        ("client_key", &dir.path().join("client.key")),
    ]);
    let d = Daemon::start(&endpoint_toml("feed", &url, &with_cert));
    match first_outcome(&d).await {
        ServerMsg::Message(m) => assert_eq!(m.data, Payload::Text("hello tls".into())),
        other => panic!("expected the greeting, got {other:?}"),
    }
    drop(d);
    // Without the client certificate the server refuses.
    let without = tls_table(&[("ca_file", &pki.ca_file("private"))]);
    let d = Daemon::start(&endpoint_toml("feed", &url, &without));
    assert!(matches!(first_outcome(&d).await, ServerMsg::State(_)));
}
