//! filter: being written.
