// auth: access control through the `mongodb` crate: the localhost exception, SCRAM, users
// and roles, built-in roles against commands, the seed's change stream rules, revocation,
// and failed logins.

use std::time::{Duration, Instant};

use bson::{Document, doc};
use futures_util::StreamExt;
use mongodb::Client;
use mongodb::options::{AuthMechanism, ClientOptions, Credential};

use crate::cmd_error;

async fn spawn_auth() -> testkit::TestServer {
    testkit::spawn_with(|c| c.auth = true).await
}

/// A client authenticated as `user` (whose database is `db`).
async fn login(port: u16, user: &str, pwd: &str, db: &str, mech: Option<AuthMechanism>) -> Client {
    let uri =
        format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=5000");
    let mut opts = ClientOptions::parse(uri).await.unwrap();
    opts.credential = Some(
        Credential::builder()
            .username(user.to_string())
            .password(pwd.to_string())
            .source(db.to_string())
            .mechanism(mech)
            .build(),
    );
    Client::with_options(opts).unwrap()
}

/// Creates `root` through the localhost exception and returns a client logged in as it.
async fn bootstrap(s: &testkit::TestServer) -> Client {
    s.client
        .database("admin")
        .run_command(doc! {"createUser": "root", "pwd": "rootpw", "roles": ["root"]})
        .await
        .unwrap();
    login(s.port, "root", "rootpw", "admin", None).await
}

async fn code_of(r: mongodb::error::Result<impl Sized>) -> Option<i32> {
    match r {
        Ok(_) => None,
        Err(e) => match *e.kind {
            mongodb::error::ErrorKind::Command(c) => Some(c.code),
            mongodb::error::ErrorKind::Authentication { .. } => Some(18),
            other => panic!("unexpected error {other:?}"),
        },
    }
}

#[tokio::test]
async fn the_localhost_exception_creates_the_first_user_and_closes() {
    let s = spawn_auth().await;
    let anon = s.client.database("test");
    // Before any user: still no data for anonymous clients.
    assert_eq!(cmd_error(&anon, doc! {"find": "c"}).await.0, 13);
    // ping, hello and buildInfo need nobody.
    anon.run_command(doc! {"ping": 1}).await.unwrap();
    anon.run_command(doc! {"buildInfo": 1}).await.unwrap();
    // The exception allows a user on admin only.
    assert_eq!(
        cmd_error(&anon, doc! {"createUser": "u", "pwd": "p", "roles": []})
            .await
            .0,
        13
    );
    let root = bootstrap(&s).await;
    // Closed now, for everyone.
    let (code, _) = cmd_error(
        &s.client.database("admin"),
        doc! {"createUser": "x", "pwd": "p", "roles": ["root"]},
    )
    .await;
    assert_eq!(code, 13);
    root.database("test")
        .collection::<Document>("c")
        .insert_one(doc! {"a": 1})
        .await
        .unwrap();
    let status = root
        .database("admin")
        .run_command(doc! {"connectionStatus": 1})
        .await
        .unwrap();
    let info = status.get_document("authInfo").unwrap();
    assert_eq!(
        info.get_array("authenticatedUsers").unwrap()[0],
        bson::Bson::Document(doc! {"user": "root", "db": "admin"})
    );
}

