use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn parse_str(source: &str) -> Result<Settings, ConfigError> {
    parse(Path::new("/etc/volsnap/volsnap.toml"), source)
}

fn error_of(source: &str) -> String {
    parse_str(source).unwrap_err().to_string()
}

#[test]
fn defaults_are_swift_agent_and_strategy() {
    let s = parse_str("datastore = \"none\"\n").unwrap();
    assert_eq!(s.strategy, Strategy::Swift);
    assert_eq!(s.runtime_dir, Path::new("/run/volsnap"));
    assert_eq!(s.hooks.dir, Path::new(DEFAULT_HOOKS_DIR));
    assert_eq!(s.cinder.max_freeze, DEFAULT_MAX_FREEZE);
    assert_eq!(s.cinder.on_hook_failure, HookFailurePolicy::Abort);
    assert_eq!(s.swift.segment_size, 12 << 20);
    assert_eq!(s.swift.concurrency, 4);
    assert_eq!(s.swift.compression, Compression::Zstd);
    assert_eq!(s.swift.compression_level, 3);
    assert!(s.swift.create_container);
    assert!(!s.retention.is_set());
}

#[test]
fn both_spellings_of_the_seed_values() {
    for agent in [
        "trove.guestagent.backup.backupagent.CinderAgent",
        "CinderAgent",
    ] {
        let s = parse_str(&format!(
            "backup_agent = \"{agent}\"\nstorage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [\"/srv/db\"]\n"
        ))
        .unwrap();
        assert_eq!(s.strategy, Strategy::Cinder);
    }
    for agent in [
        "trove.guestagent.backup.backupagent.SwiftAgent",
        "SwiftAgent",
    ] {
        let s = parse_str(&format!(
            "backup_agent = \"{agent}\"\nstorage_strategy = \"Swift\"\ndatastore = \"none\"\n"
        ))
        .unwrap();
        assert_eq!(s.strategy, Strategy::Swift);
    }
}

#[test]
fn one_half_of_the_pair_implies_the_other() {
    let s =
        parse_str("backup_agent = \"CinderAgent\"\ndatastore = \"none\"\nmounts = [\"/srv\"]\n")
            .unwrap();
    assert_eq!(s.strategy, Strategy::Cinder);
    let s = parse_str("storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [\"/srv\"]\n")
        .unwrap();
    assert_eq!(s.strategy, Strategy::Cinder);
}

#[test]
fn a_pair_that_disagrees_names_the_valid_pairs() {
    let e = error_of(
        "datastore = \"none\"\nbackup_agent = \"SwiftAgent\"\nstorage_strategy = \"Cinder\"\n",
    );
    assert_eq!(
        e,
        "/etc/volsnap/volsnap.toml:3:1: storage_strategy: storage_strategy Cinder does not go with \
         backup_agent SwiftAgent; valid pairs: SwiftAgent with \"Swift\", CinderAgent with \"Cinder\""
    );
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = error_of("datastore = \"none\"\n\n[cinder]\nmax_freez = \"10s\"\n");
    assert!(
        e.starts_with("/etc/volsnap/volsnap.toml:4:1: cinder.max_freez: unknown field `max_freez`, expected one of"),
        "{e}"
    );
    assert!(e.contains("`max_freeze`"), "{e}");
    let e = error_of("datastore = \"none\"\ncolour = 1\n");
    assert!(
        e.starts_with("/etc/volsnap/volsnap.toml:2:1: colour: unknown field"),
        "{e}"
    );
}

#[test]
fn bad_duration_names_key_and_format() {
    let e = error_of("datastore = \"none\"\n[cinder]\nmax_freeze = \"30x\"\n");
    assert_eq!(
        e,
        "/etc/volsnap/volsnap.toml:3:14: cinder.max_freeze: invalid duration \"30x\": expected a number \
         and a unit (ms, s, m, h, d), like \"30s\", \"250ms\" or \"1h30m\""
    );
}

