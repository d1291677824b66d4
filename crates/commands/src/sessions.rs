//! The logical session cache: the sessions this server has seen commands for, each with
//! the time of its last use, as MongoDB keeps them for `$listLocalSessions`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bson::{Binary, Bson, DateTime, Document, doc, spec::BinarySubtype};
use errors::{ErrorCode, MongoError, Result};

use crate::ServerCtx;

/// A session unused for this long leaves the cache (MongoDB's
/// `localLogicalSessionTimeoutMinutes`, 30 by default).
const SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Past this many sessions, expired ones are dropped as new ones arrive.
const PRUNE_AT: usize = 10_000;

/// SHA-256 of the empty user name: the `uid` of every session while access control is off.
const ANONYMOUS_UID: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Sessions by their `lsid.id` bytes: the id as sent, and the last use.
#[derive(Default)]
pub struct LocalSessions {
    map: Mutex<HashMap<Vec<u8>, (Binary, DateTime)>>,
}

impl LocalSessions {
    /// Records a use of the command's session, if it has one.
    pub fn touch(&self, cmd: &Document) {
        let Some(Bson::Binary(id)) = cmd.get_document("lsid").ok().and_then(|l| l.get("id")) else {
            return;
        };
        let now = DateTime::now();
        let mut map = self.map.lock().unwrap();
        if map.len() >= PRUNE_AT {
            map.retain(|_, (_, used)| !expired(*used, now));
        }
        map.insert(id.bytes.clone(), (id.clone(), now));
    }

    /// Forgets ended (or killed) sessions, by `lsid.id` bytes.
    pub fn end(&self, ids: &[Vec<u8>]) {
        let mut map = self.map.lock().unwrap();
        for id in ids {
            map.remove(id);
        }
    }

    /// The cached sessions, as `$listLocalSessions` returns them.
    pub fn records(&self) -> Vec<Document> {
        let now = DateTime::now();
        let map = self.map.lock().unwrap();
        let mut out: Vec<(DateTime, Document)> = map
            .values()
            .filter(|(_, used)| !expired(*used, now))
            .map(|(id, used)| {
                let uid = Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: ANONYMOUS_UID.to_vec(),
                };
                (
                    *used,
                    doc! {"_id": {"id": id.clone(), "uid": uid}, "lastUse": *used},
                )
            })
            .collect();
        out.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        out.into_iter().map(|(_, d)| d).collect()
    }
}

fn expired(used: DateTime, now: DateTime) -> bool {
    now.timestamp_millis() - used.timestamp_millis() > SESSION_TIMEOUT.as_millis() as i64
}

/// Splits a leading `$listLocalSessions` or `$listSessions` stage off an aggregate's
/// stages, returning the remaining stages and the sessions it lists (`None` when the
/// pipeline has no such stage).
///
/// `$listSessions` reads `config.system.sessions`, which mongod refreshes from its session
/// cache every five minutes; Eddy keeps no such collection, and lists the cache itself
/// (as if just refreshed).
///
/// # Errors
/// InvalidNamespace for the wrong namespace (`{aggregate: 1}` for `$listLocalSessions`,
/// `config.system.sessions` for `$listSessions`), and bad stage options.
pub fn take_list_local_sessions(
    ctx: &ServerCtx,
    db: &str,
    cmd: &Document,
    mut stages: Vec<Document>,
) -> Result<(Vec<Document>, Option<Vec<Document>>)> {
    let Some((stage, spec)) = stages.first().and_then(|s| {
        ["$listLocalSessions", "$listSessions"]
            .into_iter()
            .find_map(|n| s.get(n).map(|v| (n, v)))
    }) else {
        return Ok((stages, None));
    };
    let on_collection = matches!(cmd.get("aggregate"), Some(Bson::String(_)));
    if stage == "$listLocalSessions" && on_collection {
        return Err(MongoError::new(
            ErrorCode::InvalidNamespace,
            "$listLocalSessions must be run against the database with {aggregate: 1}, not a collection",
        ));
    }
    if stage == "$listSessions"
        && (db != "config" || cmd.get_str("aggregate") != Ok("system.sessions"))
    {
        return Err(MongoError::new(
            ErrorCode::InvalidNamespace,
            "$listSessions must be run against the 'system.sessions' collection in the 'config' database.",
        ));
    }
    let own_only = parse_spec(stage, spec)?;
    stages.remove(0);
    // Without access control every session belongs to the one anonymous user, so asking
    // for all users or for that user lists them all; any named user has none.
    let sessions = if own_only {
        ctx.local_sessions.records()
    } else {
        Vec::new()
    };
    Ok((stages, Some(sessions)))
}

