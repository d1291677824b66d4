//! Collations: locale-aware string comparison through ICU4X's `icu_collator`.
//!
//! A collation document (`{locale: "en", strength: 2, ...}`) is parsed with MongoDB's
//! rules and error codes into a [`Collation`], which compares strings and writes sort keys
//! (bytes whose `memcmp` order is the collation order; equal keys mean equal strings at the
//! collation's strength). "No collation" is `None` everywhere, never a `Collation`: that path
//! keeps the plain binary comparison.
//!
//! Collators are cached by their expanded spec, so parsing the same collation again (each
//! index write, each operation) costs a lookup, not a collator construction.
//!
//! Limitations (ICU4X has no API for them): `backwards: true` is only available where the
//! locale implies it (`fr_CA`), and `backwards: false` is refused there; `normalization` is
//! accepted and reported, but ICU4X always normalizes (the result equals
//! `normalization: true`, which for text already in FCD form is also MongoDB's default
//! result).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};
use icu_collator::options::{AlternateHandling, CaseLevel, CollatorOptions, MaxVariable, Strength};
use icu_collator::preferences::{CollationCaseFirst, CollationNumericOrdering};
use icu_collator::{CollatorBorrowed, CollatorPreferences};
use icu_locale_core::Locale;

/// The ICU version MongoDB 8.0 reports in an expanded collation.
const ICU_VERSION: &str = "57.1";

/// The locales MongoDB accepts (ICU locale IDs), from its "Collation Locales and Default
/// Parameters" page.
const LOCALES: &[&str] = &[
    "af",
    "sq",
    "am",
    "ar",
    "hy",
    "as",
    "az",
    "bn",
    "be",
    "bs",
    "bs_Cyrl",
    "bg",
    "my",
    "ca",
    "chr",
    "zh",
    "zh_Hant",
    "hr",
    "cs",
    "da",
    "nl",
    "dz",
    "en",
    "en_US",
    "en_US_POSIX",
    "eo",
    "et",
    "ee",
    "fo",
    "fil",
    "fi",
    "fi_FI",
    "fr",
    "fr_CA",
    "gl",
    "ka",
    "de",
    "de_AT",
    "el",
    "gu",
    "ha",
    "haw",
    "he",
    "hi",
    "hu",
    "is",
    "ig",
    "smn",
    "id",
    "ga",
    "it",
    "ja",
    "kl",
    "kn",
    "kk",
    "km",
    "kok",
    "ko",
    "ky",
    "lk",
    "lo",
    "lv",
    "li",
    "lt",
    "dsb",
    "lb",
    "mk",
    "ms",
    "ml",
    "mt",
    "mr",
    "mn",
    "ne",
    "se",
    "nb",
    "nn",
    "or",
    "om",
    "ps",
    "fa",
    "fa_AF",
    "pl",
    "pt",
    "pa",
    "ro",
    "ru",
    "sr",
    "sr_Latn",
    "si",
    "sk",
    "sl",
    "es",
    "sv",
    "ta",
    "te",
    "th",
    "bo",
    "to",
    "tr",
    "uk",
    "hsb",
    "ur",
    "ug",
    "vi",
    "wae",
    "cy",
    "yi",
    "yo",
    "zu",
];

/// `@collation=` variants MongoDB accepts, with their BCP 47 `-u-co-` names.
const VARIANTS: &[(&str, &str)] = &[
    ("search", "search"),
    ("phonebook", "phonebk"),
    ("eor", "eor"),
    ("compat", "compat"),
    ("traditional", "trad"),
    ("standard", "standard"),
    ("big5han", "big5han"),
    ("gb2312han", "gb2312"),
    ("unihan", "unihan"),
    ("zhuyin", "zhuyin"),
    ("pinyin", "pinyin"),
    ("stroke", "stroke"),
    ("dictionary", "dict"),
    ("reformed", "reformed"),
];

/// The fields of a collation document, in the order MongoDB reports them.
const FIELDS: &[&str] = &[
    "locale",
    "caseLevel",
    "caseFirst",
    "strength",
    "numericOrdering",
    "alternate",
    "maxVariable",
    "normalization",
    "backwards",
    "version",
];

