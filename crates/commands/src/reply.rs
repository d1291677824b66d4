//! Replies: the only code that builds `{ok: 1, ...}` and `{ok: 0, errmsg, code, codeName}`.

use bson::{Bson, Document};
use errors::{ExtraInfo, MongoError, labels};

/// A command's reply, and whether the connection must close without sending it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub doc: Document,
    pub close_connection: bool,
    /// A change stream's catch-up slot, held until the reply has been written: a batch of
    /// history is memory until the client has read it.
    pub slot: Option<std::sync::Arc<tokio::sync::OwnedSemaphorePermit>>,
    /// A change stream's batch of encoded events, sent as the field `.0` at the front of
    /// the `cursor` document (the reply's first field) without decoding them again.
    pub batch: Option<(
        &'static str,
        Vec<std::sync::Arc<changestream::event::Encoded>>,
    )>,
}

impl Reply {
    /// `{...fields, ok: 1}`.
    pub fn ok(mut fields: Document) -> Reply {
        fields.insert("ok", 1.0);
        Reply {
            doc: fields,
            close_connection: false,
            slot: None,
            batch: None,
        }
    }

    /// An error reply.
    pub fn error(e: MongoError) -> Reply {
        Reply {
            doc: error_doc(&e),
            close_connection: false,
            slot: None,
            batch: None,
        }
    }

    /// Drop the connection with no reply (a fail point's `closeConnection`).
    pub fn close() -> Reply {
        Reply {
            doc: Document::new(),
            close_connection: true,
            slot: None,
            batch: None,
        }
    }
}

impl Reply {
    /// The reply as one document, with any encoded batch decoded into it (for OP_REPLY,
    /// which has no use for the shared bytes).
    pub fn full_doc(&self) -> std::borrow::Cow<'_, Document> {
        let Some((key, events)) = &self.batch else {
            return std::borrow::Cow::Borrowed(&self.doc);
        };
        let mut d = self.doc.clone();
        let batch: Vec<Bson> = events
            .iter()
            .map(|e| Document::from_reader(e.bytes.as_slice()).map_or(Bson::Null, Bson::Document))
            .collect();
        if let Some(Bson::Document(c)) = d.get_mut("cursor") {
            let mut with = Document::new();
            with.insert(*key, batch);
            with.extend(std::mem::take(c));
            *c = with;
        }
        std::borrow::Cow::Owned(d)
    }

    /// Encodes the reply as an OP_MSG.
    pub fn encode_msg(
        &self,
        request_id: i32,
        response_to: i32,
        compressor: Option<wire::Compressor>,
    ) -> Vec<u8> {
        match &self.batch {
            Some((key, events)) => wire::encode_msg_with_batch(
                request_id,
                response_to,
                0,
                &self.doc,
                key,
                &events
                    .iter()
                    .map(|e| e.bytes.as_slice())
                    .collect::<Vec<_>>(),
                compressor,
            ),
            None => wire::encode_msg(request_id, response_to, 0, &self.doc, compressor),
        }
    }
}

/// `{ok: 0, errmsg, code, codeName, errorLabels?}` plus any extra fields of the error.
pub fn error_doc(e: &MongoError) -> Document {
    let mut d = Document::new();
    d.insert("ok", 0.0);
    d.insert("errmsg", e.message.clone());
    d.insert("code", e.code);
    d.insert("codeName", e.code_name.clone());
    add_extra(&mut d, e);
    if !e.labels.is_empty() {
        d.insert(
            "errorLabels",
            e.labels
                .iter()
                .map(|l| Bson::String(l.clone()))
                .collect::<Vec<_>>(),
        );
    }
    d
}

/// A write error entry: `{index, code, errmsg, ...}`.
pub fn write_error(index: usize, e: &MongoError) -> Document {
    let mut d = Document::new();
    d.insert("index", index as i32);
    d.insert("code", e.code);
    d.insert("errmsg", e.message.clone());
    add_extra(&mut d, e);
    d
}

