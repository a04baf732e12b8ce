//! Exit codes, decided in one place (`main`) from the error that ended a run.

use std::fmt;

use serde_json::{json, Map, Value};

use crate::config::ConfigError;

pub const SUCCESS: u8 = 0;
/// The operation failed; nothing half-done is left behind.
pub const FAILURE: u8 = 1;
/// Bad command line (clap exits with it by itself).
pub const USAGE: u8 = 2;
/// The backup was taken but is only crash-consistent.
pub const CRASH_CONSISTENT: u8 = 3;
/// The snapshots are good backups, but a Cinder backup of one of them
/// (`[cinder] backup`) failed; the snapshots stay.
pub const BACKUP_FAILED: u8 = 4;
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
  4   the snapshots are good, but a Cinder backup of one failed (the snapshots stay)
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

/// The pid in a lock refusal (`… holds /run/volsnap/lock (pid 1234)`), for
/// `--json`'s `holder_pid`; `None` when the holder is not a run (qemu-ga's
/// quiesce) or wrote no pid.
pub fn holder_pid(err: &anyhow::Error) -> Option<u32> {
    err.chain().find_map(|cause| {
        let exit = cause.downcast_ref::<Exit>()?;
        if exit.code != LOCKED {
            return None;
        }
        let (_, after) = exit.message.rsplit_once("(pid ")?;
        after.split(')').next()?.trim().parse().ok()
    })
}

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

/// What `--json` prints when a command ends without having printed its own
/// object: `{"ok": false, "exit_code": N, "error": "…"}`, with `file`,
/// `line`, `column` and `key` for a configuration error (when known) and
/// `holder_pid` for a run turned away by the lock.
pub fn json_failure(err: &anyhow::Error, code: u8) -> Value {
    let mut object = Map::new();
    object.insert("ok".into(), json!(false));
    object.insert("exit_code".into(), json!(code));
    object.insert("error".into(), json!(format!("{err:#}")));
    if let Some(config) = err.chain().find_map(|c| c.downcast_ref::<ConfigError>()) {
        object.insert("file".into(), json!(config.file.display().to_string()));
        let (line, column) = config.position.unzip();
        object.insert("line".into(), json!(line));
        object.insert("column".into(), json!(column));
        object.insert("key".into(), json!(config.key));
    }
    if code == LOCKED {
        object.insert("holder_pid".into(), json!(holder_pid(err)));
    }
    Value::Object(object)
}

/// What `--json` prints for a command that ended without an object of its
/// own and without an error.
pub fn json_done(code: u8) -> Value {
    json!({"ok": code == SUCCESS, "exit_code": code})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_failure_carries_the_config_position_and_the_holder() {
        let config = ConfigError {
            file: "/etc/volsnap/volsnap.toml".into(),
            position: Some((3, 7)),
            key: Some("cinder.max_freeze".into()),
            message: "must be longer than zero".into(),
        };
        let err = anyhow::Error::new(config).context("loading");
        let v = json_failure(&err, code_for(&err));
        assert_eq!(v["exit_code"], 78);
        assert_eq!(v["ok"], false);
        assert_eq!(
            (v["line"].as_u64(), v["column"].as_u64()),
            (Some(3), Some(7))
        );
        assert_eq!(v["key"], "cinder.max_freeze");
        assert_eq!(v["file"], "/etc/volsnap/volsnap.toml");
        assert!(v["error"]
            .as_str()
            .unwrap()
            .starts_with("loading: /etc/volsnap/volsnap.toml:3:7"));

        let err = anyhow::Error::new(Exit::new(
            LOCKED,
            "another volsnap run holds /run/volsnap/lock (pid 4242)",
        ));
        let v = json_failure(&err, code_for(&err));
        assert_eq!(
            (v["exit_code"].as_u64(), v["holder_pid"].as_u64()),
            (Some(75), Some(4242))
        );
        let err = anyhow::Error::new(Exit::new(LOCKED, "qemu-ga has the database quiesced"));
        assert!(json_failure(&err, LOCKED)["holder_pid"].is_null());
        let err = anyhow::anyhow!("boom");
        let v = json_failure(&err, code_for(&err));
        assert_eq!(v, json!({"ok": false, "exit_code": 1, "error": "boom"}));
    }
}