/// A non-simple collation: its expanded spec and the ICU4X collator built from it.
pub struct Collation {
    spec: Document,
    collator: CollatorBorrowed<'static>,
}

impl std::fmt::Debug for Collation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Collation({})", self.spec)
    }
}

impl PartialEq for Collation {
    fn eq(&self, other: &Collation) -> bool {
        self.spec == other.spec
    }
}

impl Collation {
    /// Parses a collation document. `Ok(None)` is the simple (binary) collation: an empty
    /// document or `locale: "simple"`.
    ///
    /// # Errors
    /// MongoDB's: 40414 without a locale, 40415 for an unknown field, TypeMismatch for a
    /// field of the wrong type, BadValue for a bad value or an unknown locale.
    pub fn parse(spec: &Document) -> Result<Option<Arc<Collation>>> {
        if spec.is_empty() {
            return Ok(None);
        }
        // Keyed by the spec as given: a hit skips validation and collator construction.
        let key = spec.to_string();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(c) = cache.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(c));
        }
        let opts = Options::parse(spec)?;
        if opts.locale == "simple" {
            return Ok(None);
        }
        let collator = opts.collator(spec)?;
        let c = Arc::new(Collation {
            spec: opts.expand(&collator),
            collator,
        });
        if let Ok(mut m) = cache.lock() {
            if m.len() >= MAX_CACHED {
                m.clear();
            }
            m.insert(key, c.clone());
        }
        Ok(Some(c))
    }

    /// Parses the `collation` option of a command or spec, if any (`None` when absent or
    /// simple).
    ///
    /// # Errors
    /// TypeMismatch if it is not a document, and [`Collation::parse`]'s errors.
    pub fn from_option(v: Option<&Bson>) -> Result<Option<Arc<Collation>>> {
        match v {
            None => Ok(None),
            Some(Bson::Document(d)) => Collation::parse(d),
            Some(other) => Err(MongoError::new(
                ErrorCode::TypeMismatch,
                format!(
                    "BSON field 'collation' is the wrong type '{}', expected type 'object'",
                    crate::type_name(other)
                ),
            )),
        }
    }

    /// The fully expanded spec, as listIndexes and listCollections report it.
    pub fn spec(&self) -> &Document {
        &self.spec
    }

    /// The locale ID (`en_US`, `de@collation=phonebook`).
    pub fn locale(&self) -> &str {
        self.spec.get_str("locale").unwrap_or_default()
    }

    /// Compares two strings.
    pub fn compare(&self, a: &str, b: &str) -> Ordering {
        self.collator.compare(a, b)
    }

    /// Appends the sort key of `s`: byte order is collation order, and strings that compare
    /// equal have equal keys.
    pub fn write_sort_key(&self, s: &str, out: &mut Vec<u8>) {
        let Ok(()) = self.collator.write_sort_key_to(s, out);
    }

    /// The sort key of `s` (see [`Collation::write_sort_key`]).
    pub fn sort_key(&self, s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_sort_key(s, &mut out);
        out
    }
}

/// Whether two optional collations are the same (`None` is the simple collation).
pub fn same(a: Option<&Collation>, b: Option<&Collation>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Bound on cached collators; a client cycling through specs only costs rebuilds.
const MAX_CACHED: usize = 256;

static CACHE: OnceLock<Mutex<HashMap<String, Arc<Collation>>>> = OnceLock::new();

/// The options as given, checked for type and range (defaults filled in later, from the
/// locale).
struct Options {
    locale: String,
    case_level: Option<bool>,
    case_first: Option<CollationCaseFirst>,
    strength: Option<Strength>,
    numeric: Option<bool>,
    alternate: Option<AlternateHandling>,
    max_variable: Option<MaxVariable>,
    normalization: Option<bool>,
    backwards: Option<bool>,
}

fn wrong_type(field: &str, v: &Bson, expected: &str) -> MongoError {
    MongoError::new(
        ErrorCode::TypeMismatch,
        format!(
            "BSON field 'collation.{field}' is the wrong type '{}', expected {expected}",
            crate::type_name(v)
        ),
    )
}

fn bad_enum(field: &str, v: &str) -> MongoError {
    MongoError::bad_value(format!(
        "Enumeration value '{v}' for field 'collation.{field}' is not a valid value."
    ))
}

fn get_bool(field: &str, v: &Bson) -> Result<bool> {
    match v {
        Bson::Boolean(b) => Ok(*b),
        other => Err(wrong_type(field, other, "type 'bool'")),
    }
}

fn get_enum<'a>(field: &str, v: &'a Bson) -> Result<&'a str> {
    match v {
        Bson::String(s) => Ok(s),
        other => Err(wrong_type(field, other, "type 'string'")),
    }
}

