//! volsnap.toml → validated [`Settings`].
//!
//! The file is read once, deserialized into structs that refuse unknown keys,
//! then checked as a whole. Every problem is a [`ConfigError`] that names the
//! file, line, column and key; nothing else in volsnap re-checks settings.

pub mod archive;
mod error;
pub mod files;
mod units;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{line_column, ConfigError};
pub use units::{human_bytes, parse_duration, parse_size, ByteSize, ConfigDuration, FullEvery};

use crate::secret::Secret;

pub const DEFAULT_PATH: &str = "/etc/volsnap/volsnap.toml";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/volsnap";
pub const DEFAULT_HOOKS_DIR: &str = "/usr/lib/volsnap/hooks";

/// The seed's `backup_agent`: which Trove backup agent this guest uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum BackupAgent {
    #[default]
    #[serde(
        rename = "trove.guestagent.backup.backupagent.SwiftAgent",
        alias = "SwiftAgent"
    )]
    Swift,
    #[serde(
        rename = "trove.guestagent.backup.backupagent.CinderAgent",
        alias = "CinderAgent"
    )]
    Cinder,
}

/// The seed's `storage_strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Strategy {
    #[default]
    Swift,
    Cinder,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Swift => "swift",
            Strategy::Cinder => "cinder",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Datastore {
    Mysql,
    Postgresql,
    Redis,
    None,
}

