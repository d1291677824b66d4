//! Dev-only: start a real `eddy` server on `127.0.0.1:0` with a temporary data directory
//! and hand back a driver client connected to it.

use mongodb::Client;
use mongodb::options::ClientOptions;

/// A server started for one test; dropping it stops the server and removes its data.
pub struct TestServer {
    pub running: server::Running,
    pub client: Client,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A new client connected directly to this server.
    pub async fn client(&self) -> Client {
        client_for(self.port).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.running.shutdown();
    }
}

/// A client connected directly to `127.0.0.1:port`.
pub async fn client_for(port: u16) -> Client {
    let uri =
        format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=5000");
    let opts = ClientOptions::parse(uri).await.expect("valid uri");
    Client::with_options(opts).expect("client")
}

/// Starts a server with test commands enabled.
pub async fn spawn() -> TestServer {
    spawn_with(|_| {}).await
}

/// Starts a server after letting the caller adjust its configuration.
pub async fn spawn_with(adjust: impl FnOnce(&mut server::Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = server::Config::new(dir.path().to_path_buf(), 0);
    cfg.parameters.insert("enableTestCommands", true);
    adjust(&mut cfg);
    let running = server::start(cfg).await.expect("server starts");
    let port = running.port;
    let client = client_for(port).await;
    TestServer {
        running,
        client,
        port,
        _dir: dir,
    }
}
