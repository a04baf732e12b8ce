//! `volsnap check`: everything that can be known before a backup runs.

use std::path::Path;

use serde::Serialize;

use crate::agent::cinder::{plan, runs};
use crate::config::{BackupMode, Settings, Strategy};
use crate::hooks;
use crate::mounts::MountEntry;
use crate::openstack::cinder::Volume;
use crate::openstack::{self, auth, Env, Session};

/// The local checks: hooks and mounts. Each problem is one line of text.
/// The Cinder strategy's are the plan's own rules (`agent::cinder::plan`).
pub fn offline(settings: &Settings, mountinfo: &[MountEntry]) -> Vec<String> {
    let mut problems = match settings.strategy {
        Strategy::Cinder => plan::local(settings, mountinfo).err().unwrap_or_default(),
        Strategy::Swift => {
            let mut problems = Vec::new();
            problems.extend(hooks::check_configured(settings).err());
            // For Swift the mounts are the hook's paths, not frozen.
            for mount in &settings.mounts {
                if let Err(e) = std::fs::metadata(mount) {
                    problems.push(format!("mount {}: {e}", mount.display()));
                }
            }
            problems
        }
    };
    if let Some(p) = settings
        .metrics_file
        .as_deref()
        .and_then(metrics_file_problem)
    {
        problems.push(p);
    }
    problems
}

/// Why a backup could not write `metrics_file`: it only warns then, in a
/// journal nobody reads, so `check` (what cloud-init runs) says it first.
fn metrics_file_problem(path: &Path) -> Option<String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!(
            "metrics_file {}: {} is not a directory",
            path.display(),
            dir.display()
        )),
        Err(e) => Some(format!(
            "metrics_file {}: its directory {}: {e}",
            path.display(),
            dir.display()
        )),
    }
}

/// One online check and what it found.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(name: impl Into<String>, result: Result<String, String>) -> Check {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Check {
            name: name.into(),
            ok,
            detail,
        }
    }
}

/// The checks of `[archive]` that need no network (`check --offline`).
pub fn archive_offline(settings: &Settings) -> Vec<Check> {
    crate::archive::check::checks(settings, true)
        .into_iter()
        .map(|(name, result)| Check::new(name, result))
        .collect()
}

/// The checks that ask OpenStack: credentials, authentication, the
/// endpoint, and the strategy's volumes or container. A failing step ends the
/// list (what follows would fail for the same cause).
///
/// `mountinfo` and `sys_root` (`/sys`) serve the discovery of the volumes of
/// mounts that have no id in `[cinder.volumes]`.
pub fn online(settings: &Settings, mountinfo: &[MountEntry], sys_root: &Path) -> Vec<Check> {
    let mut checks = crate::archive::check::checks(settings, false)
        .into_iter()
        .map(|(name, result)| Check::new(name, result))
        .collect::<Vec<_>>();
    let config = match auth::resolve(&settings.openstack, &Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::new("credentials", Err(format!("{e:#}"))));
            return checks;
        }
    };
    let describe = format!(
        "{} at {} (from {})",
        config.method.describe(),
        config.auth_url,
        config.source
    );
    let session = match Session::connect(config) {
        Ok(s) => s,
        Err(e) => {
            checks.push(Check::new("authentication", Err(format!("{e:#}"))));
            return checks;
        }
    };
    checks.push(Check::new("authentication", Ok(describe)));
    match settings.strategy {
        Strategy::Cinder => cinder_checks(settings, &session, mountinfo, sys_root, &mut checks),
        Strategy::Swift => swift_checks(settings, &session, &mut checks),
    }
    checks
}

fn cinder_checks(
    settings: &Settings,
    session: &Session,
    mountinfo: &[MountEntry],
    sys_root: &Path,
    checks: &mut Vec<Check>,
) {
    let cinder = match openstack::cinder(session) {
        Ok(c) => c,
        Err(e) => {
            checks.push(Check::new("block-storage endpoint", Err(format!("{e:#}"))));
            return;
        }
    };
    checks.push(Check::new(
        "block-storage endpoint",
        Ok(cinder.endpoint().to_string()),
    ));
    // The same resolution a backup makes; a mount that is not freezable is
    // reported by the offline checks.
    let Ok(mounts) = plan::local(settings, mountinfo) else {
        return;
    };
    let found = plan::resolve_volumes(settings, &cinder, &mounts, sys_root);
    let mut sizes = Vec::new();
    for (mount, found) in mounts.iter().zip(found) {
        let name = format!("volume for {}", mount.configured.display());
        if let Ok((v, _)) = &found {
            sizes.push(v.size);
        }
        checks.push(Check::new(
            name,
            found.map(|(v, how)| format!("{}{how}", describe_volume(&v))),
        ));
    }
    if settings.cinder.backup.mode != BackupMode::Off {
        backup_checks(settings, session, &cinder, &sizes, checks);
    }
    checks.push(Check::new(
        "earlier runs",
        match runs::list(&cinder) {
            Ok(snaps) => {
                let left = runs::leftovers(&snaps, &crate::runtime::lock_path(&settings.runtime_dir));
                Ok(if left.is_empty() {
                    "no snapshot left by a killed or failed run".to_string()
                } else {
                    format!(
                        "{} snapshot(s) left by killed or failed runs, never backups; the next backup, prune or list removes them: {}",
                        left.len(),
                        left.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ")
                    )
                })
            }
            Err(e) => Err(format!("{e:#}")),
        },
    ));
}

