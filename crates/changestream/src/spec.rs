//! Parsing a `$changeStream` stage and the stages after it.

use bson::{Bson, Document, Timestamp};
use doc::type_name;
use errors::{ErrorCode, MongoError, Result};
use query::pipeline::Pipeline;
use storage::Namespace;

use crate::resume_token::ResumeTokenData;

/// What a stream watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Collection(Namespace),
    Database(String),
    Cluster,
}

/// The `fullDocument` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullDocument {
    Default,
    UpdateLookup,
    WhenAvailable,
    Required,
}

/// The `fullDocumentBeforeChange` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullDocumentBeforeChange {
    Off,
    WhenAvailable,
    Required,
}

/// Where a stream starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// After everything committed when the stream opens.
    Now,
    /// After the event (or invalidate, with `start_after`) of this token.
    After {
        token: ResumeTokenData,
        start_after: bool,
    },
    /// At this clusterTime, inclusive.
    AtTime(Timestamp),
}

/// A parsed change stream request.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub target: Target,
    pub full_document: FullDocument,
    pub full_document_before_change: FullDocumentBeforeChange,
    pub show_expanded_events: bool,
    pub start: Start,
    /// The stages after `$changeStream`, if any.
    pub pipeline: Option<Pipeline>,
    /// Whether the pipeline ends with `$changeStreamSplitLargeEvent`.
    pub split_large_events: bool,
}

impl StreamSpec {
    /// Whether the stream's events have the default shape (no `fullDocument` lookups or
    /// images, no expanded events): such streams share one event per entry.
    pub fn default_shape(&self) -> bool {
        self.full_document == FullDocument::Default
            && self.full_document_before_change == FullDocumentBeforeChange::Off
            && !self.show_expanded_events
    }
}

/// Stages allowed after `$changeStream`.
const ALLOWED: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
    "$redact",
];

fn type_err(field: &str, want: &str, got: &Bson) -> MongoError {
    MongoError::new(
        ErrorCode::TypeMismatch,
        format!(
            "BSON field '$changeStream.{field}' is the wrong type '{}', expected type '{want}'",
            type_name(got)
        ),
    )
}

