//! Change streams.
pub mod resume_token;
