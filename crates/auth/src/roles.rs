//! Roles: names, user-defined role documents (`admin.system.roles`), the built-in roles
//! (see [`crate::builtin`]), and resolving a set of roles, with all they inherit, into
//! privileges.

use std::collections::BTreeSet;

use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};

use crate::privilege::{Privilege, PrivilegeSet};

/// `{role, db}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName {
    pub role: String,
    pub db: String,
}

impl RoleName {
    pub fn new(role: impl Into<String>, db: impl Into<String>) -> RoleName {
        RoleName {
            role: role.into(),
            db: db.into(),
        }
    }

    /// `{role, db}`.
    pub fn to_document(&self) -> Document {
        doc! {"role": &self.role, "db": &self.db}
    }

    /// A role as commands name it: a string (a role of `default_db`) or `{role, db}`.
    ///
    /// # Errors
    /// BadValue for anything else.
    pub fn from_bson(v: &Bson, default_db: &str) -> Result<RoleName> {
        match v {
            Bson::String(r) => Ok(RoleName::new(r.as_str(), default_db)),
            Bson::Document(d) => match (d.get_str("role"), d.get_str("db")) {
                (Ok(r), Ok(db)) => Ok(RoleName::new(r, db)),
                _ => Err(MongoError::bad_value(format!(
                    "Role names must be either strings or objects with 'role' and 'db' fields: {d}"
                ))),
            },
            _ => Err(MongoError::bad_value(
                "Role names must be either strings or objects",
            )),
        }
    }

    /// `role@db`, as MongoDB's messages name roles.
    pub fn display(&self) -> String {
        format!("{}@{}", self.role, self.db)
    }
}

/// A user-defined role as `admin.system.roles` holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleDoc {
    pub name: RoleName,
    pub privileges: Vec<Privilege>,
    pub roles: Vec<RoleName>,
}

impl RoleDoc {
    /// `db.role`, the document's `_id`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.name.db, self.name.role)
    }

    /// The stored document.
    pub fn to_document(&self) -> Document {
        doc! {
            "_id": self.key(),
            "role": &self.name.role,
            "db": &self.name.db,
            "privileges": self.privileges.iter().map(|p| Bson::Document(p.to_document())).collect::<Vec<_>>(),
            "roles": self.roles.iter().map(|r| Bson::Document(r.to_document())).collect::<Vec<_>>(),
        }
    }

    /// Reads a stored role.
    ///
    /// # Errors
    /// InternalError for a malformed record.
    pub fn from_document(d: &Document) -> Result<RoleDoc> {
        let bad = || MongoError::internal(format!("malformed role in system.roles: {d}"));
        let name = RoleName::new(
            d.get_str("role").map_err(|_| bad())?,
            d.get_str("db").map_err(|_| bad())?,
        );
        let privileges = d
            .get_array("privileges")
            .map_err(|_| bad())?
            .iter()
            .map(|p| match p {
                Bson::Document(p) => Privilege::from_document(p),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>>>()?;
        let roles = d
            .get_array("roles")
            .map_err(|_| bad())?
            .iter()
            .map(|r| RoleName::from_bson(r, &name.db))
            .collect::<Result<Vec<_>>>()?;
        Ok(RoleDoc {
            name,
            privileges,
            roles,
        })
    }
}

/// Where a role's definition comes from.
pub enum Definition {
    Builtin(Vec<Privilege>, Vec<RoleName>),
    Defined(RoleDoc),
}

/// The definition of a role: built-in, or from `lookup` (the stored user-defined roles).
pub fn definition(
    name: &RoleName,
    lookup: &dyn Fn(&RoleName) -> Option<RoleDoc>,
) -> Option<Definition> {
    if let Some((p, r)) = crate::builtin::role(&name.role, &name.db) {
        return Some(Definition::Builtin(p, r));
    }
    lookup(name).map(Definition::Defined)
}

/// A set of roles with all they inherit, and the privileges they grant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    /// Every role held, directly or by inheritance.
    pub roles: BTreeSet<RoleName>,
    pub privileges: PrivilegeSet,
}

/// Resolves roles transitively. A role that no longer exists grants nothing (a user keeps
/// the name of a dropped role until it is revoked, as in MongoDB).
pub fn resolve(direct: &[RoleName], lookup: &dyn Fn(&RoleName) -> Option<RoleDoc>) -> Resolved {
    let mut out = Resolved::default();
    let mut todo: Vec<RoleName> = direct.to_vec();
    while let Some(r) = todo.pop() {
        if out.roles.contains(&r) {
            continue;
        }
        let Some(def) = definition(&r, lookup) else {
            continue;
        };
        out.roles.insert(r);
        let (privileges, inherited) = match def {
            Definition::Builtin(p, i) => (p, i),
            Definition::Defined(d) => (d.privileges, d.roles),
        };
        for p in &privileges {
            out.privileges.add(p);
        }
        todo.extend(inherited);
    }
    out
}

/// Whether `name` exists (built in, or defined).
pub fn exists(name: &RoleName, lookup: &dyn Fn(&RoleName) -> Option<RoleDoc>) -> bool {
    definition(name, lookup).is_some()
}

/// RoleNotFound as MongoDB words it.
pub fn not_found(name: &RoleName) -> MongoError {
    MongoError::new(
        ErrorCode::RoleNotFound,
        format!("Could not find role: {}", name.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privilege::{Resource, Target};

    #[test]
    fn roles_resolve_through_inheritance_and_ignore_cycles() {
        let a = RoleDoc {
            name: RoleName::new("a", "d"),
            privileges: vec![Privilege::new(Resource::ns("d", "x"), &["find"])],
            roles: vec![RoleName::new("b", "d")],
        };
        let b = RoleDoc {
            name: RoleName::new("b", "d"),
            privileges: vec![Privilege::new(Resource::ns("d", "y"), &["insert"])],
            roles: vec![RoleName::new("a", "d"), RoleName::new("read", "e")],
        };
        let lookup = |n: &RoleName| [&a, &b].into_iter().find(|r| &r.name == n).cloned();
        let r = resolve(&[RoleName::new("a", "d")], &lookup);
        assert_eq!(r.roles.len(), 3);
        let t = |db, coll| Target::Collection { db, coll };
        assert!(r.privileges.allows("find", &t("d", "x")));
        assert!(r.privileges.allows("insert", &t("d", "y")));
        assert!(r.privileges.allows("find", &t("e", "z")));
        assert!(!r.privileges.allows("insert", &t("e", "z")));
        let gone = resolve(&[RoleName::new("gone", "d")], &lookup);
        assert!(gone.roles.is_empty() && gone.privileges.is_empty());
    }

    #[test]
    fn role_names_parse() {
        assert_eq!(
            RoleName::from_bson(&Bson::String("read".into()), "d").unwrap(),
            RoleName::new("read", "d")
        );
        assert_eq!(
            RoleName::from_bson(&Bson::Document(doc! {"role": "r", "db": "x"}), "d").unwrap(),
            RoleName::new("r", "x")
        );
        assert!(RoleName::from_bson(&Bson::Int32(1), "d").is_err());
        let d = RoleDoc {
            name: RoleName::new("r", "d"),
            privileges: vec![Privilege::new(Resource::Cluster, &["serverStatus"])],
            roles: vec![RoleName::new("read", "d")],
        };
        assert_eq!(RoleDoc::from_document(&d.to_document()).unwrap(), d);
    }
}