#[test]
fn bad_enum_value_lists_the_valid_values() {
    let e = error_of("datastore = \"oracle\"\n");
    assert!(
        e.starts_with("/etc/volsnap/volsnap.toml:1:13: datastore: unknown variant `oracle`"),
        "{e}"
    );
    for v in ["mysql", "postgresql", "redis", "none"] {
        assert!(e.contains(&format!("`{v}`")), "{e}");
    }
    let e = error_of("datastore = \"none\"\n[swift]\ncompression = \"lz4\"\n");
    assert!(
        e.contains(
            "swift.compression: unknown variant `lz4`, expected one of `zstd`, `gzip`, `none`"
        ),
        "{e}"
    );
    let e = error_of("datastore = \"none\"\n[cinder]\non_hook_failure = \"ignore\"\n");
    assert!(e.contains("expected `abort` or `crash-consistent`"), "{e}");
}

#[test]
fn wrong_type_names_key() {
    let e = error_of("datastore = \"none\"\n[swift]\nconcurrency = \"4\"\n");
    assert!(
        e.starts_with("/etc/volsnap/volsnap.toml:3:15: swift.concurrency: invalid type: string \"4\", expected u32"),
        "{e}"
    );
}

#[test]
fn datastore_is_required() {
    let e = error_of("storage_strategy = \"Swift\"\n");
    assert!(e.contains("datastore is required"), "{e}");
}

#[test]
fn cinder_needs_mounts_and_never_root() {
    let e = error_of("storage_strategy = \"Cinder\"\ndatastore = \"none\"\n");
    assert!(e.contains("needs at least one mount"), "{e}");
    let e = error_of("storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [\"/\"]\n");
    assert!(e.contains(":3:1: mounts: \"/\" cannot be frozen"), "{e}");
    let e = error_of("datastore = \"none\"\nmounts = [\"srv\"]\n");
    assert!(e.contains("not an absolute path"), "{e}");
}

#[test]
fn mounts_are_sorted_and_normalised_and_a_duplicate_is_refused() {
    let s = parse_str(
        "storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [\"/srv/b/\", \"/srv/a\"]\n",
    )
    .unwrap();
    assert_eq!(s.mounts, [PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]);
    for twice in [
        "\"/data\", \"/data\"",
        "\"/data\", \"/data/\"",
        "\"/data/./\", \"/x\", \"/data\"",
    ] {
        let e = error_of(&format!(
            "storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [{twice}]\n"
        ));
        assert!(
            e.contains(":3:1: mounts: /data is listed twice"),
            "{twice}: {e}"
        );
    }
}

#[test]
fn explicit_volumes_must_match_a_mount_and_be_uuids() {
    let base = "storage_strategy = \"Cinder\"\ndatastore = \"none\"\nmounts = [\"/srv/db\"]\n[cinder.volumes]\n";
    let ok = parse_str(&format!(
        "{base}\"/srv/db\" = \"0B6F5A2E-1111-2222-3333-444455556666\"\n"
    ))
    .unwrap();
    assert_eq!(
        ok.cinder.volumes[Path::new("/srv/db")],
        "0b6f5a2e-1111-2222-3333-444455556666"
    );
    let e = error_of(&format!(
        "{base}\"/srv/other\" = \"0b6f5a2e-1111-2222-3333-444455556666\"\n"
    ));
    assert!(
        e.contains(":5:1: cinder.volumes./srv/other: /srv/other is not one of `mounts` (/srv/db)"),
        "{e}"
    );
    let e = error_of(&format!("{base}\"/srv/db\" = \"vol-1\"\n"));
    assert!(e.contains("is not a Cinder volume id"), "{e}");
}

