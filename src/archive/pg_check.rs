//! `volsnap check` with `[archive]`: does PostgreSQL hand its WAL to the
//! spool, and often enough? The hook's `archive-settings` action prints the
//! server's settings; each one that is wrong is a problem with its fix.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use crate::config::archive::{ArchiveSettings, DEFAULT_SPOOL_DIR};
use crate::config::Settings;
use crate::hooks::Hook;

/// The archiving settings as the server has them: `Ok` describes them,
/// `Err` lists what to change. With `offline`, only a server on this
/// machine is asked, and only when it listens (else `Ok` says why not).
pub fn check(settings: &Settings, offline: bool) -> Result<String, String> {
    let Some(archive) = &settings.archive else {
        return Ok("no [archive]".into());
    };
    if offline {
        if let Some(why) = not_local(settings) {
            return Ok(format!("not checked with --offline: {why}"));
        }
    }
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

/// Where the hook will connect, as it decides (`[hooks.env]`'s
/// VOLSNAP_PG_HOST, else PGHOST, else libpq's default socket directory;
/// the port likewise): `None` when that is a server on this machine that
/// accepts connections, else why it is not asked offline.
fn not_local(settings: &Settings) -> Option<String> {
    let env = |a: &str, b: &str| {
        [a, b]
            .iter()
            .find_map(|k| settings.hooks.env.get(*k))
            .map(|v| v.expose().to_string())
            .filter(|v| !v.is_empty())
    };
    let host = env("VOLSNAP_PG_HOST", "PGHOST").unwrap_or_else(|| DEFAULT_SOCKET_DIR.into());
    let port = env("VOLSNAP_PG_PORT", "PGPORT").unwrap_or_else(|| "5432".into());
    if host.starts_with('/') {
        let socket = Path::new(&host).join(format!(".s.PGSQL.{port}"));
        return match std::fs::symlink_metadata(&socket) {
            Ok(m) if m.file_type().is_socket() => None,
            _ => Some(format!("no server listens on {}", socket.display())),
        };
    }
    if !matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1") {
        return Some(format!("the server is at {host}, not on this machine"));
    }
    let Ok(port) = port.parse::<u16>() else {
        return Some(format!("port {port:?} is not a number"));
    };
    let addr = std::net::SocketAddr::new(
        if host == "::1" {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        },
        port,
    );
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(_) => None,
        Err(e) => Some(format!("no server answers on {addr}: {e}")),
    }
}

/// Debian's libpq looks here when no host is given.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

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

    fn settings(env: &str) -> Settings {
        crate::config::parse(
            Path::new("/etc/volsnap/volsnap.toml"),
            &format!("datastore = \"postgresql\"\n[archive]\n[hooks.env]\n{env}"),
        )
        .unwrap()
    }

    #[test]
    fn offline_asks_only_a_server_on_this_machine_that_listens() {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("VOLSNAP_PG_HOST = {:?}\n", dir.path().display().to_string());
        let on = |port: &str| settings(&format!("{host}VOLSNAP_PG_PORT = \"{port}\"\n"));
        let why = not_local(&on("5499")).unwrap();
        assert!(why.contains(".s.PGSQL.5499"), "{why}");
        let _listener =
            std::os::unix::net::UnixListener::bind(dir.path().join(".s.PGSQL.5499")).unwrap();
        assert_eq!(not_local(&on("5499")), None);
        // A plain file of that name is no server.
        std::fs::write(dir.path().join(".s.PGSQL.5498"), "").unwrap();
        assert!(not_local(&on("5498")).is_some());
        let why = not_local(&settings("PGHOST = \"db.example.org\"\n")).unwrap();
        assert!(why.contains("not on this machine"), "{why}");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let local = |port: u16| {
            settings(&format!(
                "VOLSNAP_PG_HOST = \"127.0.0.1\"\nVOLSNAP_PG_PORT = \"{port}\"\n"
            ))
        };
        assert_eq!(not_local(&local(port)), None);
        drop(tcp);
        assert!(not_local(&local(port))
            .unwrap()
            .contains("no server answers"));
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
