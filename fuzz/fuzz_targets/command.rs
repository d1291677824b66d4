//! Command parsing and execution: any command document a client can send, run by the real
//! command layer against a real store (one server for the whole run, so state built by one
//! input is seen by the next, as on a long-lived server). Each reply must be a document
//! the wire layer can encode, and nothing may panic or hang.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bson::{Bson, Document};
use libfuzzer_sys::fuzz_target;

struct Harness {
    rt: tokio::runtime::Runtime,
    ctx: Arc<commands::ServerCtx>,
    _dir: tempfile::TempDir,
    _running: server::Running,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = server::Config::new(dir.path().to_path_buf(), 0);
        let running = rt.block_on(server::start(cfg)).expect("server starts");
        Harness {
            ctx: running.ctx.clone(),
            rt,
            _dir: dir,
            _running: running,
        }
    })
}

/// Commands that end or freeze the whole server, which a client with the privilege may
/// legitimately send, but which would stop the run rather than test anything.
const SKIPPED: &[&str] = &["shutdown", "fsync", "fsyncUnlock"];

fuzz_target!(|data: &[u8]| {
    let Ok(mut cmd) = Document::from_reader(data) else {
        return;
    };
    let Some(name) = cmd.keys().next().cloned() else {
        return;
    };
    if SKIPPED.iter().any(|s| s.eq_ignore_ascii_case(&name)) {
        return;
    }
    // Waits are bounded by the client's own time limits; keep them short here.
    for k in ["maxTimeMS", "maxAwaitTimeMS"] {
        if cmd.contains_key(k) {
            cmd.insert(k, 10i64);
        }
    }
    if !matches!(cmd.get("$db"), Some(Bson::String(_))) {
        cmd.insert("$db", "fuzz");
    }
    let h = harness();
    let mut conn = h.ctx.connect("fuzz".into());
    let reply = h.rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            commands::handle(&h.ctx, &mut conn, cmd),
        )
        .await
        .expect("a command finished within 20 s")
    });
    h.ctx.disconnect(&conn);
    let out = reply.encode_msg(1, 2, None);
    wire::decode(&out).expect("every reply decodes");
});