#[test]
fn limits_on_numbers() {
    let e = error_of("datastore = \"none\"\n[cinder]\nmax_freeze = \"11m\"\n");
    assert!(e.contains("the limit is 600s"), "{e}");
    let e = error_of("datastore = \"none\"\n[cinder]\nmax_freeze = \"0s\"\n");
    assert!(e.contains("must be longer than zero"), "{e}");
    let e = error_of("datastore = \"none\"\n[swift]\nsegment_size = \"10KiB\"\n");
    assert!(
        e.contains("swift.segment_size: 10.0 KiB is outside 1MiB..5GiB"),
        "{e}"
    );
    let e =
        error_of("datastore = \"none\"\n[swift]\ncompression = \"gzip\"\ncompression_level = 12\n");
    assert!(
        e.contains("swift.compression_level: 12 is outside 1..9"),
        "{e}"
    );
    let e = error_of("datastore = \"none\"\n[retention]\nkeep_last = 0\n");
    assert!(
        e.contains("retention.keep_last: 0 would delete every backup"),
        "{e}"
    );
    let e = error_of("datastore = \"none\"\n[hooks.env]\nVOLSNAP_TIMEOUT = \"1\"\n");
    assert!(e.contains("set by volsnap itself"), "{e}");
}

#[test]
fn secrets_never_show_in_debug() {
    let s = parse_str(
        "datastore = \"none\"\n[openstack]\npassword = \"hunter2-pw\"\napplication_credential_secret = \"s3cr3t-ac\"\n[hooks.env]\nMYSQL_PWD = \"db-pw-9\"\n",
    )
    .unwrap();
    let dump = format!("{s:?}");
    for secret in ["hunter2-pw", "s3cr3t-ac", "db-pw-9"] {
        assert!(!dump.contains(secret), "{secret} leaked: {dump}");
    }
}

fn write_config(mode: u32, body: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(body.as_bytes()).unwrap();
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

#[test]
fn a_readable_file_holding_a_secret_is_refused() {
    let body = "datastore = \"none\"\n[openstack]\npassword = \"pw\"\n";
    let f = write_config(0o640, body);
    let e = load(f.path()).unwrap_err().to_string();
    assert!(
        e.contains(
            "holds a secret (openstack.password) and is readable by group or others (mode 0640)"
        ),
        "{e}"
    );
    assert!(
        e.contains(&format!("run: chmod 600 {}", f.path().display())),
        "{e}"
    );
    let f = write_config(0o600, body);
    load(f.path()).unwrap();
    // Without a secret, a world-readable config is fine.
    let f = write_config(0o644, "datastore = \"none\"\n");
    load(f.path()).unwrap();
}

#[test]
fn a_config_others_can_write_is_refused() {
    let f = write_config(0o666, "datastore = \"none\"\n");
    let e = load(f.path()).unwrap_err().to_string();
    assert!(
        e.contains("is writable by group or others (mode 0666)"),
        "{e}"
    );
}

#[test]
fn the_sample_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/volsnap.toml");
    let source = std::fs::read_to_string(&path).unwrap();
    let s = parse(&path, &source).unwrap();
    assert_eq!(s.datastore, Datastore::Mysql);
}

/// Every `# key = value` and `# [table]` line of the sample uncommented, and
/// `mounts` set to its example: what an operator gets by following it. The
/// datastore is PostgreSQL's, which `[archive]` is for.
#[test]
fn the_sample_config_parses_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/volsnap.toml");
    let source = std::fs::read_to_string(&path).unwrap();
    let mut uncommented = 0;
    let text: Vec<String> = source
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || rest.contains(" = ") => {
                uncommented += 1;
                rest.to_string()
            }
            _ if line.starts_with("mounts = []") => "mounts = [\"/var/lib/mysql\"]".into(),
            _ if line.starts_with("datastore = \"mysql\"") => "datastore = \"postgresql\"".into(),
            _ => line.to_string(),
        })
        .collect();
    assert!(uncommented > 30, "only {uncommented} lines uncommented");
    let s = parse(&path, &text.join("\n")).unwrap_or_else(|e| panic!("{e}"));
    // The keys after each table line stayed where the sample puts them.
    assert_eq!(s.cinder.max_freeze, Duration::from_secs(30));
    assert_eq!(s.cinder.name_prefix, "volsnap");
    assert_eq!(
        s.cinder.volumes[Path::new("/var/lib/mysql")],
        "0b6f5a2e-5b4c-4b8e-9c1a-2f3e4d5c6b7a"
    );
    assert_eq!(s.cinder.metadata["owner"], "dba-team");
    assert_eq!(s.swift.container, "volsnap");
    assert_eq!(s.hooks.env["VOLSNAP_MYSQL_USER"].expose(), "root");
    assert!(s.retention.after_backup && s.retention.keep_last == Some(7));
    assert!(s.log_file.is_some() && s.metrics_file.is_some());
    assert_eq!(s.archive.unwrap().container, "volsnap-wal");
}

