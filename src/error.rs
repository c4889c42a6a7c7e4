//! The errors callers see, and their one mapping to gRPC status codes.
//!
//! Messages say what was wrong with the request. They never carry share bytes, cipherTexts,
//! tokens, secrets, file paths or the text of internal errors.

use tonic::{Code, Status};

/// A request field, named as each protocol spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ClientId,
    BackupMethod,
    Share,
    CipherText,
    BackupSharePairId,
    BackupSharePairIds,
    Status,
    Name,
    Role,
    NewMasterKey,
    Kind,
    Version,
}

impl Field {
    /// The protobuf field name.
    pub fn proto_name(self) -> &'static str {
        match self {
            Field::ClientId => "client_id",
            Field::BackupMethod => "backup_method",
            Field::Share => "share",
            Field::CipherText => "cipher_text",
            Field::BackupSharePairId => "backup_share_pair_id",
            Field::BackupSharePairIds => "backup_share_pair_ids",
            Field::Status => "status",
            Field::Name => "name",
            Field::Role => "role",
            Field::NewMasterKey => "new_master_key",
            Field::Kind => "kind",
            Field::Version => "version",
        }
    }

    /// The JSON (camelCase) field name, as Portal spells it.
    pub fn json_name(self) -> &'static str {
        match self {
            Field::ClientId => "clientId",
            Field::BackupMethod => "backupMethod",
            Field::Share => "share",
            Field::CipherText => "cipherText",
            Field::BackupSharePairId => "backupSharePairId",
            Field::BackupSharePairIds => "backupSharePairIds",
            Field::Status => "status",
            Field::Name => "name",
            Field::Role => "role",
            Field::NewMasterKey => "newMasterKey",
            Field::Kind => "kind",
            Field::Version => "version",
        }
    }
}

/// Everything a vault operation can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{}: {reason}", field.proto_name())]
    InvalidArgument { field: Field, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("too many failed authentications; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("sharevault is starting or stopping; try again")]
    NotReady,
    #[error("storage is unavailable; nothing was changed")]
    Unavailable,
    /// A write whose commit the database did not confirm in time (the connection broke, or
    /// the deadline passed, while it was queued or committing): it may have been made. Sent
    /// again with the same bytes, it is a repeat, never a duplicate.
    #[error("storage did not confirm the write in time; it may have been made: send it again")]
    Unsettled,
    #[error("a stored record failed its integrity check and was not served")]
    Corrupt,
    #[error("internal error")]
    Internal,
}

impl VaultError {
    pub fn invalid(field: Field, reason: impl Into<String>) -> Self {
        VaultError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            VaultError::InvalidArgument { .. } => Code::InvalidArgument,
            VaultError::NotFound(_) => Code::NotFound,
            VaultError::FailedPrecondition(_) => Code::FailedPrecondition,
            VaultError::AlreadyExists(_) => Code::AlreadyExists,
            VaultError::Unauthenticated(_) => Code::Unauthenticated,
            VaultError::PermissionDenied(_) => Code::PermissionDenied,
            VaultError::RateLimited { .. } => Code::ResourceExhausted,
            VaultError::NotReady | VaultError::Unavailable | VaultError::Unsettled => {
                Code::Unavailable
            }
            VaultError::Corrupt => Code::DataLoss,
            VaultError::Internal => Code::Internal,
        }
    }

    /// A short name of the outcome, for logs and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            VaultError::InvalidArgument { .. } => "invalid_argument",
            VaultError::NotFound(_) => "not_found",
            VaultError::FailedPrecondition(_) => "failed_precondition",
            VaultError::AlreadyExists(_) => "already_exists",
            VaultError::Unauthenticated(_) => "unauthenticated",
            VaultError::PermissionDenied(_) => "permission_denied",
            VaultError::RateLimited { .. } => "rate_limited",
            VaultError::NotReady => "not_ready",
            VaultError::Unavailable | VaultError::Unsettled => "unavailable",
            VaultError::Corrupt => "data_loss",
            VaultError::Internal => "internal",
        }
    }
}

impl From<VaultError> for Status {
    fn from(err: VaultError) -> Self {
        let mut status = Status::new(err.code(), err.to_string());
        if let VaultError::RateLimited { retry_after_secs } = err
            && let Ok(value) = retry_after_secs.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}
