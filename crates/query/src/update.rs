//! update: being written.
