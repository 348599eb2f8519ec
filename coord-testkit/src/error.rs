//! The test kit's error type.

use std::fmt;
use std::path::{Path, PathBuf};

/// How many lines of a server's log an [`Error`] carries.
pub(crate) const LOG_TAIL_LINES: usize = 40;

/// Something the test kit could not do: a binary is missing, a server did not become ready in
/// time, a server exited during start-up, a port could not be picked, ...
///
/// The message says what failed; when a server process was involved the error also carries the
/// last lines of that server's log file, and its `Display` prints them.
#[derive(Debug, Clone)]
pub struct Error {
    message: String,
    not_installed: bool,
    log_path: Option<PathBuf>,
    log_tail: Option<String>,
}

impl Error {
    /// An error with just a message.
    pub(crate) fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            not_installed: false,
            log_path: None,
            log_tail: None,
        }
    }

    /// A server binary or jar is not installed.
    pub(crate) fn not_installed(message: impl Into<String>) -> Error {
        Error {
            not_installed: true,
            ..Error::new(message)
        }
    }

    /// An error about a server whose log file is `log`: its last lines are attached.
    pub(crate) fn with_log(message: impl Into<String>, log: &Path) -> Error {
        Error {
            log_path: Some(log.to_path_buf()),
            log_tail: Some(crate::util::tail_lines(log, LOG_TAIL_LINES)),
            ..Error::new(message)
        }
    }

    /// What failed, without the log tail.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `true` when the error is that a server binary (or the ZooKeeper jar, or `java`) is not
    /// installed; `scripts/install-backends.sh` installs them.
    pub fn is_not_installed(&self) -> bool {
        self.not_installed
    }

    /// The server's log file, when a server process was involved.
    pub fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// The last lines of the server's log file, when a server process was involved.
    pub fn log_tail(&self) -> Option<&str> {
        self.log_tail.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let (Some(path), Some(tail)) = (&self.log_path, &self.log_tail) {
            write!(f, "\n--- last lines of {} ---\n", path.display())?;
            if tail.is_empty() {
                f.write_str("(empty)")?;
            } else {
                f.write_str(tail.trim_end())?;
            }
            f.write_str("\n--- end of log ---")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
