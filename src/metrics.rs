//! The outcome of `volsnap backup` as a file for node_exporter's textfile
//! collector (`metrics_file`), so that a backup which stopped running, or
//! failed, raises an alert rather than being noticed at restore time.
//!
//! Written after every backup that got past its configuration, whatever
//! the outcome, except a run turned away because another one holds the lock
//! (that one reports when it ends) and a dry run. Written to a temporary
//! file beside it and renamed, so the collector never reads half a file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Datastore, Strategy};

const PREFIX: &str = "volsnap_backup_";
const LAST_SUCCESS: &str = "last_success_timestamp_seconds";

/// One finished `volsnap backup`.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub strategy: Strategy,
    pub datastore: Datastore,
    pub exit_code: u8,
    pub ended: SystemTime,
    pub duration: Duration,
    /// Cinder: first FIFREEZE to last FITHAW, when something was frozen.
    pub freeze: Option<Duration>,
    /// Swift: the plain stream's size and the stored object's, on success.
    pub plain_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
}

/// Writes `outcome` to `path`. The last success's time comes from this
/// outcome when it exited 0, else from the file being replaced.
pub fn write(path: &Path, outcome: &Outcome) -> io::Result<()> {
    let last_success = if outcome.exit_code == 0 {
        Some(seconds(outcome.ended))
    } else {
        fs::read_to_string(path)
            .ok()
            .and_then(|old| previous_success(&old))
    };
    let text = render(outcome, last_success);
    replace_file(path, &text)
}

/// Writes `text` to a temporary file beside `path` and renames it over
/// `path`, so the collector never reads half a file.
pub(crate) fn replace_file(path: &Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("metrics_file names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    // O_EXCL: never through a file or symlink someone put there first (root
    // writes this, maybe into a directory others can write). One left by a
    // killed run, or planted, is unlinked (not followed) and the open tried
    // once more.
    let create = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
    };
    let written = (|| {
        let mut file = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&tmp)?;
                create()?
            }
            other => other?,
        };
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn render(o: &Outcome, last_success: Option<f64>) -> String {
    let labels = format!(
        "{{strategy=\"{}\",datastore=\"{}\"}}",
        o.strategy.name(),
        o.datastore.name()
    );
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} gauge\n\
             {PREFIX}{name}{labels} {value}\n"
        ));
    };
    metric(
        "last_run_timestamp_seconds",
        "When the last volsnap backup ended (seconds since the epoch).",
        format!("{:.3}", seconds(o.ended)),
    );
    metric(
        "last_run_exit_code",
        "Exit code of the last volsnap backup: 0 success, 1 failed, 3 crash-consistent only.",
        o.exit_code.to_string(),
    );
    metric(
        "last_run_duration_seconds",
        "How long the last volsnap backup took.",
        format!("{:.3}", o.duration.as_secs_f64()),
    );
    if let Some(t) = last_success {
        metric(
            LAST_SUCCESS,
            "When the last volsnap backup that exited 0 ended (seconds since the epoch).",
            format!("{t:.3}"),
        );
    }
    if let Some(freeze) = o.freeze {
        metric(
            "last_run_freeze_seconds",
            "Cinder: how long the last backup kept the data filesystems frozen.",
            format!("{:.3}", freeze.as_secs_f64()),
        );
    }
    if let Some(bytes) = o.plain_bytes {
        metric(
            "last_run_plain_bytes",
            "Swift: size of the last backup's stream as the hook wrote it.",
            bytes.to_string(),
        );
    }
    if let Some(bytes) = o.stored_bytes {
        metric(
            "last_run_stored_bytes",
            "Swift: size of the last backup as stored (compressed, encrypted).",
            bytes.to_string(),
        );
    }
    out
}

