//! Privileges: actions on resources, and whether a set of them covers what a command needs.
//!
//! Resources follow MongoDB's resource patterns. A granted privilege names one of:
//! - `{db: "d", collection: "c"}`: that collection;
//! - `{db: "d", collection: ""}`: every collection of database `d` that is not a `system.`
//!   collection, and database `d` itself;
//! - `{db: "", collection: "c"}`: collection `c` in every database (not a `system.` one);
//! - `{db: "", collection: ""}`: every database and their non-`system.` collections;
//! - `{cluster: true}`: the deployment;
//! - `{anyResource: true}`: everything, `system.` collections included.
//!
//! What a command needs is an action on a collection, a database or the cluster.

use std::collections::BTreeSet;

use bson::{Bson, Document, doc};
use errors::{MongoError, Result};

/// A granted resource (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `{db, collection}`, either part possibly empty.
    Ns {
        db: String,
        coll: String,
    },
    Cluster,
    AnyResource,
}

/// What a command needs an action on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    Collection { db: &'a str, coll: &'a str },
    Database(&'a str),
    Cluster,
}

fn is_system(coll: &str) -> bool {
    coll.starts_with("system.")
}

impl Resource {
    /// `{db, collection}`.
    pub fn ns(db: impl Into<String>, coll: impl Into<String>) -> Resource {
        Resource::Ns {
            db: db.into(),
            coll: coll.into(),
        }
    }

    /// Whether granting on this resource covers `t`.
    pub fn covers(&self, t: &Target<'_>) -> bool {
        match (self, t) {
            (Resource::AnyResource, _) => true,
            (Resource::Cluster, Target::Cluster) => true,
            (Resource::Cluster, _) | (Resource::Ns { .. }, Target::Cluster) => false,
            (Resource::Ns { db, coll }, Target::Collection { db: d, coll: c }) => {
                if !coll.is_empty() {
                    coll == c && (db.is_empty() && !is_system(c) || db == d)
                } else {
                    !is_system(c) && (db.is_empty() || db == d)
                }
            }
            (Resource::Ns { db, coll }, Target::Database(d)) => {
                coll.is_empty() && (db.is_empty() || db == d)
            }
        }
    }

    /// The resource as a role document shows it.
    pub fn to_document(&self) -> Document {
        match self {
            Resource::Ns { db, coll } => doc! {"db": db, "collection": coll},
            Resource::Cluster => doc! {"cluster": true},
            Resource::AnyResource => doc! {"anyResource": true},
        }
    }

    /// Reads a resource document (`createRole`, `grantPrivilegesToRole`).
    ///
    /// # Errors
    /// BadValue (FailedToParse for a wrong type) as MongoDB words it.
    pub fn from_document(d: &Document) -> Result<Resource> {
        if d.get_bool("cluster") == Ok(true) && d.len() == 1 {
            return Ok(Resource::Cluster);
        }
        if d.get_bool("anyResource") == Ok(true) && d.len() == 1 {
            return Ok(Resource::AnyResource);
        }
        match (d.get("db"), d.get("collection"), d.len()) {
            (Some(Bson::String(db)), Some(Bson::String(c)), 2) => Ok(Resource::ns(db, c)),
            _ => Err(MongoError::bad_value(format!(
                "resource pattern must contain 'db' and 'collection' strings, or 'cluster: true', or 'anyResource: true': {d}"
            ))),
        }
    }
}

/// Actions on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    pub resource: Resource,
    pub actions: BTreeSet<String>,
}

impl Privilege {
    /// A privilege from a resource and action names.
    pub fn new(resource: Resource, actions: &[&str]) -> Privilege {
        Privilege {
            resource,
            actions: actions.iter().map(|a| (*a).to_string()).collect(),
        }
    }

    /// `{resource, actions}` as role documents show it.
    pub fn to_document(&self) -> Document {
        doc! {
            "resource": self.resource.to_document(),
            "actions": self.actions.iter().cloned().collect::<Vec<_>>(),
        }
    }

    /// Reads `{resource, actions}`, checking every action's name.
    ///
    /// # Errors
    /// BadValue for a malformed privilege or an unknown action.
    pub fn from_document(d: &Document) -> Result<Privilege> {
        let resource =
            Resource::from_document(d.get_document("resource").map_err(|_| {
                MongoError::bad_value("privilege must have a 'resource' document")
            })?)?;
        let actions = d
            .get_array("actions")
            .map_err(|_| MongoError::bad_value("privilege must have an 'actions' array"))?;
        let mut set = BTreeSet::new();
        let mut unknown = BTreeSet::new();
        for a in actions {
            let Some(name) = a.as_str() else {
                return Err(MongoError::bad_value("privilege actions must be strings"));
            };
            if !crate::actions::is_action(name) {
                unknown.insert(name);
            }
            set.insert(name.to_string());
        }
        if !unknown.is_empty() {
            let list: Vec<String> = unknown.iter().map(|n| format!("'{n}'")).collect();
            let s = if unknown.len() == 1 { "" } else { "s" };
            return Err(MongoError::bad_value(format!(
                "Unknown action type{s} in privilege set: {}",
                list.join(", ")
            )));
        }
        Ok(Privilege {
            resource,
            actions: set,
        })
    }
}

