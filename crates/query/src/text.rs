//! Text search: text index specifications, tokenising, `$text` queries and their scores,
//! following MongoDB's text index version 3.
//!
//! A string is cut into tokens at delimiters (Unicode White_Space, Dash, Hyphen,
//! Quotation_Mark, Terminal_Punctuation, Pattern_Syntax and Sentence_Terminal; English
//! keeps the apostrophe), lowercased, stripped of stop words, stemmed with the Snowball
//! stemmer of its language (`rust-stemmers`) and stripped of diacritics (Unicode
//! Diacritic). Stop words are NLTK's lists (the `stop-words` crate), which differ from
//! mongod's own lists in a few words (English: NLTK has `just`, `now`, `will`..., not
//! `could`, `would`, `cannot`...).
//!
//! A document's score for a term sums, over its indexed strings, `weight * freq * coeff`
//! (`freq` = 1 + 1/2 + 1/4... over the term's repeats, `coeff` = 0.5 + 0.5 * count /
//! tokens, times 1.1 when the whole string is the term), as mongod scores it; a query's
//! score is the sum over its distinct positive terms.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, LazyLock, OnceLock};

use bson::{Bson, Document};
use errors::{ErrorCode, MongoError, Result};
use icu_normalizer::properties::{CanonicalDecompositionBorrowed, Decomposed};
use icu_properties::CodePointSetData;
use icu_properties::props::{
    Dash, Diacritic, Hyphen, PatternSyntax, QuotationMark, SentenceTerminal, TerminalPunctuation,
    WhiteSpace,
};
use rust_stemmers::{Algorithm, Stemmer};

/// The field a text query's score travels in, from the match to `{$meta: "textScore"}`
/// (projection, `$sort`, expressions); removed before documents leave the server.
pub const SCORE_FIELD: &str = "$__eddyTextScore";

/// A text search language: mongod's 15, and `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Language {
    name: &'static str,
    algo: Option<Algorithm>,
    code: &'static str,
}

const LANGUAGES: &[(&str, &str, Option<Algorithm>)] = &[
    ("danish", "da", Some(Algorithm::Danish)),
    ("dutch", "nl", Some(Algorithm::Dutch)),
    ("english", "en", Some(Algorithm::English)),
    ("finnish", "fi", Some(Algorithm::Finnish)),
    ("french", "fr", Some(Algorithm::French)),
    ("german", "de", Some(Algorithm::German)),
    ("hungarian", "hu", Some(Algorithm::Hungarian)),
    ("italian", "it", Some(Algorithm::Italian)),
    ("norwegian", "nb", Some(Algorithm::Norwegian)),
    ("portuguese", "pt", Some(Algorithm::Portuguese)),
    ("romanian", "ro", Some(Algorithm::Romanian)),
    ("russian", "ru", Some(Algorithm::Russian)),
    ("spanish", "es", Some(Algorithm::Spanish)),
    ("swedish", "sv", Some(Algorithm::Swedish)),
    ("turkish", "tr", Some(Algorithm::Turkish)),
    ("none", "none", None),
];

impl Language {
    /// The language named `s` (a name or its two-letter code, any case).
    pub fn find(s: &str) -> Option<Language> {
        let l = s.to_ascii_lowercase();
        LANGUAGES
            .iter()
            .find(|(n, c, _)| *n == l || *c == l)
            .map(|(name, code, algo)| Language {
                name,
                algo: *algo,
                code,
            })
    }

    fn stop_words(self) -> &'static HashSet<&'static str> {
        static SETS: LazyLock<HashMap<&'static str, HashSet<&'static str>>> = LazyLock::new(|| {
            LANGUAGES
                .iter()
                .map(|(name, code, _)| {
                    let code = if *code == "nb" { "no" } else { code };
                    let words = stop_words::lookup(code).unwrap_or(&[]);
                    (*name, words.iter().copied().collect())
                })
                .collect()
        });
        static EMPTY: LazyLock<HashSet<&'static str>> = LazyLock::new(HashSet::new);
        if self.algo.is_none() {
            return &EMPTY;
        }
        SETS.get(self.name).unwrap_or(&EMPTY)
    }
}

fn unsupported(lang: &str) -> MongoError {
    MongoError::bad_value(format!(
        "unsupported language: \"{lang}\" for text index version 3"
    ))
}