impl Datastore {
    /// The hook file's name under the hooks directory.
    pub fn name(self) -> &'static str {
        match self {
            Datastore::Mysql => "mysql",
            Datastore::Postgresql => "postgresql",
            Datastore::Redis => "redis",
            Datastore::None => "none",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookFailurePolicy {
    /// No snapshot when the hook cannot quiesce the database.
    #[default]
    Abort,
    /// Snapshot anyway, labelled `crash`, exit 3.
    CrashConsistent,
}

/// `[cinder] backup`: what follows a good run's snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// The snapshots are the backup.
    #[default]
    Off,
    /// A full Cinder backup of every snapshot.
    Full,
    /// Incremental on the volume's current chain (a full starts one).
    Incremental,
}

impl BackupMode {
    pub fn name(self) -> &'static str {
        match self {
            BackupMode::Off => "off",
            BackupMode::Full => "full",
            BackupMode::Incremental => "incremental",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    #[serde(alias = "v3password")]
    Password,
    #[serde(rename = "v3applicationcredential", alias = "applicationcredential")]
    ApplicationCredential,
    #[serde(alias = "v3token")]
    Token,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    #[default]
    Public,
    Internal,
    Admin,
}

impl Interface {
    pub fn name(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }
}

/// The whole file as written. Optional keys stay `Option` here so that
/// validation can tell "not given" from "given the default".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    backup_agent: Option<BackupAgent>,
    storage_strategy: Option<Strategy>,
    datastore: Option<Datastore>,
    #[serde(default)]
    mounts: Vec<PathBuf>,
    runtime_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    metrics_file: Option<PathBuf>,
    #[serde(default)]
    openstack: OpenStack,
    #[serde(default)]
    cinder: CinderFile,
    #[serde(default)]
    swift: SwiftFile,
    #[serde(default)]
    hooks: HooksFile,
    #[serde(default)]
    retention: Retention,
    archive: Option<archive::ArchiveFile>,
}

/// Authentication and endpoints. Every field may also come from clouds.yaml
/// (`cloud`) or the `OS_*` environment; see the README for the precedence.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenStack {
    pub cloud: Option<String>,
    pub auth_url: Option<String>,
    pub auth_type: Option<AuthType>,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub user_domain_name: Option<String>,
    pub user_domain_id: Option<String>,
    pub password: Option<Secret>,
    pub project_name: Option<String>,
    pub project_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub project_domain_id: Option<String>,
    pub application_credential_id: Option<String>,
    pub application_credential_name: Option<String>,
    pub application_credential_secret: Option<Secret>,
    pub token: Option<Secret>,
    pub region_name: Option<String>,
    pub interface: Option<Interface>,
    pub cacert: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub block_storage_endpoint: Option<String>,
    pub object_store_endpoint: Option<String>,
    pub connect_timeout: Option<ConfigDuration>,
    pub request_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CinderFile {
    #[serde(default)]
    volumes: BTreeMap<PathBuf, String>,
    max_freeze: Option<ConfigDuration>,
    on_hook_failure: Option<HookFailurePolicy>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    name_prefix: Option<String>,
    backup: Option<BackupMode>,
    backup_container: Option<String>,
    full_every: Option<FullEvery>,
    keep_snapshot: Option<bool>,
    backup_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwiftFile {
    container: Option<String>,
    prefix: Option<String>,
    create_container: Option<bool>,
    segment_size: Option<ByteSize>,
    concurrency: Option<u32>,
    max_manifest_segments: Option<u32>,
    compression: Option<Compression>,
    compression_level: Option<i32>,
    #[serde(default)]
    age_recipients: Vec<String>,
    age_recipients_file: Option<PathBuf>,
    age_identity_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksFile {
    dir: Option<PathBuf>,
    timeout: Option<ConfigDuration>,
    stream_timeout: Option<ConfigDuration>,
    #[serde(default)]
    env: BTreeMap<String, Secret>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    /// Apply the policy after every successful backup (when a keep_* is set).
    #[serde(default = "yes")]
    pub after_backup: bool,
}

fn yes() -> bool {
    true
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.keep_last.is_some() || self.keep_daily.is_some() || self.keep_weekly.is_some()
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub strategy: Strategy,
    pub datastore: Datastore,
    /// The filesystems holding the database's data, sorted and de-duplicated:
    /// frozen by the Cinder strategy, handed to every hook as `VOLSNAP_MOUNTS`.
    pub mounts: Vec<PathBuf>,
    pub runtime_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    /// Where `volsnap backup` leaves its outcome for node_exporter's
    /// textfile collector (see `metrics`).
    pub metrics_file: Option<PathBuf>,
    pub openstack: OpenStack,
    pub cinder: CinderSettings,
    pub swift: SwiftSettings,
    pub hooks: HookSettings,
    pub retention: Retention,
    /// `[archive]`, when the database's log is archived for point-in-time recovery.
    pub archive: Option<archive::ArchiveSettings>,
}

#[derive(Clone, Debug)]
pub struct CinderSettings {
    /// Explicit mount → volume id; mounts not listed are discovered.
    pub volumes: BTreeMap<PathBuf, String>,
    pub max_freeze: Duration,
    pub on_hook_failure: HookFailurePolicy,
    pub metadata: BTreeMap<String, String>,
    pub name_prefix: String,
    pub backup: BackupSettings,
}

/// Cinder backups (cinder-backup's copies of each good snapshot).
#[derive(Clone, Debug)]
pub struct BackupSettings {
    pub mode: BackupMode,
    /// The backup service's container (its default when `None`).
    pub container: Option<String>,
    /// When an incremental chain starts again with a full (`None`: never).
    pub full_every: Option<FullEvery>,
    /// Keep the snapshot once its backup is `available`.
    pub keep_snapshot: bool,
    /// How long the backups of one run may take, all together.
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct SwiftSettings {
    pub container: String,
    pub prefix: String,
    pub create_container: bool,
    pub segment_size: u64,
    pub concurrency: u32,
    /// Lowers the entries per SLO manifest below what Swift's `/info` says
    /// (for a cluster that hides `/info` with a lower limit).
    pub max_manifest_segments: Option<u32>,
    pub compression: Compression,
    pub compression_level: i32,
    pub age_recipients: Vec<String>,
    pub age_recipients_file: Option<PathBuf>,
    /// The age identity (private key) that `restore` and `verify` decrypt with.
    pub age_identity_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct HookSettings {
    pub dir: PathBuf,
    /// Deadline for `freeze`, `thaw` and `check`.
    pub timeout: Duration,
    /// Deadline for `backup` and `restore`, which stream a whole database.
    pub stream_timeout: Duration,
    pub env: BTreeMap<String, Secret>,
}

pub const DEFAULT_MAX_FREEZE: Duration = Duration::from_secs(30);
/// A frozen filesystem stalls every writer on it: no setting may hold one longer.
pub const MAX_MAX_FREEZE: Duration = Duration::from_secs(600);
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// A Cinder backup reads the whole volume: hours for a large one.
pub const DEFAULT_BACKUP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// With [`DEFAULT_CONCURRENCY`]: 4 buffers of 12 MiB, a backup within 64 MiB
/// of RAM (bench/RESULTS-swift.md): each segment's PUT streams it as it is
/// written, so a few in flight keep Swift busy (one being written and sent,
/// the others finishing), and four segments share the MD5's SIMD lanes:
/// a quarter less CPU than 24 MiB × 2 for the same memory and throughput.
pub const DEFAULT_SEGMENT_SIZE: u64 = 12 << 20;
pub const DEFAULT_CONCURRENCY: u32 = 4;

/// The level for `compression` (its default when unset), or why `level` is
/// not one: shared by `[swift]` and `[archive]`.
fn compression_level(compression: Compression, level: Option<i32>) -> Result<i32, String> {
    let (range, default_level) = match compression {
        Compression::Zstd => (1..=19, 3),
        Compression::Gzip => (1..=9, 6),
        Compression::None => (0..=0, 0),
    };
    let level = level.unwrap_or(default_level);
    if range.contains(&level) {
        return Ok(level);
    }
    Err(match compression {
        Compression::None => "has no meaning with compression = \"none\"".into(),
        _ => format!(
            "{level} is outside {}..{} for {compression:?}",
            range.start(),
            range.end()
        ),
    })
}

/// Reads, parses and validates a config file: a regular file that only
/// root (or the user volsnap runs as) can change, in directories the same.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let (source, meta) = files::read_regular(path)?;
    files::check_trusted(path, &meta, "configuration file")
        .map_err(|message| ConfigError::whole_file(path, message))?;
    let settings = parse(path, &source)?;
    check_permissions(&settings, &meta)?;
    check_recipients_file(&settings, &source)?;
    Ok(settings)
}

/// Parses and validates config text; `path` is only used in messages.
pub fn parse(path: &Path, source: &str) -> Result<Settings, ConfigError> {
    let file: File = toml::from_str(source).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        position: e.span().map(|span| line_column(source, span.start)),
        key: e.span().and_then(|span| error::key_at(source, span.start)),
        message: e.message().trim().to_string(),
    })?;
    validate(path, source, file)
}

fn validate(path: &Path, source: &str, file: File) -> Result<Settings, ConfigError> {
    let err = |key: &str, message: String| ConfigError::at_key(path, source, key, message);

    // A missing half of the seed pair follows the half that was given; two
    // halves that disagree are a mistake.
    let strategy = match (file.backup_agent, file.storage_strategy) {
        (None, None) => Strategy::Swift,
        (Some(BackupAgent::Swift), None) | (None, Some(Strategy::Swift)) => Strategy::Swift,
        (Some(BackupAgent::Cinder), None) | (None, Some(Strategy::Cinder)) => Strategy::Cinder,
        (Some(BackupAgent::Swift), Some(Strategy::Swift)) => Strategy::Swift,
        (Some(BackupAgent::Cinder), Some(Strategy::Cinder)) => Strategy::Cinder,
        (Some(agent), Some(strategy)) => {
            return Err(err(
                "storage_strategy",
                format!(
                    "storage_strategy {strategy:?} does not go with backup_agent {}; valid pairs: \
                     SwiftAgent with \"Swift\", CinderAgent with \"Cinder\"",
                    agent_short(agent)
                ),
            ))
        }
    };

    let datastore = file.datastore.ok_or_else(|| {
        ConfigError::whole_file(
            path,
            "datastore is required: one of \"mysql\", \"postgresql\", \"redis\", \"none\"",
        )
    })?;

    let mut mounts = Vec::new();
    for mount in &file.mounts {
        let normal = absolute_normal(mount).ok_or_else(|| {
            err(
                "mounts",
                format!("{:?} is not an absolute path", mount.display().to_string()),
            )
        })?;
        if normal == Path::new("/") {
            return Err(err(
                "mounts",
                "\"/\" cannot be frozen: freezing the root filesystem hangs the machine".into(),
            ));
        }
        // `/data` and `/data/` are one filesystem. Listed twice, it is most
        // likely a slip for another mount that then goes unfrozen.
        if let Some(first) = mounts.iter().position(|m| *m == normal) {
            return Err(err(
                "mounts",
                format!(
                    "{} is listed twice ({:?} and {:?}); list each filesystem once",
                    normal.display(),
                    file.mounts[first].display().to_string(),
                    mount.display().to_string()
                ),
            ));
        }
        mounts.push(normal);
    }
    mounts.sort();
    if strategy == Strategy::Cinder && mounts.is_empty() {
        return Err(err(
            "mounts",
            "the Cinder strategy needs at least one mount in `mounts` (the filesystems on the data volumes)".into(),
        ));
    }

    let runtime_dir = absolute_path(&err, "runtime_dir", file.runtime_dir)?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
    let log_file = absolute_path(&err, "log_file", file.log_file)?;
    let metrics_file = absolute_path(&err, "metrics_file", file.metrics_file)?;

    let openstack = file.openstack;
    for (key, timeout) in [
        ("openstack.connect_timeout", openstack.connect_timeout),
        ("openstack.request_timeout", openstack.request_timeout),
    ] {
        if timeout.is_some_and(|t| t.0.is_zero()) {
            return Err(err(key, "must be longer than zero".into()));
        }
    }
    for (key, url) in [
        ("openstack.auth_url", &openstack.auth_url),
        (
            "openstack.block_storage_endpoint",
            &openstack.block_storage_endpoint,
        ),
        (
            "openstack.object_store_endpoint",
            &openstack.object_store_endpoint,
        ),
    ] {
        if let Some(url) = url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(err(
                    key,
                    format!(
                        "{:?} is not an http:// or https:// URL",
                        crate::secret::strip_userinfo(url)
                    ),
                ));
            }
        }
    }
    if openstack.cacert.is_some() && openstack.insecure == Some(true) {
        return Err(err(
            "openstack.insecure",
            "insecure = true and cacert contradict each other: keep one".into(),
        ));
    }

