//! Resume tokens: filled in by a helper.
