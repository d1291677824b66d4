//! projection: being written.