/// Parses `{allUsers?, users?}`; true when the sessions of the anonymous user are wanted.
fn parse_spec(stage: &str, spec: &Bson) -> Result<bool> {
    let Bson::Document(spec) = spec else {
        return Err(MongoError::type_mismatch(format!(
            "{stage} options must be specified in an object, but found: {}",
            crate::util::type_name(spec)
        )));
    };
    let mut all = false;
    let mut users: Option<Vec<(String, String)>> = None;
    for (k, v) in spec {
        match (k.as_str(), v) {
            ("allUsers", Bson::Boolean(b)) => all = *b,
            ("users", Bson::Array(a)) => {
                let mut list = Vec::new();
                for u in a {
                    let user = u.as_document().and_then(|u| {
                        Some((
                            u.get_str("user").ok()?.to_string(),
                            u.get_str("db").ok()?.to_string(),
                        ))
                    });
                    list.push(user.ok_or_else(|| {
                        MongoError::type_mismatch(format!(
                            "{stage} users must be objects with string fields 'user' and 'db'"
                        ))
                    })?);
                }
                users = Some(list);
            }
            ("allUsers" | "users", other) => {
                return Err(MongoError::type_mismatch(format!(
                    "BSON field '{stage}.{k}' is the wrong type '{}'",
                    crate::util::type_name(other)
                )));
            }
            _ => {
                return Err(MongoError::with_code(
                    40415,
                    format!("BSON field '{stage}.{k}' is an unknown field."),
                ));
            }
        }
    }
    let users = users.filter(|u| !u.is_empty());
    if all && users.is_some() {
        return Err(MongoError::new(
            ErrorCode::UnsupportedFormat,
            format!(
                "{stage} may not specify {{allUsers:true}} and {{users:[...]}} at the same time"
            ),
        ));
    }
    Ok(match users {
        None => true,
        Some(u) => u.iter().any(|(user, db)| user.is_empty() && db.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsid(b: u8) -> Document {
        doc! {"find": "c", "lsid": {"id": Binary {subtype: BinarySubtype::Uuid, bytes: vec![b; 16]}}}
    }

    #[test]
    fn sessions_are_recorded_once_each_with_their_last_use() {
        let s = LocalSessions::default();
        s.touch(&lsid(1));
        s.touch(&lsid(2));
        s.touch(&lsid(1));
        s.touch(&doc! {"find": "c"});
        let recs = s.records();
        assert_eq!(recs.len(), 2);
        let mut ids: Vec<Vec<u8>> = recs
            .iter()
            .map(|r| {
                let id = r.get_document("_id").unwrap();
                assert_eq!(id.get_binary_generic("uid").unwrap().len(), 32);
                match id.get("id") {
                    Some(Bson::Binary(b)) => b.bytes.clone(),
                    other => panic!("bad id {other:?}"),
                }
            })
            .collect();
        ids.sort();
        assert_eq!(ids, vec![vec![1; 16], vec![2; 16]]);
        assert!(recs[0].get_datetime("lastUse").is_ok());
        s.end(&[vec![1; 16]]);
        assert_eq!(s.records().len(), 1);
    }

    #[test]
    fn stage_options() {
        assert!(parse_spec("$listLocalSessions", &Bson::Document(doc! {})).unwrap());
        assert!(
            parse_spec(
                "$listLocalSessions",
                &Bson::Document(doc! {"allUsers": true})
            )
            .unwrap()
        );
        assert!(
            !parse_spec(
                "$listLocalSessions",
                &Bson::Document(doc! {"users": [{"user": "u", "db": "admin"}]})
            )
            .unwrap()
        );
        let code = |b: Bson| parse_spec("$listLocalSessions", &b).unwrap_err().code;
        assert_eq!(code(Bson::Int32(1)), 14);
        assert_eq!(code(Bson::Document(doc! {"x": 1})), 40415);
        assert_eq!(
            code(Bson::Document(
                doc! {"allUsers": true, "users": [{"user": "u", "db": "d"}]}
            )),
            12
        );
    }
}
