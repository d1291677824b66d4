//! Date expressions over a proleptic Gregorian calendar in UTC or a fixed offset
//! (`"+hh:mm"`, `"-hhmm"`, `"+hh"`, `"UTC"`, `"GMT"`, `"Z"`). Olson time zone names other than
//! UTC aliases are rejected.

use bson::{Bson, DateTime, Document};
use errors::Result;

use super::convert::conversion_error;
use super::ops::{as_int, eval_named};
use super::{Args, Ctx, err, num, type_name};

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Broken-down local time.
#[derive(Debug, Clone, Copy)]
struct Parts {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    ms: i64,
    /// 0 = Sunday.
    wday: i64,
    /// 1-based.
    yday: i64,
}

fn parts(local_ms: i64) -> Parts {
    let days = local_ms.div_euclid(MS_PER_DAY);
    let rem = local_ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    Parts {
        year,
        month,
        day,
        hour: rem / 3_600_000,
        minute: rem / 60_000 % 60,
        second: rem / 1000 % 60,
        ms: rem % 1000,
        wday: (days + 4).rem_euclid(7),
        yday: days - days_from_civil(year, 1, 1) + 1,
    }
}

fn iso_dow(p: &Parts) -> i64 {
    if p.wday == 0 { 7 } else { p.wday }
}

fn iso_weeks_in_year(y: i64) -> i64 {
    let p = |y: i64| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
    if p(y) == 4 || p(y - 1) == 3 { 53 } else { 52 }
}

/// (ISO week-numbering year, ISO week).
fn iso_week(p: &Parts) -> (i64, i64) {
    let w = (p.yday - iso_dow(p) + 10) / 7;
    if w < 1 {
        (p.year - 1, iso_weeks_in_year(p.year - 1))
    } else if w > iso_weeks_in_year(p.year) {
        (p.year + 1, 1)
    } else {
        (p.year, w)
    }
}

/// ISO-8601 UTC string with milliseconds, as MongoDB prints dates.
pub(crate) fn iso_string(ms: i64) -> String {
    format_date(ms, 0, "%Y-%m-%dT%H:%M:%S.%LZ").unwrap_or_default()
}

/// Parses a time zone into an offset in milliseconds.
fn parse_tz(v: &Option<Bson>) -> Result<Option<i64>> {
    let s = match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(0)),
        Some(Bson::String(s)) => s,
        Some(other) => {
            return Err(err(
                40517,
                format!(
                    "timezone must evaluate to a string, found {}",
                    type_name(Some(other))
                ),
            ));
        }
    };
    if matches!(
        s.as_str(),
        "UTC"
            | "GMT"
            | "Z"
            | "Etc/UTC"
            | "Etc/GMT"
            | "Etc/Zulu"
            | "Zulu"
            | "UCT"
            | "Etc/UCT"
            | "Universal"
    ) {
        return Ok(Some(0));
    }
    tz_offset(s)
        .map(Some)
        .ok_or_else(|| err(40485, format!("unrecognized time zone identifier: \"{s}\"")))
}

fn tz_offset(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        2 => (digits.parse::<i64>().ok()?, 0),
        4 => (
            digits[..2].parse::<i64>().ok()?,
            digits[2..].parse::<i64>().ok()?,
        ),
        _ => return None,
    };
    if rest.contains(':') && rest.len() != 5 {
        return None;
    }
    Some(sign * (h * 3_600_000 + m * 60_000))
}

/// Coerces a value to epoch milliseconds (dates, timestamps, ObjectIds).
fn date_ms(op: &str, v: &Bson) -> Result<i64> {
    match v {
        Bson::DateTime(d) => Ok(d.timestamp_millis()),
        Bson::Timestamp(t) => Ok(i64::from(t.time) * 1000),
        Bson::ObjectId(o) => Ok(o.timestamp().timestamp_millis()),
        other => Err(err(
            16006,
            format!(
                "{op}: can't convert from BSON type {} to Date",
                type_name(Some(other))
            ),
        )),
    }
}

