//! Users and roles: stored in `admin.system.users` and `admin.system.roles` through the
//! ordinary write path (so changes are durable in the log, and replicated with it), and the
//! commands that manage them: `createUser`, `updateUser`, `dropUser`,
//! `dropAllUsersFromDatabase`, `usersInfo`, `grantRolesToUser`, `revokeRolesFromUser`,
//! `createRole`, `updateRole`, `dropRole`, `dropAllRolesFromDatabase`, `rolesInfo`,
//! `grantPrivilegesToRole`, `revokePrivilegesFromRole`, `grantRolesToRole`,
//! `revokeRolesFromRole`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use auth::roles::{RoleDoc, RoleName};
use auth::scram::{Credential, Mechanism};
use auth::user::user_id_key;
use auth::{Privilege, Resource, UserDoc};
use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};
use query::expr::Vars;
use storage::{Namespace, WriteCtx};

use crate::crud::{Session, delete_statement, insert_one, update_statement};
use crate::ddl::ensure_collection;
use crate::{ConnInfo, Reply, ServerCtx, util};

fn users_ns() -> Namespace {
    Namespace::new("admin", "system.users")
}

fn roles_ns() -> Namespace {
    Namespace::new("admin", "system.roles")
}

/// The stored document with this `_id` in `ns`, from the newest snapshot.
fn load(ctx: &ServerCtx, ns: &Namespace, id: &str) -> Result<Option<Document>> {
    let snap = ctx.store.snapshot()?;
    let Some(meta) = snap.collection(ns)? else {
        return Ok(None);
    };
    snap.get_doc(meta.id, &exec::keys::id_key(&Bson::String(id.to_string())))
}

/// Every document of `ns`.
fn load_all(ctx: &ServerCtx, ns: &Namespace) -> Result<Vec<Document>> {
    let snap = ctx.store.snapshot()?;
    let Some(meta) = snap.collection(ns)? else {
        return Ok(Vec::new());
    };
    snap.scan_docs(meta.id, None)?
        .map(|r| r.map(|(_, d)| d))
        .collect()
}

/// A user, if it exists.
///
/// # Errors
/// On storage failure or a damaged record.
pub fn load_user(ctx: &ServerCtx, user: &str, db: &str) -> Result<Option<UserDoc>> {
    if user == crate::security::SYSTEM_USER && db == "local" {
        return Ok(ctx.security.system_user().cloned());
    }
    load(ctx, &users_ns(), &user_id_key(user, db))?
        .map(|d| UserDoc::from_document(&d))
        .transpose()
}

/// Whether any user or role exists (the localhost exception ends with the first).
///
/// # Errors
/// On storage failure.
pub fn any_user_or_role(ctx: &ServerCtx) -> Result<bool> {
    let snap = ctx.store.snapshot()?;
    for ns in [users_ns(), roles_ns()] {
        if let Some(meta) = snap.collection(&ns)? {
            if snap.scan_docs(meta.id, None)?.next().is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The user-defined roles, for resolving role names.
///
/// # Errors
/// On storage failure or a damaged record.
pub fn role_lookup(ctx: &ServerCtx) -> Result<impl Fn(&RoleName) -> Option<RoleDoc>> {
    let mut roles = HashMap::new();
    for d in load_all(ctx, &roles_ns())? {
        let r = RoleDoc::from_document(&d)?;
        roles.insert(r.name.clone(), r);
    }
    Ok(move |n: &RoleName| roles.get(n).cloned())
}

fn all_roles(ctx: &ServerCtx) -> Result<Vec<RoleDoc>> {
    load_all(ctx, &roles_ns())?
        .iter()
        .map(RoleDoc::from_document)
        .collect()
}

fn all_users(ctx: &ServerCtx) -> Result<Vec<UserDoc>> {
    load_all(ctx, &users_ns())?
        .iter()
        .map(UserDoc::from_document)
        .collect()
}

/// Writes (inserts or replaces) a stored document, through the ordinary write path.
async fn put(ctx: &ServerCtx, ns: Namespace, doc: Document, replace: bool) -> Result<()> {
    crate::txn::write(ctx, move |w: &mut WriteCtx<'_>| {
        let (mut meta, _) = ensure_collection(w, &ns)?;
        let s = Session::default();
        if replace {
            let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
            let st = Bson::Document(doc! {"q": {"_id": id}, "u": doc, "upsert": true});
            update_statement(w, &ns, &st, &Vars::default(), &s, 0).map(drop)
        } else {
            insert_one(w, &mut meta, &doc, &s, 0)
        }
    })
    .await?;
    ctx.security.changed();
    Ok(())
}

/// Deletes the stored documents `filter` matches; how many.
async fn remove(ctx: &ServerCtx, ns: Namespace, filter: Document) -> Result<i64> {
    let n = crate::txn::write(ctx, move |w: &mut WriteCtx<'_>| {
        if w.collection(&ns)?.is_none() {
            return Ok(0);
        }
        let st = Bson::Document(doc! {"q": filter, "limit": 0});
        delete_statement(w, &ns, &st, &Vars::default(), &Session::default(), 0)
    })
    .await?;
    ctx.security.changed();
    Ok(n)
}

fn user_not_found(user: &str, db: &str) -> MongoError {
    MongoError::new(
        ErrorCode::UserNotFound,
        format!("User {user}@{db} not found"),
    )
}

fn required<'a>(cmd: &'a Document, name: &str, field: &str) -> Result<&'a Bson> {
    cmd.get(field).ok_or_else(|| {
        MongoError::with_code(
            40414,
            format!("BSON field '{name}.{field}' is missing but a required field"),
        )
    })
}

