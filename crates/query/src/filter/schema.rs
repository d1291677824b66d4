//! `$jsonSchema`: the common JSON Schema (draft 4) keywords MongoDB supports, plus `bsonType`.

use bson::{Bson, Document};
use doc::compare::{as_f64, as_number, cmp_values, values_equal};
use errors::{MongoError, Result};

use super::{Rx, TypeSel, parse_type_sel};

/// A parsed `$jsonSchema` (sub)schema.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schema {
    types: Option<Vec<TypeSel>>,
    required: Vec<String>,
    properties: Vec<(String, Schema)>,
    additional: Option<Additional>,
    pattern_properties: Vec<(Rx, Schema)>,
    minimum: Option<(Bson, bool)>,
    maximum: Option<(Bson, bool)>,
    multiple_of: Option<f64>,
    enum_: Option<Vec<Bson>>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    pattern: Option<Rx>,
    items: Option<Items>,
    additional_items: Option<Additional>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    unique_items: bool,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    all_of: Vec<Schema>,
    any_of: Vec<Schema>,
    one_of: Vec<Schema>,
    not: Option<Box<Schema>>,
    /// `dependencies`: when the property is present, these properties must be too, or the
    /// whole document must satisfy the schema.
    dependencies: Vec<(String, Dependency)>,
}

#[derive(Debug, Clone)]
enum Dependency {
    Properties(Vec<String>),
    Schema(Box<Schema>),
}

#[derive(Debug, Clone)]
enum Additional {
    Allowed(bool),
    Schema(Box<Schema>),
}

#[derive(Debug, Clone)]
enum Items {
    All(Box<Schema>),
    Tuple(Vec<Schema>),
}

fn bad(msg: impl Into<String>) -> MongoError {
    MongoError::failed_to_parse(msg)
}

fn count(k: &str, v: &Bson) -> Result<u64> {
    match as_number(v) {
        Some(doc::compare::Number::Int(i)) if i >= 0 => Ok(i as u64),
        Some(doc::compare::Number::Float(f)) if f >= 0.0 && f.fract() == 0.0 => Ok(f as u64),
        _ => Err(bad(format!(
            "$jsonSchema keyword '{k}' must be a non-negative integer"
        ))),
    }
}

fn json_type(s: &str) -> Result<Vec<TypeSel>> {
    Ok(match s {
        "object" => vec![TypeSel::Code(3)],
        "array" => vec![TypeSel::Code(4)],
        "number" => vec![TypeSel::Number],
        "boolean" => vec![TypeSel::Code(8)],
        "string" => vec![TypeSel::Code(2)],
        "null" => vec![TypeSel::Code(10)],
        "integer" => {
            return Err(MongoError::bad_value(
                "$jsonSchema type 'integer' is not currently supported.",
            ));
        }
        other => return Err(bad(format!("Unknown type name alias: {other}"))),
    })
}

fn schema_list(k: &str, v: &Bson) -> Result<Vec<Schema>> {
    match v {
        Bson::Array(a) if !a.is_empty() => a
            .iter()
            .map(|e| match e {
                Bson::Document(d) => Schema::parse(d),
                _ => Err(bad(format!(
                    "$jsonSchema keyword '{k}' must be an array of objects"
                ))),
            })
            .collect(),
        _ => Err(bad(format!(
            "$jsonSchema keyword '{k}' must be a nonempty array"
        ))),
    }
}

fn additional(k: &str, v: &Bson) -> Result<Additional> {
    match v {
        Bson::Boolean(b) => Ok(Additional::Allowed(*b)),
        Bson::Document(d) => Ok(Additional::Schema(Box::new(Schema::parse(d)?))),
        _ => Err(bad(format!(
            "$jsonSchema keyword '{k}' must be either an object or a boolean"
        ))),
    }
}

