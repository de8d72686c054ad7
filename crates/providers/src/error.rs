//! The providers' errors: [`ProviderError`] when a provider cannot be
//! opened or keep its own state, [`ActionError`] when one attempt of an
//! action fails.

use drover_model::ActionOutcome;
use std::path::PathBuf;

/// Why a provider could not be opened or could not keep its own state.
/// Failures of one action are [`ActionError`]s.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot {operation} {path}: {source}; check that the directory exists and is writable by this process")]
    Io {
        /// What was being done, e.g. "read the sim state file".
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "sim state file {path} is corrupt ({reason}); restore it from a copy, or move it aside to start \
         an empty simulated world (every simulated instance it held is then forgotten)"
    )]
    CorruptState { path: PathBuf, reason: String },
    #[error(
        "sim state file {path} has format version {found}, but this build of drover reads only version \
         {supported}; run the drover build that wrote it, or move the file aside to start an empty world"
    )]
    UnsupportedStateFormat { path: PathBuf, found: u64, supported: u64 },
}

/// Why one attempt of an action failed, classified by whether trying again
/// can help ([`ActionError::retryable`]). The engine retries a retryable
/// failure with backoff up to its `max_action_attempts`, and gives up on any
/// other at once (the remedy failed; enough failed remedies in a row and the
/// service needs a human). Each message says what was wrong.
///
/// When unsure, a failure is retryable: a retry costs an attempt, while
/// giving up on a passing trouble costs a page.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The provider is set up wrong for this action (nothing configured for
    /// it, a path too long, a program missing): a person must change the
    /// configuration. Not retryable.
    #[error("{0}")]
    Config(String),
    /// The action contradicts what the provider knows of the instance (it
    /// was terminated, retired or fenced; it is unknown; its server is not
    /// running): the same attempt gets the same answer. Not retryable.
    #[error("{0}")]
    InvalidState(String),
    /// Refused for lack of permission: a file this process may not write,
    /// a login PostgreSQL rejects (pg_hba.conf, a wrong password). A person
    /// must fix it. Not retryable.
    #[error("{0}")]
    Denied(String),
    /// The instance answered, and the answer is that it is not healthy (a
    /// failed probe): the evidence itself, not a fault of the attempt. Not
    /// retryable: the engine probes again on its own schedule.
    #[error("{0}")]
    Unhealthy(String),
    /// A backup that does not restore: restoring it again restores the
    /// same broken backup. Not retryable.
    #[error("{0}")]
    BrokenBackup(String),
    /// Something did not finish in time. Retryable.
    #[error("{0}")]
    Timeout(String),
    /// Something could not be reached yet: a connection refused, a server
    /// still starting, no primary to copy from yet. Retryable.
    #[error("{0}")]
    Unavailable(String),
    /// A local operation or a tool failed for a cause not known to be
    /// permanent (I/O, a command's non-zero exit). Retryable.
    #[error("{0}")]
    Failed(String),
}

impl ActionError {
    /// Whether another attempt of the same action may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ActionError::Config(_)
            | ActionError::InvalidState(_)
            | ActionError::Denied(_)
            | ActionError::Unhealthy(_)
            | ActionError::BrokenBackup(_) => false,
            ActionError::Timeout(_) | ActionError::Unavailable(_) | ActionError::Failed(_) => true,
        }
    }

    /// The engine's input for this failure.
    pub fn outcome(&self) -> ActionOutcome {
        ActionOutcome::Failed { error: self.to_string(), retryable: self.retryable() }
    }

    /// An I/O error while doing `context` (e.g. "cannot write /x/y"),
    /// classified by its kind.
    pub fn io(context: impl std::fmt::Display, error: std::io::Error) -> ActionError {
        use std::io::ErrorKind;
        let text = format!("{context}: {error}");
        match error.kind() {
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => ActionError::Denied(text),
            ErrorKind::TimedOut => ActionError::Timeout(text),
            ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                ActionError::Unavailable(text)
            }
            _ => ActionError::Failed(text),
        }
    }

    /// A command (initdb, pg_basebackup …) that exited with an error,
    /// classified by what it printed: PostgreSQL's refusals of a login and
    /// of a file are permanent until a person acts; anything else may pass.
    pub fn command(what: &str, status: impl std::fmt::Display, output: &str) -> ActionError {
        let text = format!("{what} failed ({status}): {output}");
        // The servers and tools run with LC_ALL=C: these are PostgreSQL's
        // English messages for a login its pg_hba.conf rejects, a wrong
        // password, and a file it may not touch.
        const REFUSALS: [&str; 4] =
            ["pg_hba.conf rejects", "password authentication failed", "no pg_hba.conf entry", "permission denied"];
        let lower = output.to_ascii_lowercase();
        if REFUSALS.iter().any(|refusal| lower.contains(&refusal.to_ascii_lowercase())) {
            ActionError::Denied(text)
        } else {
            ActionError::Failed(text)
        }
    }
}

impl From<ProviderError> for ActionError {
    /// The provider's own state could not be kept (its registry not
    /// written): classified like any I/O error.
    fn from(error: ProviderError) -> ActionError {
        match error {
            ProviderError::Io { operation, path, source } => {
                ActionError::io(format_args!("cannot {operation} {}", path.display()), source)
            }
            other => ActionError::Failed(other.to_string()),
        }
    }
}

impl From<ActionError> for ActionOutcome {
    fn from(error: ActionError) -> ActionOutcome {
        error.outcome()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_causes_are_not_retried_and_passing_ones_are() {
        assert!(!ActionError::Config("no backup repository".into()).retryable());
        assert!(!ActionError::InvalidState("instance is fenced".into()).retryable());
        assert!(!ActionError::BrokenBackup("did not restore".into()).retryable());
        assert!(ActionError::Timeout("no answer within 1s".into()).retryable());
        assert!(ActionError::Unavailable("connection refused".into()).retryable());
        let outcome = ActionError::Denied("pg_hba.conf rejects".into()).outcome();
        assert_eq!(outcome, ActionOutcome::Failed { error: "pg_hba.conf rejects".into(), retryable: false });
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        let denied = ActionError::io("cannot write /x", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(matches!(denied, ActionError::Denied(_)) && !denied.retryable(), "{denied:?}");
        assert!(denied.to_string().starts_with("cannot write /x: "), "{denied}");
        let refused = ActionError::io("connect", std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(refused.retryable(), "{refused:?}");
        let other = ActionError::io("rename", std::io::Error::other("disk trouble"));
        assert!(other.retryable(), "{other:?}");
    }

    #[test]
    fn a_rejected_login_of_a_tool_is_permanent_and_a_refused_connection_is_not() {
        let rejected = ActionError::command(
            "pg_basebackup",
            "exit status: 1",
            "pg_basebackup: error: connection to server at \"127.0.0.1\", port 5433 failed: FATAL:  pg_hba.conf \
             rejects replication connection for host \"127.0.0.1\", user \"drover\", no encryption",
        );
        assert!(!rejected.retryable(), "{rejected:?}");
        let refused = ActionError::command(
            "pg_basebackup",
            "exit status: 1",
            "pg_basebackup: error: connection to server at \"127.0.0.1\", port 5433 failed: Connection refused",
        );
        assert!(refused.retryable(), "{refused:?}");
    }
}
