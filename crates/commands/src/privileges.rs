//! What each command needs under access control: the declaration [`crate::security::check`]
//! enforces before the command runs, beside the registry in `lib.rs`.
//!
//! Requirements follow MongoDB 8.0's authorization checks (its commands' and aggregation
//! stages' privilege requirements, and the manual's per-command access control): an action
//! on a collection, a database or the cluster. A few commands decide part of it themselves
//! (`usersInfo` and `rolesInfo` on the caller's own user and roles, `getMore` and
//! `killCursors` on the caller's own cursors, `listDatabases` and `listCollections`
//! showing only what the caller may see): they need an authenticated user here, and check
//! the rest where they run.

use auth::{RoleName, Target};
use bson::{Bson, Document};
use errors::Result;

use crate::ServerCtx;

/// A resource a requirement names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Res {
    Coll(String, String),
    Db(String),
    Cluster,
}

impl Res {
    /// The target to check a privilege against.
    pub fn as_target(&self) -> Target<'_> {
        match self {
            Res::Coll(db, coll) => Target::Collection { db, coll },
            Res::Db(db) => Target::Database(db),
            Res::Cluster => Target::Cluster,
        }
    }
}

/// What a command needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing: the handshake and authentication itself.
    Nothing,
    /// An authenticated user (the command checks anything further itself).
    Authenticated,
    /// Every one of these actions on its resource.
    All(Vec<(&'static str, Res)>),
    /// Any one of these.
    Any(Vec<(&'static str, Res)>),
}

fn coll(db: &str, c: &str) -> Res {
    Res::Coll(db.to_string(), c.to_string())
}

fn db_res(db: &str) -> Res {
    Res::Db(db.to_string())
}

/// The collection a command names in its first field.
fn target_coll(cmd: &Document, name: &str) -> String {
    match cmd.get(name) {
        Some(Bson::String(c)) => c.clone(),
        _ => String::new(),
    }
}

/// Roles a user or role command grants or revokes, for `grantRole`/`revokeRole` on their
/// databases.
fn role_dbs(cmd: &Document, db: &str) -> Vec<String> {
    let mut out: Vec<String> = match cmd.get("roles") {
        Some(Bson::Array(a)) => a
            .iter()
            .filter_map(|r| RoleName::from_bson(r, db).ok())
            .map(|r| r.db)
            .collect(),
        _ => Vec::new(),
    };
    out.sort();
    out.dedup();
    out
}

/// `{db: "", collection: ""}`: every normal collection of every database.
/// `grantRole` on every database whose roles or privileges a `createRole`/`updateRole`
/// hands out.
fn grants_roles_from(cmd: &Document, db: &str) -> impl Iterator<Item = (&'static str, Res)> {
    role_dbs(cmd, db)
        .into_iter()
        .chain(privilege_dbs(cmd))
        .map(|d| ("grantRole", Res::Db(d)))
}

fn any_normal() -> Res {
    Res::Coll(String::new(), String::new())
}

/// The databases the privileges a role command grants or revokes target: their own, or
/// `admin` for the cluster, any resource, or every database.
fn privilege_dbs(cmd: &Document) -> Vec<String> {
    let mut out: Vec<String> = statements(cmd, "privileges")
        .filter_map(|p| p.get_document("resource").ok())
        .map(|r| match r.get_str("db") {
            Ok(d) if !d.is_empty() => d.to_string(),
            _ => "admin".to_string(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What `name` needs, run on database `db`.
///
/// # Errors
/// Never for a well-formed command; malformed parts are left for the command to refuse.
pub fn need(ctx: &ServerCtx, name: &str, db: &str, cmd: &Document) -> Result<Need> {
    let c = || coll(db, &target_coll(cmd, name));
    let on_c = |actions: &[&'static str]| Need::All(actions.iter().map(|a| (*a, c())).collect());
    let on_db = |action: &'static str| Need::All(vec![(action, db_res(db))]);
    let on_cluster = |action: &'static str| Need::All(vec![(action, Res::Cluster)]);
    Ok(match name {
        "hello" | "isMaster" | "ismaster" | "saslStart" | "saslContinue" | "authenticate"
        | "ping" | "getnonce" | "buildInfo" | "buildinfo" | "connectionStatus" | "listCommands"
        | "configureFailPoint" => Need::Nothing,
        "logout" | "whatsmyuri" | "endSessions" | "startSession" | "refreshSessions"
        | "killSessions" | "getMore" | "killCursors" | "usersInfo" | "rolesInfo"
        | "listDatabases" => Need::Authenticated,
        "killAllSessions" | "killAllSessionsByPattern" => on_cluster("killAnySession"),
        "serverStatus" => on_cluster("serverStatus"),
        "hostInfo" => on_cluster("hostInfo"),
        "getCmdLineOpts" => on_cluster("getCmdLineOpts"),
        "getParameter" => on_cluster("getParameter"),
        "setParameter" => on_cluster("setParameter"),
        "getLog" => on_cluster("getLog"),
        "fsync" => on_cluster("fsync"),
        "fsyncUnlock" => on_cluster("unlock"),
        "logRotate" => on_cluster("logRotate"),
        "convertToCapped" => on_c(&["convertToCapped"]),
        "cloneCollectionAsCapped" => {
            let to = coll(db, cmd.get_str("toCollection").unwrap_or(""));
            Need::All(vec![
                ("find", c()),
                ("insert", to.clone()),
                ("createCollection", to),
            ])
        }
        "connPoolStats" => on_cluster("connPoolStats"),
        "top" => on_cluster("top"),
        "getDefaultRWConcern" => on_cluster("getDefaultRWConcern"),
        "setDefaultRWConcern" => on_cluster("setDefaultRWConcern"),
        "features" => Need::Authenticated,
        "validate" => on_c(&["validate"]),
        "dbHash" | "dbhash" => on_db("dbHash"),
        "replSetGetStatus" => on_cluster("replSetGetStatus"),
        "replSetGetConfig" => on_cluster("replSetGetConfig"),
        "replSetInitiate" | "replSetReconfig" => on_cluster("replSetConfigure"),
        "replSetStepDown" | "replSetFreeze" => on_cluster("replSetStateChange"),
        "_eddyRaft" => on_cluster("internal"),
        "shutdown" => on_cluster("shutdown"),
        "setClusterParameter" => on_cluster("setClusterParameter"),
        "getClusterParameter" => on_cluster("getClusterParameter"),
        "getFreeMonitoringStatus" => on_cluster("checkFreeMonitoringStatus"),
        "currentOp" => {
            if matches!(cmd.get("$ownOps"), Some(v) if query::expr::truthy(v)) {
                Need::Authenticated
            } else {
                on_cluster("inprog")
            }
        }
        "killOp" => on_cluster("killop"),
        "profile" => on_db("enableProfiler"),
        "dbStats" | "dbstats" => on_db("dbStats"),
        "collStats" | "collstats" => on_c(&["collStats"]),
        "create" => {
            if cmd.contains_key("viewOn") {
                on_c(&["createCollection"])
            } else {
                Need::Any(vec![("createCollection", c()), ("insert", c())])
            }
        }
        "drop" => on_c(&["dropCollection"]),
        "dropDatabase" => on_db("dropDatabase"),
        "renameCollection" => rename_needs(cmd),
        "collMod" => on_c(&["collMod"]),
        "listCollections" => {
            let authorized =
                matches!(cmd.get("authorizedCollections"), Some(v) if query::expr::truthy(v));
            let name_only = matches!(cmd.get("nameOnly"), Some(v) if query::expr::truthy(v));
            if authorized && name_only {
                Need::Authenticated
            } else {
                on_db("listCollections")
            }
        }
        "createIndexes" => on_c(&["createIndex"]),
        "dropIndexes" | "deleteIndexes" => on_c(&["dropIndex"]),
        "listIndexes" => on_c(&["listIndexes"]),
        "insert" => with_bypass(cmd, db, on_c(&["insert"]), &[target_coll(cmd, name)]),
        "update" => {
            let upsert = statements(cmd, "updates")
                .any(|s| matches!(s.get("upsert"), Some(v) if query::expr::truthy(v)));
            let actions: &[&'static str] = if upsert {
                &["update", "insert"]
            } else {
                &["update"]
            };
            with_bypass(cmd, db, on_c(actions), &[target_coll(cmd, name)])
        }
        "delete" => on_c(&["remove"]),
        "findAndModify" | "findandmodify" => {
            let t = |k| matches!(cmd.get(k), Some(v) if query::expr::truthy(v));
            let actions: &[&'static str] = if t("remove") {
                &["find", "remove"]
            } else if t("upsert") {
                &["find", "update", "insert"]
            } else {
                &["find", "update"]
            };
            with_bypass(cmd, db, on_c(actions), &[target_coll(cmd, name)])
        }
        "bulkWrite" => bulk_write_needs(cmd),
        "find" | "count" | "distinct" => on_c(&["find"]),
        "aggregate" => aggregate_needs(ctx, db, cmd),
        "explain" => match cmd.get_document("explain") {
            Ok(inner) => {
                let inner_name = crate::command_name(inner).to_string();
                need(ctx, &inner_name, db, inner)?
            }
            Err(_) => Need::Authenticated,
        },
        // Users and roles.
        "createUser" => {
            let mut v = vec![("createUser", db_res(db))];
            v.extend(
                role_dbs(cmd, db)
                    .into_iter()
                    .map(|d| ("grantRole", Res::Db(d))),
            );
            Need::All(v)
        }
        "updateUser" => {
            let mut v = Vec::new();
            if cmd.contains_key("pwd") || cmd.contains_key("mechanisms") {
                v.push(("changePassword", db_res(db)));
            }
            if cmd.contains_key("customData") {
                v.push(("changeCustomData", db_res(db)));
            }
            if cmd.contains_key("roles") {
                // Replacing the roles grants the new ones and revokes the old ones, wherever
                // they are.
                v.push(("revokeRole", any_normal()));
                v.extend(
                    role_dbs(cmd, db)
                        .into_iter()
                        .map(|d| ("grantRole", Res::Db(d))),
                );
            }
            if v.is_empty() {
                Need::Authenticated
            } else {
                Need::All(v)
            }
        }
        "dropUser" | "dropAllUsersFromDatabase" => on_db("dropUser"),
        "grantRolesToUser" | "grantRolesToRole" => Need::All(
            role_dbs(cmd, db)
                .into_iter()
                .map(|d| ("grantRole", Res::Db(d)))
                .collect(),
        ),
        "revokeRolesFromUser" | "revokeRolesFromRole" => Need::All(
            role_dbs(cmd, db)
                .into_iter()
                .map(|d| ("revokeRole", Res::Db(d)))
                .collect(),
        ),
        "createRole" => {
            let mut v = vec![("createRole", db_res(db))];
            v.extend(grants_roles_from(cmd, db));
            Need::All(v)
        }
        "updateRole" => {
            let mut v = vec![("revokeRole", any_normal())];
            v.extend(grants_roles_from(cmd, db));
            Need::All(v)
        }
        "dropRole" | "dropAllRolesFromDatabase" => on_db("dropRole"),
        "grantPrivilegesToRole" => Need::All(
            privilege_dbs(cmd)
                .into_iter()
                .map(|d| ("grantRole", Res::Db(d)))
                .collect(),
        ),
        "revokePrivilegesFromRole" => Need::All(
            privilege_dbs(cmd)
                .into_iter()
                .map(|d| ("revokeRole", Res::Db(d)))
                .collect(),
        ),
        // Unknown commands fail as such; nothing to check.
        _ => Need::Authenticated,
    })
}

/// The statements of a write command (`updates`, `deletes`).
fn statements<'a>(cmd: &'a Document, key: &str) -> impl Iterator<Item = &'a Document> {
    cmd.get_array(key)
        .into_iter()
        .flatten()
        .filter_map(Bson::as_document)
}

/// Adds `bypassDocumentValidation` on the written collections when the command asks to
/// bypass validation.
fn with_bypass(cmd: &Document, db: &str, need: Need, colls: &[String]) -> Need {
    let bypass = matches!(cmd.get("bypassDocumentValidation"), Some(v) if query::expr::truthy(v));
    match need {
        Need::All(mut v) if bypass => {
            v.extend(
                colls
                    .iter()
                    .map(|c| ("bypassDocumentValidation", coll(db, c))),
            );
            Need::All(v)
        }
        other => other,
    }
}

/// `renameCollection` (run on admin, naming full namespaces): within a database,
/// `renameCollectionSameDB` on it (and `dropCollection` on the target with `dropTarget`);
/// across databases, `find` and `dropCollection` on the source and `insert` and
/// `createIndex` on the target.
fn rename_needs(cmd: &Document) -> Need {
    let split = |k: &str| -> (String, String) {
        let s = cmd.get_str(k).unwrap_or("");
        match s.split_once('.') {
            Some((d, c)) => (d.to_string(), c.to_string()),
            None => (String::new(), String::new()),
        }
    };
    let (fd, fc) = split("renameCollection");
    let (td, tc) = split("to");
    let drop_target = matches!(cmd.get("dropTarget"), Some(v) if query::expr::truthy(v));
    let mut v = if fd == td {
        vec![("renameCollectionSameDB", Res::Db(fd))]
    } else {
        vec![
            ("find", Res::Coll(fd.clone(), fc.clone())),
            ("dropCollection", Res::Coll(fd, fc)),
            ("insert", Res::Coll(td.clone(), tc.clone())),
            ("createIndex", Res::Coll(td.clone(), tc.clone())),
        ]
    };
    if drop_target {
        v.push(("dropCollection", Res::Coll(td, tc)));
    }
    Need::All(v)
}

/// `bulkWrite`: per namespace in `nsInfo`, the actions its operations take.
fn bulk_write_needs(cmd: &Document) -> Need {
    let ns: Vec<(String, String)> = statements(cmd, "nsInfo")
        .filter_map(|n| n.get_str("ns").ok())
        .map(|s| match s.split_once('.') {
            Some((d, c)) => (d.to_string(), c.to_string()),
            None => (s.to_string(), String::new()),
        })
        .collect();
    let bypass = matches!(cmd.get("bypassDocumentValidation"), Some(v) if query::expr::truthy(v));
    let mut v = Vec::new();
    for op in statements(cmd, "ops") {
        let (kind, idx) = ["insert", "update", "delete"]
            .iter()
            .find_map(|k| crate::util::get_i64(op, k).map(|i| (*k, i)))
            .unwrap_or(("", -1));
        let Some((d, c)) = usize::try_from(idx).ok().and_then(|i| ns.get(i)) else {
            continue;
        };
        let r = Res::Coll(d.clone(), c.clone());
        match kind {
            "insert" => v.push(("insert", r)),
            "update" => {
                v.push(("update", r.clone()));
                if matches!(op.get("upsert"), Some(x) if query::expr::truthy(x)) {
                    v.push(("insert", r));
                }
            }
            "delete" => v.push(("remove", r)),
            _ => {}
        }
    }
    if bypass {
        v.extend(
            ns.iter()
                .map(|(d, c)| ("bypassDocumentValidation", Res::Coll(d.clone(), c.clone()))),
        );
    }
    Need::All(v)
}

/// `aggregate`: `find` on the source (unless its first stage is its own source), and what
/// each stage reads or writes elsewhere.
fn aggregate_needs(ctx: &ServerCtx, db: &str, cmd: &Document) -> Need {
    let source = target_coll(cmd, "aggregate");
    let stages: Vec<&Document> = statements(cmd, "pipeline").collect();
    let mut v = Vec::new();
    // `aggregate: 1` has no collection: its first stage is a source of its own.
    if !source.is_empty() {
        let first = stages
            .first()
            .and_then(|s| s.keys().next())
            .map(String::as_str);
        match first {
            Some("$changeStream") | Some("$collStats") | Some("$indexStats") => {}
            _ => v.push(("find", coll(db, &source))),
        }
    }
    let _ = ctx;
    pipeline_needs(db, &source, &stages, &mut v);
    Need::All(v)
}

fn pipeline_needs(db: &str, source: &str, stages: &[&Document], v: &mut Vec<(&'static str, Res)>) {
    for st in stages {
        let Some((name, spec)) = st.iter().next() else {
            continue;
        };
        match name.as_str() {
            "$changeStream" => {
                let all = spec
                    .as_document()
                    .and_then(|s| s.get("allChangesForCluster"))
                    .is_some_and(query::expr::truthy);
                let scope = if all {
                    Res::Coll(String::new(), String::new())
                } else if source.is_empty() {
                    Res::Coll(db.to_string(), String::new())
                } else {
                    coll(db, source)
                };
                // A database or deployment stream needs the actions on every (non-system)
                // collection of its scope: the `{db, collection: ""}` pattern.
                let scope = match scope {
                    Res::Coll(d, c) if c.is_empty() => Res::Coll(d, String::new()),
                    other => other,
                };
                v.push(("changeStream", scope.clone()));
                v.push(("find", scope));
            }
            "$collStats" => v.push(("collStats", coll(db, source))),
            "$indexStats" => v.push(("indexStats", coll(db, source))),
            "$currentOp" => {
                let all_users = spec
                    .as_document()
                    .and_then(|s| s.get("allUsers"))
                    .is_some_and(query::expr::truthy);
                if all_users {
                    v.push(("inprog", Res::Cluster));
                }
            }
            "$listLocalSessions" | "$listSessions" => {
                let all_users = spec
                    .as_document()
                    .and_then(|s| s.get("allUsers"))
                    .is_some_and(query::expr::truthy);
                if all_users {
                    v.push(("listSessions", Res::Cluster));
                }
            }
            "$lookup" | "$graphLookup" => {
                if let Some(s) = spec.as_document() {
                    if let Ok(from) = s.get_str("from") {
                        let sub: Vec<&Document> = statements(s, "pipeline").collect();
                        let starts_own = sub
                            .first()
                            .and_then(|x| x.keys().next())
                            .is_some_and(|k| k == "$collStats" || k == "$documents");
                        if !starts_own {
                            v.push(("find", coll(db, from)));
                        }
                        pipeline_needs(db, from, &sub, v);
                    } else {
                        let sub: Vec<&Document> = statements(s, "pipeline").collect();
                        pipeline_needs(db, "", &sub, v);
                    }
                }
            }
            "$unionWith" => {
                let (target, sub): (Option<&str>, Vec<&Document>) = match spec {
                    Bson::String(c) => (Some(c.as_str()), Vec::new()),
                    Bson::Document(s) => {
                        (s.get_str("coll").ok(), statements(s, "pipeline").collect())
                    }
                    _ => (None, Vec::new()),
                };
                if let Some(t) = target {
                    let starts_own = sub
                        .first()
                        .and_then(|x| x.keys().next())
                        .is_some_and(|k| k == "$collStats" || k == "$documents");
                    if !starts_own {
                        v.push(("find", coll(db, t)));
                    }
                    pipeline_needs(db, t, &sub, v);
                } else {
                    pipeline_needs(db, "", &sub, v);
                }
            }
            "$facet" => {
                if let Some(s) = spec.as_document() {
                    for (_, p) in s {
                        let sub: Vec<&Document> = match p {
                            Bson::Array(a) => a.iter().filter_map(Bson::as_document).collect(),
                            _ => Vec::new(),
                        };
                        pipeline_needs(db, source, &sub, v);
                    }
                }
            }
            "$out" => {
                let (d, c) = match spec {
                    Bson::String(c) => (db.to_string(), c.clone()),
                    Bson::Document(s) => (
                        s.get_str("db").unwrap_or(db).to_string(),
                        s.get_str("coll").unwrap_or("").to_string(),
                    ),
                    _ => (db.to_string(), String::new()),
                };
                v.push(("insert", Res::Coll(d.clone(), c.clone())));
                v.push(("remove", Res::Coll(d, c)));
            }
            "$merge" => {
                let (d, c, matched) = match spec {
                    Bson::String(c) => (db.to_string(), c.clone(), "merge".to_string()),
                    Bson::Document(s) => {
                        let (d, c) = match s.get("into") {
                            Some(Bson::String(c)) => (db.to_string(), c.clone()),
                            Some(Bson::Document(i)) => (
                                i.get_str("db").unwrap_or(db).to_string(),
                                i.get_str("coll").unwrap_or("").to_string(),
                            ),
                            _ => (db.to_string(), String::new()),
                        };
                        let m = match s.get("whenMatched") {
                            Some(Bson::String(m)) => m.clone(),
                            Some(_) => "pipeline".to_string(),
                            None => "merge".to_string(),
                        };
                        (d, c, m)
                    }
                    _ => (db.to_string(), String::new(), "merge".to_string()),
                };
                v.push(("insert", Res::Coll(d.clone(), c.clone())));
                if matched != "fail" && matched != "keepExisting" {
                    v.push(("update", Res::Coll(d, c)));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn all(n: &Need) -> Vec<(&'static str, Res)> {
        match n {
            Need::All(v) => v.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pipelines_need_what_their_stages_touch() {
        let mut v = Vec::new();
        let lookup =
            doc! {"$lookup": {"from": "b", "localField": "x", "foreignField": "y", "as": "z"}};
        let out = doc! {"$out": "o"};
        let union = doc! {"$unionWith": {"coll": "u", "pipeline": [{"$match": {}}]}};
        pipeline_needs("d", "a", &[&lookup, &union, &out], &mut v);
        assert_eq!(
            v,
            vec![
                ("find", coll("d", "b")),
                ("find", coll("d", "u")),
                ("insert", coll("d", "o")),
                ("remove", coll("d", "o")),
            ]
        );
        let mut v = Vec::new();
        let cs = doc! {"$changeStream": {}};
        pipeline_needs("d", "", &[&cs], &mut v);
        assert_eq!(
            v,
            vec![("changeStream", coll("d", "")), ("find", coll("d", ""))]
        );
        let mut v = Vec::new();
        let cs = doc! {"$changeStream": {"allChangesForCluster": true}};
        pipeline_needs("admin", "", &[&cs], &mut v);
        assert_eq!(v[0], ("changeStream", coll("", "")));
    }

    #[test]
    fn renames_and_bulk_writes() {
        let same = rename_needs(&doc! {"renameCollection": "d.a", "to": "d.b"});
        assert_eq!(all(&same), vec![("renameCollectionSameDB", db_res("d"))]);
        let cross =
            rename_needs(&doc! {"renameCollection": "d.a", "to": "e.b", "dropTarget": true});
        assert_eq!(all(&cross).len(), 5);
        let bw = bulk_write_needs(&doc! {
            "bulkWrite": 1,
            "ops": [{"insert": 0, "document": {}}, {"update": 1, "filter": {}, "updateMods": {}, "upsert": true}],
            "nsInfo": [{"ns": "d.a"}, {"ns": "d.b"}],
        });
        assert_eq!(
            all(&bw),
            vec![
                ("insert", coll("d", "a")),
                ("update", coll("d", "b")),
                ("insert", coll("d", "b"))
            ]
        );
    }
}