fn add_extra(d: &mut Document, e: &MongoError) {
    if let Some(extra) = &e.extra {
        match extra.as_ref() {
            ExtraInfo::DuplicateKey {
                key_pattern,
                key_value,
            } => {
                if let Ok(k) = Document::from_reader(key_pattern.as_slice()) {
                    d.insert("keyPattern", k);
                }
                if let Ok(v) = Document::from_reader(key_value.as_slice()) {
                    d.insert("keyValue", v);
                }
            }
            ExtraInfo::ErrInfo(info) => {
                if let Ok(v) = Document::from_reader(info.as_slice()) {
                    d.insert("errInfo", v);
                }
            }
            ExtraInfo::Fields(f) => {
                if let Ok(v) = Document::from_reader(f.as_slice()) {
                    d.extend(v);
                }
            }
        }
    }
}

/// Whether a command is a retryable write: a write with a `txnNumber`, outside a
/// transaction.
pub fn is_retryable_write(cmd_name: &str, cmd: &Document) -> bool {
    matches!(
        cmd_name,
        "insert" | "update" | "delete" | "findAndModify" | "findandmodify" | "bulkWrite"
    ) && cmd.contains_key("txnNumber")
        && !cmd.contains_key("autocommit")
}

/// The labels of a reply carrying a write concern error: those the error names, else
/// `RetryableWriteError` for a retryable code on a retryable write, a commit or an abort
/// (never on a statement inside a transaction).
pub fn write_concern_error_labels(cmd_name: &str, cmd: &Document, wce: &Document) -> Vec<String> {
    if let Ok(labels) = wce.get_array("errorLabels") {
        return labels
            .iter()
            .filter_map(|l| l.as_str().map(String::from))
            .collect();
    }
    let code = wce.get_i32("code").unwrap_or(0);
    let ends_txn = matches!(cmd_name, "commitTransaction" | "abortTransaction");
    if (ends_txn || is_retryable_write(cmd_name, cmd))
        && errors::RETRYABLE_WRITE_CODES.contains(&code)
    {
        vec![labels::RETRYABLE_WRITE_ERROR.to_string()]
    } else {
        Vec::new()
    }
}

/// Codes after which a whole transaction may be retried: write conflicts, lock
/// timeouts, prepare conflicts, snapshot errors, routing errors, and NoSuchTransaction.
const TRANSIENT_TXN_CODES: &[i32] = &[112, 24, 267, 239, 246, 272, 117, 13388, 63, 150, 249, 251];

/// Adds the labels the server itself attaches: `RetryableWriteError` for retryable codes on
/// retryable writes, `ResumableChangeStreamError` for resumable codes on change stream
/// getMores (the caller adds that one, since it knows the cursor kind).
pub fn add_server_labels(mut e: MongoError, cmd_name: &str, cmd: &Document) -> MongoError {
    let ends_txn = matches!(cmd_name, "commitTransaction" | "abortTransaction");
    if cmd.contains_key("autocommit") || ends_txn {
        // Inside a transaction, as MongoDB's isTransientTransactionError: the whole
        // transaction may be retried after these.
        let c = e.code;
        let mut transient = TRANSIENT_TXN_CODES.contains(&c);
        if !ends_txn {
            transient |= errors::RETRYABLE_WRITE_CODES.contains(&c);
        }
        if transient {
            e = e.with_label(labels::TRANSIENT_TRANSACTION_ERROR);
        }
        if ends_txn && errors::RETRYABLE_WRITE_CODES.contains(&c) {
            e = e.with_label(labels::RETRYABLE_WRITE_ERROR);
        }
        return e;
    }
    let is_write = matches!(
        cmd_name,
        "insert"
            | "update"
            | "delete"
            | "findAndModify"
            | "findandmodify"
            | "bulkWrite"
            | "commitTransaction"
            | "abortTransaction"
    );
    if is_write && cmd.contains_key("txnNumber") && errors::RETRYABLE_WRITE_CODES.contains(&e.code)
    {
        e = e.with_label(labels::RETRYABLE_WRITE_ERROR);
    }
    e
}