fn nullish(v: &Option<Bson>) -> bool {
    matches!(v, None | Some(Bson::Null) | Some(Bson::Undefined))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn format_date(ms: i64, offset: i64, fmt: &str) -> Result<String> {
    let p = parts(ms + offset);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            return Err(err(18535, "Unmatched '%' at end of format string"));
        };
        match spec {
            'Y' => out.push_str(&format!("{:04}", p.year)),
            'm' => out.push_str(&format!("{:02}", p.month)),
            'd' => out.push_str(&format!("{:02}", p.day)),
            'H' => out.push_str(&format!("{:02}", p.hour)),
            'M' => out.push_str(&format!("{:02}", p.minute)),
            'S' => out.push_str(&format!("{:02}", p.second)),
            'L' => out.push_str(&format!("{:03}", p.ms)),
            'j' => out.push_str(&format!("{:03}", p.yday)),
            'w' => out.push_str(&(p.wday + 1).to_string()),
            'u' => out.push_str(&iso_dow(&p).to_string()),
            'U' => out.push_str(&format!("{:02}", (p.yday - 1 + 7 - p.wday) / 7)),
            'V' => out.push_str(&format!("{:02}", iso_week(&p).1)),
            'G' => out.push_str(&format!("{:04}", iso_week(&p).0)),
            'z' => {
                let sign = if offset < 0 { '-' } else { '+' };
                let a = offset.abs() / 60_000;
                out.push_str(&format!("{sign}{:02}{:02}", a / 60, a % 60));
            }
            'Z' => {
                let m = offset / 60_000;
                out.push_str(&format!("{}{}", if m < 0 { "-" } else { "+" }, m.abs()));
            }
            'b' => out.push_str(&MONTHS[(p.month - 1) as usize][..3]),
            'B' => out.push_str(MONTHS[(p.month - 1) as usize]),
            '%' => out.push('%'),
            other => {
                return Err(err(
                    18536,
                    format!("Invalid format character '%{other}' in format string"),
                ));
            }
        }
    }
    Ok(out)
}

fn parse_error(s: &str, why: &str) -> errors::MongoError {
    conversion_error(format!("Error parsing date string '{s}'; {why}"))
}

/// Parses a date string, optionally with a `$dateFromString` format; returns epoch millis
/// (UTC unless the string carries an offset, in which case `default_offset` is ignored).
pub(crate) fn parse_date_string(s: &str, format: Option<&str>) -> Result<i64> {
    parse_with_offset(s, format, 0)
}

