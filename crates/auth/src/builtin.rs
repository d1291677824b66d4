//! MongoDB 8.0's built-in roles, with their privileges flattened as MongoDB shows them
//! (`rolesInfo` lists no inherited roles for a built-in role: its privileges include what
//! its definition inherits).
//!
//! From MongoDB's role definitions (`builtin_roles.yml`) and the built-in roles manual page,
//! checked against `connectionStatus` output of 8.0 servers. Privileges on time-series
//! bucket collections are left out: Eddy has none.

use crate::privilege::{Privilege, Resource};
use crate::roles::RoleName;

const READ: &[&str] = &[
    "changeStream",
    "collStats",
    "dbHash",
    "dbStats",
    "find",
    "killCursors",
    "listCollections",
    "listIndexes",
    "listSearchIndexes",
    "planCacheRead",
];

const READ_WRITE_EXTRA: &[&str] = &[
    "cleanupStructuredEncryptionData",
    "compactStructuredEncryptionData",
    "convertToCapped",
    "createCollection",
    "createIndex",
    "createSearchIndexes",
    "dropCollection",
    "dropIndex",
    "dropSearchIndex",
    "insert",
    "remove",
    "renameCollectionSameDB",
    "update",
    "updateSearchIndex",
];

const USER_ADMIN: &[&str] = &[
    "changeCustomData",
    "changePassword",
    "createRole",
    "createUser",
    "dropRole",
    "dropUser",
    "grantRole",
    "revokeRole",
    "setAuthenticationRestriction",
    "viewRole",
    "viewUser",
];

const DB_ADMIN: &[&str] = &[
    "analyze",
    "bypassDocumentValidation",
    "collMod",
    "collStats",
    "compact",
    "configureQueryAnalyzer",
    "convertToCapped",
    "createCollection",
    "createIndex",
    "createSearchIndexes",
    "dbStats",
    "dropCollection",
    "dropDatabase",
    "dropIndex",
    "dropSearchIndex",
    "enableProfiler",
    "listCollections",
    "listIndexes",
    "listSearchIndexes",
    "planCacheIndexFilter",
    "planCacheRead",
    "planCacheWrite",
    "reIndex",
    "renameCollectionSameDB",
    "storageDetails",
    "updateSearchIndex",
    "validate",
];

const PROFILE_EXTRA: &[&str] = &["convertToCapped", "createCollection", "dropCollection"];

const READ_AND_INDEX_EXTRA: &[&str] = &[
    "createIndex",
    "createSearchIndexes",
    "dropIndex",
    "dropSearchIndex",
];

const CLUSTER_MONITOR_DB: &[&str] = &[
    "collStats",
    "dbStats",
    "getDatabaseVersion",
    "getShardVersion",
    "indexStats",
];

const CLUSTER_MONITOR_CLUSTER: &[&str] = &[
    "allCollectionStats",
    "connPoolStats",
    "getCmdLineOpts",
    "getDefaultRWConcern",
    "getLog",
    "getParameter",
    "getShardMap",
    "hostInfo",
    "inprog",
    "listClusterCatalog",
    "listDatabases",
    "listSampledQueries",
    "listSessions",
    "listShards",
    "netstat",
    "operationMetrics",
    "queryStatsRead",
    "queryStatsReadTransformed",
    "replSetGetConfig",
    "replSetGetStatus",
    "serverStatus",
    "shardedDataDistribution",
    "shardingState",
    "top",
    "useUUID",
];

const HOST_MANAGER_CLUSTER: &[&str] = &[
    "applicationMessage",
    "auditConfigure",
    "compact",
    "connPoolSync",
    "dropConnections",
    "flushRouterConfig",
    "fsync",
    "invalidateUserCache",
    "killAnyCursor",
    "killAnySession",
    "killop",
    "logRotate",
    "oidReset",
    "oidcListKeys",
    "oidcRefreshKeys",
    "replSetResizeOplog",
    "resync",
    "rotateCertificates",
    "setParameter",
    "shutdown",
    "touch",
    "trafficRecord",
    "unlock",
];

