//! Planning and execution: index keys, index choice, scans, and the document writes that
//! keep indexes in step, on top of `storage`.
//!
//! Layout:
//! - [`keys`]: which index entries a document has (multikey expansion, sparse and partial
//!   indexes) and the `_id` record key.
//! - [`write`]: insert, replace and delete of one document with its index entries, checking
//!   unique constraints before changing anything; index builds.
//! - [`validate`]: collection validators on writes (`validationLevel`, `validationAction`,
//!   `bypassDocumentValidation`).
//! - [`collation`]: the collation of an operation (explicit or the collection default) and
//!   of an index.
//! - [`geo`]: 2dsphere index keys and the scans of geospatial queries.
//! - [`plan`]: choosing a collection scan or an index scan for a filter and sort, and running
//!   it over a snapshot.

pub mod collation;
pub mod geo;
pub mod keys;
pub mod plan;
pub mod validate;
pub mod write;

pub use keys::id_key;
pub use plan::{Plan, natural_direction, plan_query, scan};