/// The last success recorded in a file this module wrote.
fn previous_success(text: &str) -> Option<f64> {
    let name = format!("{PREFIX}{LAST_SUCCESS}");
    text.lines()
        .filter(|l| l.starts_with(&name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .find(|t| t.is_finite())
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(exit_code: u8, ended_secs: u64) -> Outcome {
        Outcome {
            strategy: Strategy::Swift,
            datastore: Datastore::Mysql,
            exit_code,
            ended: UNIX_EPOCH + Duration::from_millis(ended_secs * 1000 + 250),
            duration: Duration::from_millis(9_321),
            freeze: None,
            plain_bytes: Some(2_147_483_648),
            stored_bytes: Some(1_000_000),
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_success_in_the_text_format() {
        let text = render(&outcome(0, 1_764_133_200), Some(1_764_133_200.25));
        let want = "\
# HELP volsnap_backup_last_run_timestamp_seconds When the last volsnap backup ended (seconds since the epoch).
# TYPE volsnap_backup_last_run_timestamp_seconds gauge
volsnap_backup_last_run_timestamp_seconds{strategy=\"swift\",datastore=\"mysql\"} 1764133200.250
# HELP volsnap_backup_last_run_exit_code Exit code of the last volsnap backup: 0 success, 1 failed, 3 crash-consistent only.
# TYPE volsnap_backup_last_run_exit_code gauge
volsnap_backup_last_run_exit_code{strategy=\"swift\",datastore=\"mysql\"} 0
# HELP volsnap_backup_last_run_duration_seconds How long the last volsnap backup took.
# TYPE volsnap_backup_last_run_duration_seconds gauge
volsnap_backup_last_run_duration_seconds{strategy=\"swift\",datastore=\"mysql\"} 9.321
# HELP volsnap_backup_last_success_timestamp_seconds When the last volsnap backup that exited 0 ended (seconds since the epoch).
# TYPE volsnap_backup_last_success_timestamp_seconds gauge
volsnap_backup_last_success_timestamp_seconds{strategy=\"swift\",datastore=\"mysql\"} 1764133200.250
# HELP volsnap_backup_last_run_plain_bytes Swift: size of the last backup's stream as the hook wrote it.
# TYPE volsnap_backup_last_run_plain_bytes gauge
volsnap_backup_last_run_plain_bytes{strategy=\"swift\",datastore=\"mysql\"} 2147483648
# HELP volsnap_backup_last_run_stored_bytes Swift: size of the last backup as stored (compressed, encrypted).
# TYPE volsnap_backup_last_run_stored_bytes gauge
volsnap_backup_last_run_stored_bytes{strategy=\"swift\",datastore=\"mysql\"} 1000000
";
        assert_eq!(text, want);
    }

    #[test]
    fn a_failure_keeps_the_last_success_and_a_success_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volsnap.prom");

        // No earlier file: a failure has no last success to show.
        let failed = Outcome {
            exit_code: 1,
            plain_bytes: None,
            stored_bytes: None,
            ..outcome(1, 1_000)
        };
        write(&path, &failed).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("last_run_exit_code{strategy=\"swift\",datastore=\"mysql\"} 1\n"));
        assert!(!text.contains(LAST_SUCCESS), "{text}");
        assert!(!text.contains("bytes"), "{text}");

        write(&path, &outcome(0, 2_000)).unwrap();
        assert_eq!(
            previous_success(&fs::read_to_string(&path).unwrap()),
            Some(2_000.25)
        );

        write(
            &path,
            &Outcome {
                exit_code: 3,
                ..outcome(3, 3_000)
            },
        )
        .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("last_run_exit_code{strategy=\"swift\",datastore=\"mysql\"} 3\n"));
        assert!(text.contains(
            "last_run_timestamp_seconds{strategy=\"swift\",datastore=\"mysql\"} 3000.250\n"
        ));
        assert_eq!(previous_success(&text), Some(2_000.25), "{text}");

        write(&path, &outcome(0, 4_000)).unwrap();
        assert_eq!(
            previous_success(&fs::read_to_string(&path).unwrap()),
            Some(4_000.25)
        );

        // Readable by the collector, and nothing left beside it.
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(names_in(dir.path()), ["volsnap.prom"]);
    }

    #[test]
    fn an_unwritable_place_is_an_error_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir/volsnap.prom");
        let err = write(&path, &outcome(0, 1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);

        // A directory where the file should be: the rename fails.
        let path = dir.path().join("volsnap.prom");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "").unwrap();
        assert!(write(&path, &outcome(0, 1)).is_err());
        assert_eq!(names_in(dir.path()), ["volsnap.prom"]);
    }

    #[test]
    fn a_planted_or_stale_temporary_file_is_unlinked_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volsnap.prom");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious\n").unwrap();
        let planted = dir
            .path()
            .join(format!(".volsnap.prom.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write(&path, &outcome(0, 1)).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(fs::symlink_metadata(&planted).is_err(), "the symlink stays");
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains("last_run_exit_code"));
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn the_cinder_outcome_has_its_freeze_window() {
        let o = Outcome {
            strategy: Strategy::Cinder,
            datastore: Datastore::Postgresql,
            freeze: Some(Duration::from_millis(245)),
            plain_bytes: None,
            stored_bytes: None,
            ..outcome(0, 1)
        };
        let text = render(&o, None);
        assert!(text.contains(
            "volsnap_backup_last_run_freeze_seconds{strategy=\"cinder\",datastore=\"postgresql\"} 0.245\n"
        ), "{text}");
        assert!(!text.contains("bytes"), "{text}");
    }
}