impl Options {
    fn parse(spec: &Document) -> Result<Options> {
        let mut o = Options {
            locale: String::new(),
            case_level: None,
            case_first: None,
            strength: None,
            numeric: None,
            alternate: None,
            max_variable: None,
            normalization: None,
            backwards: None,
        };
        let mut locale = None;
        for (k, v) in spec {
            match k.as_str() {
                // An explicit null reads as missing, as in MongoDB.
                "locale" if matches!(v, Bson::Null) => {}
                "locale" => match v {
                    Bson::String(s) => locale = Some(s.clone()),
                    other => return Err(wrong_type("locale", other, "type 'string'")),
                },
                "caseLevel" => o.case_level = Some(get_bool(k, v)?),
                "caseFirst" => {
                    o.case_first = Some(match get_enum(k, v)? {
                        "upper" => CollationCaseFirst::Upper,
                        "lower" => CollationCaseFirst::Lower,
                        "off" => CollationCaseFirst::False,
                        s => return Err(bad_enum(k, s)),
                    });
                }
                "strength" => o.strength = Some(parse_strength(v)?),
                "numericOrdering" => o.numeric = Some(get_bool(k, v)?),
                "alternate" => {
                    o.alternate = Some(match get_enum(k, v)? {
                        "non-ignorable" => AlternateHandling::NonIgnorable,
                        "shifted" => AlternateHandling::Shifted,
                        s => return Err(bad_enum(k, s)),
                    });
                }
                "maxVariable" => {
                    o.max_variable = Some(match get_enum(k, v)? {
                        "punct" => MaxVariable::Punctuation,
                        "space" => MaxVariable::Space,
                        s => return Err(bad_enum(k, s)),
                    });
                }
                "normalization" => o.normalization = Some(get_bool(k, v)?),
                "backwards" => match v {
                    Bson::Boolean(b) => o.backwards = Some(*b),
                    other => {
                        return Err(MongoError::new(
                            ErrorCode::TypeMismatch,
                            format!(
                                "Field 'backwards' should be a boolean value, but found: {}",
                                crate::type_name(other)
                            ),
                        ));
                    }
                },
                // Reported by listIndexes and accepted back when an index spec is reused.
                "version" => {}
                _ => {
                    return Err(MongoError::with_code(
                        40415,
                        format!("BSON field 'collation.{k}' is an unknown field."),
                    ));
                }
            }
        }
        o.locale = locale.ok_or_else(|| {
            MongoError::with_code(
                40414,
                "BSON field 'collation.locale' is missing but a required field",
            )
        })?;
        Ok(o)
    }

    /// The ICU4X locale for a MongoDB locale ID, if the ID is one MongoDB accepts.
    fn icu_locale(&self) -> Option<Locale> {
        let (base, variant) = match self.locale.split_once("@collation=") {
            Some((b, v)) => (b, Some(v)),
            None => (self.locale.as_str(), None),
        };
        if !LOCALES.contains(&base) {
            return None;
        }
        let mut tag = match base {
            "en_US_POSIX" => "en-US-u-va-posix".to_string(),
            b => b.replace('_', "-"),
        };
        if let Some(v) = variant {
            let (_, bcp) = VARIANTS.iter().find(|(name, _)| *name == v)?;
            tag.push_str(if tag.contains("-u-") {
                "-co-"
            } else {
                "-u-co-"
            });
            tag.push_str(bcp);
        }
        Locale::try_from_str(&tag).ok()
    }

    fn invalid_locale(spec: &Document) -> MongoError {
        MongoError::bad_value(format!("Field 'locale' is invalid in: {}", shell_doc(spec)))
    }