impl Schema {
    pub(crate) fn parse(d: &Document) -> Result<Schema> {
        let mut s = Schema::default();
        let mut excl_min = false;
        let mut excl_max = false;
        for (k, v) in d {
            match k.as_str() {
                "bsonType" | "type" => {
                    let one = |e: &Bson| -> Result<Vec<TypeSel>> {
                        match (k.as_str(), e) {
                            ("type", Bson::String(s)) => json_type(s),
                            ("type", _) => Err(bad(
                                "$jsonSchema keyword 'type' must be a string or an array",
                            )),
                            (_, e) => Ok(vec![parse_type_sel(e)?]),
                        }
                    };
                    let mut t = Vec::new();
                    match v {
                        Bson::Array(a) => {
                            for e in a {
                                t.extend(one(e)?);
                            }
                        }
                        e => t = one(e)?,
                    }
                    s.types.get_or_insert_with(Vec::new).extend(t);
                }
                "required" => {
                    let Bson::Array(a) = v else {
                        return Err(bad("$jsonSchema keyword 'required' must be an array"));
                    };
                    for e in a {
                        let Bson::String(name) = e else {
                            return Err(bad("$jsonSchema keyword 'required' must contain strings"));
                        };
                        s.required.push(name.clone());
                    }
                }
                "properties" => {
                    let Bson::Document(p) = v else {
                        return Err(bad("$jsonSchema keyword 'properties' must be an object"));
                    };
                    for (name, sub) in p {
                        let Bson::Document(sub) = sub else {
                            return Err(bad(format!(
                                "Nested schema for $jsonSchema property '{name}' must be an object"
                            )));
                        };
                        s.properties.push((name.clone(), Schema::parse(sub)?));
                    }
                }
                "patternProperties" => {
                    let Bson::Document(p) = v else {
                        return Err(bad(
                            "$jsonSchema keyword 'patternProperties' must be an object",
                        ));
                    };
                    for (pat, sub) in p {
                        let Bson::Document(sub) = sub else {
                            return Err(bad("patternProperties values must be objects"));
                        };
                        s.pattern_properties
                            .push((Rx::new(pat, "")?, Schema::parse(sub)?));
                    }
                }
                "additionalProperties" => s.additional = Some(additional(k, v)?),
                "additionalItems" => s.additional_items = Some(additional(k, v)?),
                "minimum" | "maximum" => {
                    if as_number(v).is_none() {
                        return Err(bad(format!("$jsonSchema keyword '{k}' must be a number")));
                    }
                    let slot = if k == "minimum" {
                        &mut s.minimum
                    } else {
                        &mut s.maximum
                    };
                    *slot = Some((v.clone(), false));
                }
                "exclusiveMinimum" => excl_min = super::truthy(v),
                "exclusiveMaximum" => excl_max = super::truthy(v),
                "multipleOf" => {
                    s.multiple_of = as_f64(v).filter(|f| *f > 0.0);
                    if s.multiple_of.is_none() {
                        return Err(bad(
                            "$jsonSchema keyword 'multipleOf' must be a positive number",
                        ));
                    }
                }
                "enum" => {
                    let Bson::Array(a) = v else {
                        return Err(bad("$jsonSchema keyword 'enum' must be an array"));
                    };
                    if a.is_empty() {
                        return Err(bad("$jsonSchema keyword 'enum' cannot be an empty array"));
                    }
                    s.enum_ = Some(a.clone());
                }
                "minLength" => s.min_length = Some(count(k, v)?),
                "maxLength" => s.max_length = Some(count(k, v)?),
                "pattern" => {
                    let Bson::String(p) = v else {
                        return Err(bad("$jsonSchema keyword 'pattern' must be a string"));
                    };
                    s.pattern = Some(Rx::new(p, "")?);
                }
                "items" => {
                    s.items = Some(match v {
                        Bson::Document(d) => Items::All(Box::new(Schema::parse(d)?)),
                        Bson::Array(_) => Items::Tuple(schema_list(k, v)?),
                        _ => {
                            return Err(bad(
                                "$jsonSchema keyword 'items' must be an array or an object",
                            ));
                        }
                    })
                }
                "minItems" => s.min_items = Some(count(k, v)?),
                "maxItems" => s.max_items = Some(count(k, v)?),
                "uniqueItems" => s.unique_items = super::truthy(v),
                "minProperties" => s.min_properties = Some(count(k, v)?),
                "maxProperties" => s.max_properties = Some(count(k, v)?),
                "allOf" => s.all_of = schema_list(k, v)?,
                "anyOf" => s.any_of = schema_list(k, v)?,
                "oneOf" => s.one_of = schema_list(k, v)?,
                "not" => {
                    let Bson::Document(d) = v else {
                        return Err(bad("$jsonSchema keyword 'not' must be an object"));
                    };
                    s.not = Some(Box::new(Schema::parse(d)?));
                }
                "dependencies" => {
                    let Bson::Document(deps) = v else {
                        return Err(bad("$jsonSchema keyword 'dependencies' must be an object"));
                    };
                    for (p, dep) in deps {
                        let dep = match dep {
                            Bson::Document(d) => Dependency::Schema(Box::new(Schema::parse(d)?)),
                            Bson::Array(a) => {
                                let mut names = Vec::new();
                                for n in a {
                                    let Bson::String(n) = n else {
                                        return Err(bad(format!(
                                            "property '{p}' in $jsonSchema keyword 'dependencies' must be either an object or an array of strings"
                                        )));
                                    };
                                    names.push(n.clone());
                                }
                                Dependency::Properties(names)
                            }
                            _ => {
                                return Err(bad(format!(
                                    "property '{p}' in $jsonSchema keyword 'dependencies' must be either an object or an array of strings"
                                )));
                            }
                        };
                        s.dependencies.push((p.clone(), dep));
                    }
                }
                "title" | "description" => {}
                "$ref" | "$schema" | "default" | "definitions" | "format" | "id" => {
                    return Err(bad(format!(
                        "$jsonSchema keyword '{k}' is not currently supported"
                    )));
                }
                "encrypt" | "encryptMetadata" => {
                    return Err(MongoError::new(
                        errors::ErrorCode::QueryFeatureNotAllowed,
                        "Encryption-related $jsonSchema keywords are not supported: client-side field level encryption is not implemented",
                    ));
                }
                other => {
                    return Err(bad(format!("Unknown $jsonSchema keyword: {other}")));
                }
            }
        }
        if let Some(m) = s.minimum.as_mut() {
            m.1 = excl_min;
        }
        if let Some(m) = s.maximum.as_mut() {
            m.1 = excl_max;
        }
        Ok(s)
    }