    let cinder = validate_cinder(&err, file.cinder, &mounts)?;
    let swift = validate_swift(&err, file.swift)?;

    let hooks_dir = absolute_path(&err, "hooks.dir", file.hooks.dir)?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOOKS_DIR));
    let hooks = HookSettings {
        dir: hooks_dir,
        timeout: positive(
            &err,
            "hooks.timeout",
            file.hooks.timeout,
            DEFAULT_HOOK_TIMEOUT,
        )?,
        stream_timeout: positive(
            &err,
            "hooks.stream_timeout",
            file.hooks.stream_timeout,
            DEFAULT_STREAM_TIMEOUT,
        )?,
        env: file.hooks.env,
    };
    for name in hooks.env.keys() {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(err(
                &format!("hooks.env.{name}"),
                format!("{name:?} is not a valid environment variable name"),
            ));
        }
        if let Some(why) = loads_code(name) {
            return Err(err(
                &format!("hooks.env.{name}"),
                format!("{name} {why}; volsnap does not pass it to the hooks it runs as root"),
            ));
        }
        if name.starts_with("VOLSNAP_")
            && !name.starts_with("VOLSNAP_MYSQL_")
            && !name.starts_with("VOLSNAP_PG_")
            && !name.starts_with("VOLSNAP_REDIS_")
            && !name.starts_with("VOLSNAP_RESTORE_")
        {
            return Err(err(
                &format!("hooks.env.{name}"),
                format!("{name} is set by volsnap itself and cannot be overridden"),
            ));
        }
    }

    let retention = file.retention;
    for (key, value) in [
        ("retention.keep_last", retention.keep_last),
        ("retention.keep_daily", retention.keep_daily),
        ("retention.keep_weekly", retention.keep_weekly),
    ] {
        if value == Some(0) {
            return Err(err(
                key,
                "0 would delete every backup; leave the key out to keep all".into(),
            ));
        }
    }

    let archive = file
        .archive
        .map(|a| archive::validate(&err, a, datastore))
        .transpose()?;

    Ok(Settings {
        path: path.to_path_buf(),
        strategy,
        datastore,
        mounts,
        runtime_dir,
        log_file,
        metrics_file,
        openstack,
        cinder,
        swift,
        hooks,
        retention,
        archive,
    })
}