#[tokio::test]
async fn scram_mechanisms_wrong_passwords_and_unknown_users() {
    let s = spawn_auth().await;
    let root = bootstrap(&s).await;
    let admin = root.database("admin");
    admin
        .run_command(doc! {"createUser": "sha1", "pwd": "p1", "roles": ["root"], "mechanisms": ["SCRAM-SHA-1"]})
        .await
        .unwrap();
    admin
        .run_command(doc! {"createUser": "sha256", "pwd": "p2", "roles": ["root"], "mechanisms": ["SCRAM-SHA-256"]})
        .await
        .unwrap();
    let ok = |c: Client| async move {
        code_of(
            c.database("admin")
                .run_command(doc! {"listDatabases": 1})
                .await,
        )
        .await
    };
    assert_eq!(
        ok(login(
            s.port,
            "sha1",
            "p1",
            "admin",
            Some(AuthMechanism::ScramSha1)
        )
        .await)
        .await,
        None
    );
    assert_eq!(
        ok(login(
            s.port,
            "sha256",
            "p2",
            "admin",
            Some(AuthMechanism::ScramSha256)
        )
        .await)
        .await,
        None
    );
    // Negotiated from saslSupportedMechs.
    assert_eq!(
        ok(login(s.port, "sha1", "p1", "admin", None).await).await,
        None
    );
    assert_eq!(
        ok(login(s.port, "sha256", "p2", "admin", None).await).await,
        None
    );
    // A user refuses the mechanism it was not created with.
    assert_eq!(
        ok(login(
            s.port,
            "sha1",
            "p1",
            "admin",
            Some(AuthMechanism::ScramSha256)
        )
        .await)
        .await,
        Some(18)
    );
    assert_eq!(
        ok(login(
            s.port,
            "sha256",
            "p2",
            "admin",
            Some(AuthMechanism::ScramSha1)
        )
        .await)
        .await,
        Some(18)
    );
    // A wrong password and a user that does not exist look the same, and take about as
    // long.
    let attempt = |user: &'static str| async move {
        let started = Instant::now();
        let c = login(
            s.port,
            user,
            "wrong",
            "admin",
            Some(AuthMechanism::ScramSha256),
        )
        .await;
        let e = c
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .unwrap_err();
        (started.elapsed(), e.to_string())
    };
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..5 {
        let (t, e) = attempt("sha256").await;
        assert!(e.contains("Authentication failed"), "{e}");
        wrong.push(t);
        let (t, e2) = attempt("nobody").await;
        assert!(e2.contains("Authentication failed"), "{e2}");
        unknown.push(t);
    }
    wrong.sort();
    unknown.sort();
    let (w, u) = (wrong[2].as_secs_f64(), unknown[2].as_secs_f64());
    assert!(w / u < 3.0 && u / w < 3.0, "wrong {w:.4}s unknown {u:.4}s");
}

/// The drivers' specification: SCRAM-SHA-256 applies SASLprep, so user "IX" and user
/// "\u{2168}" accept their passwords normalised or not.
#[tokio::test]
async fn saslprep_users_accept_both_spellings() {
    let s = spawn_auth().await;
    let root = bootstrap(&s).await;
    let admin = root.database("admin");
    admin
        .run_command(doc! {"createUser": "IX", "pwd": "IX", "roles": ["root"], "mechanisms": ["SCRAM-SHA-256"]})
        .await
        .unwrap();
    admin
        .run_command(doc! {"createUser": "\u{2168}", "pwd": "\u{2163}", "roles": ["root"], "mechanisms": ["SCRAM-SHA-256"]})
        .await
        .unwrap();
    for (user, pwd) in [
        ("IX", "IX"),
        ("IX", "I\u{00AD}X"),
        ("\u{2168}", "IV"),
        ("\u{2168}", "I\u{00AD}V"),
    ] {
        let c = login(s.port, user, pwd, "admin", Some(AuthMechanism::ScramSha256)).await;
        c.database("admin")
            .run_command(doc! {"listDatabases": 1})
            .await
            .unwrap_or_else(|e| panic!("{user}/{pwd:?}: {e}"));
    }
}

