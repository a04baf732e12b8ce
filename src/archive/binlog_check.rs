//! `volsnap check` with `[archive]` for MariaDB: is the binary log on, in a
//! format a replay restores exactly, and will the server keep each file
//! until it is shipped? The hook's `archive-settings` action prints the
//! server's settings; each one that is wrong is a problem with the line to
//! put in my.cnf.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::config::archive::ArchiveSettings;
use crate::config::Settings;
use crate::hooks::Hook;

/// `check`'s line for `[archive]` with datastore mysql: the server's
/// settings, read through the mysql hook.
pub fn check(settings: &Settings, archive: &ArchiveSettings) -> Result<String, String> {
    let hook = Hook::new(settings, settings.hooks.timeout);
    let values = hook
        .run("archive-settings")
        .map_err(|e| format!("{e:#}"))?
        .values;
    let mut problems = evaluate(&values, archive);
    let expiry = expiry(&values);
    if problems.is_empty() {
        if let (Some(expiry), Some((name, age))) = (expiry, oldest_unshipped(settings)) {
            if age > expiry / 2 {
                problems.push(format!(
                    "{name} was closed {}s ago and is not in Swift yet, and the server expires \
                     binary logs after {}s: it may be purged before it is shipped; is the \
                     volsnap-archive service running (journalctl -u volsnap-archive)?",
                    age.as_secs(),
                    expiry.as_secs()
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let get = |k: &str| values.get(k).map_or("?", String::as_str);
    Ok(format!(
        "log_bin ON, binlog_format {}, server_id {}, binary logs in {}, expired {}",
        get("binlog_format"),
        get("server_id"),
        std::path::Path::new(get("log_bin_basename"))
            .parent()
            .map_or("?".into(), |p| p.display().to_string()),
        match expiry {
            None => "never (by the server)".to_string(),
            Some(e) => format!(
                "after {}s: a service stopped or a Swift away longer than that loses them",
                e.as_secs()
            ),
        }
    ))
}

/// After how long the server purges a binary log, if it does.
fn expiry(values: &BTreeMap<String, String>) -> Option<Duration> {
    let seconds = values
        .get("binlog_expire_logs_seconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0);
    let days = values
        .get("expire_logs_days")
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|d| *d > 0.0)
        .map(|d| (d * 86_400.0) as u64);
    seconds.or(days).map(Duration::from_secs)
}

/// The oldest closed binary log not in Swift, and how long ago it was
/// closed; `None` when all are shipped or that cannot be told (Swift away).
fn oldest_unshipped(settings: &Settings) -> Option<(String, Duration)> {
    let mut binlogs = super::binlog_ship::Binlogs::default();
    binlogs.look_only(settings).ok()?;
    let store = super::store::Store::open(settings).ok()?;
    binlogs.list(&store).ok()?;
    let waiting = binlogs.waiting(settings);
    let oldest = waiting.iter().min_by_key(|c| c.written)?;
    let age = SystemTime::now().duration_since(oldest.written).ok()?;
    Some((oldest.name.to_string(), age))
}

fn evaluate(values: &BTreeMap<String, String>, archive: &ArchiveSettings) -> Vec<String> {
    let get = |k: &str| values.get(k).map(String::as_str).unwrap_or("");
    let mut problems = Vec::new();
    if !matches!(get("log_bin"), "ON" | "1") {
        problems.push(format!(
            "log_bin is {:?}: the binary log is what is archived; add `log_bin = mysql-bin` \
             under [mysqld] in my.cnf (Debian: /etc/mysql/mariadb.conf.d/50-server.cnf), \
             then restart the server",
            get("log_bin")
        ));
    }
    match get("binlog_format").to_ascii_uppercase().as_str() {
        "ROW" | "MIXED" => {}
        other => problems.push(format!(
            "binlog_format is {other:?}: a replay of statements may not give back the same \
             rows (NOW(), UUID(), LIMIT without ORDER BY…); add `binlog_format = ROW` under \
             [mysqld] in my.cnf (MIXED works too), and for now SET GLOBAL binlog_format = 'ROW'"
        )),
    }
    if get("server_id").parse::<u64>().map_or(true, |id| id == 0) {
        problems.push(format!(
            "server_id is {:?}: a server with the binary log on needs one; add \
             `server_id = 1` (any number unique among your replicas) under [mysqld] in my.cnf, \
             then restart the server",
            get("server_id")
        ));
    }
    if let Some(expiry) = expiry(values) {
        if expiry <= archive.max_lag * 2 {
            problems.push(format!(
                "the server purges binary logs after {}s, not much longer than archive.max_lag \
                 ({}s): a file may be purged before it is shipped; set \
                 `binlog_expire_logs_seconds = 604800` (7 days) under [mysqld] in my.cnf",
                expiry.as_secs(),
                archive.max_lag.as_secs()
            ));
        }
    }
    if get("encrypt_binlog") == "ON" {
        problems.push(
            "encrypt_binlog is ON: the archived files would need the server's encryption keys \
             to replay; archive encryption is [swift] age_recipients instead; set \
             `encrypt_binlog = OFF` under [mysqld] in my.cnf"
                .into(),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> ArchiveSettings {
        ArchiveSettings {
            container: "c".into(),
            compression: crate::config::Compression::Zstd,
            compression_level: 3,
            max_lag: Duration::from_secs(300),
            spool_dir: "/unused".into(),
            spool_owner: "mysql".into(),
        }
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn good_settings_pass_and_each_bad_one_says_what_to_put_in_my_cnf() {
        let good = values(&[
            ("log_bin", "ON"),
            ("binlog_format", "MIXED"),
            ("server_id", "1"),
            ("binlog_expire_logs_seconds", "0"),
            ("expire_logs_days", "0.000000"),
        ]);
        assert!(evaluate(&good, &archive()).is_empty());
        assert_eq!(expiry(&good), None);
        let bad = values(&[
            ("log_bin", "OFF"),
            ("binlog_format", "STATEMENT"),
            ("server_id", "0"),
            ("expire_logs_days", "0.001"),
            ("encrypt_binlog", "ON"),
        ]);
        let p = evaluate(&bad, &archive());
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(
            p[0].contains("`log_bin = mysql-bin` under [mysqld]"),
            "{p:?}"
        );
        assert!(p[1].contains("`binlog_format = ROW`"), "{p:?}");
        assert!(p[2].contains("`server_id = 1`"), "{p:?}");
        assert!(p[3].contains("purges binary logs after 86s"), "{p:?}");
        assert!(p[4].contains("encrypt_binlog"), "{p:?}");
        let week = values(&[("binlog_expire_logs_seconds", "604800")]);
        assert_eq!(expiry(&week), Some(Duration::from_secs(604_800)));
    }
}
