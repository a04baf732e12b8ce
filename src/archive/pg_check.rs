//! `volsnap check` with `[archive]`: does PostgreSQL hand its WAL to the
//! spool, and often enough? The hook's `archive-settings` action prints the
//! server's settings; each one that is wrong is a problem with its fix.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::config::archive::{ArchiveSettings, DEFAULT_SPOOL_DIR};
use crate::config::Settings;
use crate::hooks::Hook;

/// The archiving settings as the server has them: `Ok` describes them,
/// `Err` lists what to change.
pub fn check(settings: &Settings) -> Result<String, String> {
    let Some(archive) = &settings.archive else {
        return Ok("no [archive]".into());
    };
    let hook = Hook::new(settings, settings.hooks.timeout);
    let values = hook
        .run("archive-settings")
        .map_err(|e| format!("{e:#}"))?
        .values;
    let problems = evaluate(&values, archive);
    if problems.is_empty() {
        Ok(format!(
            "archive_mode {}, archive_command {:?}, archive_timeout {}",
            values.get("archive_mode").map_or("?", String::as_str),
            values.get("archive_command").map_or("?", String::as_str),
            values.get("archive_timeout").map_or("?", String::as_str),
        ))
    } else {
        Err(problems.join("; "))
    }
}

/// `check`'s lines for `[archive]`: the spool, and the server's settings.
pub fn checks(settings: &Settings) -> Vec<(&'static str, Result<String, String>)> {
    let Some(archive) = &settings.archive else {
        return Vec::new();
    };
    let spool = &archive.spool_dir;
    let spool_result = if std::fs::symlink_metadata(spool).is_err() {
        Ok(format!(
            "{} does not exist yet: `volsnap archive` creates it (owner {}, mode 0700)",
            spool.display(),
            archive.spool_owner
        ))
    } else {
        super::spool::check(spool, &archive.spool_owner).map(|()| {
            format!(
                "{} (owner {}, mode 0700)",
                spool.display(),
                archive.spool_owner
            )
        })
    };
    vec![
        ("archive spool", spool_result),
        ("postgresql archiving", check(settings)),
    ]
}

/// The command PostgreSQL should run.
pub fn archive_command(archive: &ArchiveSettings) -> String {
    if archive.spool_dir == Path::new(DEFAULT_SPOOL_DIR) {
        "/usr/bin/volsnap wal push %p".into()
    } else {
        format!(
            "/usr/bin/volsnap wal push --spool {} %p",
            archive.spool_dir.display()
        )
    }
}

fn evaluate(values: &BTreeMap<String, String>, archive: &ArchiveSettings) -> Vec<String> {
    let get = |k: &str| values.get(k).map(String::as_str).unwrap_or("");
    let mut problems = Vec::new();
    if !matches!(get("archive_mode"), "on" | "always") {
        problems.push(format!(
            "archive_mode is {:?}: run ALTER SYSTEM SET archive_mode = on, then restart PostgreSQL",
            get("archive_mode")
        ));
    }
    if get("wal_level") == "minimal" {
        problems.push(
            "wal_level is minimal, which cannot be archived: ALTER SYSTEM SET wal_level = replica, then restart".into(),
        );
    }
    if !command_pushes_to(get("archive_command"), &archive.spool_dir) {
        problems.push(format!(
            "archive_command is {:?}, which does not push to the spool {}: run ALTER SYSTEM SET \
             archive_command = '{}'; SELECT pg_reload_conf()",
            get("archive_command"),
            archive.spool_dir.display(),
            archive_command(archive)
        ));
    }
    let timeout = parse_seconds(get("archive_timeout"));
    let max = archive.max_lag.as_secs();
    match timeout {
        Some(t) if t > Duration::ZERO && t.as_secs() <= max => {}
        _ => problems.push(format!(
            "archive_timeout is {:?}: a quiet server would keep its last commits out of Swift \
             longer than archive.max_lag ({max}s); run ALTER SYSTEM SET archive_timeout = '{max}s'; \
             SELECT pg_reload_conf()",
            get("archive_timeout")
        )),
    }
    problems
}

/// `volsnap wal push [--spool DIR] %p`, with DIR (or the default) the spool.
fn command_pushes_to(command: &str, spool: &Path) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some(at) = words
        .windows(2)
        .position(|w| w[0].ends_with("volsnap") && w[1] == "wal")
    else {
        return false;
    };
    let rest = &words[at + 2..];
    if rest.first() != Some(&"push") || !rest.contains(&"%p") {
        return false;
    }
    let named = rest
        .windows(2)
        .find(|w| w[0] == "--spool")
        .map(|w| w[1].to_string())
        .or_else(|| {
            rest.iter()
                .find_map(|w| w.strip_prefix("--spool="))
                .map(str::to_string)
        });
    let named = named.unwrap_or_else(|| DEFAULT_SPOOL_DIR.to_string());
    Path::new(named.trim_end_matches('/')) == spool
}

/// `60s`, `5min`, `0`, as pg_settings gives a setting with its unit.
fn parse_seconds(text: &str) -> Option<Duration> {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    let secs = match &text[digits.len()..] {
        "" | "s" => n,
        "min" => n * 60,
        "h" => n * 3600,
        "ms" => n / 1000,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(spool: &str) -> ArchiveSettings {
        ArchiveSettings {
            container: "c".into(),
            compression: crate::config::Compression::Zstd,
            compression_level: 3,
            max_lag: Duration::from_secs(60),
            spool_dir: spool.into(),
            spool_owner: "postgres".into(),
        }
    }

    fn values(mode: &str, command: &str, timeout: &str) -> BTreeMap<String, String> {
        [
            ("archive_mode", mode),
            ("archive_command", command),
            ("archive_timeout", timeout),
            ("wal_level", "replica"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn good_settings_pass_and_each_bad_one_says_its_fix() {
        let a = archive(DEFAULT_SPOOL_DIR);
        assert!(evaluate(&values("on", "/usr/bin/volsnap wal push %p", "60s"), &a).is_empty());
        let b = archive("/srv/spool");
        assert!(evaluate(
            &values("always", "volsnap wal push --spool /srv/spool/ %p", "30s"),
            &b
        )
        .is_empty());
        let p = evaluate(&values("off", "", "0"), &a);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("ALTER SYSTEM SET archive_mode = on"));
        assert!(p[1].contains("archive_command = '/usr/bin/volsnap wal push %p'"));
        assert!(p[2].contains("archive_timeout = '60s'"));
        // Pushing to another spool, or a timeout longer than max_lag.
        let p = evaluate(
            &values("on", "volsnap wal push --spool /tmp/x %p", "5min"),
            &b,
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("--spool /srv/spool %p"), "{p:?}");
        assert!(!evaluate(&values("on", "cp %p /mnt/%f", "60s"), &a).is_empty());
    }
}
