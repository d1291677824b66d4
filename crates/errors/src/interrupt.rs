//! The one interruption point of an operation: its `maxTimeMS` deadline, and a kill flag
//! (for `killOp`). Scans, sorts, groups and lookups call [`Interrupt::check`] as they go;
//! a cursor keeps its operation's handle so that `getMore`s are interrupted the same way.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{ErrorCode, MongoError, Result};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[derive(Debug, Default)]
struct State {
    /// Nanoseconds after [`epoch`], plus one; 0 for "no deadline".
    deadline: AtomicU64,
    killed: AtomicBool,
}

/// A shared handle on an operation's deadline and kill flag. Cheap to clone and check.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<State>);

impl Interrupt {
    /// A handle with no deadline.
    pub fn none() -> Interrupt {
        Interrupt::default()
    }

    /// A handle whose deadline is `limit` from now (`None`: no deadline).
    pub fn after(limit: Option<Duration>) -> Interrupt {
        let i = Interrupt::default();
        i.set_deadline(limit.map(|l| Instant::now() + l));
        i
    }

    /// Sets (or clears) the deadline.
    pub fn set_deadline(&self, at: Option<Instant>) {
        let v = at.map_or(0, |t| {
            t.saturating_duration_since(epoch())
                .as_nanos()
                .min(u128::from(u64::MAX - 1)) as u64
                + 1
        });
        self.0.deadline.store(v, Ordering::Relaxed);
    }

    /// The deadline, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        match self.0.deadline.load(Ordering::Relaxed) {
            0 => None,
            v => Some(epoch() + Duration::from_nanos(v - 1)),
        }
    }

    /// Time left before the deadline (`None`: no deadline; zero once passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Marks the operation killed: its next check fails with `Interrupted` (11601).
    pub fn kill(&self) {
        self.0.killed.store(true, Ordering::Relaxed);
    }

    /// Whether the operation was killed.
    pub fn is_killed(&self) -> bool {
        self.0.killed.load(Ordering::Relaxed)
    }

    /// Fails with `MaxTimeMSExpired` (50) once the deadline has passed, or `Interrupted`
    /// (11601) once killed.
    ///
    /// # Errors
    /// As above.
    pub fn check(&self) -> Result<()> {
        if self.0.killed.load(Ordering::Relaxed) {
            return Err(MongoError::new(
                ErrorCode::Interrupted,
                "operation was interrupted",
            ));
        }
        if let Some(d) = self.deadline() {
            if Instant::now() >= d {
                return Err(expired());
            }
        }
        Ok(())
    }
}

/// `MaxTimeMSExpired` (50), as mongod words it.
pub fn expired() -> MongoError {
    MongoError::new(ErrorCode::MaxTimeMSExpired, "operation exceeded time limit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_and_kills_interrupt() {
        let none = Interrupt::none();
        assert!(none.check().is_ok());
        assert!(none.remaining().is_none());
        let past = Interrupt::after(Some(Duration::ZERO));
        assert_eq!(past.check().unwrap_err().code, 50);
        let later = Interrupt::after(Some(Duration::from_secs(60)));
        assert!(later.check().is_ok());
        assert!(later.remaining().unwrap() > Duration::from_secs(59));
        later.kill();
        assert_eq!(later.check().unwrap_err().code, 11601);
    }
}