/// What each built-in role may run, command by command, as MongoDB's built-in roles
/// define it.
#[tokio::test]
async fn built_in_roles_against_commands() {
    let s = spawn_auth().await;
    let root = bootstrap(&s).await;
    root.database("test")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 1, "a": 1})
        .await
        .unwrap();
    type Check = (&'static str, &'static str, Document);
    let checks: Vec<Check> = vec![
        ("find", "test", doc! {"find": "c"}),
        (
            "insert",
            "test",
            doc! {"insert": "c", "documents": [{"x": 1}]},
        ),
        (
            "update",
            "test",
            doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"b": 1}}}]},
        ),
        (
            "delete",
            "test",
            doc! {"delete": "c", "deletes": [{"q": {"x": 1}, "limit": 0}]},
        ),
        (
            "createIndexes",
            "test",
            doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]},
        ),
        ("listCollections", "test", doc! {"listCollections": 1}),
        ("dbStats", "test", doc! {"dbStats": 1}),
        ("collStats", "test", doc! {"collStats": "c"}),
        (
            "changeStream",
            "test",
            doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}},
        ),
        (
            "createUser",
            "test",
            doc! {"createUser": "someone", "pwd": "x", "roles": []},
        ),
        ("usersInfo", "test", doc! {"usersInfo": 1}),
        ("serverStatus", "admin", doc! {"serverStatus": 1}),
        (
            "getParameter",
            "admin",
            doc! {"getParameter": 1, "authenticationMechanisms": 1},
        ),
        (
            "listDatabases all",
            "admin",
            doc! {"listDatabases": 1, "authorizedDatabases": false},
        ),
        ("currentOp", "admin", doc! {"currentOp": 1}),
        ("find other db", "other", doc! {"find": "c"}),
        ("dropDatabase", "scratch", doc! {"dropDatabase": 1}),
    ];
    // Role -> the checks it passes (by name); every other check must be Unauthorized.
    let table: &[(&str, &str, &[&str])] = &[
        (
            "read",
            "test",
            &[
                "find",
                "listCollections",
                "dbStats",
                "collStats",
                "changeStream",
            ],
        ),
        (
            "readWrite",
            "test",
            &[
                "find",
                "insert",
                "update",
                "delete",
                "createIndexes",
                "listCollections",
                "dbStats",
                "collStats",
                "changeStream",
            ],
        ),
        (
            "dbAdmin",
            "test",
            &["listCollections", "dbStats", "collStats", "createIndexes"],
        ),
        ("userAdmin", "test", &["createUser", "usersInfo"]),
        (
            "dbOwner",
            "test",
            &[
                "find",
                "insert",
                "update",
                "delete",
                "createIndexes",
                "listCollections",
                "dbStats",
                "collStats",
                "changeStream",
                "createUser",
                "usersInfo",
            ],
        ),
        (
            "clusterMonitor",
            "admin",
            &[
                "serverStatus",
                "getParameter",
                "listDatabases all",
                "currentOp",
                "dbStats",
                "collStats",
            ],
        ),
        (
            "clusterAdmin",
            "admin",
            &[
                "serverStatus",
                "getParameter",
                "listDatabases all",
                "currentOp",
                "dbStats",
                "collStats",
                "dropDatabase",
            ],
        ),
        (
            "readAnyDatabase",
            "admin",
            &[
                "find",
                "listCollections",
                "dbStats",
                "collStats",
                "changeStream",
                "listDatabases all",
                "find other db",
            ],
        ),
        (
            "readWriteAnyDatabase",
            "admin",
            &[
                "find",
                "insert",
                "update",
                "delete",
                "createIndexes",
                "listCollections",
                "dbStats",
                "collStats",
                "changeStream",
                "listDatabases all",
                "find other db",
            ],
        ),
        (
            "userAdminAnyDatabase",
            "admin",
            &["createUser", "usersInfo", "listDatabases all"],
        ),
        (
            "dbAdminAnyDatabase",
            "admin",
            &[
                "listCollections",
                "dbStats",
                "collStats",
                "createIndexes",
                "listDatabases all",
                "dropDatabase",
            ],
        ),
        (
            "root",
            "admin",
            &[
                "find",
                "insert",
                "update",
                "delete",
                "createIndexes",
                "listCollections",
                "dbStats",
                "collStats",
                "changeStream",
                "createUser",
                "usersInfo",
                "serverStatus",
                "getParameter",
                "listDatabases all",
                "currentOp",
                "find other db",
                "dropDatabase",
            ],
        ),
    ];
    for (i, (role, role_db, allowed)) in table.iter().enumerate() {
        let user = format!("u{i}");
        root.database(role_db)
            .run_command(
                doc! {"createUser": &user, "pwd": "pw", "roles": [{"role": *role, "db": *role_db}]},
            )
            .await
            .unwrap();
        let c = login(s.port, &user, "pw", role_db, None).await;
        for (name, db, cmd) in &checks {
            let mut cmd = cmd.clone();
            if *name == "createUser" {
                cmd.insert("createUser", format!("made-by-{user}"));
            }
            let got = code_of(c.database(db).run_command(cmd).await).await;
            let want = if allowed.contains(name) {
                None
            } else {
                Some(13)
            };
            assert_eq!(got, want, "role {role}: {name}");
        }
    }
}

