//! The running operation: its `maxTimeMS` deadline, as the [`Interrupt`] every scan, sort,
//! group and lookup checks. [`run`](crate) installs one per command; handlers read it with
//! [`current`] and hand it to the cursors they open, so that `getMore`s keep the budget.

use std::time::Duration;

use bson::{Bson, Document};
use errors::{ErrorCode, Interrupt, MongoError, Result};

tokio::task_local! {
    static CURRENT: (Interrupt, u32);
}

/// The current operation's interruption point (no deadline outside a command).
pub fn current() -> Interrupt {
    CURRENT.try_with(|c| c.0.clone()).unwrap_or_default()
}

/// The current operation's id (`currentOp`'s `opid`), inside a command.
pub fn current_opid() -> Option<u32> {
    CURRENT.try_with(|c| c.1).ok()
}

/// Runs `f` as the operation `opid`, interrupted by `i`.
pub async fn scope<F: std::future::Future>(i: Interrupt, opid: u32, f: F) -> F::Output {
    CURRENT.scope((i, opid), f).await
}

/// The `maxTimeMS` generic argument: `None` when absent or 0 (no limit).
///
/// # Errors
/// BadValue for a non-number, a negative or too large value, or a fraction, as mongod.
pub fn max_time(cmd: &Document) -> Result<Option<Duration>> {
    if cmd.contains_key("$maxTimeMS") {
        return Err(MongoError::new(
            ErrorCode::InvalidOptions,
            "$maxTimeMS is not a valid command option; use maxTimeMS",
        ));
    }
    let Some(v) = cmd.get("maxTimeMS") else {
        return Ok(None);
    };
    let ms: f64 = match v {
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        Bson::Decimal128(d) => d.to_string().parse().unwrap_or(f64::NAN),
        _ => return Err(MongoError::bad_value("maxTimeMS must be a number")),
    };
    if !(0.0..=f64::from(i32::MAX)).contains(&ms) {
        return Err(MongoError::bad_value(format!(
            "{ms} value for maxTimeMS is out of range [0, 2147483647]"
        )));
    }
    if ms.fract() != 0.0 {
        return Err(MongoError::bad_value(format!(
            "maxTimeMS has non-integral value: {ms}"
        )));
    }
    Ok((ms > 0.0).then(|| Duration::from_millis(ms as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn parses_max_time_ms_as_mongod() {
        assert_eq!(max_time(&doc! {"find": "c"}).unwrap(), None);
        assert_eq!(max_time(&doc! {"find": "c", "maxTimeMS": 0}).unwrap(), None);
        assert_eq!(
            max_time(&doc! {"find": "c", "maxTimeMS": 5i64}).unwrap(),
            Some(Duration::from_millis(5))
        );
        assert_eq!(
            max_time(&doc! {"find": "c", "maxTimeMS": 7.0}).unwrap(),
            Some(Duration::from_millis(7))
        );
        for bad in [
            bson::bson!(-1),
            bson::bson!(1.5),
            bson::bson!("1"),
            bson::bson!(3_000_000_000i64),
        ] {
            let e = max_time(&doc! {"find": "c", "maxTimeMS": bad}).unwrap_err();
            assert_eq!(e.code, 2, "{e}");
        }
    }
}
