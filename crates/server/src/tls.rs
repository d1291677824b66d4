//! TLS with rustls: mongod's `--tlsMode`, `--tlsCertificateKeyFile`, `--tlsCAFile` and
//! `--tlsAllowConnectionsWithoutCertificates`.
//!
//! `requireTLS` accepts only TLS. `allowTLS` and `preferTLS` accept TLS and plain
//! connections on the same port (they differ in mongod only for the connections a server
//! opens itself, which Eddy does not yet), telling them apart by the first bytes: a TLS
//! connection opens with a handshake record, `16 03 0x`, then a ClientHello (`01`) after
//! the record length. A plain MongoDB message opens with its little-endian length, whose
//! first bytes match that only for a handful of lengths with an unlikely request id.
//!
//! With `--tlsCAFile`, clients must present a certificate signed by that CA, unless
//! `--tlsAllowConnectionsWithoutCertificates`, which lets clients without one in (a client
//! that presents one must still present a valid one), as in mongod.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// `--tlsMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    Disabled,
    Allow,
    Prefer,
    Require,
}

impl TlsMode {
    /// Parses mongod's spelling.
    pub fn parse(s: &str) -> Option<TlsMode> {
        Some(match s {
            "disabled" => TlsMode::Disabled,
            "allowTLS" => TlsMode::Allow,
            "preferTLS" => TlsMode::Prefer,
            "requireTLS" => TlsMode::Require,
            _ => return None,
        })
    }

    /// mongod's spelling.
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Disabled => "disabled",
            TlsMode::Allow => "allowTLS",
            TlsMode::Prefer => "preferTLS",
            TlsMode::Require => "requireTLS",
        }
    }
}

/// The TLS settings.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// PEM: the server's certificate chain and its private key.
    pub certificate_key_file: Option<PathBuf>,
    /// PEM: the CA(s) that sign client certificates.
    pub ca_file: Option<PathBuf>,
    pub allow_connections_without_certificates: bool,
}

/// The acceptor for `cfg`, `None` when TLS is disabled.
///
/// # Errors
/// A missing or unreadable certificate, key or CA file, or settings that contradict each
/// other (TLS on without a certificate).
pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<Option<TlsAcceptor>> {
    if cfg.mode == TlsMode::Disabled {
        if cfg.certificate_key_file.is_some() || cfg.ca_file.is_some() {
            bail!("--tlsCertificateKeyFile and --tlsCAFile need --tlsMode other than disabled");
        }
        return Ok(None);
    }
    let Some(key_file) = &cfg.certificate_key_file else {
        bail!(
            "--tlsMode {} needs --tlsCertificateKeyFile (a PEM file with the server's certificate and key)",
            cfg.mode.name()
        );
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(key_file)
        .and_then(Iterator::collect)
        .with_context(|| format!("reading certificates from {}", key_file.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", key_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading the private key from {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &cfg.ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading {}", ca.display()))?
            {
                let c = c.with_context(|| format!("reading {}", ca.display()))?;
                roots
                    .add(c)
                    .with_context(|| format!("a CA certificate in {}", ca.display()))?;
            }
            if roots.is_empty() {
                bail!("no CA certificate in {}", ca.display());
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if cfg.allow_connections_without_certificates {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build()?)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a usable pair")?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Whether `head` (the first bytes a client sent) opens a TLS handshake: a handshake
/// record (22) of TLS 1.x (`03 0x`) carrying a ClientHello (1). `None` while too few bytes
/// have arrived to tell.
pub fn looks_like_tls(head: &[u8]) -> Option<bool> {
    if head.first().is_some_and(|&b| b != 0x16) {
        return Some(false);
    }
    if head.len() < 6 {
        return None;
    }
    Some(head[1] == 3 && head[2] <= 4 && head[5] == 1)
}

/// Peeks at a new connection's first bytes to tell TLS from plain (`allowTLS`,
/// `preferTLS`). `None` if the peer closed or sent too little before it stopped.
pub async fn peek_is_tls(stream: &TcpStream) -> Option<bool> {
    let mut head = [0u8; 6];
    loop {
        let n = stream.peek(&mut head).await.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(tls) = looks_like_tls(&head[..n]) {
            return Some(tls);
        }
        // Fewer than six bytes so far: wait for more (peek returns at once while any are
        // buffered, so give the peer a moment).
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_client_hellos_from_messages() {
        // A TLS 1.2/1.3 ClientHello record.
        assert_eq!(
            looks_like_tls(&[0x16, 3, 1, 0x02, 0x00, 1, 0, 1]),
            Some(true)
        );
        // A 290-byte hello message with request id 7.
        assert_eq!(looks_like_tls(&[0x22, 1, 0, 0, 7, 0]), Some(false));
        // Too short to tell.
        assert_eq!(looks_like_tls(&[0x16, 3]), None);
        // 0x16 first, but not a record header.
        assert_eq!(looks_like_tls(&[0x16, 0, 0, 0, 9, 0]), Some(false));
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let cfg = TlsConfig {
            mode: TlsMode::Require,
            ..TlsConfig::default()
        };
        assert!(acceptor(&cfg).is_err());
        let cfg = TlsConfig {
            ca_file: Some("/nonexistent".into()),
            ..TlsConfig::default()
        };
        assert!(acceptor(&cfg).is_err());
        assert!(acceptor(&TlsConfig::default()).unwrap().is_none());
        for m in ["disabled", "allowTLS", "preferTLS", "requireTLS"] {
            assert_eq!(TlsMode::parse(m).unwrap().name(), m);
        }
        assert_eq!(TlsMode::parse("on"), None);
    }
}
