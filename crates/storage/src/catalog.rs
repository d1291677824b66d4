//! Catalog records: collections (with UUIDs and options) and their indexes.

use bson::{Bson, Document, doc, spec::BinarySubtype};
use errors::{ErrorCode, MongoError, Result};

/// A namespace: database and collection names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

impl Namespace {
    /// A namespace from its parts.
    pub fn new(db: impl Into<String>, coll: impl Into<String>) -> Namespace {
        Namespace {
            db: db.into(),
            coll: coll.into(),
        }
    }

    /// Parses `db.coll`; the collection is everything after the first dot.
    pub fn parse(full: &str) -> Option<Namespace> {
        let (db, coll) = full.split_once('.')?;
        Some(Namespace::new(db, coll))
    }

    /// `db.coll`.
    pub fn full(&self) -> String {
        format!("{}.{}", self.db, self.coll)
    }

    /// Whether this is a `system.*` collection.
    pub fn is_system(&self) -> bool {
        self.coll.starts_with("system.")
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

/// Checks a database name as MongoDB does (InvalidNamespace, 73).
pub fn validate_db_name(db: &str) -> Result<()> {
    if db.is_empty() {
        return Err(MongoError::new(
            ErrorCode::InvalidNamespace,
            "database name cannot be empty",
        ));
    }
    if db.len() >= 64 {
        return Err(MongoError::new(
            ErrorCode::InvalidNamespace,
            format!("db name '{db}' is too long (max 63 characters)"),
        ));
    }
    if db
        .chars()
        .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'))
    {
        return Err(MongoError::new(
            ErrorCode::InvalidNamespace,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

/// Checks a collection name for creation as MongoDB does (InvalidNamespace, 73).
pub fn validate_coll_name(ns: &Namespace) -> Result<()> {
    validate_db_name(&ns.db)?;
    let c = &ns.coll;
    let bad = c.is_empty()
        || c.starts_with('.')
        || c.contains('\0')
        || (c.contains('$') && !c.starts_with("$cmd"))
        || ns.full().len() > 255;
    if bad {
        return Err(MongoError::new(
            ErrorCode::InvalidNamespace,
            format!("Invalid collection name: {}", ns.full()),
        ));
    }
    Ok(())
}

/// One index of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexMeta {
    /// Storage id, unique across the database; prefixes every entry of the index.
    pub id: u64,
    pub name: String,
    /// The key pattern, e.g. `{a: 1, b: -1}`.
    pub key: Document,
    pub unique: bool,
    pub sparse: bool,
    pub partial_filter: Option<Document>,
    /// The spec as listIndexes shows it (`v`, `key`, `name` and the options given).
    pub spec: Document,
    /// Whether some document has an array in an indexed field (then the index cannot
    /// provide a sort order on its own).
    pub multikey: bool,
}

impl IndexMeta {
    /// Whether this is a text index (its key holds `_fts`).
    pub fn is_text(&self) -> bool {
        self.key.contains_key("_fts")
    }

    /// Whether the index keys something other than its fields' values (text terms,
    /// geo cells, hashes, wildcard paths): only plans made for its kind may read it.
    pub fn is_special(&self) -> bool {
        self.is_text() || self.is_sphere() || self.is_2d() || self.is_hashed() || self.is_wildcard()
    }

    /// Whether this is a hashed index (`{a: "hashed"}`).
    pub fn is_hashed(&self) -> bool {
        self.key
            .values()
            .any(|v| matches!(v, bson::Bson::String(s) if s == "hashed"))
    }

    /// Whether this is a wildcard index (`{"$**": 1}` or `{"a.$**": 1}`).
    pub fn is_wildcard(&self) -> bool {
        self.key.keys().any(|k| k == "$**" || k.ends_with(".$**"))
    }

    /// Whether this is a 2d (flat) index.
    pub fn is_2d(&self) -> bool {
        self.key
            .values()
            .any(|v| matches!(v, bson::Bson::String(s) if s == "2d"))
    }

    /// Whether this is a 2dsphere index.
    pub fn is_sphere(&self) -> bool {
        self.key
            .values()
            .any(|v| matches!(v, bson::Bson::String(s) if s == "2dsphere"))
    }

    /// Whether this is the `_id` index.
    pub fn is_id(&self) -> bool {
        self.name == "_id_"
    }

    /// Whether the index is hidden from the query planner (`hidden: true`): still
    /// maintained, and still enforcing `unique`, but never chosen nor hinted.
    pub fn hidden(&self) -> bool {
        self.spec.get_bool("hidden").unwrap_or(false)
    }

    /// A TTL index's `expireAfterSeconds`.
    pub fn expire_after_secs(&self) -> Option<i64> {
        self.spec.get("expireAfterSeconds").and_then(int_of)
    }

    /// The key fields with direction (true = descending).
    pub fn fields(&self) -> Vec<(String, bool)> {
        self.key
            .iter()
            .map(|(k, v)| {
                let desc = matches!(doc::compare::as_f64(v), Some(d) if d < 0.0);
                (k.clone(), desc)
            })
            .collect()
    }

    fn to_document(&self) -> Document {
        let mut d = doc! {
            "id": self.id as i64,
            "name": &self.name,
            "key": self.key.clone(),
            "unique": self.unique,
            "sparse": self.sparse,
            "spec": self.spec.clone(),
            "multikey": self.multikey,
        };
        if let Some(p) = &self.partial_filter {
            d.insert("partial", p.clone());
        }
        d
    }

    fn from_document(d: &Document) -> Result<IndexMeta> {
        Ok(IndexMeta {
            id: d.get_i64("id").map_err(corrupt)? as u64,
            name: d.get_str("name").map_err(corrupt)?.to_string(),
            key: d.get_document("key").map_err(corrupt)?.clone(),
            unique: d.get_bool("unique").unwrap_or(false),
            sparse: d.get_bool("sparse").unwrap_or(false),
            partial_filter: d.get_document("partial").ok().cloned(),
            spec: d.get_document("spec").map_err(corrupt)?.clone(),
            multikey: d.get_bool("multikey").unwrap_or(false),
        })
    }
}

/// A collection (or view) as the catalog stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionMeta {
    pub ns: Namespace,
    pub uuid: bson::Uuid,
    /// Storage id; prefixes the collection's document keys.
    pub id: u64,
    /// Options given to `create` / `collMod` (`capped`, `validator`, `viewOn`,
    /// `changeStreamPreAndPostImages`, ...).
    pub options: Document,
    pub indexes: Vec<IndexMeta>,
}

impl CollectionMeta {
    /// Whether this is a view.
    pub fn is_view(&self) -> bool {
        self.options.contains_key("viewOn")
    }

    /// The collection UUID as BSON (binary subtype 4).
    pub fn uuid_bson(&self) -> Bson {
        Bson::Binary(bson::Binary {
            subtype: BinarySubtype::Uuid,
            bytes: self.uuid.bytes().to_vec(),
        })
    }

    /// A capped collection's bounds: its size in bytes and its document count, if any.
    pub fn capped(&self) -> Option<(u64, Option<u64>)> {
        if !self.options.get_bool("capped").unwrap_or(false) {
            return None;
        }
        let num = |k: &str| self.options.get(k).and_then(int_of);
        let size = num("size").unwrap_or(0).max(0) as u64;
        let max = num("max").filter(|m| *m > 0).map(|m| m as u64);
        Some((size, max))
    }

    /// Whether change stream pre- and post-images are enabled.
    pub fn pre_post_images(&self) -> bool {
        self.options
            .get_document("changeStreamPreAndPostImages")
            .ok()
            .and_then(|d| d.get_bool("enabled").ok())
            .unwrap_or(false)
    }

    /// An index by name.
    pub fn index(&self, name: &str) -> Option<&IndexMeta> {
        self.indexes.iter().find(|i| i.name == name)
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let d = doc! {
            "db": &self.ns.db,
            "coll": &self.ns.coll,
            "uuid": self.uuid,
            "id": self.id as i64,
            "options": self.options.clone(),
            "indexes": self.indexes.iter().map(|i| Bson::Document(i.to_document())).collect::<Vec<_>>(),
        };
        bson::to_vec(&d).expect("catalog record serializes")
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Result<CollectionMeta> {
        let d = Document::from_reader(b).map_err(corrupt)?;
        let uuid = match d.get("uuid") {
            Some(Bson::Binary(b)) => bson::Uuid::from_bytes(
                b.bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| MongoError::internal("bad uuid"))?,
            ),
            _ => return Err(MongoError::internal("catalog record without uuid")),
        };
        let indexes = d
            .get_array("indexes")
            .map_err(corrupt)?
            .iter()
            .map(|b| match b {
                Bson::Document(d) => IndexMeta::from_document(d),
                _ => Err(MongoError::internal("bad index record")),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CollectionMeta {
            ns: Namespace::new(
                d.get_str("db").map_err(corrupt)?,
                d.get_str("coll").map_err(corrupt)?,
            ),
            uuid,
            id: d.get_i64("id").map_err(corrupt)? as u64,
            options: d.get_document("options").map_err(corrupt)?.clone(),
            indexes,
        })
    }
}

/// A stored option's number as an integer (doubles truncated).
fn int_of(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) => Some(*d as i64),
        _ => None,
    }
}

fn corrupt(e: impl std::fmt::Display) -> MongoError {
    MongoError::internal(format!("corrupt catalog record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_db_name("test").is_ok());
        assert!(validate_db_name("a.b").is_err());
        assert!(validate_db_name("").is_err());
        assert!(validate_coll_name(&Namespace::new("d", "a.b")).is_ok());
        assert!(validate_coll_name(&Namespace::new("d", "a$b")).is_err());
        assert_eq!(Namespace::parse("d.a.b"), Some(Namespace::new("d", "a.b")));
    }

    #[test]
    fn meta_round_trip() {
        let m = CollectionMeta {
            ns: Namespace::new("d", "c"),
            uuid: bson::Uuid::new(),
            id: 7,
            options: doc! {"capped": false},
            indexes: vec![IndexMeta {
                id: 8,
                name: "_id_".into(),
                key: doc! {"_id": 1},
                unique: true,
                sparse: false,
                partial_filter: None,
                spec: doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
                multikey: false,
            }],
        };
        assert_eq!(CollectionMeta::from_bytes(&m.to_bytes()).unwrap(), m);
    }
}
