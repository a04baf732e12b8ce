//! Exit codes, decided in one place (`main`) from the error that ended a run.

use std::fmt;

use crate::config::ConfigError;

pub const SUCCESS: u8 = 0;
/// The operation failed; nothing half-done is left behind.
pub const FAILURE: u8 = 1;
/// Bad command line (clap exits with it by itself).
pub const USAGE: u8 = 2;
/// The backup was taken but is only crash-consistent.
pub const CRASH_CONSISTENT: u8 = 3;
/// Another volsnap run holds the lock (EX_TEMPFAIL).
pub const LOCKED: u8 = 75;
/// The configuration is invalid (EX_CONFIG).
pub const CONFIG: u8 = 78;

pub const HELP: &str = "\
Exit codes:
  0   success
  1   the operation failed (nothing half-done is left behind)
  2   usage error
  3   the backup was taken but is only crash-consistent (hook failed, policy allowed it)
  75  another volsnap run holds the lock
  78  the configuration is invalid";

/// An error whose exit code is not 1.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Exit {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<ConfigError>() {
            return CONFIG;
        }
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return exit.code;
        }
    }
    FAILURE
}
