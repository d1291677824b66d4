//! Authentication and authorization: SASL conversations (`saslStart`, `saslContinue`,
//! `speculativeAuthenticate`), who a connection is, and the privilege check every command
//! passes before it runs (see [`check`] and [`crate::privileges`]).
//!
//! Users and roles live in `admin.system.users` and `admin.system.roles` (see
//! [`crate::users`]). A connection resolves its user's roles into privileges once, and again
//! whenever a user or role has changed since ([`Security::generation`]), so a revoked
//! privilege or a dropped user takes effect at the connection's next command.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use auth::roles::Resolved;
use auth::scram::{Conversation, Mechanism, Step};
use auth::{RoleName, Target, UserDoc};
use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use errors::{ErrorCode, MongoError, Result};

use crate::{ConnInfo, Reply, ServerCtx, users};

/// The server's access-control state.
pub struct Security {
    /// `--auth`: every command but the handshake needs an authorized user.
    pub enabled: bool,
    /// Derives stand-in salts for users that do not exist (see `auth::scram`).
    secret: [u8; 32],
    /// Bumped by every change to a user or a role.
    generation: AtomicU64,
    /// Set once a user or role exists: the localhost exception is over.
    localhost_closed: std::sync::atomic::AtomicBool,
    /// Users' resolved privileges as of one generation, shared by all their connections:
    /// resolving a role like `root` builds every built-in privilege, which was most of a
    /// login's server CPU (550 of 600 us) when each new connection did it again.
    shared: std::sync::Mutex<SharedResolved>,
    /// `__system@local`, whose password is the key file's key (see [`system_user`]).
    system: Option<UserDoc>,
}

type SharedResolved = (
    u64,
    std::collections::HashMap<(String, String), Arc<Resolved>>,
);

impl Security {
    /// Access control on or off; with a key file's `key`, the `__system` user exists.
    pub fn new(enabled: bool, key: Option<&str>) -> Security {
        let mut secret = [0u8; 32];
        rand_bytes(&mut secret);
        Security {
            enabled,
            secret,
            generation: AtomicU64::new(1),
            localhost_closed: std::sync::atomic::AtomicBool::new(false),
            shared: std::sync::Mutex::new((0, Default::default())),
            system: key.and_then(system_user),
        }
    }

    /// The `__system@local` user, when a key file is set.
    pub fn system_user(&self) -> Option<&UserDoc> {
        self.system.as_ref()
    }