fn role_list(v: &Bson, db: &str, name: &str) -> Result<Vec<RoleName>> {
    let Bson::Array(a) = v else {
        return Err(MongoError::type_mismatch(format!(
            "BSON field '{name}.roles' is the wrong type '{}', expected type 'array'",
            util::type_name(v)
        )));
    };
    a.iter().map(|r| RoleName::from_bson(r, db)).collect()
}

fn privilege_list(v: &Bson, name: &str) -> Result<Vec<Privilege>> {
    let Bson::Array(a) = v else {
        return Err(MongoError::type_mismatch(format!(
            "BSON field '{name}.privileges' is the wrong type '{}', expected type 'array'",
            util::type_name(v)
        )));
    };
    a.iter()
        .map(|p| match p {
            Bson::Document(p) => Privilege::from_document(p),
            _ => Err(MongoError::bad_value("privileges must be objects")),
        })
        .collect()
}

/// Checks that every role exists.
fn check_roles_exist(ctx: &ServerCtx, roles: &[RoleName]) -> Result<()> {
    let lookup = role_lookup(ctx)?;
    for r in roles {
        if !auth::roles::exists(r, &lookup) {
            return Err(auth::roles::not_found(r));
        }
    }
    Ok(())
}

fn iterations(ctx: &ServerCtx, m: Mechanism) -> u32 {
    let (key, default) = match m {
        Mechanism::Sha1 => ("scramIterationCount", auth::scram::DEFAULT_SHA1_ITERATIONS),
        Mechanism::Sha256 => (
            "scramSHA256IterationCount",
            auth::scram::DEFAULT_SHA256_ITERATIONS,
        ),
    };
    let p = ctx.parameters.lock().unwrap();
    util::get_i64(&p, key)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(default)
}

/// The mechanisms a command names (`mechanisms`), or `default`.
fn mechanisms(cmd: &Document, default: &[Mechanism]) -> Result<Vec<Mechanism>> {
    let Some(v) = cmd.get("mechanisms") else {
        return Ok(default.to_vec());
    };
    let Bson::Array(a) = v else {
        return Err(MongoError::bad_value("mechanisms field must be an array"));
    };
    if a.is_empty() {
        return Err(MongoError::bad_value("mechanisms field must not be empty"));
    }
    let mut out = Vec::new();
    for m in a {
        let name = m.as_str().unwrap_or("");
        let mech = Mechanism::parse(name)
            .ok_or_else(|| MongoError::bad_value(format!("Unknown auth mechanism '{name}'")))?;
        if !out.contains(&mech) {
            out.push(mech);
        }
    }
    out.sort();
    Ok(out)
}