type ErrAt<'a> = dyn Fn(&str, String) -> ConfigError + 'a;

fn validate_cinder(
    err: &ErrAt,
    file: CinderFile,
    mounts: &[PathBuf],
) -> Result<CinderSettings, ConfigError> {
    let mut volumes = BTreeMap::new();
    for (mount, id) in file.volumes {
        let key = format!("cinder.volumes.{}", mount.display());
        let normal = absolute_normal(&mount)
            .ok_or_else(|| err(&key, "the mount must be an absolute path".into()))?;
        if !mounts.contains(&normal) {
            return Err(err(
                &key,
                format!(
                    "{} is not one of `mounts` ({})",
                    normal.display(),
                    list_paths(mounts)
                ),
            ));
        }
        if !is_uuid(&id) {
            return Err(err(
                &key,
                format!("{id:?} is not a Cinder volume id (a UUID like 0b6f5a2e-…)"),
            ));
        }
        volumes.insert(normal, id.to_ascii_lowercase());
    }
    let max_freeze = positive(
        err,
        "cinder.max_freeze",
        file.max_freeze,
        DEFAULT_MAX_FREEZE,
    )?;
    if max_freeze > MAX_MAX_FREEZE {
        return Err(err(
            "cinder.max_freeze",
            format!(
                "{}s is too long to keep a database's filesystems frozen; the limit is {}s",
                max_freeze.as_secs(),
                MAX_MAX_FREEZE.as_secs()
            ),
        ));
    }
    for key in file.metadata.keys() {
        if key.is_empty() || key.len() > 255 {
            return Err(err(
                &format!("cinder.metadata.{key}"),
                "metadata keys must be 1 to 255 characters (a Cinder limit)".into(),
            ));
        }
    }
    for (key, value) in &file.metadata {
        if value.len() > 255 {
            return Err(err(
                &format!("cinder.metadata.{key}"),
                "metadata values must be at most 255 characters (a Cinder limit)".into(),
            ));
        }
    }
    let name_prefix = file.name_prefix.unwrap_or_else(|| "volsnap".into());
    if name_prefix.is_empty() || name_prefix.len() > 64 {
        return Err(err(
            "cinder.name_prefix",
            "must be 1 to 64 characters".into(),
        ));
    }
    if let Some(c) = &file.backup_container {
        if c.is_empty() || c.len() > 255 || c.contains('/') {
            return Err(err(
                "cinder.backup_container",
                format!("{c:?} is not a valid container name (1 to 255 characters, no '/')"),
            ));
        }
    }
    let mode = file.backup.unwrap_or_default();
    if file.keep_snapshot == Some(false) && mode == BackupMode::Off {
        return Err(err(
            "cinder.keep_snapshot",
            "false would leave no copy at all: it needs backup = \"full\" or \"incremental\""
                .into(),
        ));
    }
    let backup = BackupSettings {
        mode,
        container: file.backup_container,
        full_every: file.full_every,
        keep_snapshot: file.keep_snapshot.unwrap_or(true),
        timeout: positive(
            err,
            "cinder.backup_timeout",
            file.backup_timeout,
            DEFAULT_BACKUP_TIMEOUT,
        )?,
    };
    Ok(CinderSettings {
        volumes,
        max_freeze,
        on_hook_failure: file.on_hook_failure.unwrap_or_default(),
        metadata: file.metadata,
        name_prefix,
        backup,
    })
}