/// The seed's rules: a collection stream needs find and changeStream on the collection, a
/// database stream on `{db, collection: ""}`, a deployment stream on `{db: "",
/// collection: ""}`; with one action missing, the stream is refused.
#[tokio::test]
async fn change_stream_scopes_need_find_and_change_stream() {
    let s = spawn_auth().await;
    let root = bootstrap(&s).await;
    let admin = root.database("admin");
    let scopes = [
        ("coll", doc! {"db": "test", "collection": "c"}),
        ("db", doc! {"db": "test", "collection": ""}),
        ("cluster", doc! {"db": "", "collection": ""}),
    ];
    for (name, resource) in &scopes {
        for (suffix, actions) in [
            ("both", vec!["find", "changeStream"]),
            ("nofind", vec!["changeStream"]),
            ("nocs", vec!["find"]),
        ] {
            let role = format!("{name}-{suffix}");
            admin
                .run_command(doc! {
                    "createRole": &role,
                    "privileges": [{"resource": resource.clone(), "actions": actions.clone()}],
                    "roles": [],
                })
                .await
                .unwrap();
            admin
                .run_command(doc! {"createUser": &role, "pwd": "pw", "roles": [&role]})
                .await
                .unwrap();
        }
    }
    let open = |c: Client, scope: &'static str| async move {
        match scope {
            "coll" => code_of(c.database("test").collection::<Document>("c").watch().await).await,
            "db" => code_of(c.database("test").watch().await).await,
            _ => code_of(c.watch().await).await,
        }
    };
    for (name, _) in &scopes {
        for (suffix, want) in [("both", None), ("nofind", Some(13)), ("nocs", Some(13))] {
            let user = format!("{name}-{suffix}");
            let c = login(s.port, &user, "pw", "admin", None).await;
            assert_eq!(open(c.clone(), name).await, want, "{user} on its own scope");
        }
    }
    // A collection's privilege does not reach its database's stream, and a database's does
    // not reach the deployment's.
    let c = login(s.port, "coll-both", "pw", "admin", None).await;
    assert_eq!(open(c, "db").await, Some(13));
    let c = login(s.port, "db-both", "pw", "admin", None).await;
    assert_eq!(open(c, "cluster").await, Some(13));
}

/// A privilege revoked while a stream is open (here `find`, which `updateLookup` reads
/// with) stops the stream at its next getMore; so does dropping the user.
#[tokio::test]
async fn revocation_stops_open_streams() {
    let s = spawn_auth().await;
    let root = bootstrap(&s).await;
    let admin = root.database("admin");
    admin
        .run_command(doc! {
            "createRole": "watcher",
            "privileges": [{"resource": {"db": "test", "collection": "c"}, "actions": ["find", "changeStream"]}],
            "roles": [],
        })
        .await
        .unwrap();
    for u in ["w1", "w2"] {
        admin
            .run_command(doc! {"createUser": u, "pwd": "pw", "roles": ["watcher"]})
            .await
            .unwrap();
    }
    let coll = root.database("test").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "v": 0}).await.unwrap();
    let w1 = login(s.port, "w1", "pw", "admin", None).await;
    let mut stream = w1
        .database("test")
        .collection::<Document>("c")
        .watch()
        .full_document(mongodb::options::FullDocumentType::UpdateLookup)
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}})
        .await
        .unwrap();
    let ev = stream.next().await.unwrap().unwrap();
    assert_eq!(ev.full_document.unwrap().get_i32("v").unwrap(), 1);
    admin
        .run_command(doc! {
            "revokePrivilegesFromRole": "watcher",
            "privileges": [{"resource": {"db": "test", "collection": "c"}, "actions": ["find"]}],
        })
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    let e = stream.next().await.unwrap().unwrap_err();
    assert!(e.to_string().contains("not authorized"), "{e}");
    // Dropping the user ends the other's stream too.
    admin
        .run_command(doc! {"grantPrivilegesToRole": "watcher", "privileges": [{"resource": {"db": "test", "collection": "c"}, "actions": ["find"]}]})
        .await
        .unwrap();
    let w2 = login(s.port, "w2", "pw", "admin", None).await;
    let mut stream = w2
        .database("test")
        .collection::<Document>("c")
        .watch()
        .await
        .unwrap();
    admin.run_command(doc! {"dropUser": "w2"}).await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 3}})
        .await
        .unwrap();
    let e = stream.next().await.unwrap().unwrap_err();
    assert!(e.to_string().contains("not authorized"), "{e}");
}

