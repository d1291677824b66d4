//! `$group` accumulators and grouping by MongoDB value equality.

use std::collections::HashMap;

use bson::{Bson, Document};
use doc::Collation;
use errors::{MongoError, Result};

use crate::expr::accum::{Acc, AccKind};
use crate::expr::{Expr, Vars};

/// One output field of `$group`: name, accumulator and its argument.
#[derive(Debug, Clone)]
pub(crate) struct AccSpec {
    name: String,
    kind: AccKind,
    arg: Expr,
}

/// Parses `{field: {$acc: expr}, ...}`.
pub(crate) fn parse_accumulators(d: &Document) -> Result<Vec<AccSpec>> {
    let mut out = Vec::new();
    for (name, v) in d {
        if name.contains('.') {
            return Err(MongoError::with_code(
                40235,
                format!("The field name '{name}' cannot contain '.'"),
            ));
        }
        if name.starts_with('$') {
            return Err(MongoError::with_code(
                40236,
                format!("The field name '{name}' cannot be an operator name"),
            ));
        }
        let Bson::Document(spec) = v else {
            return Err(MongoError::with_code(
                40234,
                format!("The field '{name}' must be an accumulator object"),
            ));
        };
        if spec.len() != 1 {
            return Err(MongoError::with_code(
                40238,
                format!("The field '{name}' must specify one accumulator"),
            ));
        }
        let Some((op, arg)) = spec.iter().next() else {
            continue;
        };
        let kind = AccKind::from_name(op).ok_or_else(|| {
            MongoError::with_code(15952, format!("unknown group operator '{op}'"))
        })?;
        let arg = if kind == AccKind::Count {
            if !matches!(arg, Bson::Document(a) if a.is_empty()) {
                return Err(MongoError::with_code(
                    40237,
                    "$count takes no arguments, i.e. $count:{}",
                ));
            }
            Expr::literal(Bson::Null)
        } else {
            if matches!(arg, Bson::Array(_)) {
                return Err(MongoError::with_code(
                    40237,
                    format!("The {op} accumulator is a unary operator"),
                ));
            }
            Expr::parse(arg)?
        };
        out.push(AccSpec {
            name: name.clone(),
            kind,
            arg,
        });
    }
    Ok(out)
}

/// A canonical string for a value such that values MongoDB considers equal (`1`, `1.0`,
/// `NumberLong(1)`, and under a collation strings that compare equal) share it.
fn canonical(v: &Bson, out: &mut String, coll: Option<&Collation>) {
    use std::fmt::Write;
    match v {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            match doc::compare::as_number(v) {
                Some(doc::compare::Number::Int(i)) => {
                    let _ = write!(out, "n{i};");
                }
                Some(doc::compare::Number::Float(f)) => {
                    if f.is_nan() {
                        out.push_str("nNaN;");
                    } else if f.fract() == 0.0 && f.abs() < 9.2e18 {
                        let _ = write!(out, "n{};", f as i64);
                    } else {
                        let _ = write!(out, "n{f:e};");
                    }
                }
                None => {}
            }
        }
        Bson::Null | Bson::Undefined => out.push_str("z;"),
        Bson::String(s) | Bson::Symbol(s) => match coll {
            None => {
                let _ = write!(out, "s{}:{s};", s.len());
            }
            // Equal sort keys are exactly the strings the collation deems equal.
            Some(c) => {
                out.push('c');
                for b in c.sort_key(s) {
                    let _ = write!(out, "{b:02x}");
                }
                out.push(';');
            }
        },
        Bson::Document(d) => {
            out.push('{');
            for (k, x) in d {
                let _ = write!(out, "{}:{k}=", k.len());
                canonical(x, out, coll);
            }
            out.push('}');
        }
        Bson::Array(a) => {
            out.push('[');
            for x in a {
                canonical(x, out, coll);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "t{}:{other:?};", crate::filter::bson_type_code(other));
        }
    }
}

/// Groups documents by key and accumulates.
pub(crate) struct Grouper<'a> {
    specs: &'a [AccSpec],
    index: HashMap<String, usize>,
    groups: Vec<(Bson, Vec<Acc>)>,
}

impl<'a> Grouper<'a> {
    pub(crate) fn new(specs: &'a [AccSpec]) -> Grouper<'a> {
        Grouper {
            specs,
            index: HashMap::new(),
            groups: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, key: Bson, doc: &Document, vars: &Vars) -> Result<()> {
        let mut k = String::new();
        canonical(&key, &mut k, vars.collation());
        let i = match self.index.get(&k) {
            Some(i) => *i,
            None => {
                self.groups
                    .push((key, self.specs.iter().map(|s| Acc::new(s.kind)).collect()));
                self.index.insert(k, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        for (spec, acc) in self.specs.iter().zip(self.groups[i].1.iter_mut()) {
            let v = if spec.kind == AccKind::Count {
                None
            } else {
                spec.arg.eval(doc, vars)?
            };
            acc.add(v, vars.collation())?;
        }
        Ok(())
    }

    /// One document per group: `{<id_field>: key, <acc>: result, ...}` in first-seen order.
    pub(crate) fn finish(self, id_field: &str) -> Vec<Document> {
        self.groups
            .into_iter()
            .map(|(key, accs)| {
                let mut d = Document::new();
                d.insert(id_field, key);
                for (spec, acc) in self.specs.iter().zip(accs) {
                    d.insert(spec.name.clone(), acc.finish());
                }
                d
            })
            .collect()
    }
}