/// Credentials for `pwd` under `mechs`. With `digestPassword: false` the password is
/// already SCRAM-SHA-1's digest (the drivers' old form), which SCRAM-SHA-256 cannot use.
fn credentials(
    ctx: &ServerCtx,
    cmd: &Document,
    user: &str,
    pwd: &str,
    mechs: &[Mechanism],
) -> Result<BTreeMap<Mechanism, Credential>> {
    if pwd.is_empty() {
        return Err(MongoError::bad_value("Password cannot be empty"));
    }
    let digest = util::get_bool(cmd, "digestPassword").unwrap_or(true);
    if !digest && mechs.contains(&Mechanism::Sha256) {
        return Err(MongoError::bad_value(
            "Use of SCRAM-SHA-256 requires undigested passwords",
        ));
    }
    let mut out = BTreeMap::new();
    for &m in mechs {
        let c = if digest {
            Credential::new(m, user, pwd, iterations(ctx, m))?
        } else {
            Credential::from_digest(pwd, iterations(ctx, m))
        };
        out.insert(m, c);
    }
    Ok(out)
}

fn check_user_db(db: &str) -> Result<()> {
    if db == "local" {
        return Err(MongoError::bad_value(
            "Cannot create users in the local database",
        ));
    }
    Ok(())
}

fn refuse_restrictions(cmd: &Document) -> Result<()> {
    match cmd.get("authenticationRestrictions") {
        None => Ok(()),
        Some(Bson::Array(a)) if a.is_empty() => Ok(()),
        Some(_) => Err(MongoError::new(
            ErrorCode::InvalidOptions,
            "authenticationRestrictions are not supported by Eddy",
        )),
    }
}

fn name_arg<'a>(cmd: &'a Document, name: &str, what: &str) -> Result<&'a str> {
    match cmd.get(name) {
        Some(Bson::String(s)) if !s.is_empty() => Ok(s),
        Some(Bson::String(_)) => Err(MongoError::bad_value(format!(
            "{what} names cannot be empty"
        ))),
        _ => Err(MongoError::type_mismatch(format!(
            "BSON field '{name}' must be a string"
        ))),
    }
}

/// `createUser`.
///
/// # Errors
/// As MongoDB: an existing user (51003), unknown roles (RoleNotFound), bad arguments.
pub async fn create_user(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let user = name_arg(cmd, "createUser", "User")?.to_string();
    check_user_db(db)?;
    refuse_restrictions(cmd)?;
    let roles = role_list(required(cmd, "createUser", "roles")?, db, "createUser")?;
    let pwd = match cmd.get("pwd") {
        Some(Bson::String(p)) => p.clone(),
        Some(_) => return Err(MongoError::bad_value("pwd must be a string")),
        None if db == "$external" => String::new(),
        None => {
            return Err(MongoError::bad_value(
                "Must provide a 'pwd' field for all user documents, except those with '$external' as the user's source db",
            ));
        }
    };
    let mechs = mechanisms(cmd, &Mechanism::ALL)?;
    check_roles_exist(ctx, &roles)?;
    if load_user(ctx, &user, db)?.is_some() {
        return Err(MongoError::with_code(
            51003,
            format!("User \"{user}@{db}\" already exists"),
        ));
    }
    let u = UserDoc {
        credentials: credentials(ctx, cmd, &user, &pwd, &mechs)?,
        user,
        db: db.to_string(),
        user_id: bson::Uuid::new(),
        roles,
        custom_data: cmd.get_document("customData").ok().cloned(),
    };
    put(ctx, users_ns(), u.to_document(), false).await?;
    Ok(Reply::ok(Document::new()))
}

/// `updateUser`.
///
/// # Errors
/// UserNotFound, RoleNotFound, bad arguments.
pub async fn update_user(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let user = name_arg(cmd, "updateUser", "User")?.to_string();
    refuse_restrictions(cmd)?;
    let mut u = load_user(ctx, &user, db)?.ok_or_else(|| user_not_found(&user, db))?;
    let current: Vec<Mechanism> = u.credentials.keys().copied().collect();
    if let Some(v) = cmd.get("roles") {
        let roles = role_list(v, db, "updateUser")?;
        check_roles_exist(ctx, &roles)?;
        u.roles = roles;
    }
    match cmd.get("pwd") {
        Some(Bson::String(p)) => {
            let mechs = mechanisms(cmd, &current)?;
            u.credentials = credentials(ctx, cmd, &user, p, &mechs)?;
        }
        Some(_) => return Err(MongoError::bad_value("pwd must be a string")),
        None if cmd.contains_key("mechanisms") => {
            // Without a new password, mechanisms can only be taken away.
            let mechs = mechanisms(cmd, &current)?;
            if mechs.iter().any(|m| !current.contains(m)) {
                return Err(MongoError::bad_value(
                    "mechanisms field must be a subset of previously set mechanisms",
                ));
            }
            u.credentials.retain(|m, _| mechs.contains(m));
        }
        None => {}
    }
    if let Some(c) = cmd.get("customData") {
        match c {
            Bson::Document(c) => u.custom_data = Some(c.clone()),
            _ => return Err(MongoError::bad_value("customData must be an object")),
        }
    }
    put(ctx, users_ns(), u.to_document(), true).await?;
    Ok(Reply::ok(Document::new()))
}