fn parse_with_offset(s: &str, format: Option<&str>, default_offset: i64) -> Result<i64> {
    let fmt = match format {
        Some(f) => f.to_string(),
        None => return parse_iso(s, default_offset),
    };
    let b = s.as_bytes();
    let mut i = 0;
    let (mut y, mut mo, mut d, mut h, mut mi, mut sec, mut ms) = (1970, 1, 1, 0, 0, 0, 0);
    let mut offset = None;
    let mut iso: (Option<i64>, Option<i64>, Option<i64>) = (None, None, None);
    let mut fc = fmt.chars().peekable();
    let num = |i: &mut usize, max: usize| -> Result<i64> {
        let start = *i;
        let neg = b.get(*i) == Some(&b'-');
        if neg {
            *i += 1;
        }
        while *i < b.len() && *i - start < max && b[*i].is_ascii_digit() {
            *i += 1;
        }
        std::str::from_utf8(&b[start..*i])
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| parse_error(s, "expected a number"))
    };
    while let Some(c) = fc.next() {
        if c != '%' {
            if b.get(i) != Some(&(c as u8)) {
                return Err(parse_error(s, "format does not match"));
            }
            i += c.len_utf8();
            continue;
        }
        match fc.next() {
            Some('Y') => y = num(&mut i, 4)?,
            Some('m') => mo = num(&mut i, 2)?,
            Some('d') => d = num(&mut i, 2)?,
            Some('H') => h = num(&mut i, 2)?,
            Some('M') => mi = num(&mut i, 2)?,
            Some('S') => sec = num(&mut i, 2)?,
            Some('L') => {
                let start = i;
                let v = num(&mut i, 9)?;
                let digits = (i - start) as u32;
                ms = if digits <= 3 {
                    v * 10i64.pow(3 - digits)
                } else {
                    v / 10i64.pow(digits - 3)
                };
            }
            Some('j') => {
                let doy = num(&mut i, 3)?;
                let (yy, mm, dd) = civil_from_days(days_from_civil(y, 1, 1) + doy - 1);
                (y, mo, d) = (yy, mm, dd);
            }
            Some('G') => iso.0 = Some(num(&mut i, 4)?),
            Some('V') => iso.1 = Some(num(&mut i, 2)?),
            Some('u') => iso.2 = Some(num(&mut i, 1)?),
            Some('z') | Some('Z') => {
                let rest = &s[i.min(s.len())..];
                let len = rest
                    .char_indices()
                    .find(|(j, ch)| *j > 0 && !(ch.is_ascii_digit() || *ch == ':'))
                    .map_or(rest.len(), |(j, _)| j);
                if rest.starts_with('Z') {
                    offset = Some(0);
                    i += 1;
                } else {
                    offset =
                        Some(tz_offset(&rest[..len]).ok_or_else(|| parse_error(s, "bad offset"))?);
                    i += len;
                }
            }
            Some('%') => {
                if b.get(i) != Some(&b'%') {
                    return Err(parse_error(s, "format does not match"));
                }
                i += 1;
            }
            Some(other) => {
                return Err(err(
                    18536,
                    format!("Invalid format character '%{other}' in format string"),
                ));
            }
            None => return Err(err(18535, "Unmatched '%' at end of format string")),
        }
    }
    if i != b.len() {
        return Err(parse_error(s, "trailing data"));
    }
    if let (Some(gy), Some(w)) = (iso.0, iso.1) {
        let day = iso_to_days(gy, w, iso.2.unwrap_or(1));
        let (yy, mm, dd) = civil_from_days(day);
        (y, mo, d) = (yy, mm, dd);
    }
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59
    {
        return Err(parse_error(s, "invalid date"));
    }
    let local =
        days_from_civil(y, mo, d) * MS_PER_DAY + h * 3_600_000 + mi * 60_000 + sec * 1000 + ms;
    Ok(local - offset.unwrap_or(default_offset))
}

fn iso_to_days(year: i64, week: i64, dow: i64) -> i64 {
    let jan4 = days_from_civil(year, 1, 4);
    let jan4_dow = (jan4 + 3).rem_euclid(7) + 1;
    jan4 - (jan4_dow - 1) + (week - 1) * 7 + (dow - 1)
}