    fn collator(&self, spec: &Document) -> Result<CollatorBorrowed<'static>> {
        let locale = self
            .icu_locale()
            .ok_or_else(|| Options::invalid_locale(spec))?;
        let mut prefs = CollatorPreferences::from(&locale);
        if let Some(cf) = self.case_first {
            prefs.case_first = Some(cf);
        }
        if let Some(n) = self.numeric {
            prefs.numeric_ordering = Some(if n {
                CollationNumericOrdering::True
            } else {
                CollationNumericOrdering::False
            });
        }
        let mut options = CollatorOptions::default();
        options.strength = self.strength;
        options.alternate_handling = self.alternate;
        options.max_variable = self.max_variable;
        options.case_level = self
            .case_level
            .map(|b| if b { CaseLevel::On } else { CaseLevel::Off });
        let c =
            CollatorBorrowed::try_new(prefs, options).map_err(|_| Options::invalid_locale(spec))?;
        let implied = locale_backwards(&self.locale);
        if self.backwards.is_some_and(|b| b != implied) {
            return Err(MongoError::bad_value(format!(
                "collation option backwards: {} is not supported for locale '{}'",
                !implied, self.locale
            )));
        }
        Ok(c)
    }

    /// The expanded spec MongoDB reports: every option, defaults resolved for the locale.
    fn expand(&self, c: &CollatorBorrowed<'static>) -> Document {
        let r = c.resolved_options();
        let strength = match r.strength {
            Strength::Primary => 1,
            Strength::Secondary => 2,
            Strength::Tertiary => 3,
            Strength::Quaternary => 4,
            _ => 5,
        };
        let case_first = match r.case_first {
            CollationCaseFirst::Upper => "upper",
            CollationCaseFirst::Lower => "lower",
            _ => "off",
        };
        let alternate = match r.alternate_handling {
            AlternateHandling::Shifted => "shifted",
            _ => "non-ignorable",
        };
        let max_variable = match r.max_variable {
            MaxVariable::Space => "space",
            _ => "punct",
        };
        let out = doc! {
            "locale": &self.locale,
            "caseLevel": r.case_level == CaseLevel::On,
            "caseFirst": case_first,
            "strength": strength,
            "numericOrdering": r.numeric == CollationNumericOrdering::True,
            "alternate": alternate,
            "maxVariable": max_variable,
            "normalization": self.normalization.unwrap_or(false),
            "backwards": self.backwards.unwrap_or_else(|| locale_backwards(&self.locale)),
            "version": ICU_VERSION,
        };
        debug_assert!(out.keys().zip(FIELDS).all(|(a, b)| a == b));
        out
    }
}

