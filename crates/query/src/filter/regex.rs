//! Regular expressions with MongoDB's options (`i`, `m`, `s`, `x`), compiled with
//! fancy-regex so that PCRE features such as lookarounds and backreferences work.

use std::fmt;

use bson::Bson;
use errors::{MongoError, Result};

/// A compiled regular expression together with its source pattern and options.
#[derive(Clone)]
pub struct Rx {
    /// The pattern as given.
    pub pattern: String,
    /// The options as given (normalised to sorted, deduplicated flags).
    pub options: String,
    re: fancy_regex::Regex,
}

impl fmt::Debug for Rx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/{}", self.pattern, self.options)
    }
}

impl Rx {
    /// Compiles `pattern` with MongoDB regex `options`.
    pub fn new(pattern: &str, options: &str) -> Result<Rx> {
        let mut flags = String::new();
        for c in options.chars() {
            match c {
                'i' | 'm' | 's' | 'x' => {
                    if !flags.contains(c) {
                        flags.push(c);
                    }
                }
                'u' => {}
                other => {
                    return Err(MongoError::with_code(
                        51108,
                        format!("invalid flag in regex options: {other}"),
                    ));
                }
            }
        }
        if pattern.contains('\0') {
            return Err(MongoError::bad_value(
                "Regular expression cannot contain an embedded null byte",
            ));
        }
        let src = if flags.is_empty() {
            pattern.to_string()
        } else {
            format!("(?{flags}){pattern}")
        };
        let re = fancy_regex::RegexBuilder::new(&src).build().map_err(|e| {
            MongoError::with_code(51091, format!("Regular expression is invalid: {e}"))
        })?;
        let mut sorted: Vec<char> = flags.chars().collect();
        sorted.sort_unstable();
        Ok(Rx {
            pattern: pattern.to_string(),
            options: sorted.into_iter().collect(),
            re,
        })
    }

    /// The compiled regex.
    pub fn regex(&self) -> &fancy_regex::Regex {
        &self.re
    }

    /// Whether the regex matches somewhere in `s` (a backtracking failure counts as no match).
    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s).unwrap_or(false)
    }

    /// Query semantics: strings and symbols are searched; a stored regex equal to this one
    /// also matches.
    pub fn matches_value(&self, v: &Bson) -> bool {
        match v {
            Bson::String(s) | Bson::Symbol(s) => self.is_match(s),
            Bson::RegularExpression(r) => {
                r.pattern == self.pattern && sorted_opts(&r.options) == self.options
            }
            _ => false,
        }
    }
}

fn sorted_opts(o: &str) -> String {
    let mut v: Vec<char> = o.chars().collect();
    v.sort_unstable();
    v.dedup();
    v.into_iter().collect()
}
