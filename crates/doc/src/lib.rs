//! Helpers over the `bson` crate that every layer shares.
//!
//! - [`compare`]: MongoDB's cross-type comparison and sort order, optionally under a
//!   [`collation`].
//! - [`collation`]: collation documents and locale-aware string comparison (ICU4X).
//! - [`path`]: dotted paths, literal and array-expanding.
//! - [`keystring`]: the order-preserving byte encoding (MongoDB's KeyString V1) used for
//!   `_id` keys, index keys and resume tokens, so that byte order is value order.

pub mod collation;
pub mod compare;
pub mod keystring;
pub mod path;

pub use collation::Collation;
pub use compare::{
    cmp_documents, cmp_values, cmp_values_with, type_name, values_equal, values_equal_with,
};
pub use path::{get_path, lookup_all, remove_path, set_path};
