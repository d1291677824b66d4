//! Integration tests: each starts the real server on an ephemeral port with a temporary
//! data directory and talks to it through the `mongodb` crate (or raw sockets).

mod change_streams;
mod crash;
mod crud;
mod ddl;
mod protocol;

use bson::Document;
use mongodb::Database;

/// Runs a command and returns the server's error code, panicking if it succeeded.
pub async fn cmd_error(db: &Database, cmd: Document) -> (i32, String) {
    match db.run_command(cmd.clone()).await {
        Ok(r) => panic!("expected {cmd} to fail, got {r}"),
        Err(e) => match *e.kind {
            mongodb::error::ErrorKind::Command(c) => (c.code, c.code_name),
            other => panic!("expected a command error, got {other:?}"),
        },
    }
}
