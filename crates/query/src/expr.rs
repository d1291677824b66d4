//! expr: being written.