fn parse_iso(s: &str, default_offset: i64) -> Result<i64> {
    let t = s.trim();
    let (date, time) = match t.find(['T', 't', ' ']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mut formats = vec![];
    let date_fmt = if date.contains('-') {
        "%Y-%m-%d"
    } else if date.contains('/') {
        "%Y/%m/%d"
    } else {
        "%Y%m%d"
    };
    let Some(time) = time else {
        return parse_with_offset(t, Some(date_fmt), default_offset);
    };
    let (clock, zone) = match time.find(['Z', 'z', '+', '-']) {
        Some(i) => (&time[..i], &time[i..]),
        None => (time, ""),
    };
    let offset = match zone {
        "" => default_offset,
        "Z" | "z" => 0,
        z => tz_offset(z).ok_or_else(|| parse_error(s, "bad offset"))?,
    };
    for f in ["%H:%M:%S.%L", "%H:%M:%S", "%H:%M", "%H%M%S"] {
        formats.push(f);
    }
    let sep = &t[date.len()..date.len() + 1];
    for f in formats {
        let full = format!("{date_fmt}{sep}{f}");
        let joined = format!("{date}{sep}{clock}");
        if let Ok(ms) = parse_with_offset(&joined, Some(&full), 0) {
            return Ok(ms - offset);
        }
    }
    Err(parse_error(s, "not a recognised date format"))
}

pub(crate) fn unit_ms(unit: &str) -> Option<i64> {
    Some(match unit {
        "week" => 7 * MS_PER_DAY,
        "day" => MS_PER_DAY,
        "hour" => 3_600_000,
        "minute" => 60_000,
        "second" => 1000,
        "millisecond" => 1,
        _ => return None,
    })
}

fn parse_unit(op: &str, v: &Option<Bson>) -> Result<String> {
    match v {
        Some(Bson::String(u))
            if matches!(
                u.as_str(),
                "year"
                    | "quarter"
                    | "month"
                    | "week"
                    | "day"
                    | "hour"
                    | "minute"
                    | "second"
                    | "millisecond"
            ) =>
        {
            Ok(u.clone())
        }
        Some(Bson::String(u)) => Err(err(
            5439014,
            format!("{op} parameter 'unit' value cannot be recognized as a time unit: {u}"),
        )),
        other => Err(err(
            5439013,
            format!(
                "{op} requires 'unit' to be a string, but got {}",
                type_name(other.as_ref())
            ),
        )),
    }
}

fn parse_start_of_week(v: &Option<Bson>) -> Result<i64> {
    let s = match v {
        None => return Ok(0),
        Some(Bson::String(s)) => s.to_ascii_lowercase(),
        Some(other) => {
            return Err(err(
                5439015,
                format!(
                    "startOfWeek must be a string, got {}",
                    type_name(Some(other))
                ),
            ));
        }
    };
    let days = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    let abbr = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    days.iter()
        .position(|d| *d == s)
        .or_else(|| abbr.iter().position(|d| *d == s))
        .map(|i| i as i64)
        .ok_or_else(|| err(5439016, format!("unknown startOfWeek: {s}")))
}

/// `ms` plus `amount` of `unit` in UTC, as `$dateAdd` computes it (calendar units clamp
/// the day to the month's last); `None` on overflow or an unknown unit. Window ranges and
/// `$densify` step dates with it.
pub(crate) fn add_units(ms: i64, unit: &str, amount: i64) -> Option<i64> {
    match unit {
        "year" => add_months(ms, amount.checked_mul(12)?),
        "quarter" => add_months(ms, amount.checked_mul(3)?),
        "month" => add_months(ms, amount),
        u => ms.checked_add(amount.checked_mul(unit_ms(u)?)?),
    }
}

fn add_months(local: i64, months: i64) -> Option<i64> {
    let p = parts(local);
    let total = p
        .year
        .checked_mul(12)?
        .checked_add(p.month - 1)?
        .checked_add(months)?;
    let (y, m) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let d = p.day.min(days_in_month(y, m));
    let tod = local.rem_euclid(MS_PER_DAY);
    days_from_civil(y, m, d)
        .checked_mul(MS_PER_DAY)?
        .checked_add(tod)
}

fn trunc_local(local: i64, unit: &str, bin: i64, sow: i64) -> i64 {
    let p = parts(local);
    match unit {
        "year" | "quarter" | "month" => {
            let per = match unit {
                "year" => 12,
                "quarter" => 3,
                _ => 1,
            } * bin;
            let months = (p.year - 2000) * 12 + p.month - 1;
            let start = months.div_euclid(per) * per;
            let (y, m) = (2000 + start.div_euclid(12), start.rem_euclid(12) + 1);
            days_from_civil(y, m, 1) * MS_PER_DAY
        }
        "week" => {
            // The first `sow` day on or after 2000-01-01 (a Saturday, weekday 6).
            let ref_day = days_from_civil(2000, 1, 1) + (sow - 6).rem_euclid(7);
            let days = local.div_euclid(MS_PER_DAY) - ref_day;
            (ref_day + days.div_euclid(7 * bin) * 7 * bin) * MS_PER_DAY
        }
        _ => {
            let size = unit_ms(unit).unwrap_or(1) * bin;
            let reference = days_from_civil(2000, 1, 1) * MS_PER_DAY;
            reference + (local - reference).div_euclid(size) * size
        }
    }
}

fn diff(start: i64, end: i64, unit: &str, sow: i64) -> i64 {
    let (a, b) = (parts(start), parts(end));
    match unit {
        "year" => b.year - a.year,
        "quarter" => (b.year * 4 + (b.month - 1) / 3) - (a.year * 4 + (a.month - 1) / 3),
        "month" => (b.year * 12 + b.month) - (a.year * 12 + a.month),
        "week" => {
            let wk = |ms: i64| (ms.div_euclid(MS_PER_DAY) + 4 - sow).div_euclid(7);
            wk(end) - wk(start)
        }
        _ => {
            let size = unit_ms(unit).unwrap_or(1);
            end.div_euclid(size) - start.div_euclid(size)
        }
    }
}

fn date_or_null(op: &str, v: Option<Bson>) -> Result<Option<i64>> {
    if nullish(&v) {
        return Ok(None);
    }
    date_ms(op, &v.unwrap_or(Bson::Null)).map(Some)
}

/// Date operators with named arguments.
pub(crate) fn eval(name: &str, args: &Args, cx: &Ctx<'_>) -> Result<Option<Bson>> {
    let tz = |cx: &Ctx<'_>| -> Result<Option<i64>> { parse_tz(&eval_named(args, "timezone", cx)?) };
    match name {
        "$dateToString" => {
            let date = eval_named(args, "date", cx)?;
            if nullish(&date) {
                return match args.get("onNull") {
                    Some(n) => n.eval(cx),
                    None => Ok(Some(Bson::Null)),
                };
            }
            let fmt = match eval_named(args, "format", cx)? {
                None if args.get("format").is_none() => "%Y-%m-%dT%H:%M:%S.%LZ".to_string(),
                Some(Bson::String(f)) => f,
                None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
                Some(other) => {
                    return Err(err(
                        18533,
                        format!(
                            "$dateToString requires that 'format' be a string, found: {} with value {other}",
                            type_name(Some(&other))
                        ),
                    ));
                }
            };
            let Some(off) = tz(cx)? else {
                return Ok(Some(Bson::Null));
            };
            let ms = date_ms(name, &date.unwrap_or(Bson::Null))?;
            Ok(Some(Bson::String(format_date(ms, off, &fmt)?)))
        }
        "$dateFromString" => {
            let s = eval_named(args, "dateString", cx)?;
            let s = match s {
                Some(Bson::String(s)) => s,
                None | Some(Bson::Null) | Some(Bson::Undefined) => {
                    return match args.get("onNull") {
                        Some(n) => n.eval(cx),
                        None => Ok(Some(Bson::Null)),
                    };
                }
                Some(other) => {
                    let e = conversion_error(format!(
                        "$dateFromString requires that 'dateString' be a string, found: {} with value {other}",
                        type_name(Some(&other))
                    ));
                    return match args.get("onError") {
                        Some(n) => n.eval(cx),
                        None => Err(e),
                    };
                }
            };
            let fmt = match eval_named(args, "format", cx)? {
                Some(Bson::String(f)) => Some(f),
                None => None,
                Some(Bson::Null) => return Ok(Some(Bson::Null)),
                Some(other) => {
                    return Err(err(
                        40684,
                        format!(
                            "$dateFromString requires that 'format' be a string, found: {} with value {other}",
                            type_name(Some(&other))
                        ),
                    ));
                }
            };
            let Some(off) = tz(cx)? else {
                return Ok(Some(Bson::Null));
            };
            match parse_with_offset(&s, fmt.as_deref(), off) {
                Ok(ms) => Ok(Some(Bson::DateTime(DateTime::from_millis(ms)))),
                Err(e) => match args.get("onError") {
                    Some(n) if e.code == 241 => n.eval(cx),
                    _ => Err(e),
                },
            }
        }
        "$dateTrunc" => {
            let Some(ms) = date_or_null(name, eval_named(args, "date", cx)?)? else {
                return Ok(Some(Bson::Null));
            };
            let unit = eval_named(args, "unit", cx)?;
            if nullish(&unit) {
                return Ok(Some(Bson::Null));
            }
            let unit = parse_unit(name, &unit)?;
            let bin = match eval_named(args, "binSize", cx)? {
                None => 1,
                Some(Bson::Null) => return Ok(Some(Bson::Null)),
                Some(b) => match as_int(&b) {
                    Some(n) if n > 0 => n,
                    _ => {
                        return Err(err(
                            5439017,
                            format!(
                                "$dateTrunc requires 'binSize' to be a 64-bit integer greater than 0, but got value '{b}'"
                            ),
                        ));
                    }
                },
            };
            let sow = parse_start_of_week(&eval_named(args, "startOfWeek", cx)?)?;
            let Some(off) = tz(cx)? else {
                return Ok(Some(Bson::Null));
            };
            let local = trunc_local(ms + off, &unit, bin, sow);
            Ok(Some(Bson::DateTime(DateTime::from_millis(local - off))))
        }
        "$dateAdd" | "$dateSubtract" => {
            let Some(ms) = date_or_null(name, eval_named(args, "startDate", cx)?)? else {
                return Ok(Some(Bson::Null));
            };
            let unit = eval_named(args, "unit", cx)?;
            let amount = eval_named(args, "amount", cx)?;
            if nullish(&unit) || nullish(&amount) {
                return Ok(Some(Bson::Null));
            }
            let unit = parse_unit(name, &unit)?;
            let amount = amount.as_ref().and_then(as_int).ok_or_else(|| {
                err(
                    5166403,
                    format!(
                        "{name} requires 'amount' to be an integer, but got {}",
                        type_name(amount.as_ref())
                    ),
                )
            })?;
            let amount = if name == "$dateSubtract" {
                -amount
            } else {
                amount
            };
            let Some(off) = tz(cx)? else {
                return Ok(Some(Bson::Null));
            };
            let overflow = || err(5166406, format!("{name} overflowed"));
            let out = match unit.as_str() {
                "year" | "quarter" | "month" => {
                    let months = amount
                        .checked_mul(match unit.as_str() {
                            "year" => 12,
                            "quarter" => 3,
                            _ => 1,
                        })
                        .ok_or_else(overflow)?;
                    add_months(ms + off, months).ok_or_else(overflow)? - off
                }
                u => amount
                    .checked_mul(unit_ms(u).unwrap_or(1))
                    .and_then(|d| ms.checked_add(d))
                    .ok_or_else(overflow)?,
            };
            Ok(Some(Bson::DateTime(DateTime::from_millis(out))))
        }
        "$dateDiff" => {
            let s = date_or_null(name, eval_named(args, "startDate", cx)?)?;
            let e = date_or_null(name, eval_named(args, "endDate", cx)?)?;
            let unit = eval_named(args, "unit", cx)?;
            let (Some(s), Some(e)) = (s, e) else {
                return Ok(Some(Bson::Null));
            };
            if nullish(&unit) {
                return Ok(Some(Bson::Null));
            }
            let unit = parse_unit(name, &unit)?;
            let sow = parse_start_of_week(&eval_named(args, "startOfWeek", cx)?)?;
            let Some(off) = tz(cx)? else {
                return Ok(Some(Bson::Null));
            };
            Ok(Some(Bson::Int64(diff(s + off, e + off, &unit, sow))))
        }
        "$dateToParts" => {
            let Some(ms) = date_or_null(name, eval_named(args, "date", cx)?)? else {
                return Ok(Some(Bson::Null));
            };
            let Some(off) = tz(cx)? else {
                return Ok(Some(Bson::Null));
            };
            let iso = eval_named(args, "iso8601", cx)?;
            let iso = match iso {
                None | Some(Bson::Null) => false,
                Some(Bson::Boolean(b)) => b,
                Some(other) => {
                    return Err(err(
                        40521,
                        format!(
                            "iso8601 must evaluate to a bool, found {}",
                            type_name(Some(&other))
                        ),
                    ));
                }
            };
            let p = parts(ms + off);
            let mut d = Document::new();
            let i = |v: i64| Bson::Int32(v as i32);
            if iso {
                let (wy, w) = iso_week(&p);
                d.insert("isoWeekYear", i(wy));
                d.insert("isoWeek", i(w));
                d.insert("isoDayOfWeek", i(iso_dow(&p)));
            } else {
                d.insert("year", i(p.year));
                d.insert("month", i(p.month));
                d.insert("day", i(p.day));
            }
            d.insert("hour", i(p.hour));
            d.insert("minute", i(p.minute));
            d.insert("second", i(p.second));
            d.insert("millisecond", i(p.ms));
            Ok(Some(Bson::Document(d)))
        }
        "$dateFromParts" => {
            let has = |k: &str| args.get(k).is_some();
            let iso = has("isoWeekYear");
            if iso && (has("year") || has("month") || has("day")) {
                return Err(err(
                    40489,
                    "$dateFromParts does not allow mixing natural dates with ISO dates",
                ));
            }
            if !iso && !has("year") {
                return Err(err(
                    40516,
                    "$dateFromParts requires either 'year' or 'isoWeekYear' to be present",
                ));
            }
            let get = |k: &str, default: i64, lo: i64, hi: i64| -> Result<Option<i64>> {
                match eval_named(args, k, cx)? {
                    None if args.get(k).is_none() => Ok(Some(default)),
                    None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(None),
                    Some(v) => {
                        let n = as_int(&v).ok_or_else(|| {
                            err(
                                40515,
                                format!(
                                    "'{k}' must evaluate to an integer, found {} with value {v}",
                                    type_name(Some(&v))
                                ),
                            )
                        })?;
                        if n < lo || n > hi {
                            return Err(err(
                                31034,
                                format!(
                                    "'{k}' must evaluate to a value in the range [{lo}, {hi}]; value {n} is not in range"
                                ),
                            ));
                        }
                        Ok(Some(n))
                    }
                }
            };
            let r = -32768;
            let rh = 32767;
            let vals = if iso {
                [
                    get("isoWeekYear", 1970, 1, 9999)?,
                    get("isoWeek", 1, r, rh)?,
                    get("isoDayOfWeek", 1, r, rh)?,
                ]
            } else {
                [
                    get("year", 1970, 1, 9999)?,
                    get("month", 1, r, rh)?,
                    get("day", 1, r, rh)?,
                ]
            };
            let time = [
                get("hour", 0, r, rh)?,
                get("minute", 0, r, rh)?,
                get("second", 0, r, rh)?,
                get("millisecond", 0, r, rh)?,
            ];
            let (Some(a), Some(b), Some(c)) = (vals[0], vals[1], vals[2]) else {
                return Ok(Some(Bson::Null));
            };
            let [Some(h), Some(mi), Some(s), Some(ms)] = time else {
                return Ok(Some(Bson::Null));
            };
            let Some(off) = tz(cx)? else {
                return Ok(Some(Bson::Null));
            };
            let days = if iso {
                iso_to_days(a, b, c)
            } else {
                let months = a * 12 + (b - 1);
                days_from_civil(months.div_euclid(12), months.rem_euclid(12) + 1, 1) + c - 1
            };
            let local = days * MS_PER_DAY + h * 3_600_000 + mi * 60_000 + s * 1000 + ms;
            Ok(Some(Bson::DateTime(DateTime::from_millis(local - off))))
        }
        _ => {
            // Date part extractors in their `{date, timezone}` form.
            let date = eval_named(args, "date", cx)?;
            let Some(ms) = date_or_null(name, date)? else {
                return Ok(Some(Bson::Null));
            };
            let Some(off) = tz(cx)? else {
                return Ok(Some(Bson::Null));
            };
            date_part(name, ms + off)
        }
    }
}

fn date_part(name: &str, local: i64) -> Result<Option<Bson>> {
    let p = parts(local);
    let v = match name {
        "$year" => p.year,
        "$month" => p.month,
        "$dayOfMonth" => p.day,
        "$dayOfWeek" => p.wday + 1,
        "$dayOfYear" => p.yday,
        "$hour" => p.hour,
        "$minute" => p.minute,
        "$second" => p.second,
        "$millisecond" => p.ms,
        "$week" => (p.yday - 1 + 7 - p.wday) / 7,
        "$isoWeek" => iso_week(&p).1,
        "$isoWeekYear" => return Ok(Some(Bson::Int64(iso_week(&p).0))),
        "$isoDayOfWeek" => iso_dow(&p),
        _ => return Err(super::invalid_op(name)),
    };
    Ok(Some(num::narrow(v)))
}

/// Date part extractors given a single date argument.
pub(crate) fn eval_values(name: &str, mut vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let v = vals.pop().flatten();
    let Some(ms) = date_or_null(name, v)? else {
        return Ok(Some(Bson::Null));
    };
    date_part(name, ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for d in [-800_000, -1, 0, 1, 11_016, 20_000, 2_932_896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn iso_weeks() {
        // 2021-01-01 is a Friday in ISO week 53 of 2020.
        let p = parts(days_from_civil(2021, 1, 1) * MS_PER_DAY);
        assert_eq!(iso_week(&p), (2020, 53));
        let p = parts(days_from_civil(2024, 12, 30) * MS_PER_DAY);
        assert_eq!(iso_week(&p), (2025, 1));
    }

    #[test]
    fn parse_and_format() {
        let ms = parse_date_string("2017-02-08T12:10:40.787Z", None).unwrap();
        assert_eq!(iso_string(ms), "2017-02-08T12:10:40.787Z");
        let ms2 = parse_date_string("2017-02-08T12:10:40.787+01:00", None).unwrap();
        assert_eq!(ms - ms2, 3_600_000);
        assert_eq!(
            iso_string(parse_date_string("2017-02-08", None).unwrap()),
            "2017-02-08T00:00:00.000Z"
        );
        assert!(parse_date_string("2017-02-30", None).is_err());
        assert!(parse_date_string("garbage", None).is_err());
        let ms = parse_date_string("15/06/2020", Some("%d/%m/%Y")).unwrap();
        assert_eq!(
            format_date(ms, 0, "%Y %j %U %V %u %w %b %B %%").unwrap(),
            "2020 167 24 25 1 2 Jun June %"
        );
        assert_eq!(
            format_date(0, 5_400_000, "%H:%M %z %Z").unwrap(),
            "01:30 +0130 +90"
        );
    }

    #[test]
    fn months_clamp() {
        let jan31 = days_from_civil(2021, 1, 31) * MS_PER_DAY;
        assert_eq!(
            iso_string(add_months(jan31, 1).unwrap()),
            "2021-02-28T00:00:00.000Z"
        );
        let d = days_from_civil(2021, 3, 15) * MS_PER_DAY + 5000;
        assert_eq!(
            iso_string(trunc_local(d, "quarter", 1, 0)),
            "2021-01-01T00:00:00.000Z"
        );
        assert_eq!(
            iso_string(trunc_local(d, "week", 1, 0)),
            "2021-03-14T00:00:00.000Z"
        );
        assert_eq!(
            iso_string(trunc_local(d, "week", 1, 1)),
            "2021-03-15T00:00:00.000Z"
        );
        assert_eq!(diff(jan31, d, "month", 0), 2);
    }
}