/// Users, roles and their commands: creation, duplicates, unknown roles, inherited roles,
/// updates, and what `usersInfo`/`rolesInfo` show to whom.
#[tokio::test]
async fn users_and_roles_are_managed_as_in_mongodb() {
    let s = spawn_auth().await;
    let root = bootstrap(&s).await;
    let test = root.database("test");
    test.run_command(
        doc! {"createUser": "a", "pwd": "pa", "roles": ["read"], "customData": {"k": 1}},
    )
    .await
    .unwrap();
    assert_eq!(
        cmd_error(&test, doc! {"createUser": "a", "pwd": "pa", "roles": []})
            .await
            .0,
        51003
    );
    assert_eq!(
        cmd_error(
            &test,
            doc! {"createUser": "b", "pwd": "pb", "roles": ["nosuch"]}
        )
        .await,
        (31, "RoleNotFound".into())
    );
    test.run_command(doc! {
        "createRole": "writer",
        "privileges": [{"resource": {"db": "test", "collection": "w"}, "actions": ["insert"]}],
        "roles": ["read"],
    })
    .await
    .unwrap();
    assert_eq!(
        cmd_error(&test, doc! {"createRole": "bad", "privileges": [{"resource": {"cluster": true}, "actions": ["shutdown"]}], "roles": []})
            .await
            .0,
        49
    );
    assert_eq!(
        cmd_error(&test, doc! {"createRole": "bad", "privileges": [{"resource": {"db": "test", "collection": ""}, "actions": ["fly"]}], "roles": []})
            .await
            .0,
        2
    );
    assert_eq!(
        cmd_error(
            &test,
            doc! {"createRole": "read", "privileges": [], "roles": []}
        )
        .await
        .0,
        2
    );
    test.run_command(doc! {"grantRolesToUser": "a", "roles": ["writer"]})
        .await
        .unwrap();
    let a = login(s.port, "a", "pa", "test", None).await;
    a.database("test")
        .collection::<Document>("w")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    // A user sees itself without viewUser, and not others.
    let me = a
        .database("test")
        .run_command(doc! {"usersInfo": "a", "showPrivileges": true})
        .await
        .unwrap();
    let u = me.get_array("users").unwrap()[0].as_document().unwrap();
    assert_eq!(u.get_document("customData").unwrap(), &doc! {"k": 1});
    assert!(!u.contains_key("credentials"));
    assert_eq!(u.get_array("inheritedRoles").unwrap().len(), 2);
    assert_eq!(
        cmd_error(&a.database("test"), doc! {"usersInfo": "root"})
            .await
            .0,
        13
    );
    // Roles the user holds are visible to it; rolesInfo of a built-in role has privileges.
    let r = a
        .database("test")
        .run_command(doc! {"rolesInfo": "writer", "showPrivileges": true})
        .await
        .unwrap();
    let role = r.get_array("roles").unwrap()[0].as_document().unwrap();
    assert!(!role.get_bool("isBuiltin").unwrap());
    assert!(!role.get_array("inheritedPrivileges").unwrap().is_empty());
    // updateUser replaces roles; a new password works and the old one no longer does.
    test.run_command(doc! {"updateUser": "a", "pwd": "new", "roles": ["readWrite"]})
        .await
        .unwrap();
    let old = login(s.port, "a", "pa", "test", None).await;
    assert_eq!(
        code_of(old.database("test").run_command(doc! {"ping": 1}).await).await,
        Some(18)
    );
    let a = login(s.port, "a", "new", "test", None).await;
    a.database("test")
        .collection::<Document>("c")
        .insert_one(doc! {"y": 1})
        .await
        .unwrap();
    // Dropping a role takes it away from its holders.
    test.run_command(doc! {"grantRolesToUser": "a", "roles": ["writer"]})
        .await
        .unwrap();
    test.run_command(doc! {"dropRole": "writer"}).await.unwrap();
    let info = test.run_command(doc! {"usersInfo": "a"}).await.unwrap();
    let roles = info.get_array("users").unwrap()[0]
        .as_document()
        .unwrap()
        .get_array("roles")
        .unwrap()
        .clone();
    assert_eq!(
        roles,
        vec![bson::Bson::Document(
            doc! {"role": "readWrite", "db": "test"}
        )]
    );
    assert_eq!(
        cmd_error(&test, doc! {"dropUser": "nosuch"}).await,
        (11, "UserNotFound".into())
    );
    let n = test
        .run_command(doc! {"dropAllUsersFromDatabase": 1})
        .await
        .unwrap();
    assert_eq!(
        n.get_i64("n")
            .or_else(|_| n.get_i32("n").map(i64::from))
            .unwrap(),
        1
    );
    // Users are durable: they are written through the log like any write.
    let users = root
        .database("admin")
        .run_command(doc! {"usersInfo": {"forAllDBs": true}})
        .await
        .unwrap();
    assert_eq!(users.get_array("users").unwrap().len(), 1);
}