fn validate_swift(err: &ErrAt, file: SwiftFile) -> Result<SwiftSettings, ConfigError> {
    let container = file.container.unwrap_or_else(|| "volsnap".into());
    if container.is_empty() || container.len() > 256 || container.contains('/') {
        return Err(err(
            "swift.container",
            format!("{container:?} is not a valid container name (1 to 256 characters, no '/')"),
        ));
    }
    let prefix = file.prefix.unwrap_or_else(|| "volsnap".into());
    if prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
        return Err(err(
            "swift.prefix",
            format!("{prefix:?}: no leading, trailing or doubled '/'"),
        ));
    }
    let segment_size = file.segment_size.map_or(DEFAULT_SEGMENT_SIZE, |s| s.0);
    // Swift's own default max_file_size is 5 GiB; below 1 MiB the request
    // overhead dominates.
    if !(1 << 20..=5 << 30).contains(&segment_size) {
        return Err(err(
            "swift.segment_size",
            format!(
                "{} is outside 1MiB..5GiB (Swift's largest object)",
                human_bytes(segment_size)
            ),
        ));
    }
    let concurrency = file.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if !(1..=64).contains(&concurrency) {
        return Err(err(
            "swift.concurrency",
            format!("{concurrency} is outside 1..64"),
        ));
    }
    if let Some(n) = file.max_manifest_segments {
        if !(2..=1_000_000).contains(&n) {
            return Err(err(
                "swift.max_manifest_segments",
                format!("{n} is outside 2..1000000"),
            ));
        }
    }
    let compression = file.compression.unwrap_or_default();
    let compression_level = compression_level(compression, file.compression_level)
        .map_err(|why| err("swift.compression_level", why))?;
    // Parsed as the backup will parse them, so that a typo is a 78 here
    // rather than a failed backup tonight.
    for (i, recipient) in file.age_recipients.iter().enumerate() {
        if let Err(e) = crate::recipients::Recipients::parse(recipient, "the entry") {
            // The innermost cause says what is wrong with the key; the
            // context around it would only say "line 1".
            return Err(err(
                "swift.age_recipients",
                format!("[{i}]: {}", e.root_cause()),
            ));
        }
    }
    let age_recipients_file =
        absolute_path(err, "swift.age_recipients_file", file.age_recipients_file)?;
    let age_identity_file = absolute_path(err, "swift.age_identity_file", file.age_identity_file)?;
    Ok(SwiftSettings {
        container,
        prefix,
        create_container: file.create_container.unwrap_or(true),
        segment_size,
        concurrency,
        max_manifest_segments: file.max_manifest_segments,
        compression,
        compression_level,
        age_recipients: file.age_recipients,
        age_recipients_file,
        age_identity_file,
    })
}