#[test]
fn metrics_file_is_an_absolute_path() {
    let s = parse_str(
        "datastore = \"none\"\nmetrics_file = \"/var/lib/node-exporter/./volsnap.prom\"\n",
    )
    .unwrap();
    assert_eq!(
        s.metrics_file.as_deref(),
        Some(Path::new("/var/lib/node-exporter/volsnap.prom"))
    );
    assert_eq!(
        parse_str("datastore = \"none\"\n").unwrap().metrics_file,
        None
    );
    let e = error_of("datastore = \"none\"\nmetrics_file = \"volsnap.prom\"\n");
    assert!(
        e.contains(":2:1: metrics_file: \"volsnap.prom\" is not an absolute path"),
        "{e}"
    );
}

#[test]
fn cinder_backup_keys() {
    let base = "datastore = \"none\"\n[cinder]\n";
    let s = parse_str(base).unwrap();
    assert_eq!(s.cinder.backup.mode, BackupMode::Off);
    assert!(s.cinder.backup.keep_snapshot);
    assert_eq!(s.cinder.backup.timeout, DEFAULT_BACKUP_TIMEOUT);
    let s = parse_str(&format!(
        "{base}backup = \"incremental\"\nfull_every = \"7d\"\nbackup_container = \"b\"\nkeep_snapshot = false\nbackup_timeout = \"1h\"\n"
    ))
    .unwrap();
    assert_eq!(s.cinder.backup.mode, BackupMode::Incremental);
    assert_eq!(
        s.cinder.backup.full_every,
        Some(FullEvery::Age(Duration::from_secs(7 * 86400)))
    );
    assert_eq!(s.cinder.backup.container.as_deref(), Some("b"));
    let s = parse_str(&format!("{base}backup = \"incremental\"\nfull_every = 7\n")).unwrap();
    assert_eq!(s.cinder.backup.full_every, Some(FullEvery::Count(7)));

    let e = error_of(&format!("{base}backup = \"sometimes\"\n"));
    assert!(
        e.contains(":3:10: cinder.backup: unknown variant `sometimes`"),
        "{e}"
    );
    let e = error_of(&format!("{base}backup = \"full\"\nfull_every = 0\n"));
    assert!(
        e.contains(":4:14: cinder.full_every: 0: expected a count of 1 or more"),
        "{e}"
    );
    let e = error_of(&format!("{base}backup = \"full\"\nfull_every = \"7x\"\n"));
    assert!(e.contains("cinder.full_every: invalid duration"), "{e}");
    let e = error_of(&format!("{base}keep_snapshot = false\n"));
    assert!(
        e.contains(":3:1: cinder.keep_snapshot: false would leave no copy"),
        "{e}"
    );
    let e = error_of(&format!(
        "{base}backup = \"full\"\nbackup_timeout = \"0s\"\n"
    ));
    assert!(
        e.contains("cinder.backup_timeout: must be longer than zero"),
        "{e}"
    );
    let e = error_of(&format!(
        "{base}backup = \"full\"\nbackup_container = \"a/b\"\n"
    ));
    assert!(e.contains("cinder.backup_container"), "{e}");
}
