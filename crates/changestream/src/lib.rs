//! Change streams: oplog entries become change events, delivered in commit order to any
//! number of streams, resumable from any point still in the oplog.
//!
//! Layout:
//! - [`resume_token`]: MongoDB's resume token layout (KeyString-encoded `_data`).
//! - [`spec`]: parsing `$changeStream` and the stages after it.
//! - [`event`]: one oplog entry → the events one stream sees.
//! - [`hub`]: the shared tail of the oplog, decoded once for all streams.
//! - [`route`]: push delivery: the index of streams by what they can admit, and their
//!   inboxes.
//! - [`stream`]: one open stream's position, resume point and batches.
//!
//! Key decision: the work of reading and decoding the oplog is shared (the hub), and only
//! the per-stream work (target check, options, the user's pipeline) is done per stream, so
//! the cost grows as events + deliveries rather than streams × events.

pub mod event;
pub mod hub;
pub mod resume_token;
pub mod route;
pub mod spec;
pub mod stream;

pub use event::{EventPos, Lookup};
pub use hub::Hub;
pub use resume_token::ResumeTokenData;
pub use spec::{StreamSpec, Target};
pub use stream::ChangeStream;