const CLUSTER_MANAGER_CLUSTER: &[&str] = &[
    "addShard",
    "appendOplogNote",
    "applicationMessage",
    "checkMetadataConsistency",
    "cleanupOrphaned",
    "flushRouterConfig",
    "getChangeStreamState",
    "getClusterParameter",
    "getDefaultRWConcern",
    "listSessions",
    "listShards",
    "querySettings",
    "removeShard",
    "replSetConfigure",
    "replSetGetConfig",
    "replSetGetStatus",
    "replSetStateChange",
    "resync",
    "runTenantMigration",
    "setChangeStreamState",
    "setClusterParameter",
    "setDefaultRWConcern",
    "setFeatureCompatibilityVersion",
    "transitionFromDedicatedConfigServer",
    "transitionToDedicatedConfigServer",
];

const CLUSTER_MANAGER_DB: &[&str] = &[
    "analyzeShardKey",
    "clearJumboFlag",
    "configureQueryAnalyzer",
    "enableSharding",
    "moveChunk",
    "moveCollection",
    "refineCollectionShardKey",
    "reshardCollection",
    "splitChunk",
    "splitVector",
    "unshardCollection",
];

const WRITE: &[&str] = &["insert", "remove", "update"];

const RESTORE_WRITE: &[&str] = &[
    "bypassDocumentValidation",
    "collMod",
    "convertToCapped",
    "createCollection",
    "createIndex",
    "createSearchIndexes",
    "dropCollection",
    "insert",
    "updateSearchIndex",
];

/// The roles every database has; `admin` has every built-in role.
const EVERY_DB: &[&str] = &[
    "read",
    "readWrite",
    "userAdmin",
    "dbAdmin",
    "dbOwner",
    "enableSharding",
];

const ADMIN_ONLY: &[&str] = &[
    "readAnyDatabase",
    "readWriteAnyDatabase",
    "userAdminAnyDatabase",
    "dbAdminAnyDatabase",
    "clusterMonitor",
    "hostManager",
    "clusterManager",
    "clusterAdmin",
    "backup",
    "restore",
    "root",
    "directShardOperations",
    "__system",
];

/// A privilege list being built: a second privilege on the same resource merges into the
/// first, as MongoDB flattens role definitions.
#[derive(Default)]
struct Builder(Vec<Privilege>);

impl Builder {
    fn add(&mut self, r: Resource, lists: &[&[&str]]) -> &mut Self {
        let actions = lists
            .iter()
            .flat_map(|l| l.iter().map(|a| (*a).to_string()));
        match self.0.iter_mut().find(|p| p.resource == r) {
            Some(p) => p.actions.extend(actions),
            None => self.0.push(Privilege {
                resource: r,
                actions: actions.collect(),
            }),
        }
        self
    }

    fn role(&mut self, name: &str, db: &str) -> &mut Self {
        for p in privileges(name, db).unwrap_or_default() {
            let actions: Vec<&str> = p.actions.iter().map(String::as_str).collect();
            self.add(p.resource, &[&actions]);
        }
        self
    }
}

fn ns(db: &str, coll: &str) -> Resource {
    Resource::ns(db, coll)
}

fn any_normal() -> Resource {
    Resource::ns("", "")
}

