//! Users as `admin.system.users` holds them:
//! `{_id: "db.user", userId, user, db, credentials: {"SCRAM-SHA-1": {...}, ...}, roles:
//! [{role, db}], customData?}`.

use std::collections::BTreeMap;

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use errors::{MongoError, Result};

use crate::roles::RoleName;
use crate::scram::{Credential, Mechanism};

/// A user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserDoc {
    pub user: String,
    pub db: String,
    pub user_id: bson::Uuid,
    pub credentials: BTreeMap<Mechanism, Credential>,
    pub roles: Vec<RoleName>,
    pub custom_data: Option<Document>,
}

/// `db.user`, the `_id` of a user's document.
pub fn user_id_key(user: &str, db: &str) -> String {
    format!("{db}.{user}")
}

impl UserDoc {
    /// The document's `_id`.
    pub fn key(&self) -> String {
        user_id_key(&self.user, &self.db)
    }

    /// The mechanisms the user can authenticate with.
    pub fn mechanisms(&self) -> Vec<&'static str> {
        self.credentials.keys().map(|m| m.name()).collect()
    }

    /// The document stored in `admin.system.users`.
    pub fn to_document(&self) -> Document {
        let mut creds = Document::new();
        for (m, c) in &self.credentials {
            creds.insert(m.name(), c.to_document());
        }
        let mut d = doc! {
            "_id": self.key(),
            "userId": Binary { subtype: BinarySubtype::Uuid, bytes: self.user_id.bytes().to_vec() },
            "user": &self.user,
            "db": &self.db,
            "credentials": creds,
            "roles": self.roles.iter().map(|r| Bson::Document(r.to_document())).collect::<Vec<_>>(),
        };
        if let Some(c) = &self.custom_data {
            d.insert("customData", c.clone());
        }
        d
    }

    /// Reads a stored user.
    ///
    /// # Errors
    /// InternalError for a malformed record (only the server writes them).
    pub fn from_document(d: &Document) -> Result<UserDoc> {
        let bad =
            |what: &str| MongoError::internal(format!("malformed user in system.users: {what}"));
        let user = d.get_str("user").map_err(|_| bad("user"))?.to_string();
        let db = d.get_str("db").map_err(|_| bad("db"))?.to_string();
        let user_id = match d.get("userId") {
            Some(Bson::Binary(b)) if b.bytes.len() == 16 => {
                bson::Uuid::from_bytes(b.bytes.as_slice().try_into().map_err(|_| bad("userId"))?)
            }
            _ => return Err(bad("userId")),
        };
        let mut credentials = BTreeMap::new();
        if let Ok(creds) = d.get_document("credentials") {
            for (name, c) in creds {
                if let (Some(m), Bson::Document(c)) = (Mechanism::parse(name), c) {
                    credentials.insert(m, Credential::from_document(c)?);
                }
            }
        }
        let roles = d
            .get_array("roles")
            .map_err(|_| bad("roles"))?
            .iter()
            .map(|r| RoleName::from_bson(r, &db))
            .collect::<Result<Vec<_>>>()
            .map_err(|_| bad("roles"))?;
        Ok(UserDoc {
            user,
            db,
            user_id,
            credentials,
            roles,
            custom_data: d.get_document("customData").ok().cloned(),
        })
    }

    /// The user as `usersInfo` shows it (no credentials).
    pub fn info(&self) -> Document {
        let mut d = doc! {
            "_id": self.key(),
            "userId": Binary { subtype: BinarySubtype::Uuid, bytes: self.user_id.bytes().to_vec() },
            "user": &self.user,
            "db": &self.db,
        };
        if let Some(c) = &self.custom_data {
            d.insert("customData", c.clone());
        }
        d.insert(
            "roles",
            self.roles
                .iter()
                .map(|r| Bson::Document(r.to_document()))
                .collect::<Vec<_>>(),
        );
        d.insert("mechanisms", self.mechanisms());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_round_trip() {
        let mut credentials = BTreeMap::new();
        credentials.insert(
            Mechanism::Sha256,
            Credential::new(Mechanism::Sha256, "u", "p", 4096).unwrap(),
        );
        let u = UserDoc {
            user: "u".into(),
            db: "test".into(),
            user_id: bson::Uuid::new(),
            credentials,
            roles: vec![RoleName::new("readWrite", "test")],
            custom_data: Some(doc! {"k": 1}),
        };
        let d = u.to_document();
        assert_eq!(d.get_str("_id").unwrap(), "test.u");
        assert_eq!(UserDoc::from_document(&d).unwrap(), u);
        let info = u.info();
        assert!(!info.contains_key("credentials"));
        assert_eq!(info.get_array("mechanisms").unwrap().len(), 1);
    }
}