/// Parses `{$changeStream: {...}}` and the rest of the pipeline for a request on `db` with
/// `aggregate: coll` (or `1`, `coll == None`).
///
/// # Errors
/// MongoDB's errors for bad options, conflicts, forbidden targets and stages.
pub fn parse(db: &str, coll: Option<&str>, stage: &Bson, rest: &[Document]) -> Result<StreamSpec> {
    let Bson::Document(opts) = stage else {
        return Err(MongoError::with_code(
            50808,
            "$changeStream stage expects a document as argument",
        ));
    };
    let mut full_document = FullDocument::Default;
    let mut before = FullDocumentBeforeChange::Off;
    let mut show_expanded = false;
    let mut all_changes = false;
    let mut resume_after = None;
    let mut start_after = None;
    let mut at_time = None;
    for (k, v) in opts {
        match k.as_str() {
            "fullDocument" => {
                let Bson::String(s) = v else {
                    return Err(type_err(k, "string", v));
                };
                full_document = match s.as_str() {
                    "default" => FullDocument::Default,
                    "updateLookup" => FullDocument::UpdateLookup,
                    "whenAvailable" => FullDocument::WhenAvailable,
                    "required" => FullDocument::Required,
                    other => {
                        return Err(MongoError::bad_value(format!(
                            "'{other}' is not a valid value for 'fullDocument'"
                        )));
                    }
                };
            }
            "fullDocumentBeforeChange" => {
                let Bson::String(s) = v else {
                    return Err(type_err(k, "string", v));
                };
                before = match s.as_str() {
                    "off" => FullDocumentBeforeChange::Off,
                    "whenAvailable" => FullDocumentBeforeChange::WhenAvailable,
                    "required" => FullDocumentBeforeChange::Required,
                    other => {
                        return Err(MongoError::bad_value(format!(
                            "'{other}' is not a valid value for 'fullDocumentBeforeChange'"
                        )));
                    }
                };
            }
            "showExpandedEvents" => {
                let Bson::Boolean(b) = v else {
                    return Err(type_err(k, "bool", v));
                };
                show_expanded = *b;
            }
            "allChangesForCluster" => {
                let Bson::Boolean(b) = v else {
                    return Err(type_err(k, "bool", v));
                };
                all_changes = *b;
            }
            "resumeAfter" | "startAfter" => {
                let Bson::Document(d) = v else {
                    return Err(type_err(k, "object", v));
                };
                let t = ResumeTokenData::from_document(d)?;
                if k == "resumeAfter" {
                    resume_after = Some(t);
                } else {
                    start_after = Some(t);
                }
            }
            "startAtOperationTime" => {
                let Bson::Timestamp(t) = v else {
                    return Err(type_err(k, "timestamp", v));
                };
                at_time = Some(*t);
            }
            // Accepted and ignored, as internal or sharding-only options.
            "allowToRunOnConfigDB"
            | "allowToRunOnSystemNS"
            | "showSystemEvents"
            | "showMigrationEvents"
            | "showRawUpdateDescription" => {}
            other => {
                return Err(MongoError::with_code(
                    40415,
                    format!("BSON field '$changeStream.{other}' is an unknown field."),
                ));
            }
        }
    }
    let starts = usize::from(resume_after.is_some())
        + usize::from(start_after.is_some())
        + usize::from(at_time.is_some());
    if starts > 1 {
        return Err(MongoError::with_code(
            40674,
            "Only one type of resume option is allowed, but multiple were found.",
        ));
    }
    let start = if let Some(t) = resume_after {
        if t.from_invalidate {
            return Err(MongoError::new(
                ErrorCode::InvalidResumeToken,
                "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
            ));
        }
        Start::After {
            token: t,
            start_after: false,
        }
    } else if let Some(t) = start_after {
        Start::After {
            token: t,
            start_after: true,
        }
    } else if let Some(t) = at_time {
        Start::AtTime(t)
    } else {
        Start::Now
    };

    let target = match coll {
        Some(c) => {
            let ns = Namespace::new(db, c);
            if matches!(db, "admin" | "local" | "config") || ns.is_system() {
                return Err(MongoError::new(
                    ErrorCode::InvalidNamespace,
                    format!(
                        "$changeStream may not be opened on the internal {} collection",
                        ns.full()
                    ),
                ));
            }
            if all_changes {
                return Err(MongoError::bad_value(
                    "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' database, and with no collection name",
                ));
            }
            Target::Collection(ns)
        }
        None if db == "admin" => {
            if !all_changes {
                return Err(MongoError::new(
                    ErrorCode::InvalidNamespace,
                    "$changeStream may not be opened on the internal admin database",
                ));
            }
            Target::Cluster
        }
        None => {
            if all_changes {
                return Err(MongoError::bad_value(
                    "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' database, and with no collection name",
                ));
            }
            if matches!(db, "local" | "config") {
                return Err(MongoError::new(
                    ErrorCode::InvalidNamespace,
                    format!("$changeStream may not be opened on the internal {db} database"),
                ));
            }
            Target::Database(db.to_string())
        }
    };

    let mut stages: Vec<Document> = rest.to_vec();
    let mut split_large_events = false;
    if let Some(pos) = stages
        .iter()
        .position(|s| s.contains_key("$changeStreamSplitLargeEvent"))
    {
        if pos != stages.len() - 1 {
            return Err(MongoError::with_code(
                7182802,
                "$changeStreamSplitLargeEvent must be the last stage in the pipeline",
            ));
        }
        stages.pop();
        split_large_events = true;
    }
    for s in &stages {
        let name = s.keys().next().map(String::as_str).unwrap_or("");
        if name == "$changeStream" {
            return Err(MongoError::with_code(
                40602,
                "$changeStream is only valid as the first stage in a pipeline",
            ));
        }
    }
    let pipeline = if stages.is_empty() {
        None
    } else {
        let p = Pipeline::parse(&stages, db)?;
        for name in p.stage_names() {
            if !ALLOWED.contains(&name) {
                return Err(MongoError::new(
                    ErrorCode::IllegalOperation,
                    format!("{name} is not permitted in a $changeStream pipeline"),
                ));
            }
        }
        Some(p)
    };
    Ok(StreamSpec {
        target,
        full_document,
        full_document_before_change: before,
        show_expanded_events: show_expanded,
        start,
        pipeline,
        split_large_events,
    })
}