fn positive(
    err: &ErrAt,
    key: &str,
    value: Option<ConfigDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(ConfigDuration(d)) if d.is_zero() => Err(err(key, "must be longer than zero".into())),
        Some(ConfigDuration(d)) => Ok(d),
    }
}

fn absolute_path(
    err: &ErrAt,
    key: &str,
    value: Option<PathBuf>,
) -> Result<Option<PathBuf>, ConfigError> {
    value
        .map(|p| {
            absolute_normal(&p).ok_or_else(|| {
                err(
                    key,
                    format!("{:?} is not an absolute path", p.display().to_string()),
                )
            })
        })
        .transpose()
}

/// An absolute path without `.`, `..` or trailing slashes; `None` if relative
/// or if `..` is used (a config should say what it means).
fn absolute_normal(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn agent_short(agent: BackupAgent) -> &'static str {
    match agent {
        BackupAgent::Swift => "SwiftAgent",
        BackupAgent::Cinder => "CinderAgent",
    }
}

impl Settings {
    /// The dotted names of the secrets this file holds, for the permission check.
    fn secret_keys(&self) -> Vec<String> {
        let o = &self.openstack;
        let mut keys: Vec<String> = [
            ("openstack.password", o.password.is_some()),
            (
                "openstack.application_credential_secret",
                o.application_credential_secret.is_some(),
            ),
            ("openstack.token", o.token.is_some()),
        ]
        .into_iter()
        .filter(|(_, present)| *present)
        .map(|(k, _)| k.to_string())
        .collect();
        keys.extend(
            self.hooks
                .env
                .keys()
                .filter(|name| looks_secret(name))
                .map(|name| format!("hooks.env.{name}")),
        );
        keys
    }
}

