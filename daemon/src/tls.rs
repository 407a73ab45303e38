//! TLS client configuration: the platform's and webpki's roots for every endpoint, plus an
//! endpoint's own CA file and client certificate (mutual TLS) when configured.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wsmux_config::EndpointSettings;

/// What every endpoint starts from, loaded once at start-up: the roots (platform plus
/// webpki) and the configuration built from them.
pub struct TlsBase {
    /// Platform and webpki roots; endpoints with a CA file add theirs to a copy.
    roots: rustls::RootCertStore,
    /// The configuration of endpoints without TLS options of their own.
    shared: Arc<rustls::ClientConfig>,
}

impl TlsBase {
    /// Loads the roots and builds the shared configuration.
    pub fn load() -> Result<TlsBase, String> {
        let roots = base_roots();
        let shared = builder()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        Ok(TlsBase {
            roots,
            shared: Arc::new(shared),
        })
    }
}

fn base_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "could not load some platform root certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(platform_roots = added, "TLS roots loaded");
    roots
}

fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))
}

/// The configuration for one endpoint: the shared one unless it has a CA file or a client
/// certificate. Those files are read at every connect, so renewed certificates are picked up.
pub fn for_endpoint(
    settings: &EndpointSettings,
    base: &TlsBase,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let tls = &settings.tls;
    if tls.ca_file.is_none() && tls.client_cert.is_none() {
        return Ok(Arc::clone(&base.shared));
    }
    let mut roots = base.roots.clone();
    if let Some(ca) = &tls.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
        let mut n = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("invalid certificate in {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA certificate in {}: {e}", ca.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("no certificate found in ca_file {}", ca.display()));
        }
    }
    let builder = builder()?.with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("cannot read client_cert {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("invalid certificate in {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read client_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate rejected: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
