//! MongoDB error codes, code names and error labels, in one place.
//!
//! Every other crate reports failures as a [`MongoError`]: a numeric code with its
//! `codeName`, a message, and any error labels. `commands::reply` is the only code that
//! turns one into an `{ok: 0, errmsg, code, codeName}` reply document.
//!
//! The codes are written by hand for the ones Eddy emits and checked against MongoDB's
//! published list of error codes.

use std::fmt;

macro_rules! error_codes {
    ($($name:ident = $code:literal,)*) => {
        /// A MongoDB error code. The variant name is the wire `codeName`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i32)]
        #[allow(clippy::enum_variant_names)]
        pub enum ErrorCode {
            $($name = $code,)*
        }

        impl ErrorCode {
            /// The numeric code.
            pub fn code(self) -> i32 {
                self as i32
            }

            /// The `codeName` MongoDB reports for this code.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => stringify!($name),)*
                }
            }

            /// The code with this number, if Eddy knows it.
            pub fn from_code(code: i32) -> Option<ErrorCode> {
                match code {
                    $($code => Some(ErrorCode::$name),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    InternalError = 1,
    BadValue = 2,
    NoSuchKey = 4,
    GraphContainsCycle = 5,
    HostUnreachable = 6,
    HostNotFound = 7,
    UnknownError = 8,
    FailedToParse = 9,
    CannotMutateObject = 10,
    UserNotFound = 11,
    UnsupportedFormat = 12,
    Unauthorized = 13,
    TypeMismatch = 14,
    Overflow = 15,
    InvalidLength = 16,
    ProtocolError = 17,
    AuthenticationFailed = 18,
    RoleNotFound = 31,
    RolesNotRelated = 32,
    PrivilegeNotFound = 33,
    InvalidRoleModification = 49,
    MechanismUnavailable = 334,
    IllegalOperation = 20,
    AlreadyInitialized = 23,
    NamespaceNotFound = 26,
    IndexNotFound = 27,
    PathNotViable = 28,
    NonExistentPath = 29,
    InvalidPath = 30,
    ConflictingUpdateOperators = 40,
    FileStreamFailed = 39,
    CursorNotFound = 43,
    NamespaceExists = 48,
    DollarPrefixedFieldName = 52,
    InvalidIdField = 53,
    NotSingleValueField = 54,
    InvalidDBRef = 55,
    EmptyFieldName = 56,
    DottedFieldName = 57,
    CommandNotFound = 59,
    ShutdownInProgress = 91,
    ImmutableField = 66,
    InvalidOptions = 72,
    InvalidNamespace = 73,
    NodeNotFound = 74,
    NoReplicationEnabled = 76,
    IndexOptionsConflict = 85,
    IndexKeySpecsConflict = 86,
    NetworkTimeout = 89,
    OperationFailed = 96,
    CannotCreateIndex = 67,
    IndexAlreadyExists = 68,
    MaxTimeMSExpired = 50,
    ExceededTimeLimit = 262,
    InvalidReplicaSetConfig = 93,
    NotYetInitialized = 94,
    NotSecondary = 95,
    NewReplicaSetConfigurationIncompatible = 103,
    WriteConflict = 112,
    CommandFailed = 125,
    ConflictingOperationInProgress = 117,
    NoSuchTransaction = 251,
    TransactionTooOld = 225,
    TransactionCommitted = 256,
    SnapshotTooOld = 239,
    SnapshotUnavailable = 246,
    TransactionExceededLifetimeLimitSeconds = 290,
    InvalidUUID = 207,
    ReadConcernMajorityNotEnabled = 148,
    StaleEpoch = 150,
    OperationNotSupportedInTransaction = 263,
    NotWritablePrimary = 10107,
    InterruptedAtShutdown = 11600,
    Interrupted = 11601,
    InterruptedDueToReplStateChange = 11602,
    BackgroundOperationInProgressForNamespace = 12587,
    NotPrimaryNoSecondaryOk = 13435,
    NotPrimaryOrSecondary = 13436,
    SocketException = 9001,
    CursorKilled = 237,
    InvalidResumeToken = 260,
    ChangeStreamFatalError = 280,
    ChangeStreamHistoryLost = 286,
    ChangeStreamTopologyChange = 40573,
    RetryChangeStream = 234,
    StaleConfig = 13388,
    StaleShardVersion = 63,
    FailedToSatisfyReadPreference = 133,
    PrimarySteppedDown = 189,
    Location40324 = 40324,
    Location40415 = 40415,
    Location40602 = 40602,
    Location50865 = 50865,
    Location31254 = 31254,
    Location31253 = 31253,
    Location16410 = 16410,
    Location16554 = 16554,
    Location17276 = 17276,
    Location15998 = 15998,
    Location40323 = 40323,
    Location28769 = 28769,
    Location51024 = 51024,
    DuplicateKey = 11000,
    BSONObjectTooLarge = 10334,
    Location10065 = 10065,
    LockTimeout = 24,
    QueryPlanKilled = 175,
    NetworkInterfaceExceededTimeLimit = 202,
    NotImplemented = 238,
    APIStrictError = 323,
    InvalidIndexSpecificationOption = 197,
    CappedPositionLost = 136,
    CannotBuildIndexKeys = 183,
    OptionNotSupportedOnView = 167,
    CommandNotSupportedOnView = 166,
    UnknownTopologyVersion = 301,
    NoQueryExecutionPlans = 291,
    InvalidPipelineOperator = 168,
    Location15983 = 15983,
    Location16020 = 16020,
    Location31324 = 31324,
    Location40352 = 40352,
    Location40353 = 40353,
    Location51075 = 51075,
    Location4822819 = 4822819,
    NoMatchingDocument = 47,
    InvalidBSON = 22,
    LockBusy = 46,
    UnrecognizedCommand = 52_000,
    ObjectIsBusy = 314,
    MaxSubPipelineDepthExceeded = 5_058_100,
    DocumentValidationFailure = 121,
    QueryFeatureNotAllowed = 224,
    UnsatisfiableWriteConcern = 100,
    UnknownReplWriteConcern = 79,
    WriteConcernFailed = 64,
    QueryExceededMemoryLimitNoDiskUseAllowed = 292,
    ExceededMemoryLimit = 146,
}

/// Labels a driver reads to decide whether to retry or resume.
pub mod labels {
    pub const RETRYABLE_WRITE_ERROR: &str = "RetryableWriteError";
    pub const RESUMABLE_CHANGE_STREAM_ERROR: &str = "ResumableChangeStreamError";
    pub const NON_RESUMABLE_CHANGE_STREAM_ERROR: &str = "NonResumableChangeStreamError";
    pub const TRANSIENT_TRANSACTION_ERROR: &str = "TransientTransactionError";
    pub const UNKNOWN_TRANSACTION_COMMIT_RESULT: &str = "UnknownTransactionCommitResult";
}

/// Codes the change streams specification lists as resumable: an error with one of these
/// on a `getMore` of a change stream carries the `ResumableChangeStreamError` label.
pub const RESUMABLE_CHANGE_STREAM_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 234, 133,
];

/// Codes on which a driver retries a retryable write (the `RetryableWriteError` label).
pub const RETRYABLE_WRITE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

mod interrupt;
pub use interrupt::{Interrupt, expired};

/// An error as MongoDB reports it: a code (number and name), a message and labels.
///
/// The code is kept as a number and a name rather than [`ErrorCode`] so that fail points
/// can inject any code a test asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct MongoError {
    pub code: i32,
    pub code_name: String,
    pub message: String,
    pub labels: Vec<String>,
    /// Extra fields for the error reply (e.g. `keyPattern`/`keyValue` for DuplicateKey).
    pub extra: Option<Box<ExtraInfo>>,
}

/// Structured extra information carried by some errors.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtraInfo {
    /// DuplicateKey: the index key pattern and the offending key value, each as raw BSON
    /// document bytes (so this crate need not depend on `bson`).
    DuplicateKey {
        key_pattern: Vec<u8>,
        key_value: Vec<u8>,
    },
    /// An `errInfo` document (DocumentValidationFailure's details), as raw BSON bytes.
    ErrInfo(Vec<u8>),
    /// Fields added to the error reply as they are (e.g. a not-primary error's
    /// `topologyVersion`), as a raw BSON document.
    Fields(Vec<u8>),
}

