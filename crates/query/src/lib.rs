//! MongoDB's query language as pure functions over documents: no I/O, no tokio.
//!
//! - [`filter`]: match expressions (`find` filters, `$match`).
//! - [`projection`]: find projections.
//! - [`sort`]: sort specifications.
//! - [`expr`]: aggregation expressions.
//! - [`pipeline`]: aggregation stages.
//! - [`validation`]: collection validators and the `errInfo` of documents that fail them.
//! - [`update`]: update operators, replacements and pipeline updates, each yielding the
//!   field-level delta that change events report as `updateDescription`.
//!
//! String comparisons follow an optional collation ([`doc::Collation`]): filters, sorts and
//! pipelines carry one (`with_collation`), and expressions take it from [`expr::Vars`].

pub mod expr;
pub mod filter;
pub mod geo;
pub mod pipeline;
pub mod projection;
pub mod sort;
pub mod spill;
pub mod text;
pub mod update;
pub mod validation;

#[cfg(test)]
mod collation_tests;