/// The variables the hooks' own programs read a password from
/// (hooks/README.md), whatever their names look like.
pub const SECRET_ENV_NAMES: &[&str] = &["REDISCLI_AUTH", "PGPASSWORD", "MYSQL_PWD"];

/// What a name must contain to be taken for a secret.
pub const SECRET_ENV_WORDS: &[&str] = &["PASS", "PWD", "SECRET", "TOKEN", "KEY", "AUTH", "CRED"];

/// Environment names such as `MYSQL_PWD`, `PGPASSWORD` or `REDISCLI_AUTH`
/// carry secrets.
fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_ENV_NAMES.contains(&upper.as_str())
        || SECRET_ENV_WORDS.iter().any(|word| upper.contains(word))
}

/// Why a variable may not be set for the hooks: it makes the dynamic
/// loader, a shell or an interpreter load code the hook did not name.
fn loads_code(name: &str) -> Option<&'static str> {
    const EXACT: &[&str] = &[
        "BASH_ENV",
        "ENV",
        "IFS",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "CDPATH",
        "GLOBIGNORE",
        "PROMPT_COMMAND",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCPATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RUBYOPT",
        "RUBYLIB",
        "NODE_OPTIONS",
        "NODE_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "LUA_INIT",
        "TCLLIBPATH",
        "OPENSSL_CONF",
        "OPENSSL_ENGINES",
        "MYSQL_HOME",
        "LIBMYSQL_PLUGIN_DIR",
        "LIBMYSQL_PLUGINS",
    ];
    const PREFIXES: &[&str] = &[
        "LD_",
        "PYTHON",
        "PERL5",
        "PERLLIB",
        "PERL_",
        "MALLOC_",
        "BASH_FUNC_",
    ];
    let upper = name.to_ascii_uppercase();
    if EXACT.contains(&upper.as_str()) || PREFIXES.iter().any(|p| upper.starts_with(p)) {
        Some("makes programs load code (a library, a startup file, a module path)")
    } else {
        None
    }
}

/// As ssh refuses a private key others can read: a config holding a secret
/// must be private. (That no one else can write it is `files::check_trusted`.)
fn check_permissions(settings: &Settings, meta: &std::fs::Metadata) -> Result<(), ConfigError> {
    let path = settings.path.as_path();
    let mode = meta.mode() & 0o777;
    let secrets = settings.secret_keys();
    if !secrets.is_empty() && mode & 0o044 != 0 {
        return Err(ConfigError::whole_file(
            path,
            format!(
                "holds a secret ({}) and is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
                secrets.join(", "),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The recipients file is read and parsed at load, as the backup will read
/// it, so that `check` finds a missing or garbled one.
fn check_recipients_file(settings: &Settings, source: &str) -> Result<(), ConfigError> {
    let Some(file) = &settings.swift.age_recipients_file else {
        return Ok(());
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigError::at_key(
            &settings.path,
            source,
            "swift.age_recipients_file",
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    crate::recipients::Recipients::parse(&text, &file.display().to_string()).map_err(|e| {
        ConfigError::at_key(
            &settings.path,
            source,
            "swift.age_recipients_file",
            format!("{e:#}"),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests;
