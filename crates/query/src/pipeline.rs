//! pipeline: being written.