    pub(crate) fn matches_doc(&self, d: &Document) -> bool {
        self.matches(&Bson::Document(d.clone()))
    }

    /// Whether a value (not only a document) satisfies the schema.
    pub(crate) fn matches_value(&self, v: &Bson) -> bool {
        self.matches(v)
    }

    fn matches(&self, v: &Bson) -> bool {
        if let Some(ts) = &self.types {
            if !ts.iter().any(|t| t.matches(v)) {
                return false;
            }
        }
        if let Some(e) = &self.enum_ {
            if !e.iter().any(|x| {
                values_equal(x, v) && doc::compare::type_rank(x) == doc::compare::type_rank(v)
            }) {
                return false;
            }
        }
        if as_number(v).is_some() {
            if let Some((m, excl)) = &self.minimum {
                let o = cmp_values(v, m);
                if o.is_lt() || (*excl && o.is_eq()) {
                    return false;
                }
            }
            if let Some((m, excl)) = &self.maximum {
                let o = cmp_values(v, m);
                if o.is_gt() || (*excl && o.is_eq()) {
                    return false;
                }
            }
            if let (Some(m), Some(x)) = (self.multiple_of, as_f64(v)) {
                if (x / m).fract() != 0.0 {
                    return false;
                }
            }
        }
        if let Bson::String(s) = v {
            let n = s.chars().count() as u64;
            if self.min_length.is_some_and(|m| n < m) || self.max_length.is_some_and(|m| n > m) {
                return false;
            }
            if self.pattern.as_ref().is_some_and(|p| !p.is_match(s)) {
                return false;
            }
        }
        if let Bson::Array(a) = v {
            let n = a.len() as u64;
            if self.min_items.is_some_and(|m| n < m) || self.max_items.is_some_and(|m| n > m) {
                return false;
            }
            if self.unique_items {
                for (i, x) in a.iter().enumerate() {
                    if a[i + 1..].iter().any(|y| values_equal(x, y)) {
                        return false;
                    }
                }
            }
            match &self.items {
                Some(Items::All(s)) => {
                    if !a.iter().all(|e| s.matches(e)) {
                        return false;
                    }
                }
                Some(Items::Tuple(ss)) => {
                    if !a.iter().zip(ss).all(|(e, s)| s.matches(e)) {
                        return false;
                    }
                    if a.len() > ss.len() {
                        match &self.additional_items {
                            Some(Additional::Allowed(false)) => return false,
                            Some(Additional::Schema(s)) => {
                                if !a[ss.len()..].iter().all(|e| s.matches(e)) {
                                    return false;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                None => {}
            }
        }
        if let Bson::Document(d) = v {
            if !self.required.iter().all(|r| d.contains_key(r)) {
                return false;
            }
            for (p, dep) in &self.dependencies {
                if !d.contains_key(p) {
                    continue;
                }
                let ok = match dep {
                    Dependency::Properties(names) => names.iter().all(|n| d.contains_key(n)),
                    Dependency::Schema(s) => s.matches(v),
                };
                if !ok {
                    return false;
                }
            }
            let n = d.len() as u64;
            if self.min_properties.is_some_and(|m| n < m)
                || self.max_properties.is_some_and(|m| n > m)
            {
                return false;
            }
            for (k, fv) in d {
                let mut covered = false;
                if let Some((_, s)) = self.properties.iter().find(|(n, _)| n == k) {
                    covered = true;
                    if !s.matches(fv) {
                        return false;
                    }
                }
                for (rx, s) in &self.pattern_properties {
                    if rx.is_match(k) {
                        covered = true;
                        if !s.matches(fv) {
                            return false;
                        }
                    }
                }
                if !covered {
                    match &self.additional {
                        Some(Additional::Allowed(false)) => return false,
                        Some(Additional::Schema(s)) => {
                            if !s.matches(fv) {
                                return false;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if !self.all_of.iter().all(|s| s.matches(v)) {
            return false;
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|s| s.matches(v)) {
            return false;
        }
        if !self.one_of.is_empty() && self.one_of.iter().filter(|s| s.matches(v)).count() != 1 {
            return false;
        }
        if self.not.as_ref().is_some_and(|s| s.matches(v)) {
            return false;
        }
        true
    }
}