/// `[cinder] backup` is on: the backup API answers for this project, and
/// its quotas leave room for one backup of every volume.
fn backup_checks(
    settings: &Settings,
    session: &Session,
    cinder: &openstack::Cinder,
    sizes: &[u64],
    checks: &mut Vec<Check>,
) {
    match cinder
        .backup_api()
        .and_then(|api| cinder.backups(api).map(|b| (api, b)))
    {
        Ok((api, all)) => {
            checks.push(Check::new(
                "backup service",
                Ok(format!(
                    "the backup API answers ({} backup(s) in the project; {}; backup = \"{}\")",
                    all.len(),
                    if api.metadata {
                        "labels in backup metadata, microversion 3.43"
                    } else {
                        "below microversion 3.43: labels in the description"
                    },
                    settings.cinder.backup.mode.name()
                )),
            ));
        }
        Err(e) => {
            checks.push(Check::new("backup service", Err(e.to_string())));
            return;
        }
    }
    let Some(project) = session.token_info().project.map(|p| p.id) else {
        checks.push(Check::new(
            "backup quotas",
            Err("the token names no project".into()),
        ));
        return;
    };
    let (count, gib) = (sizes.len() as i64, sizes.iter().sum::<u64>() as i64);
    checks.push(Check::new(
        "backup quotas",
        match cinder.backup_quotas(&project) {
            Ok(q) => {
                let room = |what: &str,
                            u: &crate::openstack::cinder_backups::QuotaUsage,
                            need: i64| match u.room() {
                    None => Ok(format!("{what} unlimited")),
                    Some(r) if r >= need => Ok(format!(
                        "{what} {r} left of {} (a run needs {need})",
                        u.limit
                    )),
                    Some(r) => Err(format!(
                        "{what}: {r} left of {}, a run needs {need}",
                        u.limit
                    )),
                };
                match (
                    room("backups", &q.backups, count),
                    room("backup_gigabytes", &q.backup_gigabytes, gib),
                ) {
                    (Ok(a), Ok(b)) => Ok(format!("{a}; {b}")),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            Err(e) => Err(e.to_string()),
        },
    ));
}

fn describe_volume(v: &Volume) -> String {
    let mut text = format!("volume {} is {}, {} GiB", v.id, v.status, v.size);
    for a in &v.attachments {
        text.push_str(&format!(
            ", attached to server {} as {}",
            a.server_id.as_deref().unwrap_or("?"),
            a.device.as_deref().unwrap_or("?")
        ));
    }
    text
}

fn swift_checks(settings: &Settings, session: &Session, checks: &mut Vec<Check>) {
    let swift = match openstack::swift(session) {
        Ok(s) => s,
        Err(e) => {
            checks.push(Check::new("object-store endpoint", Err(format!("{e:#}"))));
            return;
        }
    };
    checks.push(Check::new(
        "object-store endpoint",
        Ok(swift.endpoint().to_string()),
    ));
    // Looked at, never created: `check` changes nothing in the cloud but the
    // orphans below; a backup creates the containers it needs.
    let create = settings.swift.create_container;
    let mut missing = false;
    let segments = crate::stream::segments_container(&settings.swift.container);
    for container in [Ok(settings.swift.container.clone()), segments] {
        let container = match container {
            Ok(c) => c,
            Err(e) => {
                checks.push(Check::new("container", Err(format!("{e:#}"))));
                return;
            }
        };
        let result = match swift.ensure_container(&container, false) {
            Ok(_) => Ok(format!("container {container} exists")),
            Err(e) if e.is_not_found() && create => {
                missing = true;
                Ok(format!(
                    "container {container} does not exist; a backup will create it (create_container = true)"
                ))
            }
            Err(e) if e.is_not_found() => Err(format!(
                "container {container} does not exist and create_container = false ({e})"
            )),
            Err(e) => Err(e.to_string()),
        };
        let failed = result.is_err();
        checks.push(Check::new("container", result));
        if failed {
            return;
        }
    }
    if missing {
        return;
    }
    let result = crate::agent::swift::sweep_orphans(settings, &swift)
        .map_err(|e| format!("{e:#}"))
        .and_then(|sweep| {
            let failed: Vec<String> = sweep
                .found
                .iter()
                .filter(|o| o.state == crate::agent::swift::OrphanState::Failed)
                .map(|o| o.describe())
                .collect();
            if !failed.is_empty() {
                return Err(failed.join("; "));
            }
            let mut lines: Vec<String> = sweep.freed().into_iter().collect();
            lines.extend(
                sweep
                    .found
                    .iter()
                    .filter(|o| o.state != crate::agent::swift::OrphanState::Removed)
                    .map(|o| o.describe()),
            );
            if lines.is_empty() {
                lines.push("none: every segment of this host belongs to a backup".to_string());
            }
            Ok(lines.join("; "))
        });
    checks.push(Check::new("orphan segments", result));
}