/// `dropUser`.
///
/// # Errors
/// UserNotFound.
pub async fn drop_user(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let user = name_arg(cmd, "dropUser", "User")?;
    let n = remove(ctx, users_ns(), doc! {"_id": user_id_key(user, db)}).await?;
    if n == 0 {
        return Err(MongoError::new(
            ErrorCode::UserNotFound,
            format!("User '{user}@{db}' not found"),
        ));
    }
    Ok(Reply::ok(Document::new()))
}

/// `dropAllUsersFromDatabase`.
///
/// # Errors
/// On storage failure.
pub async fn drop_all_users(ctx: &Arc<ServerCtx>, db: &str) -> Result<Reply> {
    let n = remove(ctx, users_ns(), doc! {"db": db}).await?;
    Ok(Reply::ok(doc! {"n": n}))
}

/// What a `usersInfo` argument asks for: every user of this database (`1`), of every
/// database (`{forAllDBs: true}`), or named users (a name, `{user, db}`, or a list).
enum UsersWanted {
    Db,
    All,
    Named(Vec<(String, String)>),
}

fn users_wanted(db: &str, arg: &Bson) -> Result<UsersWanted> {
    let one = |v: &Bson| -> Result<(String, String)> {
        match v {
            Bson::String(u) => Ok((u.clone(), db.to_string())),
            Bson::Document(d) => {
                for k in d.keys() {
                    if k != "user" && k != "db" {
                        return Err(MongoError::bad_value(format!(
                            "UserName contains an unknown field named: '{k}"
                        )));
                    }
                }
                let field = |k: &str| match d.get(k) {
                    Some(Bson::String(s)) => Ok(s.clone()),
                    Some(other) => Err(MongoError::bad_value(format!(
                        "UserName must contain a string field named: {k}. But, has type {}",
                        util::type_name(other)
                    ))),
                    None => Err(MongoError::bad_value(format!(
                        "UserName must contain a field named: {k}"
                    ))),
                };
                Ok((field("user")?, field("db")?))
            }
            _ => Err(MongoError::bad_value(
                "UserName must be either a string or an object",
            )),
        }
    };
    Ok(match arg {
        Bson::Int32(1) | Bson::Int64(1) | Bson::Double(1.0) => UsersWanted::Db,
        Bson::Document(d) if d.contains_key("forAllDBs") => {
            if d.get_bool("forAllDBs") != Ok(true) || d.len() != 1 {
                return Err(MongoError::bad_value(
                    "forAllDBs must be the only field, and true",
                ));
            }
            UsersWanted::All
        }
        Bson::Array(a) if a.is_empty() => {
            return Err(MongoError::bad_value(
                "$and/$or/$nor must be a nonempty array",
            ));
        }
        Bson::Array(a) => UsersWanted::Named(a.iter().map(one).collect::<Result<_>>()?),
        v => UsersWanted::Named(vec![one(v)?]),
    })
}