/// A user's privileges, merged by resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivilegeSet {
    by_resource: std::collections::BTreeMap<Resource, BTreeSet<String>>,
}

impl PrivilegeSet {
    /// Adds a privilege (actions on a resource it already has are merged).
    pub fn add(&mut self, p: &Privilege) {
        self.by_resource
            .entry(p.resource.clone())
            .or_default()
            .extend(p.actions.iter().cloned());
    }

    /// Whether some privilege grants `action` on `t`.
    pub fn allows(&self, action: &str, t: &Target<'_>) -> bool {
        self.by_resource
            .iter()
            .any(|(r, actions)| actions.contains(action) && r.covers(t))
    }

    /// Whether any privilege touches database `db` (the database itself, or a collection
    /// in it): what `listDatabases` shows a user who may not list them all.
    pub fn touches_db(&self, db: &str) -> bool {
        self.by_resource.iter().any(|(r, a)| {
            !a.is_empty()
                && match r {
                    Resource::AnyResource => true,
                    Resource::Ns { db: d, .. } => d.is_empty() || d == db,
                    Resource::Cluster => false,
                }
        })
    }

    /// Whether any privilege covers collection `db.coll`: what `listCollections` with
    /// `authorizedCollections` shows.
    pub fn touches_collection(&self, db: &str, coll: &str) -> bool {
        let t = Target::Collection { db, coll };
        self.by_resource
            .iter()
            .any(|(r, a)| !a.is_empty() && r.covers(&t))
    }

    /// The privileges, one per resource.
    pub fn privileges(&self) -> Vec<Privilege> {
        self.by_resource
            .iter()
            .map(|(r, a)| Privilege {
                resource: r.clone(),
                actions: a.clone(),
            })
            .collect()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_resource.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coll<'a>(db: &'a str, coll: &'a str) -> Target<'a> {
        Target::Collection { db, coll }
    }

    #[test]
    fn resource_patterns_match_as_mongodb_does() {
        let exact = Resource::ns("d", "c");
        assert!(exact.covers(&coll("d", "c")));
        assert!(!exact.covers(&coll("d", "x")));
        assert!(!exact.covers(&Target::Database("d")));
        let db = Resource::ns("d", "");
        assert!(db.covers(&coll("d", "c")));
        assert!(db.covers(&Target::Database("d")));
        assert!(!db.covers(&coll("d", "system.users")));
        assert!(!db.covers(&coll("e", "c")));
        let any_db_coll = Resource::ns("", "c");
        assert!(any_db_coll.covers(&coll("e", "c")));
        assert!(!any_db_coll.covers(&Target::Database("e")));
        let any = Resource::ns("", "");
        assert!(any.covers(&coll("x", "y")));
        assert!(any.covers(&Target::Database("x")));
        assert!(!any.covers(&coll("x", "system.js")));
        assert!(!any.covers(&Target::Cluster));
        assert!(Resource::Cluster.covers(&Target::Cluster));
        assert!(!Resource::Cluster.covers(&Target::Database("x")));
        assert!(Resource::AnyResource.covers(&coll("x", "system.js")));
        assert!(Resource::ns("d", "system.js").covers(&coll("d", "system.js")));
    }

    #[test]
    fn privileges_parse_and_merge() {
        let p = Privilege::from_document(&doc! {
            "resource": {"db": "d", "collection": ""}, "actions": ["find", "insert"]
        })
        .unwrap();
        let mut set = PrivilegeSet::default();
        set.add(&p);
        set.add(&Privilege::new(Resource::ns("d", ""), &["update"]));
        assert!(set.allows("update", &coll("d", "c")));
        assert!(set.allows("find", &coll("d", "c")));
        assert!(!set.allows("remove", &coll("d", "c")));
        assert_eq!(set.privileges().len(), 1);
        let e = Privilege::from_document(&doc! {
            "resource": {"cluster": true}, "actions": ["fly"]
        })
        .unwrap_err();
        assert_eq!(e.message, "Unknown action type in privilege set: 'fly'");
        assert!(Resource::from_document(&doc! {"db": "d"}).is_err());
    }
}