impl MongoError {
    /// An error with a known code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> MongoError {
        MongoError {
            code: code.code(),
            code_name: code.name().to_string(),
            message: message.into(),
            labels: Vec::new(),
            extra: None,
        }
    }

    /// An error with any numeric code (fail points inject codes Eddy does not know).
    pub fn with_code(code: i32, message: impl Into<String>) -> MongoError {
        let code_name = ErrorCode::from_code(code)
            .map_or_else(|| format!("Location{code}"), |c| c.name().to_string());
        MongoError {
            code,
            code_name,
            message: message.into(),
            labels: Vec::new(),
            extra: None,
        }
    }

    /// BadValue (2).
    pub fn bad_value(message: impl Into<String>) -> MongoError {
        MongoError::new(ErrorCode::BadValue, message)
    }

    /// TypeMismatch (14).
    pub fn type_mismatch(message: impl Into<String>) -> MongoError {
        MongoError::new(ErrorCode::TypeMismatch, message)
    }

    /// FailedToParse (9).
    pub fn failed_to_parse(message: impl Into<String>) -> MongoError {
        MongoError::new(ErrorCode::FailedToParse, message)
    }

    /// InternalError (1), for failures that are Eddy's fault.
    pub fn internal(message: impl Into<String>) -> MongoError {
        MongoError::new(ErrorCode::InternalError, message)
    }

    /// Adds an error label.
    #[must_use]
    pub fn with_label(mut self, label: &str) -> MongoError {
        if !self.labels.iter().any(|l| l == label) {
            self.labels.push(label.to_string());
        }
        self
    }

    /// Whether this error has the given code.
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == code.code()
    }
}

impl fmt::Display for MongoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code_name, self.code, self.message)
    }
}

impl std::error::Error for MongoError {}

/// A result whose error is a [`MongoError`].
pub type Result<T, E = MongoError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        assert_eq!(ErrorCode::DuplicateKey.code(), 11000);
        assert_eq!(ErrorCode::DuplicateKey.name(), "DuplicateKey");
        assert_eq!(
            ErrorCode::from_code(286),
            Some(ErrorCode::ChangeStreamHistoryLost)
        );
        let e = MongoError::with_code(40324, "Unrecognized pipeline stage name");
        assert_eq!(e.code_name, "Location40324");
        let e = MongoError::with_code(43, "x");
        assert_eq!(e.code_name, "CursorNotFound");
    }
}
