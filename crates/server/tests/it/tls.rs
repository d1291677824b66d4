// tls: the server's TLS modes through the `mongodb` crate, with certificates made for the
// test by rcgen: a CA, a server certificate for localhost/127.0.0.1, a client
// certificate from that CA and one from a stranger's CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bson::doc;
use futures_util::StreamExt;
use mongodb::Client;
use mongodb::options::ClientOptions;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(p, key))
}

/// A certificate and its key in one PEM, as `--tlsCertificateKeyFile` and the drivers'
/// `tlsCertificateKeyFile` take them.
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> String {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    format!("{}{}", cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, ca) = new_ca("Eddy test CA");
    let (_, stranger) = new_ca("Someone else's CA");
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.pem", ca_pem);
    write(
        "server.pem",
        leaf(
            &ca,
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
    );
    write(
        "client.pem",
        leaf(&ca, "app", &[], ExtendedKeyUsagePurpose::ClientAuth),
    );
    write(
        "stranger.pem",
        leaf(
            &stranger,
            "intruder",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    );
    Pki { dir }
}

async fn spawn_tls(
    pki: &Pki,
    mode: server::TlsMode,
    ca: bool,
    allow_without: bool,
) -> testkit::TestServer {
    let cert = pki.path("server.pem");
    let ca_file = ca.then(|| pki.path("ca.pem"));
    // The test server's own client is plain (drivers connect lazily: it is never used).
    testkit::spawn_with(|c| {
        c.tls = server::TlsConfig {
            mode,
            certificate_key_file: Some(cert),
            ca_file,
            allow_connections_without_certificates: allow_without,
        };
    })
    .await
}

async fn client(port: u16, tls: Option<(&Path, Option<&Path>)>) -> Client {
    let mut uri =
        format!("mongodb://localhost:{port}/?directConnection=true&serverSelectionTimeoutMS=3000");
    if let Some((ca, cert)) = tls {
        uri.push_str(&format!("&tls=true&tlsCAFile={}", ca.display()));
        if let Some(cert) = cert {
            uri.push_str(&format!("&tlsCertificateKeyFile={}", cert.display()));
        }
    }
    Client::with_options(ClientOptions::parse(uri).await.unwrap()).unwrap()
}

async fn pings(c: &Client) -> bool {
    c.database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .is_ok()
}

/// Writes and a change stream through `c`, enough to show that replies of every size
/// (and a getMore that waits) make it through the TLS layer intact.
async fn works(c: &Client) {
    let coll = c.database("t").collection::<bson::Document>("c");
    coll.drop().await.unwrap();
    let mut stream = coll.watch().await.unwrap();
    let big = "x".repeat(200_000);
    for i in 0..20 {
        coll.insert_one(doc! {"_id": i, "big": &big}).await.unwrap();
    }
    for i in 0..20 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            ev.document_key.unwrap().get_i32("_id").unwrap(),
            i,
            "events in order"
        );
    }
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 20);
}

#[tokio::test]
async fn require_tls_serves_tls_clients_only() {
    let pki = pki();
    let s = spawn_tls(&pki, server::TlsMode::Require, false, false).await;
    let ca = pki.path("ca.pem");
    let c = client(s.port, Some((&ca, None))).await;
    works(&c).await;
    assert!(
        !pings(&client(s.port, None).await).await,
        "plain is refused"
    );
    // A client that does not trust the server's CA gives up.
    let other = pki.path("stranger.pem");
    assert!(!pings(&client(s.port, Some((&other, None))).await).await);
    // getCmdLineOpts shows the settings.
    let opts = c
        .database("admin")
        .run_command(doc! {"getCmdLineOpts": 1})
        .await
        .unwrap();
    let tls = opts
        .get_document("parsed")
        .unwrap()
        .get_document("net")
        .unwrap()
        .get_document("tls")
        .unwrap();
    assert_eq!(tls.get_str("mode").unwrap(), "requireTLS");
}

#[tokio::test]
async fn client_certificates_required_or_optional() {
    let pki = pki();
    let ca = pki.path("ca.pem");
    let mine = pki.path("client.pem");
    let stranger = pki.path("stranger.pem");

    // A CA file: clients must present a certificate it signed.
    let s = spawn_tls(&pki, server::TlsMode::Require, true, false).await;
    works(&client(s.port, Some((&ca, Some(&mine)))).await).await;
    assert!(!pings(&client(s.port, Some((&ca, None))).await).await);
    assert!(!pings(&client(s.port, Some((&ca, Some(&stranger)))).await).await);
    drop(s);

    // ... unless connections without certificates are allowed; a bad one is still refused.
    let s = spawn_tls(&pki, server::TlsMode::Require, true, true).await;
    assert!(pings(&client(s.port, Some((&ca, None))).await).await);
    assert!(pings(&client(s.port, Some((&ca, Some(&mine)))).await).await);
    assert!(!pings(&client(s.port, Some((&ca, Some(&stranger)))).await).await);
}

#[tokio::test]
async fn allow_and_prefer_tls_take_both() {
    let pki = pki();
    let ca = pki.path("ca.pem");
    for mode in [server::TlsMode::Allow, server::TlsMode::Prefer] {
        let s = spawn_tls(&pki, mode, false, false).await;
        works(&client(s.port, Some((&ca, None))).await).await;
        works(&client(s.port, None).await).await;
    }
}

#[tokio::test]
async fn tls_settings_that_cannot_work_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = server::Config::new(dir.path().to_path_buf(), 0);
    cfg.tls.mode = server::TlsMode::Require;
    let err = server::start(cfg.clone())
        .await
        .err()
        .expect("no certificate");
    assert!(err.to_string().contains("tlsCertificateKeyFile"), "{err}");
    cfg.tls.certificate_key_file = Some(dir.path().join("missing.pem"));
    assert!(server::start(cfg).await.is_err());
}