/// A document as MongoDB's error messages print it: `{ locale: "xx", strength: 2 }`.
fn shell_doc(d: &Document) -> String {
    if d.is_empty() {
        return "{}".into();
    }
    let fields: Vec<String> = d
        .iter()
        .map(|(k, v)| format!("{k}: {}", shell_value(v)))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

fn shell_value(v: &Bson) -> String {
    match v {
        Bson::String(s) => format!("{s:?}"),
        Bson::Document(d) => shell_doc(d),
        Bson::Array(a) => {
            let items: Vec<String> = a.iter().map(shell_value).collect();
            format!("[ {} ]", items.join(", "))
        }
        Bson::Int64(i) => i.to_string(),
        other => other.to_string(),
    }
}

/// Whether a locale compares accents from the end of the string (French as in Canada).
fn locale_backwards(locale: &str) -> bool {
    locale == "fr_CA" || locale.starts_with("fr_CA@")
}

fn parse_strength(v: &Bson) -> Result<Strength> {
    let n = match v {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        Bson::Double(_) | Bson::Decimal128(_) => {
            let f = crate::compare::as_f64(v).unwrap_or(f64::NAN);
            if !f.is_finite() {
                return Err(MongoError::bad_value(format!(
                    "BSON field 'strength' value must be >= 0, actual value '{f}'"
                )));
            }
            f.trunc() as i64
        }
        other => {
            return Err(wrong_type(
                "strength",
                other,
                "types '[double, decimal, long, int]'",
            ));
        }
    };
    match n {
        1 => Ok(Strength::Primary),
        2 => Ok(Strength::Secondary),
        3 => Ok(Strength::Tertiary),
        4 => Ok(Strength::Quaternary),
        5 => Ok(Strength::Identical),
        0 => Err(bad_enum("strength", "0")),
        n if n < 0 => Err(MongoError::bad_value(format!(
            "BSON field 'strength' value must be >= 0, actual value '{n}'"
        ))),
        n => Err(MongoError::bad_value(format!(
            "BSON field 'strength' value must be <= 5, actual value '{n}'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coll(spec: Document) -> Arc<Collation> {
        Collation::parse(&spec).unwrap().unwrap()
    }

    fn err(spec: Document) -> (i32, String) {
        let e = Collation::parse(&spec).unwrap_err();
        (e.code, e.message)
    }

    #[test]
    fn simple_is_none() {
        assert!(Collation::parse(&doc! {}).unwrap().is_none());
        assert!(
            Collation::parse(&doc! {"locale": "simple"})
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn expanded_spec_has_mongodb_shape() {
        let c = coll(doc! {"locale": "en_US", "strength": 2});
        assert_eq!(
            c.spec(),
            &doc! {
                "locale": "en_US", "caseLevel": false, "caseFirst": "off", "strength": 2,
                "numericOrdering": false, "alternate": "non-ignorable", "maxVariable": "punct",
                "normalization": false, "backwards": false, "version": "57.1",
            }
        );
        // Same spec, same cached collator; the same options in another order are equal.
        assert!(Arc::ptr_eq(
            &c,
            &coll(doc! {"locale": "en_US", "strength": 2})
        ));
        assert_eq!(c, coll(doc! {"strength": 2, "locale": "en_US"}));
        assert_eq!(coll(c.spec().clone()), c);
        assert_eq!(
            coll(doc! {"locale": "fr_CA"}).spec().get_bool("backwards"),
            Ok(true)
        );
        assert_eq!(
            coll(doc! {"locale": "da"}).spec().get_str("caseFirst"),
            Ok("upper")
        );
    }

    #[test]
    fn refusals_have_mongodb_codes() {
        let missing = "BSON field 'collation.locale' is missing but a required field";
        assert_eq!(err(doc! {"strength": 2}), (40414, missing.into()));
        assert_eq!(err(doc! {"locale": null}).0, 40414);
        assert_eq!(err(doc! {"locale": 5}).0, 14);
        assert_eq!(
            err(doc! {"locale": "en", "bogus": 1}),
            (
                40415,
                "BSON field 'collation.bogus' is an unknown field.".into()
            )
        );
        assert_eq!(
            err(doc! {"locale": "xx"}),
            (2, "Field 'locale' is invalid in: { locale: \"xx\" }".into())
        );
        assert_eq!(err(doc! {"locale": "en-US"}).0, 2);
        assert_eq!(
            err(doc! {"locale": "en", "strength": 6}).1,
            "BSON field 'strength' value must be <= 5, actual value '6'"
        );
        assert_eq!(err(doc! {"locale": "en", "strength": 0}).0, 2);
        assert_eq!(err(doc! {"locale": "en", "strength": true}).0, 14);
        assert_eq!(err(doc! {"locale": "en", "caseFirst": "sideways"}).0, 2);
        assert_eq!(err(doc! {"locale": "en", "caseLevel": 1}).0, 14);
        assert_eq!(err(doc! {"locale": "en", "backwards": "x"}).0, 14);
        assert_eq!(
            coll(doc! {"locale": "en", "strength": 2.5})
                .spec()
                .get_i32("strength"),
            Ok(2)
        );
    }

    #[test]
    fn variants_and_sort_keys() {
        let book = coll(doc! {"locale": "de@collation=phonebook"});
        let dict = coll(doc! {"locale": "de"});
        // Phonebook German sorts ü as ue ("Mueller" < "Muffler"); dictionary German as u.
        assert_eq!(book.compare("Müller", "Muffler"), Ordering::Less);
        assert_eq!(dict.compare("Müller", "Muffler"), Ordering::Greater);
        let ci = coll(doc! {"locale": "en", "strength": 2});
        assert_eq!(ci.sort_key("Apple"), ci.sort_key("aPPLE"));
        assert!(ci.sort_key("apple") < ci.sort_key("Banana"));
    }
}
