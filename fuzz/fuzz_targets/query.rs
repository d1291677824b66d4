//! Filter, update and pipeline parsing and evaluation. The input is a BSON document
//! `{filter, update, arrayFilters, pipeline, docs}` (any part may be missing or wrong):
//! parsing must refuse bad specifications with an error, and evaluation over `docs` must
//! never panic, whatever the documents hold.
#![no_main]

use std::sync::Arc;

use bson::{Bson, DateTime, Document, Timestamp};
use libfuzzer_sys::fuzz_target;
use query::filter::Filter;
use query::pipeline::{Env, Pipeline, SharedEnv};
use query::update::{Update, UpdateCtx};

/// Every collection a `$lookup` or `$unionWith` names holds the input documents.
struct Docs(Vec<Document>);

impl Env for Docs {
    fn collection_docs(&self, _db: &str, _coll: &str) -> errors::Result<Vec<Document>> {
        Ok(self.0.clone())
    }
    fn now(&self) -> DateTime {
        DateTime::from_millis(1_700_000_000_000)
    }
    fn cluster_time(&self) -> Timestamp {
        Timestamp {
            time: 1_700_000_000,
            increment: 1,
        }
    }
}

fn docs_of(v: Option<&Bson>) -> Vec<Document> {
    match v {
        Some(Bson::Array(a)) => a
            .iter()
            .filter_map(|b| b.as_document().cloned())
            .take(16)
            .collect(),
        _ => Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Document::from_reader(data) else {
        return;
    };
    let docs = docs_of(input.get("docs"));
    if let Ok(spec) = input.get_document("filter") {
        if let Ok(f) = Filter::parse(spec) {
            for d in &docs {
                let _ = f.matches(d);
            }
        }
    }
    if let Some(spec) = input.get("update") {
        let array_filters = docs_of(input.get("arrayFilters"));
        let af = input.get("arrayFilters").map(|_| array_filters.as_slice());
        if let Ok(u) = Update::parse(spec, af) {
            let env = Docs(docs.clone());
            for (i, d) in docs.iter().enumerate() {
                let ctx = UpdateCtx {
                    is_upsert_insert: i % 2 == 1,
                    now: env.now(),
                    positional: None,
                };
                let _ = u.apply(d, &ctx, &env);
            }
        }
    }
    if let Ok(stages) = input.get_array("pipeline") {
        let stages: Vec<Document> = stages
            .iter()
            .filter_map(|b| b.as_document().cloned())
            .collect();
        if let Ok(p) = Pipeline::parse(&stages, "fuzz") {
            let env: SharedEnv = Arc::new(Docs(docs.clone()));
            let _ = p.run(docs, &env);
        }
    }
});
