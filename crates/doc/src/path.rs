//! Dotted paths over documents.
//!
//! Two kinds of lookup: [`get_path`] follows a path literally (a numeric component indexes
//! an array), as projections of `_id` and update targets do; [`lookup_all`] expands arrays
//! along the way as query matching does (`{"a.b": 1}` matches `{a: [{b: 1}]}`).

use bson::{Bson, Document};

/// The value at a dotted path, following numeric components into arrays.
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut cur = doc.get(first)?;
    for p in parts {
        cur = match cur {
            Bson::Document(d) => d.get(p)?,
            Bson::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Every value a query path reaches, expanding arrays the way MongoDB's matcher does.
///
/// For `a.b` over `{a: [{b: 1}, {b: [2, 3]}]}` this yields `1` and `[2, 3]`; the caller also
/// considers the elements of an array value. A numeric component both indexes an array
/// and names a field of its embedded documents. `None` entries stand for a missing value
/// reached through the path (so `{x: null}` can match missing).
pub fn lookup_all(doc: &Document, path: &str) -> Vec<Option<Bson>> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    match doc.get(parts[0]) {
        Some(next) => walk(next, &parts[1..], &mut out, false),
        None => out.push(None),
    }
    out
}

fn walk(v: &Bson, parts: &[&str], out: &mut Vec<Option<Bson>>, in_array: bool) {
    if parts.is_empty() {
        out.push(Some(v.clone()));
        return;
    }
    let p = parts[0];
    match v {
        Bson::Document(d) => match d.get(p) {
            Some(next) => walk(next, &parts[1..], out, false),
            None => out.push(None),
        },
        Bson::Array(arr) => {
            if let Some(e) = p.parse::<usize>().ok().and_then(|i| arr.get(i)) {
                walk(e, &parts[1..], out, false);
            }
            for e in arr {
                if let Bson::Document(_) = e {
                    walk(e, parts, out, true);
                }
            }
            if arr.is_empty() && !in_array {
                out.push(None);
            }
        }
        _ => {
            if !in_array {
                out.push(None);
            }
        }
    }
}

/// Sets the value at a dotted path, creating embedded documents as needed. Fails when a
/// component crosses a non-document value (arrays are indexed by numeric components).
pub fn set_path(doc: &mut Document, path: &str, value: Bson) -> Result<(), String> {
    match path.split_once('.') {
        None => {
            doc.insert(path, value);
            Ok(())
        }
        Some((head, rest)) => {
            let entry = doc
                .entry(head.to_string())
                .or_insert_with(|| Bson::Document(Document::new()));
            set_in_value(entry, rest, value)
        }
    }
}

fn set_in_value(v: &mut Bson, path: &str, value: Bson) -> Result<(), String> {
    match v {
        Bson::Document(d) => set_path(d, path, value),
        Bson::Array(a) => {
            let (head, rest) = match path.split_once('.') {
                Some((h, r)) => (h, Some(r)),
                None => (path, None),
            };
            let i: usize = head
                .parse()
                .map_err(|_| format!("Cannot create field '{head}' in array"))?;
            while a.len() <= i {
                a.push(Bson::Null);
            }
            match rest {
                None => {
                    a[i] = value;
                    Ok(())
                }
                Some(r) => {
                    if matches!(a[i], Bson::Null) {
                        a[i] = Bson::Document(Document::new());
                    }
                    set_in_value(&mut a[i], r, value)
                }
            }
        }
        other => Err(format!("Cannot create field in element {other}")),
    }
}

/// Removes the value at a dotted path, returning it. A numeric component into an array
/// sets that element to null (MongoDB's `$unset` on an array element).
pub fn remove_path(doc: &mut Document, path: &str) -> Option<Bson> {
    match path.split_once('.') {
        None => doc.remove(path),
        Some((head, rest)) => match doc.get_mut(head)? {
            Bson::Document(d) => remove_path(d, rest),
            Bson::Array(a) => {
                let (h, r) = match rest.split_once('.') {
                    Some((h, r)) => (h, Some(r)),
                    None => (rest, None),
                };
                let i: usize = h.parse().ok()?;
                let e = a.get_mut(i)?;
                match r {
                    None => Some(std::mem::replace(e, Bson::Null)),
                    Some(r) => match e {
                        Bson::Document(d) => remove_path(d, r),
                        _ => None,
                    },
                }
            }
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc};

    #[test]
    fn literal_paths() {
        let d = doc! {"a": {"b": [10, {"c": 5}]}};
        assert_eq!(get_path(&d, "a.b.0"), Some(&bson!(10)));
        assert_eq!(get_path(&d, "a.b.1.c"), Some(&bson!(5)));
        assert_eq!(get_path(&d, "a.x"), None);
    }

    #[test]
    fn expanding_paths() {
        let d = doc! {"a": [{"b": 1}, {"b": [2, 3]}, {"c": 1}]};
        let got = lookup_all(&d, "a.b");
        assert!(got.contains(&Some(bson!(1))));
        assert!(got.contains(&Some(bson!([2, 3]))));
    }

    #[test]
    fn set_and_remove() {
        let mut d = doc! {"a": {"b": 1}};
        set_path(&mut d, "a.c.d", bson!(2)).unwrap();
        assert_eq!(d, doc! {"a": {"b": 1, "c": {"d": 2}}});
        assert_eq!(remove_path(&mut d, "a.b"), Some(bson!(1)));
        assert!(set_path(&mut d, "a.c.d.e", bson!(1)).is_err());
    }
}