/// The flattened privileges of built-in role `name` on database `db`, if it has one.
fn privileges(name: &str, db: &str) -> Option<Vec<Privilege>> {
    if !names(db).contains(&name) {
        return None;
    }
    let mut b = Builder::default();
    match name {
        "read" => {
            b.add(ns(db, ""), &[READ]).add(ns(db, "system.js"), &[READ]);
        }
        "readWrite" => {
            b.add(ns(db, ""), &[READ, READ_WRITE_EXTRA])
                .add(ns(db, "system.js"), &[READ, READ_WRITE_EXTRA]);
        }
        "userAdmin" => {
            b.add(ns(db, ""), &[USER_ADMIN]);
        }
        "dbAdmin" => {
            b.add(ns(db, ""), &[DB_ADMIN])
                .add(ns(db, "system.profile"), &[READ, PROFILE_EXTRA]);
        }
        "dbOwner" => {
            b.role("readWrite", db)
                .role("dbAdmin", db)
                .role("userAdmin", db);
        }
        "enableSharding" => {
            b.add(
                any_normal(),
                &[&[
                    "analyzeShardKey",
                    "enableSharding",
                    "moveCollection",
                    "refineCollectionShardKey",
                    "reshardCollection",
                    "unshardCollection",
                ]],
            );
        }
        "readAnyDatabase" => {
            b.add(any_normal(), &[READ])
                .add(Resource::Cluster, &[&["listDatabases"]])
                .add(ns("", "system.js"), &[READ]);
        }
        "readWriteAnyDatabase" => {
            b.role("readAnyDatabase", db)
                .add(any_normal(), &[READ, READ_WRITE_EXTRA])
                .add(ns("", "system.js"), &[READ, READ_WRITE_EXTRA]);
        }
        "userAdminAnyDatabase" => {
            b.add(any_normal(), &[USER_ADMIN, &["listCachedAndActiveUsers"]])
                .add(ns("local", ""), &[USER_ADMIN])
                .add(ns("config", ""), &[USER_ADMIN])
                .add(
                    Resource::Cluster,
                    &[&[
                        "authSchemaUpgrade",
                        "invalidateUserCache",
                        "listDatabases",
                        "viewUser",
                    ]],
                )
                .add(ns("admin", "system.users"), &[READ, READ_AND_INDEX_EXTRA])
                .add(ns("admin", "system.roles"), &[READ, READ_AND_INDEX_EXTRA])
                .add(ns("", "system.users"), &[READ])
                .add(ns("admin", "system.version"), &[READ])
                .add(ns("admin", "system.backup_users"), &[READ]);
        }
        "dbAdminAnyDatabase" => {
            b.add(Resource::Cluster, &[&["applyOps", "listDatabases"]])
                .add(any_normal(), &[DB_ADMIN])
                .add(ns("", "system.profile"), &[READ, PROFILE_EXTRA]);
        }
        "clusterMonitor" => {
            b.role("read", "config")
                .role("read", "local")
                .add(Resource::Cluster, &[CLUSTER_MONITOR_CLUSTER])
                .add(any_normal(), &[CLUSTER_MONITOR_DB])
                .add(ns("config", ""), &[CLUSTER_MONITOR_DB])
                .add(ns("config", "system.sessions"), &[CLUSTER_MONITOR_DB])
                .add(ns("local", ""), &[CLUSTER_MONITOR_DB])
                .add(ns("local", "system.replset"), &[&["find"]])
                .add(ns("local", "replset.election"), &[&["find"]])
                .add(ns("local", "replset.minvalid"), &[&["find"]])
                .add(ns("", "system.profile"), &[&["find"]]);
        }
        "hostManager" => {
            b.add(Resource::Cluster, &[HOST_MANAGER_CLUSTER])
                .add(any_normal(), &[&["killCursors"]]);
        }
        "clusterManager" => {
            b.role("read", "config")
                .add(Resource::Cluster, &[CLUSTER_MANAGER_CLUSTER])
                .add(any_normal(), &[CLUSTER_MANAGER_DB])
                .add(ns("config", ""), &[CLUSTER_MANAGER_DB, WRITE])
                .add(ns("local", ""), &[CLUSTER_MANAGER_DB, WRITE])
                .add(ns("local", "system.replset"), &[READ])
                .add(Resource::AnyResource, &[&["dbCheck"]])
                .add(ns("local", "system.healthlog"), &[READ])
                .add(ns("local", "replset.election"), &[WRITE])
                .add(ns("local", "replset.minvalid"), &[WRITE]);
        }
        "clusterAdmin" => {
            b.role("clusterMonitor", db)
                .role("hostManager", db)
                .role("clusterManager", db)
                .add(any_normal(), &[&["dropDatabase"]])
                .add(
                    Resource::AnyResource,
                    &[&["exportCollection", "importCollection"]],
                );
        }
        "backup" => {
            b.add(
                Resource::AnyResource,
                &[&[
                    "collStats",
                    "listCollections",
                    "listIndexes",
                    "listSearchIndexes",
                ]],
            )
            .add(any_normal(), &[&["find"]])
            .add(
                Resource::Cluster,
                &[&[
                    "appendOplogNote",
                    "getParameter",
                    "listDatabases",
                    "serverStatus",
                    "setUserWriteBlockMode",
                    "useUUID",
                ]],
            )
            .add(ns("config", ""), &[&["find"]])
            .add(ns("local", ""), &[&["find"]])
            .add(ns("local", "replset.election"), &[&["find"]])
            .add(ns("local", "replset.minvalid"), &[&["find"]])
            .add(ns("", "system.js"), &[&["find"]])
            .add(ns("", "system.users"), &[&["find"]])
            .add(ns("", "system.profile"), &[&["find"]])
            .add(ns("admin", "system.backup_users"), &[&["find"]])
            .add(ns("admin", "system.roles"), &[&["find"]])
            .add(ns("admin", "system.version"), &[&["find"]])
            .add(ns("config", "settings"), &[&["find", "insert", "update"]]);
        }
        "restore" => {
            b.add(
                Resource::Cluster,
                &[&[
                    "applyOps",
                    "bypassWriteBlockingMode",
                    "forceUUID",
                    "getParameter",
                    "setUserWriteBlockMode",
                    "useUUID",
                ]],
            )
            .add(ns("local", ""), &[RESTORE_WRITE])
            .add(ns("config", ""), &[RESTORE_WRITE])
            .add(ns("local", "system.replset"), &[RESTORE_WRITE])
            .add(ns("local", "replset.election"), &[RESTORE_WRITE])
            .add(ns("local", "replset.minvalid"), &[RESTORE_WRITE])
            .add(Resource::AnyResource, &[&["listCollections"]])
            .add(any_normal(), &[RESTORE_WRITE, USER_ADMIN])
            .add(ns("", "system.js"), &[RESTORE_WRITE])
            .add(ns("admin", "tempusers"), &[&["find"]])
            .add(ns("admin", "temproles"), &[&["find"]])
            .add(ns("admin", "system.backup_users"), &[RESTORE_WRITE])
            .add(ns("admin", "system.version"), &[RESTORE_WRITE, &["find"]])
            .add(
                ns("", "system.users"),
                &[RESTORE_WRITE, &["find", "remove", "update"]],
            )
            .add(ns("admin", "system.roles"), &[&["createIndex"]])
            .add(ns("", "system.views"), &[&["dropCollection"]]);
        }
        "root" => {
            b.role("clusterAdmin", db)
                .role("userAdminAnyDatabase", db)
                .role("dbAdminAnyDatabase", db)
                .role("readWriteAnyDatabase", db)
                .role("backup", db)
                .role("restore", db)
                .role("directShardOperations", db)
                .add(Resource::AnyResource, &[&["validate"]])
                .add(
                    Resource::Cluster,
                    &[&["bypassDefaultMaxTimeMS", "useTenant"]],
                )
                .add(ns("config", "system.preimages"), &[&["find", "remove"]])
                .add(
                    ns("config", "system.change_collection"),
                    &[&["find", "insert", "remove", "update"]],
                );
        }
        "directShardOperations" => {
            b.add(Resource::Cluster, &[&["issueDirectShardOperations"]]);
        }
        // What replica set members authenticate as (with the key file): everything,
        // including the `internal` action of member traffic.
        "__system" => {
            b.add(Resource::AnyResource, &[crate::actions::ACTIONS])
                .add(Resource::Cluster, &[crate::actions::ACTIONS]);
        }
        _ => return None,
    }
    Some(b.0)
}