/// Whether `c` separates tokens.
fn is_delimiter(c: char, english: bool) -> bool {
    if c == '\'' {
        return !english;
    }
    if c.is_ascii() {
        return !(c.is_ascii_alphanumeric() || c == '_');
    }
    CodePointSetData::new::<WhiteSpace>().contains(c)
        || CodePointSetData::new::<Dash>().contains(c)
        || CodePointSetData::new::<Hyphen>().contains(c)
        || CodePointSetData::new::<QuotationMark>().contains(c)
        || CodePointSetData::new::<TerminalPunctuation>().contains(c)
        || CodePointSetData::new::<PatternSyntax>().contains(c)
        || CodePointSetData::new::<SentenceTerminal>().contains(c)
}

fn lowercase(s: &str, turkish: bool) -> String {
    if s.is_ascii() && !turkish {
        return s.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            'I' if turkish => out.push('ı'),
            'İ' if turkish => out.push('i'),
            'İ' => out.push(c),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// `s` without diacritics: marks dropped, precomposed letters reduced to their base.
fn strip_diacritics(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    let diacritic = CodePointSetData::new::<Diacritic>();
    let nfd = CanonicalDecompositionBorrowed::new();
    let mut out = String::with_capacity(s.len());
    for mut c in s.chars() {
        loop {
            match nfd.decompose(c) {
                Decomposed::Expansion(base, mark) if diacritic.contains(mark) => c = base,
                Decomposed::Singleton(x) if x != c => c = x,
                _ => break,
            }
        }
        if !diacritic.contains(c) || c.is_ascii() {
            out.push(c);
        }
    }
    out
}

/// Case and diacritic folding as phrases compare.
fn fold(s: &str, case_sensitive: bool, diacritic_sensitive: bool, turkish: bool) -> String {
    let s = if case_sensitive {
        s.to_string()
    } else {
        lowercase(s, turkish)
    };
    if diacritic_sensitive {
        s
    } else {
        strip_diacritics(&s)
    }
}

/// The terms of `s` in `lang`: tokens without stop words, stemmed and folded.
pub fn tokenize(
    s: &str,
    lang: Language,
    case_sensitive: bool,
    diacritic_sensitive: bool,
) -> Vec<String> {
    let english = lang.name == "english";
    let turkish = lang.name == "turkish";
    let stops = lang.stop_words();
    let stemmer = lang.algo.map(Stemmer::create);
    s.split(|c| is_delimiter(c, english))
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            let lower = lowercase(t, turkish);
            if stops.contains(lower.as_str()) {
                return None;
            }
            let t = if case_sensitive { t.to_string() } else { lower };
            let t = match &stemmer {
                Some(st) => st.stem(&t).into_owned(),
                None => t,
            };
            Some(if diacritic_sensitive {
                t
            } else {
                strip_diacritics(&t)
            })
        })
        .collect()
}

/// A text index, as its specification describes it.
#[derive(Debug, Clone)]
pub struct TextIndex {
    /// Weighted field paths; `$**` weighs every other string.
    weights: Vec<(String, f64)>,
    wildcard: Option<f64>,
    default_language: Language,
    language_override: String,
    /// The compound index's fields before the text part.
    pub prefix: Vec<String>,
}

impl TextIndex {
    /// The text index an index's key pattern and specification describe, if it is one.
    pub fn from_spec(key: &Document, spec: &Document) -> Option<TextIndex> {
        if !key.contains_key("_fts") {
            return None;
        }
        let prefix = key.keys().take_while(|k| *k != "_fts").cloned().collect();
        let mut weights = Vec::new();
        let mut wildcard = None;
        if let Ok(w) = spec.get_document("weights") {
            for (k, v) in w {
                let x = doc::compare::as_f64(v).unwrap_or(1.0);
                if k == "$**" {
                    wildcard = Some(x);
                } else {
                    weights.push((k.clone(), x));
                }
            }
        }
        let default_language = spec
            .get_str("default_language")
            .ok()
            .and_then(Language::find)
            .or_else(|| Language::find("english"))?;
        Some(TextIndex {
            weights,
            wildcard,
            default_language,
            language_override: spec
                .get_str("language_override")
                .unwrap_or("language")
                .to_string(),
            prefix,
        })
    }

    /// The document's language: its override field, else the index's default.
    fn language_of(&self, d: &Document, inherited: Language) -> Result<Language> {
        match d.get(&self.language_override) {
            None => Ok(inherited),
            Some(Bson::String(s)) => Language::find(s).ok_or_else(|| {
                MongoError::with_code(17262, format!("language override unsupported: {s}"))
            }),
            Some(_) => Err(MongoError::with_code(
                17261,
                "found language override field in document with non-string type",
            )),
        }
    }

