//! sort: being written.