/// The built-in role `name` of database `db`: its privileges, and (always none, as
/// MongoDB shows them) its inherited roles.
pub fn role(name: &str, db: &str) -> Option<(Vec<Privilege>, Vec<RoleName>)> {
    privileges(name, db).map(|p| (p, Vec::new()))
}

/// The built-in roles database `db` has.
pub fn names(db: &str) -> Vec<&'static str> {
    match db {
        "$external" | "" => Vec::new(),
        "admin" => EVERY_DB.iter().chain(ADMIN_ONLY).copied().collect(),
        _ => EVERY_DB.to_vec(),
    }
}

/// Whether `name` is a built-in role on some database (a user-defined role may not take
/// the name on the database that has it).
pub fn is_builtin_name(name: &str) -> bool {
    EVERY_DB.contains(&name) || ADMIN_ONLY.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privilege::{PrivilegeSet, Target};

    fn set(name: &str, db: &str) -> PrivilegeSet {
        let mut s = PrivilegeSet::default();
        for p in role(name, db).unwrap().0 {
            s.add(&p);
        }
        s
    }

    #[test]
    fn roles_grant_what_mongodb_documents() {
        let c = |db, coll| Target::Collection { db, coll };
        let read = set("read", "test");
        assert!(read.allows("find", &c("test", "x")));
        assert!(read.allows("changeStream", &c("test", "x")));
        assert!(!read.allows("insert", &c("test", "x")));
        assert!(!read.allows("find", &c("other", "x")));
        assert!(read.allows("find", &c("test", "system.js")));
        assert!(!read.allows("find", &c("test", "system.users")));
        let rw = set("readWrite", "test");
        assert!(rw.allows("insert", &c("test", "x")) && rw.allows("remove", &c("test", "x")));
        assert!(!rw.allows("dropDatabase", &Target::Database("test")));
        let owner = set("dbOwner", "test");
        assert!(owner.allows("dropDatabase", &Target::Database("test")));
        assert!(owner.allows("createUser", &Target::Database("test")));
        let root = set("root", "admin");
        assert!(root.allows("shutdown", &Target::Cluster));
        assert!(root.allows("find", &c("any", "thing")));
        assert!(root.allows("find", &c("admin", "system.users")));
        assert!(root.allows("createUser", &Target::Database("x")));
        assert!(root.allows("dropDatabase", &Target::Database("x")));
        let monitor = set("clusterMonitor", "admin");
        assert!(monitor.allows("serverStatus", &Target::Cluster));
        assert!(!monitor.allows("shutdown", &Target::Cluster));
        assert!(monitor.allows("find", &c("local", "oplog.rs")));
        let any_rw = set("readWriteAnyDatabase", "admin");
        assert!(any_rw.allows("listDatabases", &Target::Cluster));
        assert!(any_rw.allows("update", &c("z", "y")));
    }

    #[test]
    fn admin_only_roles_exist_only_on_admin() {
        assert!(role("root", "test").is_none());
        assert!(role("root", "admin").is_some());
        assert!(role("read", "anything").is_some());
        assert!(role("read", "$external").is_none());
        assert!(role("nosuch", "admin").is_none());
        assert_eq!(names("admin").len(), 19);
        let system = set("__system", "admin");
        assert!(system.allows("internal", &Target::Cluster));
        assert!(!set("root", "admin").allows("internal", &Target::Cluster));
        assert!(is_builtin_name("clusterAdmin") && !is_builtin_name("mine"));
        // Every action of every role is a known one.
        for db in ["admin", "test"] {
            for n in names(db) {
                for p in role(n, db).unwrap().0 {
                    for a in &p.actions {
                        assert!(crate::actions::is_action(a), "{n}: {a}");
                    }
                }
            }
        }
    }
}