/// `usersInfo`: users sorted by name then database, without credentials unless asked;
/// `viewUser` is needed on each database listed, except for the caller's own user.
///
/// # Errors
/// Bad arguments; Unauthorized.
pub fn users_info(ctx: &ServerCtx, conn: &mut ConnInfo, db: &str, cmd: &Document) -> Result<Reply> {
    use crate::security::{allows, unauthorized, who};
    let arg = required(cmd, "usersInfo", "usersInfo")?;
    let wanted = users_wanted(db, arg)?;
    let show_credentials = util::get_bool(cmd, "showCredentials").unwrap_or(false);
    let show_privileges = util::get_bool(cmd, "showPrivileges").unwrap_or(false);
    let show_custom = util::get_bool(cmd, "showCustomData").unwrap_or(true);
    // Eddy has no authentication restrictions (createUser refuses them), so a user's
    // list is always empty; it is shown when asked, under the same rule as privileges.
    let show_restrictions = util::get_bool(cmd, "showAuthenticationRestrictions").unwrap_or(false);
    if (show_privileges || show_restrictions)
        && (!matches!(wanted, UsersWanted::Named(_)) || cmd.contains_key("filter"))
    {
        return Err(MongoError::new(
            ErrorCode::IllegalOperation,
            "Privilege or restriction details require exact-match usersInfo queries",
        ));
    }
    let mut users = all_users(ctx)?;
    match &wanted {
        UsersWanted::Db => {
            if !allows(ctx, conn, "viewUser", &auth::Target::Database(db))? {
                return Err(unauthorized(db, cmd));
            }
            users.retain(|u| u.db == db);
        }
        UsersWanted::All => {
            if !allows(ctx, conn, "viewUser", &auth::Target::Cluster)? {
                return Err(unauthorized(db, cmd));
            }
        }
        UsersWanted::Named(names) => {
            let me = who(conn);
            for (n, d) in names {
                let mine = me.as_ref().is_some_and(|(mn, md)| mn == n && md == d);
                if !mine && !allows(ctx, conn, "viewUser", &auth::Target::Database(d))? {
                    return Err(unauthorized(db, cmd));
                }
            }
            users.retain(|u| names.iter().any(|(n, d)| *n == u.user && *d == u.db));
        }
    }
    users.sort_by(|a, b| (&a.user, &a.db).cmp(&(&b.user, &b.db)));
    let lookup = role_lookup(ctx)?;
    let mut out = Vec::new();
    for u in &users {
        let mut d = u.info();
        if !show_custom {
            d.remove("customData");
        }
        if show_credentials {
            if let Ok(c) = u.to_document().get_document("credentials") {
                d.insert("credentials", c.clone());
            }
        }
        if show_restrictions {
            d.insert("authenticationRestrictions", Vec::<Bson>::new());
        }
        if show_privileges {
            let r = auth::roles::resolve(&u.roles, &lookup);
            // Built-in roles are shown, not expanded (as MongoDB shows them).
            d.insert(
                "inheritedRoles",
                r.roles
                    .iter()
                    .map(|n| Bson::Document(n.to_document()))
                    .collect::<Vec<_>>(),
            );
            d.insert(
                "inheritedPrivileges",
                r.privileges
                    .privileges()
                    .iter()
                    .map(|p| Bson::Document(p.to_document()))
                    .collect::<Vec<_>>(),
            );
        }
        out.push(Bson::Document(d));
    }
    if let Ok(f) = cmd.get_document("filter") {
        let filter = query::filter::Filter::parse(f)?;
        out.retain(|d| matches!(d, Bson::Document(d) if filter.matches(d)));
    }
    Ok(Reply::ok(doc! {"users": out}))
}

/// `grantRolesToUser` / `revokeRolesFromUser`.
///
/// # Errors
/// UserNotFound, RoleNotFound.
pub async fn change_user_roles(
    ctx: &Arc<ServerCtx>,
    db: &str,
    name: &str,
    cmd: &Document,
) -> Result<Reply> {
    let user = name_arg(cmd, name, "User")?.to_string();
    let roles = role_list(required(cmd, name, "roles")?, db, name)?;
    let mut u = load_user(ctx, &user, db)?.ok_or_else(|| user_not_found(&user, db))?;
    if name == "grantRolesToUser" {
        check_roles_exist(ctx, &roles)?;
        for r in roles {
            if !u.roles.contains(&r) {
                u.roles.push(r);
            }
        }
    } else {
        u.roles.retain(|r| !roles.contains(r));
    }
    put(ctx, users_ns(), u.to_document(), true).await?;
    Ok(Reply::ok(Document::new()))
}

fn load_role(ctx: &ServerCtx, name: &RoleName) -> Result<Option<RoleDoc>> {
    load(ctx, &roles_ns(), &format!("{}.{}", name.db, name.role))?
        .map(|d| RoleDoc::from_document(&d))
        .transpose()
}