    /// Calls `f(string, weight, language)` for every string the index covers in `d`.
    pub fn each_string(&self, d: &Document, f: &mut dyn FnMut(&str, f64, Language)) -> Result<()> {
        let lang = self.language_of(d, self.default_language)?;
        if self.wildcard.is_some() {
            self.walk(d, "", lang, f)?;
            return Ok(());
        }
        for (path, w) in &self.weights {
            self.path_strings(d, path, *w, lang, f)?;
        }
        Ok(())
    }

    fn path_strings(
        &self,
        d: &Document,
        path: &str,
        w: f64,
        lang: Language,
        f: &mut dyn FnMut(&str, f64, Language),
    ) -> Result<()> {
        let (head, rest) = match path.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (path, None),
        };
        let Some(v) = d.get(head) else {
            return Ok(());
        };
        let mut visit = |v: &Bson, in_array: bool| -> Result<()> {
            match (v, rest) {
                (Bson::String(s), None) => f(s, w, lang),
                (Bson::Array(a), None) if !in_array => {
                    for e in a {
                        if let Bson::String(s) = e {
                            f(s, w, lang);
                        }
                    }
                }
                (Bson::Document(sub), Some(r)) => {
                    let lang = self.language_of(sub, lang)?;
                    self.path_strings(sub, r, w, lang, f)?;
                }
                _ => {}
            }
            Ok(())
        };
        match v {
            Bson::Array(a) if rest.is_some() => {
                for e in a {
                    visit(e, true)?;
                }
                Ok(())
            }
            v => visit(v, false),
        }
    }

    fn walk(
        &self,
        d: &Document,
        prefix: &str,
        lang: Language,
        f: &mut dyn FnMut(&str, f64, Language),
    ) -> Result<()> {
        for (k, v) in d {
            if *k == self.language_override {
                continue;
            }
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            self.walk_value(v, &path, lang, f)?;
        }
        Ok(())
    }

    fn walk_value(
        &self,
        v: &Bson,
        path: &str,
        lang: Language,
        f: &mut dyn FnMut(&str, f64, Language),
    ) -> Result<()> {
        match v {
            Bson::String(s) => {
                let w = self
                    .weights
                    .iter()
                    .find(|(p, _)| p == path)
                    .map_or(self.wildcard.unwrap_or(1.0), |(_, w)| *w);
                f(s, w, lang);
            }
            Bson::Array(a) => {
                for e in a {
                    self.walk_value(e, path, lang, f)?;
                }
            }
            Bson::Document(sub) => {
                let lang = self.language_of(sub, lang)?;
                self.walk(sub, path, lang, f)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The distinct terms of a document: its index keys.
    ///
    /// # Errors
    /// 17261/17262 for a bad language override.
    pub fn terms(&self, d: &Document) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        self.each_string(d, &mut |s, _, lang| {
            out.extend(tokenize(s, lang, false, false));
        })?;
        Ok(out)
    }

    /// Each term's score in a document.
    fn scores(&self, d: &Document) -> Result<HashMap<String, f64>> {
        let mut scores: HashMap<String, f64> = HashMap::new();
        self.each_string(d, &mut |raw, w, lang| {
            let mut terms: HashMap<String, (f64, f64, f64)> = HashMap::new();
            let mut n = 0.0;
            for t in tokenize(raw, lang, false, false) {
                let e = terms.entry(t).or_insert((0.0, 0.0, 0.0));
                e.2 = if e.2 == 0.0 { 1.0 } else { e.2 * 2.0 };
                e.1 += 1.0;
                e.0 += 1.0 / e.2;
                n += 1.0;
            }
            for (t, (freq, count, _)) in terms {
                let coeff = 0.5 * count / n + 0.5;
                let bonus = if raw.len() == t.len() && raw.eq_ignore_ascii_case(&t) {
                    1.1
                } else {
                    1.0
                };
                *scores.entry(t).or_insert(0.0) += w * freq * coeff * bonus;
            }
        })?;
        Ok(scores)
    }
}

/// A parsed `$text` query, bound to its collection's text index before it matches.
#[derive(Debug, Clone)]
pub struct TextQuery {
    language: Option<String>,
    case_sensitive: bool,
    diacritic_sensitive: bool,
    positive: String,
    negative: String,
    phrases: Vec<String>,
    negated_phrases: Vec<String>,
    bound: Arc<OnceLock<Bound>>,
}

#[derive(Debug)]
struct Bound {
    index: TextIndex,
    lang: Language,
    /// The index's terms (case and diacritic insensitive): what the index is read for and
    /// what scores sum over.
    terms: BTreeSet<String>,
    /// The terms as matching compares them (with the query's sensitivity).
    positive: HashSet<String>,
    negated: HashSet<String>,
}

impl TextQuery {
    /// Parses `{$search, $language, $caseSensitive, $diacriticSensitive}`.
    ///
    /// # Errors
    /// MongoDB's: BadValue, NoSuchKey, TypeMismatch.
    pub fn parse(v: &Bson) -> Result<TextQuery> {
        let Bson::Document(d) = v else {
            return Err(MongoError::bad_value("$text expects an object"));
        };
        let mut search = None;
        let mut language = None;
        let mut case_sensitive = false;
        let mut diacritic_sensitive = false;
        let wrong = |k: &str, want: &str, v: &Bson| {
            MongoError::type_mismatch(format!(
                "\"{k}\" had the wrong type. Expected {want}, found {}",
                crate::expr::type_name(Some(v))
            ))
        };
        for (k, v) in d {
            match (k.as_str(), v) {
                ("$search", Bson::String(s)) => search = Some(s.clone()),
                ("$search", v) => return Err(wrong(k, "string", v)),
                ("$language", Bson::String(s)) => language = Some(s.clone()),
                ("$language", v) => return Err(wrong(k, "string", v)),
                ("$caseSensitive", Bson::Boolean(b)) => case_sensitive = *b,
                ("$caseSensitive", v) => return Err(wrong(k, "bool", v)),
                ("$diacriticSensitive", Bson::Boolean(b)) => diacritic_sensitive = *b,
                ("$diacriticSensitive", v) => return Err(wrong(k, "bool", v)),
                _ => return Err(MongoError::bad_value("extra fields in $text")),
            }
        }
        let Some(search) = search else {
            return Err(MongoError::new(
                ErrorCode::NoSuchKey,
                "Missing expected field \"$search\"",
            ));
        };
        if let Some(l) = language.as_deref().filter(|l| !l.is_empty()) {
            if Language::find(l).is_none() {
                return Err(unsupported(l));
            }
        }
        let mut q = TextQuery {
            language: language.filter(|l| !l.is_empty()),
            case_sensitive,
            diacritic_sensitive,
            positive: String::new(),
            negative: String::new(),
            phrases: Vec::new(),
            negated_phrases: Vec::new(),
            bound: Arc::new(OnceLock::new()),
        };
        q.split(&search);
        Ok(q)
    }

    /// Splits the search string as mongod's query parser does: words (into the positive
    /// or the negative sentence), `-` negations (after whitespace), quoted phrases (whose
    /// words are also terms, unless negated).
    fn split(&mut self, s: &str) {
        let ws = |c: char| matches!(c, ' ' | '\n' | '\u{b}' | '\u{c}' | '\r');
        let mut in_negation = false;
        let mut in_phrase = false;
        let mut prev_ws = true;
        let mut phrase_start = 0;
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if ws(c) {
                prev_ws = true;
                continue;
            }
            match c {
                '-' => {
                    if !in_phrase && prev_ws {
                        in_negation = true;
                    }
                    prev_ws = false;
                }
                '"' => {
                    if in_phrase {
                        let p = s[phrase_start..i].to_string();
                        if in_negation {
                            self.negated_phrases.push(p);
                        } else {
                            self.phrases.push(p);
                        }
                        in_phrase = false;
                    } else {
                        if prev_ws {
                            in_negation = false;
                        }
                        in_phrase = true;
                        phrase_start = i + 1;
                    }
                    prev_ws = false;
                }
                _ => {
                    let mut end = i + c.len_utf8();
                    while let Some(&(j, d)) = chars.peek() {
                        if ws(d) || d == '-' || d == '"' {
                            break;
                        }
                        end = j + d.len_utf8();
                        chars.next();
                    }
                    let word = &s[i..end];
                    if in_phrase && in_negation {
                        prev_ws = false;
                        continue;
                    }
                    if in_negation && prev_ws {
                        in_negation = false;
                    }
                    let target = if in_negation {
                        &mut self.negative
                    } else {
                        &mut self.positive
                    };
                    target.push(' ');
                    target.push_str(word);
                    prev_ws = false;
                }
            }
        }
    }

    /// Binds the query to its collection's text index (once).
    ///
    /// # Errors
    /// BadValue for a language the index's default or `$language` makes unsupported.
    pub fn bind(&self, index: &TextIndex) -> Result<()> {
        if self.bound.get().is_some() {
            return Ok(());
        }
        let lang = match &self.language {
            Some(l) => Language::find(l).ok_or_else(|| unsupported(l))?,
            None => index.default_language,
        };
        let terms: BTreeSet<String> = tokenize(&self.positive, lang, false, false)
            .into_iter()
            .collect();
        let positive = tokenize(
            &self.positive,
            lang,
            self.case_sensitive,
            self.diacritic_sensitive,
        )
        .into_iter()
        .collect();
        let negated = tokenize(
            &self.negative,
            lang,
            self.case_sensitive,
            self.diacritic_sensitive,
        )
        .into_iter()
        .collect();
        let _ = self.bound.set(Bound {
            index: index.clone(),
            lang,
            terms,
            positive,
            negated,
        });
        Ok(())
    }

    /// The terms the index is read for (after [`TextQuery::bind`]).
    pub fn index_terms(&self) -> Vec<String> {
        self.bound
            .get()
            .map(|b| b.terms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the query has been bound to a text index.
    pub fn is_bound(&self) -> bool {
        self.bound.get().is_some()
    }

    /// Whether a document matches, and its score if it does.
    ///
    /// # Errors
    /// A bad language override in the document.
    pub fn score(&self, d: &Document) -> Result<Option<f64>> {
        let Some(b) = self.bound.get() else {
            return Err(MongoError::new(
                ErrorCode::IndexNotFound,
                "text index required for $text query",
            ));
        };
        let turkish = b.lang.name == "turkish";
        let mut any = false;
        let mut negated = false;
        let mut strings: Vec<String> = Vec::new();
        let want_strings = !self.phrases.is_empty() || !self.negated_phrases.is_empty();
        b.index.each_string(d, &mut |s, _, lang| {
            if negated {
                return;
            }
            for t in tokenize(s, lang, self.case_sensitive, self.diacritic_sensitive) {
                if b.negated.contains(&t) {
                    negated = true;
                    return;
                }
                any |= b.positive.contains(&t);
            }
            if want_strings {
                strings.push(fold(
                    s,
                    self.case_sensitive && !turkish,
                    self.diacritic_sensitive,
                    turkish,
                ));
            }
        })?;
        if negated || !any {
            return Ok(None);
        }
        let has = |p: &str| {
            let p = fold(
                p,
                self.case_sensitive && !turkish,
                self.diacritic_sensitive,
                turkish,
            );
            strings.iter().any(|s| s.contains(&p))
        };
        if !self.phrases.iter().all(|p| has(p)) || self.negated_phrases.iter().any(|p| has(p)) {
            return Ok(None);
        }
        let scores = b.index.scores(d)?;
        Ok(Some(b.terms.iter().filter_map(|t| scores.get(t)).sum()))
    }
}

/// Rewrites a text index's key pattern and options as mongod stores them: the text
/// fields become `{_fts: "text", _ftsx: 1}` between the prefix and suffix fields, and
/// their weights, language and version are spelled out.
///
/// # Errors
/// CannotCreateIndex for a specification mongod refuses.
pub fn normalize_index_spec(key: &Document, spec: &Document) -> Result<(Document, Document)> {
    let bad = |m: String| MongoError::new(ErrorCode::CannotCreateIndex, m);
    let mut fixed = Document::new();
    let mut weights: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    let mut seen_text = false;
    let mut after_text = false;
    for (k, v) in key {
        let is_text = matches!(v, Bson::String(s) if s == "text");
        if k == "_fts" || k == "_ftsx" {
            if spec.contains_key("weights") {
                if k == "_fts" {
                    seen_text = true;
                    fixed.insert("_fts", "text");
                    fixed.insert("_ftsx", 1);
                }
                continue;
            }
            return Err(bad(
                "text index with reserved fields _fts/_ftsx not allowed".into(),
            ));
        }
        if is_text {
            if after_text {
                return Err(bad("'text' fields in index must all be adjacent".into()));
            }
            if !seen_text {
                seen_text = true;
                fixed.insert("_fts", "text");
                fixed.insert("_ftsx", 1);
            }
            weights.insert(k.clone(), 1.0);
            continue;
        }
        if matches!(v, Bson::String(_)) {
            return Err(bad(format!(
                "text index cannot be combined with a '{v}' key: {k}"
            )));
        }
        if !matches!(doc::compare::as_f64(v), Some(x) if x == 1.0 || x == -1.0) {
            return Err(bad(
                "expected value 1 or -1 for non-text key in compound index".into(),
            ));
        }
        if seen_text {
            after_text = true;
        }
        fixed.insert(k.clone(), v.clone());
    }
    match spec.get("weights") {
        None => {}
        Some(Bson::String(s)) if s == "$**" => {
            weights.insert("$**".into(), 1.0);
        }
        Some(Bson::Document(w)) => {
            for (k, v) in w {
                let Some(x) = (match v {
                    Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
                        doc::compare::as_f64(v)
                    }
                    _ => None,
                }) else {
                    return Err(bad("weight for text index needs numeric type".into()));
                };
                let x = x.trunc();
                if !(x > 0.0 && x < 100_000.0) {
                    return Err(bad(format!(
                        "text index weight must be in the exclusive interval (0,100000) but found: {x}"
                    )));
                }
                if k.is_empty() {
                    return Err(bad("weight cannot be on an empty field".into()));
                }
                if k != "$**" && k.split('.').any(str::is_empty) {
                    return Err(bad("weight cannot have empty path component".into()));
                }
                if k != "$**" && k.split('.').any(|p| p.starts_with('$')) {
                    return Err(bad("weight cannot have path component with $ prefix".into()));
                }
                weights.insert(k.clone(), x);
            }
        }
        Some(_) => return Err(bad("text index option 'weights' must be an object".into())),
    }
    if weights.is_empty() {
        return Err(bad(
            "text index option 'weights' must specify fields or the wildcard".into(),
        ));
    }
    let default_language = match spec.get("default_language") {
        None => "english".to_string(),
        Some(Bson::String(l)) if Language::find(l).is_some() => l.clone(),
        Some(Bson::String(_)) => return Err(bad("default_language is not valid".into())),
        Some(_) => return Err(bad("default_language needs a string type".into())),
    };
    let language_override = match spec.get("language_override") {
        None => "language".to_string(),
        Some(Bson::String(l)) if !l.is_empty() && !l.starts_with('$') && !l.contains('.') => {
            l.clone()
        }
        Some(Bson::String(_)) => return Err(bad("language_override is not valid".into())),
        Some(_) => return Err(bad("language_override must be a string".into())),
    };
    match spec.get("textIndexVersion") {
        None => {}
        Some(v) if doc::compare::as_f64(v) == Some(3.0) => {}
        Some(v) => {
            return Err(bad(format!(
                "bad textIndexVersion: {v}; Eddy builds version 3"
            )));
        }
    }
    let mut w = Document::new();
    for (k, x) in weights {
        if x.fract() == 0.0 && x.abs() < f64::from(i32::MAX) {
            w.insert(k, x as i32);
        } else {
            w.insert(k, x);
        }
    }
    let opts = bson::doc! {
        "weights": w,
        "default_language": default_language,
        "language_override": language_override,
        "textIndexVersion": 3,
    };
    Ok((fixed, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn en() -> Language {
        Language::find("english").unwrap()
    }

    #[test]
    fn tokens_are_folded_stemmed_and_filtered() {
        assert_eq!(
            tokenize("Baking a cake", en(), false, false),
            vec!["bake", "cake"]
        );
        assert_eq!(
            tokenize("Coffee Shopping", en(), false, false),
            vec!["coffe", "shop"]
        );
        assert_eq!(tokenize("CAFÉS", en(), false, false), vec!["cafe"]);
        assert_eq!(
            tokenize("pre-market", en(), false, false),
            vec!["pre", "market"]
        );
        let es = Language::find("es").unwrap();
        assert_eq!(
            tokenize("Café Con Leche", es, false, false),
            vec!["caf", "lech"]
        );
        let none = Language::find("none").unwrap();
        assert_eq!(
            tokenize("the Cats", none, false, false),
            vec!["the", "cats"]
        );
        assert_eq!(strip_diacritics("сы́рники"), "сырники");
    }

    #[test]
    fn search_strings_split_into_terms_phrases_and_negations() {
        let q = TextQuery::parse(&Bson::Document(
            bson::doc! {"$search": "coffee -shop \"cafe con\" -\"ice cream\" pre-market"},
        ))
        .unwrap();
        assert_eq!(q.positive.trim(), "coffee cafe con pre market");
        assert_eq!(q.negative.trim(), "shop");
        assert_eq!(q.phrases, vec!["cafe con"]);
        assert_eq!(q.negated_phrases, vec!["ice cream"]);
    }
}