/// Failed logins slow the connection they come from, not the user nor other clients.
#[tokio::test]
async fn bad_logins_slow_only_their_connection() {
    let s = spawn_auth().await;
    let root = bootstrap(&s).await;
    let port = s.port;
    let ping_p50 = |c: Client| async move {
        let mut t = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            c.database("admin")
                .run_command(doc! {"ping": 1})
                .await
                .unwrap();
            t.push(started.elapsed());
        }
        t.sort();
        t[100]
    };
    let quiet = ping_p50(root.clone()).await;
    // 1,000 bad logins on one raw connection, with the per-connection delay off so that
    // they all arrive.
    root.database("admin")
        .run_command(doc! {"setParameter": 1, "authFailedDelayMs": 0})
        .await
        .unwrap();
    let attacker = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut send = async |cmd: Document| -> Document {
            sock.write_all(&wire::encode_msg_request(1, &cmd, &[], false, None))
                .await
                .unwrap();
            crate::read_reply(&mut sock).await.expect("a reply")
        };
        for _ in 0..1000 {
            let start = send(doc! {
                "saslStart": 1, "mechanism": "SCRAM-SHA-256", "$db": "admin",
                "payload": bson::Binary {subtype: bson::spec::BinarySubtype::Generic, bytes: b"n,,n=root,r=0123456789abcdef".to_vec()},
            })
            .await;
            let sf =
                String::from_utf8(start.get_binary_generic("payload").unwrap().clone()).unwrap();
            let nonce = sf
                .split(',')
                .next()
                .unwrap()
                .trim_start_matches("r=")
                .to_string();
            let fin = send(doc! {
                "saslContinue": 1, "conversationId": 1, "$db": "admin",
                "payload": bson::Binary {subtype: bson::spec::BinarySubtype::Generic, bytes: format!("c=biws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").into_bytes()},
            })
            .await;
            assert_eq!(fin.get_i32("code").unwrap(), 18);
        }
    });
    let busy = ping_p50(root.clone()).await;
    attacker.await.unwrap();
    assert!(
        busy < quiet * 2 + Duration::from_millis(1),
        "ping p50 {quiet:?} quiet, {busy:?} during 1,000 bad logins"
    );
    // With the delay on, a connection that keeps failing waits longer each time, while the
    // real user logs in at once from elsewhere.
    root.database("admin")
        .run_command(doc! {"setParameter": 1, "authFailedDelayMs": 50})
        .await
        .unwrap();
    let started = Instant::now();
    let c = login(port, "root", "rootpw", "admin", None).await;
    c.database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}