    /// The generation of users and roles: connections re-resolve their privileges when it
    /// moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Notes that a user or role changed.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

fn rand_bytes(out: &mut [u8]) {
    use rand::RngCore;
    rand::rng().fill_bytes(out);
}

/// A connection's authentication: who it is, the SASL conversation under way, and its
/// resolved privileges.
#[derive(Debug, Clone, Default)]
pub struct ConnAuth {
    /// The authenticated user, `(user, db)`.
    pub user: Option<(String, String)>,
    sasl: Option<Sasl>,
    /// The user's roles and privileges, as of a generation.
    resolved: Option<(u64, Arc<Resolved>)>,
    /// Failed authentications on this connection: each makes the next one wait longer.
    failures: u32,
}

#[derive(Debug, Clone)]
struct Sasl {
    id: i32,
    db: String,
    conversation: Conversation,
    skip_empty: bool,
    /// The proof was verified and the server's final message sent; the client's empty
    /// message ends the conversation.
    verified: bool,
}

fn payload_of(cmd: &Document) -> Result<Vec<u8>> {
    match cmd.get("payload") {
        Some(Bson::Binary(b)) => Ok(b.bytes.clone()),
        Some(Bson::String(s)) => Ok(s.as_bytes().to_vec()),
        _ => Err(MongoError::bad_value("Missing or invalid SASL payload")),
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

/// The wait before answering a connection's next authentication after `failures` failed
/// ones: `authFailedDelayMs` for each of the last ten. Only this connection is slowed,
/// never the user (a flood of bad passwords from one client cannot lock the real user
/// out, nor slow anyone else's logins).
fn backoff(ctx: &ServerCtx, failures: u32) -> Duration {
    let per = crate::util::get_i64(&ctx.parameters.lock().unwrap(), "authFailedDelayMs")
        .unwrap_or(DEFAULT_AUTH_FAILED_DELAY_MS)
        .clamp(0, 5_000) as u64;
    Duration::from_millis(per * u64::from(failures.min(10)))
}

/// `authFailedDelayMs`'s default.
pub const DEFAULT_AUTH_FAILED_DELAY_MS: i64 = 10;

/// `saslStart` (also for `hello`'s `speculativeAuthenticate`): the client's first message.
///
/// # Errors
/// MechanismUnavailable for a mechanism other than SCRAM; BadValue for a malformed
/// message.
pub async fn sasl_start(
    ctx: &Arc<ServerCtx>,
    conn: &mut ConnInfo,
    db: &str,
    cmd: &Document,
) -> Result<Document> {
    start(ctx, conn, db, cmd, false).await
}

/// `saslStart`, or with `speculative` `hello`'s `speculativeAuthenticate`, which fails
/// (and is left out of the reply) for a user that exists without the mechanism: the
/// driver then negotiates the mechanism the user has from `saslSupportedMechs`.
async fn start(
    ctx: &Arc<ServerCtx>,
    conn: &mut ConnInfo,
    db: &str,
    cmd: &Document,
    speculative: bool,
) -> Result<Document> {
    let mech_name = cmd.get_str("mechanism").unwrap_or("");
    let Some(mech) = Mechanism::parse(mech_name) else {
        return Err(MongoError::new(
            ErrorCode::MechanismUnavailable,
            format!("Received authentication for mechanism {mech_name} which is not enabled"),
        ));
    };
    tokio::time::sleep(backoff(ctx, conn.auth.failures)).await;
    let payload = payload_of(cmd)?;
    let skip_empty = cmd
        .get_document("options")
        .ok()
        .and_then(|o| o.get_bool("skipEmptyExchange").ok())
        .unwrap_or(false);
    let store = ctx.clone();
    let db_owned = db.to_string();
    let lacks_mechanism = std::cell::Cell::new(false);
    let lookup = |user: &str| -> Option<auth::Credential> {
        let u = users::load_user(&store, user, &db_owned).ok().flatten()?;
        let c = u.credentials.get(&mech).cloned();
        lacks_mechanism.set(c.is_none());
        c
    };
    let (conversation, server_first) =
        Conversation::start(mech, &payload, lookup, &ctx.security.secret)?;
    if speculative && lacks_mechanism.get() {
        return Err(auth::scram::auth_failed());
    }
    // A connection has one conversation at a time; MongoDB numbers it 1.
    let id = 1;
    conn.auth.sasl = Some(Sasl {
        id,
        db: db.to_string(),
        conversation,
        skip_empty,
        verified: false,
    });
    Ok(doc! {
        "conversationId": id,
        "done": false,
        "payload": binary(server_first),
    })
}

/// `saslContinue`.
///
/// # Errors
/// AuthenticationFailed for a wrong proof, an unknown user, or a conversation that does not
/// exist; ProtocolError for a second user on a connection already authenticated as
/// another.
pub async fn sasl_continue(
    ctx: &Arc<ServerCtx>,
    conn: &mut ConnInfo,
    cmd: &Document,
) -> Result<Document> {
    let id = crate::util::get_i64(cmd, "conversationId").unwrap_or(-1);
    let Some(mut sasl) = conn.auth.sasl.take().filter(|s| i64::from(s.id) == id) else {
        return Err(MongoError::new(
            ErrorCode::ProtocolError,
            "No SASL session state found",
        ));
    };
    let payload = payload_of(cmd)?;
    if sasl.verified {
        // The client's empty message after the server's final one.
        return Ok(doc! {"conversationId": sasl.id, "done": true, "payload": binary(Vec::new())});
    }
    match sasl.conversation.finish(&payload) {
        Ok(Step::Verified(server_final)) => {
            let who = (sasl.conversation.user.clone(), sasl.db.clone());
            if conn.auth.user.as_ref().is_some_and(|u| *u != who) {
                return Err(MongoError::new(
                    ErrorCode::ProtocolError,
                    "Each client connection may only be authenticated once",
                ));
            }
            conn.auth.user = Some(who);
            conn.auth.resolved = None;
            conn.auth.failures = 0;
            let done = sasl.skip_empty;
            let id = sasl.id;
            if !done {
                sasl.verified = true;
                conn.auth.sasl = Some(sasl);
            }
            let _ = ctx;
            Ok(doc! {"conversationId": id, "done": done, "payload": binary(server_final)})
        }
        Err(e) => {
            conn.auth.failures = conn.auth.failures.saturating_add(1);
            tracing::info!(
                user = %sasl.conversation.user,
                db = %sasl.db,
                mechanism = sasl.conversation.mechanism.name(),
                "authentication failed"
            );
            Err(e)
        }
    }
}

/// What `hello` adds for authentication: `saslSupportedMechs` for `db.user`, and the
/// answer to `speculativeAuthenticate` (omitted when it fails, as in MongoDB).
pub async fn hello_fields(
    ctx: &Arc<ServerCtx>,
    conn: &mut ConnInfo,
    cmd: &Document,
    out: &mut Document,
) {
    if let Ok(name) = cmd.get_str("saslSupportedMechs") {
        if let Some((db, user)) = name.split_once('.') {
            // A user that does not exist is shown both mechanisms, as a user created
            // without a choice has: MongoDB leaves the field out, which tells a prober
            // who exists.
            let mechs = match users::load_user(ctx, user, db) {
                Ok(Some(u)) => u.mechanisms(),
                _ => Mechanism::ALL.iter().map(|m| m.name()).collect(),
            };
            out.insert("saslSupportedMechs", mechs);
        }
    }
    if let Ok(spec) = cmd.get_document("speculativeAuthenticate") {
        if spec.contains_key("saslStart") {
            let db = spec.get_str("db").unwrap_or("admin").to_string();
            if let Ok(r) = start(ctx, conn, &db, spec, true).await {
                out.insert("speculativeAuthenticate", r);
            }
        }
    }
}

/// `logout`: forgets the connection's user.
pub fn logout(conn: &mut ConnInfo) -> Reply {
    conn.auth = ConnAuth {
        failures: conn.auth.failures,
        ..ConnAuth::default()
    };
    Reply::ok(Document::new())
}

/// The connection's user's roles and privileges, resolved again if users or roles changed
/// since. `None` when nobody is authenticated, or the user was dropped.
///
/// # Errors
/// On storage failure.
pub fn resolved(ctx: &ServerCtx, conn: &mut ConnInfo) -> Result<Option<Arc<Resolved>>> {
    let Some((user, db)) = conn.auth.user.clone() else {
        return Ok(None);
    };
    let generation = ctx.security.generation();
    if let Some((g, r)) = &conn.auth.resolved {
        if *g == generation {
            return Ok(Some(r.clone()));
        }
    }
    let key = (user, db);
    let shared = {
        let s = ctx.security.shared.lock().unwrap();
        (s.0 == generation)
            .then(|| s.1.get(&key).cloned())
            .flatten()
    };
    let r = match shared {
        Some(r) => r,
        None => {
            let r = match users::load_user(ctx, &key.0, &key.1)? {
                Some(u) => {
                    let lookup = users::role_lookup(ctx)?;
                    Arc::new(auth::roles::resolve(&u.roles, &|n: &RoleName| lookup(n)))
                }
                // Dropped while connected: no privileges from now on.
                None => Arc::new(Resolved::default()),
            };
            let mut s = ctx.security.shared.lock().unwrap();
            if s.0 != generation {
                *s = (generation, Default::default());
            }
            s.1.insert(key, r.clone());
            r
        }
    };
    conn.auth.resolved = Some((generation, r.clone()));
    Ok(Some(r))
}

/// `connectionStatus`.
///
/// # Errors
/// On storage failure.
pub fn connection_status(ctx: &ServerCtx, conn: &mut ConnInfo, cmd: &Document) -> Result<Reply> {
    let mut users_out = Vec::new();
    let mut roles_out = Vec::new();
    let mut privileges = Vec::new();
    if let Some((user, db)) = conn.auth.user.clone() {
        users_out.push(Bson::Document(doc! {"user": &user, "db": &db}));
        if let Some(r) = resolved(ctx, conn)? {
            if let Ok(Some(u)) = users::load_user(ctx, &user, &db) {
                roles_out = u
                    .roles
                    .iter()
                    .map(|r| Bson::Document(r.to_document()))
                    .collect();
            }
            privileges = r
                .privileges
                .privileges()
                .iter()
                .map(|p| Bson::Document(p.to_document()))
                .collect();
        }
    }
    let mut info = doc! {
        "authenticatedUsers": users_out,
        "authenticatedUserRoles": roles_out,
    };
    if crate::util::get_bool(cmd, "showPrivileges").unwrap_or(false) {
        info.insert("authenticatedUserPrivileges", privileges);
    }
    Ok(Reply::ok(doc! {"authInfo": info}))
}

/// The user replica set members authenticate as, `__system` on `local`: its password is
/// the key file's key and it holds the `__system` role (every action, including member
/// traffic's `internal`), as in MongoDB. It is not stored: it exists while the key does.
fn system_user(key: &str) -> Option<UserDoc> {
    let mut credentials = std::collections::BTreeMap::new();
    for (m, iterations) in [
        (auth::Mechanism::Sha1, auth::scram::DEFAULT_SHA1_ITERATIONS),
        (
            auth::Mechanism::Sha256,
            auth::scram::DEFAULT_SHA256_ITERATIONS,
        ),
    ] {
        credentials.insert(
            m,
            auth::Credential::new(m, SYSTEM_USER, key, iterations).ok()?,
        );
    }
    Some(UserDoc {
        user: SYSTEM_USER.into(),
        db: "local".into(),
        user_id: bson::Uuid::new(),
        credentials,
        roles: vec![auth::RoleName::new("__system", "admin")],
        custom_data: None,
    })
}

/// The name of the user members authenticate as.
pub const SYSTEM_USER: &str = "__system";

/// Whether the localhost exception applies: access control is on, no user and no role
/// exists yet (once one has, the exception stays closed until a restart), and the client
/// connected over loopback.
///
/// # Errors
/// On storage failure.
pub fn localhost_exception(ctx: &ServerCtx, conn: &ConnInfo) -> Result<bool> {
    if !ctx.security.enabled
        || !is_loopback(&conn.peer)
        || ctx.security.localhost_closed.load(Ordering::SeqCst)
    {
        return Ok(false);
    }
    if users::any_user_or_role(ctx)? {
        ctx.security.localhost_closed.store(true, Ordering::SeqCst);
        return Ok(false);
    }
    Ok(true)
}

/// What the localhost exception allows: creating users on `admin` (and `$external`) and
/// granting them `admin`'s roles, and setting up a replica set.
fn localhost_privileges() -> auth::PrivilegeSet {
    use auth::{Privilege, Resource};
    let mut s = auth::PrivilegeSet::default();
    s.add(&Privilege::new(
        Resource::ns("admin", ""),
        &["createUser", "grantRole"],
    ));
    s.add(&Privilege::new(
        Resource::ns("$external", ""),
        &["createUser"],
    ));
    s.add(&Privilege::new(
        Resource::Cluster,
        &[
            "addShard",
            "issueDirectShardOperations",
            "replSetConfigure",
            "replSetGetStatus",
        ],
    ));
    s
}

fn is_loopback(peer: &str) -> bool {
    peer.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false)
}

/// Unauthorized with MongoDB's message: `not authorized on DB to execute command { ... }`,
/// the command shown without its document sequences and with any password as `"xxx"`.
pub fn unauthorized(db: &str, cmd: &Document) -> MongoError {
    let mut shown = cmd.clone();
    for k in ["documents", "updates", "deletes", "ops", "nsInfo"] {
        shown.remove(k);
    }
    if shown.contains_key("pwd") {
        shown.insert("pwd", "xxx");
    }
    MongoError::new(
        ErrorCode::Unauthorized,
        format!(
            "not authorized on {db} to execute command {}",
            shell_string(&Bson::Document(shown))
        ),
    )
}

/// A value as MongoDB's messages print BSON: `{ find: "c", lsid: { id: UUID("...") } }`.
fn shell_string(v: &Bson) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    match v {
        Bson::Document(d) if d.is_empty() => "{}".into(),
        Bson::Document(d) => {
            let parts: Vec<String> = d
                .iter()
                .map(|(k, v)| format!("{k}: {}", shell_string(v)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
        Bson::Array(a) if a.is_empty() => "[]".into(),
        Bson::Array(a) => {
            let parts: Vec<String> = a.iter().map(shell_string).collect();
            format!("[ {} ]", parts.join(", "))
        }
        Bson::String(s) => format!("{s:?}"),
        Bson::Binary(b) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16 => {
            let u = bson::Uuid::from_bytes(b.bytes.as_slice().try_into().unwrap_or([0; 16]));
            format!("UUID(\"{u}\")")
        }
        Bson::Binary(b) => format!("BinData({}, {})", u8::from(b.subtype), hex(&b.bytes)),
        Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
        Bson::DateTime(t) => format!("new Date({})", t.timestamp_millis()),
        Bson::ObjectId(o) => format!("ObjectId('{o}')"),
        Bson::Double(x) if x.fract() == 0.0 && x.is_finite() => format!("{x:.1}"),
        other => other.to_string(),
    }
}

/// Unauthorized for a command that needs a user when nobody is authenticated.
pub fn requires_authentication(name: &str) -> MongoError {
    MongoError::new(
        ErrorCode::Unauthorized,
        format!("Command {name} requires authentication"),
    )
}

/// Who runs the current command, and with what privileges: set for the command's
/// duration ([`scope`]), so that what it opens (a cursor) remembers its owner and what its
/// `getMore`s must still be allowed, and commands can filter what they show.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Access control is on.
    pub enabled: bool,
    pub user: Option<(String, String)>,
    /// Shared with the connection and the server's cache: a command never copies them.
    privileges: Option<Arc<Resolved>>,
    /// What the command needed.
    pub need: Option<crate::privileges::Need>,
}

impl Caller {
    /// Whether the caller holds `action` on `t` (always, with access control off).
    pub fn allows(&self, action: &str, t: &Target<'_>) -> bool {
        !self.enabled
            || self
                .privileges
                .as_ref()
                .is_some_and(|p| p.privileges.allows(action, t))
    }

    /// Whether the caller holds everything `need` asks for.
    pub fn satisfies(&self, need: &crate::privileges::Need) -> bool {
        use crate::privileges::Need;
        if !self.enabled {
            return true;
        }
        match need {
            Need::Nothing => true,
            Need::Authenticated => self.user.is_some() || self.privileges.is_some(),
            Need::All(list) => list.iter().all(|(a, t)| self.allows(a, &t.as_target())),
            Need::Any(list) => list.iter().any(|(a, t)| self.allows(a, &t.as_target())),
        }
    }

    /// Whether the caller may see database `db` in `listDatabases` without the
    /// `listDatabases` action: some privilege of theirs touches it.
    pub fn sees_db(&self, db: &str) -> bool {
        !self.enabled
            || self
                .privileges
                .as_ref()
                .is_some_and(|p| p.privileges.touches_db(db))
    }

    /// Whether the caller holds some privilege on collection `db.coll`.
    pub fn sees_collection(&self, db: &str, coll: &str) -> bool {
        !self.enabled
            || self
                .privileges
                .as_ref()
                .is_some_and(|p| p.privileges.touches_collection(db, coll))
    }

    /// Whether the caller may use a cursor `owner` opened: the same user (anyone, with
    /// access control off).
    pub fn owns(&self, owner: &Option<(String, String)>) -> bool {
        !self.enabled || self.user == *owner
    }
}

tokio::task_local! {
    static CALLER: Caller;
}

/// The current command's caller (a default, access-control-off caller outside one).
pub fn caller() -> Caller {
    CALLER.try_with(Clone::clone).unwrap_or_default()
}

/// Runs `f` as a command of `caller`.
pub async fn scope<F: std::future::Future>(caller: Caller, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

/// Checks that the connection may run the command: the one place privileges are
/// enforced (see [`crate::privileges::need`]). Returns the caller the command runs as.
///
/// # Errors
/// Unauthorized.
pub fn check(
    ctx: &ServerCtx,
    conn: &mut ConnInfo,
    name: &str,
    db: &str,
    cmd: &Document,
) -> Result<Caller> {
    if !ctx.security.enabled {
        return Ok(Caller::default());
    }
    use crate::privileges::Need;
    let need = crate::privileges::need(ctx, name, db, cmd)?;
    let privileges = match resolved(ctx, conn)? {
        Some(r) => Some(r),
        // Nobody authenticated: the localhost exception's privileges, or nothing at all.
        None if localhost_exception(ctx, conn)? => Some(Arc::new(Resolved {
            privileges: localhost_privileges(),
            ..Resolved::default()
        })),
        None if matches!(need, Need::Nothing) => None,
        None => return Err(requires_authentication(name)),
    };
    let caller = Caller {
        enabled: true,
        user: conn.auth.user.clone(),
        privileges,
        need: Some(need.clone()),
    };
    if caller.satisfies(&need) {
        Ok(caller)
    } else {
        Err(unauthorized(db, cmd))
    }
}

/// Whether the connection holds `action` on `t` (for checks a command makes itself, such
/// as `listDatabases` filtering what it shows). Always true with access control off.
///
/// # Errors
/// On storage failure.
pub fn allows(ctx: &ServerCtx, conn: &mut ConnInfo, action: &str, t: &Target<'_>) -> Result<bool> {
    if !ctx.security.enabled {
        return Ok(true);
    }
    Ok(resolved(ctx, conn)?.is_some_and(|r| r.privileges.allows(action, t)))
}

/// The authenticated user as `(user, db)`, for commands that act on the caller (a cursor
/// remembers who opened it).
pub fn who(conn: &ConnInfo) -> Option<(String, String)> {
    conn.auth.user.clone()
}

/// A user document for a `usersInfo`-style listing.
pub fn user_info(u: &UserDoc) -> Document {
    u.info()
}
