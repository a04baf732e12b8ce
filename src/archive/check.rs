//! `volsnap check`'s lines for `[archive]`. All but the datastore's
//! settings need no network, and run with `--offline` too: the spool, its
//! owner, what the volsnap-archive service's sandbox would hide, and the
//! metrics file's directory. (The container name, the compression and the
//! age recipients are checked when the config loads: exit 78.)

use std::path::Path;

use crate::config::archive::ArchiveSettings;
use crate::config::{Datastore, Settings};

/// What the shipped volsnap-archive.service cannot write (ProtectSystem=full,
/// ProtectHome=read-only) or sees apart from everyone else (PrivateTmp=yes):
/// a spool there is one the service cannot empty, or not the one PostgreSQL
/// fills; a metrics file there is one node_exporter never reads.
const SANDBOXED: &[(&str, &str)] = &[
    ("/usr", "read-only (ProtectSystem=full)"),
    ("/boot", "read-only (ProtectSystem=full)"),
    ("/efi", "read-only (ProtectSystem=full)"),
    ("/etc", "read-only (ProtectSystem=full)"),
    ("/home", "read-only (ProtectHome=read-only)"),
    ("/root", "read-only (ProtectHome=read-only)"),
    ("/run/user", "read-only (ProtectHome=read-only)"),
    ("/tmp", "private to it (PrivateTmp=yes)"),
    ("/var/tmp", "private to it (PrivateTmp=yes)"),
];

/// `Some(why)` when the service could not use `path` as the system sees it.
fn sandboxed(path: &Path) -> Option<String> {
    SANDBOXED
        .iter()
        .find(|(dir, _)| path.starts_with(dir))
        .map(|(dir, how)| format!("{dir} is {how} in the volsnap-archive service"))
}

/// The lines, in order: spool, metrics, the datastore's settings (with
/// `offline`, only from a server on this machine that listens). MariaDB's
/// binary logs have no spool: root reads them where the server writes them.
pub fn checks(settings: &Settings, offline: bool) -> Vec<(&'static str, Result<String, String>)> {
    let Some(archive) = &settings.archive else {
        return Vec::new();
    };
    if settings.datastore == Datastore::Mysql {
        let binlog = match offline.then(|| mysql_not_local(settings)).flatten() {
            Some(why) => Ok(format!("not checked with --offline: {why}")),
            None => super::binlog_check::check(settings, archive),
        };
        return vec![
            ("archive metrics", metrics(settings)),
            ("mariadb binlog archiving", binlog),
        ];
    }
    vec![
        ("archive spool", spool(archive)),
        ("archive metrics", metrics(settings)),
        (
            "postgresql archiving",
            super::pg_check::check(settings, offline),
        ),
    ]
}

fn spool(archive: &ArchiveSettings) -> Result<String, String> {
    let spool = &archive.spool_dir;
    let owner = &archive.spool_owner;
    if let Some(why) = sandboxed(spool) {
        return Err(format!(
            "archive.spool_dir {}: {why}; put the spool elsewhere (default {})",
            spool.display(),
            crate::config::archive::DEFAULT_SPOOL_DIR
        ));
    }
    // Checked even before the spool exists: the service could not create it.
    if super::spool::local_user(owner).is_none() {
        return Err(format!(
            "archive.spool_owner: no OS user {owner:?} in /etc/passwd (the database's OS user, \
             who runs archive_command)"
        ));
    }
    if std::fs::symlink_metadata(spool).is_err() {
        return Ok(format!(
            "{} does not exist yet: `volsnap archive` creates it (owner {owner}, mode 0700)",
            spool.display()
        ));
    }
    super::spool::check(spool, owner)
        .map(|()| format!("{} (owner {owner}, mode 0700)", spool.display()))
}

/// The service writes `volsnap-archive.prom` beside `metrics_file`, after
/// every pass; a write that fails only warns in its journal.
fn metrics(settings: &Settings) -> Result<String, String> {
    let Some(metrics_file) = &settings.metrics_file else {
        return Ok("no metrics_file: the archive lag is not exported".into());
    };
    let file = super::metrics::path(metrics_file);
    let dir = file.parent().unwrap_or(Path::new("/"));
    if let Some(why) = sandboxed(&file) {
        return Err(format!("{}: {why}", file.display()));
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{}: {} is not a directory",
                file.display(),
                dir.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "{}: its directory {}: {e}",
                file.display(),
                dir.display()
            ))
        }
    }
    // Root passes every mode check; what stops it is a read-only mount.
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("{}: cannot write in {}: {e}", file.display(), dir.display()))?;
    Ok(format!("{} (written after every pass)", file.display()))
}

/// Where the mysql hook connects (`VOLSNAP_MYSQL_SOCKET`, else Debian's
/// socket): `None` when a server accepts connections there, else why it is
/// not asked offline.
fn mysql_not_local(settings: &Settings) -> Option<String> {
    let socket = settings
        .hooks
        .env
        .get("VOLSNAP_MYSQL_SOCKET")
        .map(|v| v.expose().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "/run/mysqld/mysqld.sock".into());
    match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(_) => None,
        Err(e) => Some(format!("no MariaDB server listening on {socket} ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_sandbox_is_named() {
        assert!(sandboxed(Path::new("/var/lib/volsnap/wal-spool")).is_none());
        assert!(sandboxed(Path::new("/var/lib/prometheus/node-exporter/x.prom")).is_none());
        assert!(sandboxed(Path::new("/tmp/spool"))
            .unwrap()
            .contains("PrivateTmp=yes"));
        assert!(sandboxed(Path::new("/etc/volsnap/spool"))
            .unwrap()
            .contains("ProtectSystem=full"));
        assert!(sandboxed(Path::new("/root/spool"))
            .unwrap()
            .contains("ProtectHome"));
        // A component match, not a prefix of the text.
        assert!(sandboxed(Path::new("/tmpfs/spool")).is_none());
        assert!(sandboxed(Path::new("/etcetera")).is_none());
    }
}