/// What a role in `db` may hold: privileges on its own database (any database, and the
/// cluster, for a role of `admin`), and roles of its own database (any, for `admin`).
fn check_role_content(db: &str, privileges: &[Privilege], roles: &[RoleName]) -> Result<()> {
    if db == "admin" {
        return Ok(());
    }
    for p in privileges {
        let ok = matches!(&p.resource, Resource::Ns { db: d, .. } if d == db);
        if !ok {
            return Err(MongoError::new(
                ErrorCode::InvalidRoleModification,
                format!(
                    "Roles on the '{db}' database cannot be granted privileges that target other databases or the cluster"
                ),
            ));
        }
    }
    if let Some(r) = roles.iter().find(|r| r.db != db) {
        return Err(MongoError::new(
            ErrorCode::InvalidRoleModification,
            format!(
                "Roles on the '{db}' database cannot inherit from roles on other databases: {}",
                r.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses a role graph in which `role` would inherit from itself.
fn check_no_cycle(ctx: &ServerCtx, role: &RoleName, inherits: &[RoleName]) -> Result<()> {
    let lookup = role_lookup(ctx)?;
    let r = auth::roles::resolve(inherits, &lookup);
    if r.roles.contains(role) {
        return Err(MongoError::new(
            ErrorCode::InvalidRoleModification,
            format!(
                "Granting roles to {} would introduce a cycle in the role graph",
                role.display()
            ),
        ));
    }
    Ok(())
}

fn role_not_found_named(name: &RoleName) -> MongoError {
    auth::roles::not_found(name)
}

/// `createRole`.
///
/// # Errors
/// As MongoDB: an existing or built-in name, bad privileges, unknown roles.
pub async fn create_role(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let role = name_arg(cmd, "createRole", "Role")?.to_string();
    refuse_restrictions(cmd)?;
    let name = RoleName::new(&role, db);
    if auth::builtin::role(&role, db).is_some() || auth::builtin::is_builtin_name(&role) {
        return Err(MongoError::bad_value(format!(
            "Cannot create roles with the same name as a built-in role: {}",
            name.display()
        )));
    }
    let privileges = privilege_list(required(cmd, "createRole", "privileges")?, "createRole")?;
    let roles = role_list(required(cmd, "createRole", "roles")?, db, "createRole")?;
    check_role_content(db, &privileges, &roles)?;
    check_roles_exist(ctx, &roles)?;
    if load_role(ctx, &name)?.is_some() {
        return Err(MongoError::with_code(
            51002,
            format!("Role \"{}\" already exists", name.display()),
        ));
    }
    let r = RoleDoc {
        name,
        privileges,
        roles,
    };
    put(ctx, roles_ns(), r.to_document(), false).await?;
    Ok(Reply::ok(Document::new()))
}

/// Loads a user-defined role for modification (built-in roles cannot be changed).
fn role_to_modify(ctx: &ServerCtx, db: &str, role: &str) -> Result<RoleDoc> {
    let name = RoleName::new(role, db);
    if auth::builtin::role(role, db).is_some() {
        return Err(MongoError::new(
            ErrorCode::InvalidRoleModification,
            format!("Cannot update built-in role: {}", name.display()),
        ));
    }
    load_role(ctx, &name)?.ok_or_else(|| role_not_found_named(&name))
}

/// `updateRole`.
///
/// # Errors
/// RoleNotFound, bad privileges, cycles.
pub async fn update_role(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let role = name_arg(cmd, "updateRole", "Role")?.to_string();
    refuse_restrictions(cmd)?;
    let mut r = role_to_modify(ctx, db, &role)?;
    if !cmd.contains_key("privileges") && !cmd.contains_key("roles") {
        return Err(MongoError::bad_value(
            "Must specify at least one field to update in updateRole",
        ));
    }
    if let Some(v) = cmd.get("privileges") {
        r.privileges = privilege_list(v, "updateRole")?;
    }
    if let Some(v) = cmd.get("roles") {
        r.roles = role_list(v, db, "updateRole")?;
        check_roles_exist(ctx, &r.roles)?;
        check_no_cycle(ctx, &r.name, &r.roles)?;
    }
    check_role_content(db, &r.privileges, &r.roles)?;
    put(ctx, roles_ns(), r.to_document(), true).await?;
    Ok(Reply::ok(Document::new()))
}

/// `grantPrivilegesToRole` / `revokePrivilegesFromRole`.
///
/// # Errors
/// RoleNotFound, bad privileges.
pub async fn change_role_privileges(
    ctx: &Arc<ServerCtx>,
    db: &str,
    name: &str,
    cmd: &Document,
) -> Result<Reply> {
    let role = name_arg(cmd, name, "Role")?.to_string();
    let privileges = privilege_list(required(cmd, name, "privileges")?, name)?;
    let mut r = role_to_modify(ctx, db, &role)?;
    if name == "grantPrivilegesToRole" {
        check_role_content(db, &privileges, &[])?;
        for p in privileges {
            match r.privileges.iter_mut().find(|q| q.resource == p.resource) {
                Some(q) => q.actions.extend(p.actions),
                None => r.privileges.push(p),
            }
        }
    } else {
        for p in privileges {
            if let Some(q) = r.privileges.iter_mut().find(|q| q.resource == p.resource) {
                q.actions.retain(|a| !p.actions.contains(a));
            }
        }
        r.privileges.retain(|q| !q.actions.is_empty());
    }
    put(ctx, roles_ns(), r.to_document(), true).await?;
    Ok(Reply::ok(Document::new()))
}

/// `grantRolesToRole` / `revokeRolesFromRole`.
///
/// # Errors
/// RoleNotFound, cycles.
pub async fn change_role_roles(
    ctx: &Arc<ServerCtx>,
    db: &str,
    name: &str,
    cmd: &Document,
) -> Result<Reply> {
    let role = name_arg(cmd, name, "Role")?.to_string();
    let roles = role_list(required(cmd, name, "roles")?, db, name)?;
    let mut r = role_to_modify(ctx, db, &role)?;
    if name == "grantRolesToRole" {
        check_roles_exist(ctx, &roles)?;
        check_role_content(db, &[], &roles)?;
        for x in roles {
            if !r.roles.contains(&x) {
                r.roles.push(x);
            }
        }
        check_no_cycle(ctx, &r.name, &r.roles)?;
    } else {
        r.roles.retain(|x| !roles.contains(x));
    }
    put(ctx, roles_ns(), r.to_document(), true).await?;
    Ok(Reply::ok(Document::new()))
}

/// Removes `gone` from every user and role that holds it (as MongoDB does when a role is
/// dropped).
async fn forget_roles(ctx: &Arc<ServerCtx>, gone: &[RoleName]) -> Result<()> {
    for mut u in all_users(ctx)? {
        let before = u.roles.len();
        u.roles.retain(|r| !gone.contains(r));
        if u.roles.len() != before {
            put(ctx, users_ns(), u.to_document(), true).await?;
        }
    }
    for mut r in all_roles(ctx)? {
        let before = r.roles.len();
        r.roles.retain(|x| !gone.contains(x));
        if r.roles.len() != before {
            put(ctx, roles_ns(), r.to_document(), true).await?;
        }
    }
    Ok(())
}

/// `dropRole`.
///
/// # Errors
/// RoleNotFound.
pub async fn drop_role(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let role = name_arg(cmd, "dropRole", "Role")?.to_string();
    let r = role_to_modify(ctx, db, &role)?;
    remove(ctx, roles_ns(), doc! {"_id": r.key()}).await?;
    forget_roles(ctx, &[r.name]).await?;
    Ok(Reply::ok(Document::new()))
}

/// `dropAllRolesFromDatabase`.
///
/// # Errors
/// On storage failure.
pub async fn drop_all_roles(ctx: &Arc<ServerCtx>, db: &str) -> Result<Reply> {
    let gone: Vec<RoleName> = all_roles(ctx)?
        .into_iter()
        .filter(|r| r.name.db == db)
        .map(|r| r.name)
        .collect();
    let n = remove(ctx, roles_ns(), doc! {"db": db}).await?;
    forget_roles(ctx, &gone).await?;
    Ok(Reply::ok(doc! {"n": n}))
}

/// A role as `rolesInfo` shows it.
fn role_info(
    name: &RoleName,
    lookup: &dyn Fn(&RoleName) -> Option<RoleDoc>,
    show_privileges: bool,
) -> Option<Document> {
    let (privileges, roles, builtin) = match auth::roles::definition(name, lookup)? {
        auth::roles::Definition::Builtin(p, r) => (p, r, true),
        auth::roles::Definition::Defined(d) => (d.privileges, d.roles, false),
    };
    let inherited = auth::roles::resolve(&roles, lookup);
    let all = auth::roles::resolve(std::slice::from_ref(name), lookup);
    let docs = |v: &[RoleName]| {
        v.iter()
            .map(|r| Bson::Document(r.to_document()))
            .collect::<Vec<_>>()
    };
    let mut d = doc! {
        "_id": format!("{}.{}", name.db, name.role),
        "role": &name.role,
        "db": &name.db,
        "isBuiltin": builtin,
        "roles": docs(&roles),
        "inheritedRoles": docs(&inherited.roles.into_iter().collect::<Vec<_>>()),
    };
    if show_privileges {
        let ps = |v: &[Privilege]| {
            v.iter()
                .map(|p| Bson::Document(p.to_document()))
                .collect::<Vec<_>>()
        };
        d.insert("privileges", ps(&privileges));
        d.insert("inheritedPrivileges", ps(&all.privileges.privileges()));
    }
    Some(d)
}

/// `rolesInfo`: `viewRole` is needed on each database listed, except for roles the caller
/// holds.
///
/// # Errors
/// Bad arguments; Unauthorized.
pub fn roles_info(ctx: &ServerCtx, conn: &mut ConnInfo, db: &str, cmd: &Document) -> Result<Reply> {
    use crate::security::{allows, resolved, unauthorized};
    let arg = required(cmd, "rolesInfo", "rolesInfo")?;
    if ctx.security.enabled {
        let held = resolved(ctx, conn)?
            .map(|r| r.roles.clone())
            .unwrap_or_default();
        let named: Vec<RoleName> = match arg {
            Bson::Int32(1) | Bson::Int64(1) | Bson::Double(1.0) => Vec::new(),
            Bson::Array(a) => a
                .iter()
                .filter_map(|r| RoleName::from_bson(r, db).ok())
                .collect(),
            v => RoleName::from_bson(v, db).into_iter().collect(),
        };
        let need_db: Vec<&str> = if named.is_empty() {
            vec![db]
        } else {
            named
                .iter()
                .filter(|n| !held.contains(*n))
                .map(|n| n.db.as_str())
                .collect()
        };
        for d in need_db {
            if !allows(ctx, conn, "viewRole", &auth::Target::Database(d))? {
                return Err(unauthorized(db, cmd));
            }
        }
    }
    let show_privileges = matches!(cmd.get("showPrivileges"), Some(v) if query::expr::truthy(v));
    let show_builtin = util::get_bool(cmd, "showBuiltinRoles").unwrap_or(false);
    let show_restrictions = util::get_bool(cmd, "showAuthenticationRestrictions").unwrap_or(false);
    let lookup = role_lookup(ctx)?;
    let names: Vec<RoleName> = match arg {
        Bson::Int32(1) | Bson::Int64(1) | Bson::Double(1.0) => {
            let mut v: Vec<RoleName> = all_roles(ctx)?
                .into_iter()
                .filter(|r| r.name.db == db)
                .map(|r| r.name)
                .collect();
            if show_builtin {
                v.extend(
                    auth::builtin::names(db)
                        .into_iter()
                        .map(|r| RoleName::new(r, db)),
                );
            }
            v
        }
        Bson::Array(a) => a
            .iter()
            .map(|r| RoleName::from_bson(r, db))
            .collect::<Result<_>>()?,
        v => vec![RoleName::from_bson(v, db)?],
    };
    let roles: Vec<Bson> = names
        .iter()
        .filter_map(|n| role_info(n, &lookup, show_privileges))
        .map(|mut d| {
            // Roles never carry restrictions in Eddy (createRole refuses them).
            if show_restrictions {
                d.insert("authenticationRestrictions", Vec::<Bson>::new());
                d.insert("inheritedAuthenticationRestrictions", Vec::<Bson>::new());
            }
            Bson::Document(d)
        })
        .collect();
    Ok(Reply::ok(doc! {"roles": roles}))
}
