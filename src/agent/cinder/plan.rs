//! The Cinder run's plan, resolved before anything is locked or frozen: the
//! mounts, their volumes, the hook, the deadline. `backup`, `backup
//! --dry-run` and `check` all go through these functions, so they cannot
//! disagree about a mount or a volume.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::config::{HookFailurePolicy, Settings};
use crate::discover;
use crate::hooks::{self, Hook};
use crate::mounts::{self, MountEntry, Protected};
use crate::openstack::cinder::{Cinder, Volume as CinderVolume};

/// A mount as configured, where it really is, and its mountinfo entry.
#[derive(Clone, Debug)]
pub struct Mount {
    pub configured: PathBuf,
    pub real: PathBuf,
    pub entry: MountEntry,
}

/// One data volume of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Volume {
    pub mount: PathBuf,
    pub volume_id: String,
    pub status: String,
}

/// Everything a run needs, decided before the lock.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub datastore: &'static str,
    pub volumes: Vec<Volume>,
    pub hook: PathBuf,
    pub max_freeze_ms: u64,
    pub on_hook_failure: HookFailurePolicy,
    pub host: String,
    pub runtime_dir: PathBuf,
    #[serde(skip)]
    pub max_freeze: Duration,
    /// The hook with its environment; `VOLSNAP_TIMEOUT` is how long its
    /// freeze may hold the database: the window plus a thaw's time.
    #[serde(skip)]
    pub runner: Hook,
}

impl Plan {
    /// The local rules, then Cinder's: the first problem found fails it (a
    /// backup) — `check` lists them all through the same functions.
    pub fn resolve(settings: &Settings, cinder: &Cinder, sys_root: &Path) -> Result<Plan> {
        let mountinfo = mounts::read_mountinfo().context("reading /proc/self/mountinfo")?;
        let mounts =
            local(settings, &mountinfo).map_err(|problems| anyhow!(problems.join("; ")))?;
        check_std_streams(&mounts)?;
        let mut volumes = Vec::new();
        for (mount, found) in mounts
            .iter()
            .zip(resolve_volumes(settings, cinder, &mounts, sys_root))
        {
            let (volume, _) = found.map_err(|e| anyhow!("{}: {e}", mount.configured.display()))?;
            volumes.push(Volume {
                mount: mount.real.clone(),
                volume_id: volume.id,
                status: volume.status,
            });
        }
        Ok(Plan {
            datastore: settings.datastore.name(),
            volumes,
            hook: hooks::hook_path(settings),
            max_freeze_ms: settings.cinder.max_freeze.as_millis() as u64,
            on_hook_failure: settings.cinder.on_hook_failure,
            host: hostname(),
            runtime_dir: settings.runtime_dir.clone(),
            max_freeze: settings.cinder.max_freeze,
            runner: Hook::new(
                settings,
                settings.cinder.max_freeze + settings.hooks.timeout,
            ),
        })
    }

    pub fn mounts(&self) -> Vec<PathBuf> {
        self.volumes.iter().map(|v| v.mount.clone()).collect()
    }
}

/// The rules that need no cloud: the hook is trustworthy and every mount may
/// be frozen. All problems, one line each.
pub fn local(settings: &Settings, mountinfo: &[MountEntry]) -> Result<Vec<Mount>, Vec<String>> {
    let mut problems = Vec::new();
    problems.extend(hooks::check_configured(settings).err());
    let protected = protected_paths(settings);
    let mut found = Vec::new();
    for mount in &settings.mounts {
        match mounts::check_freezable(mount, mountinfo, &protected) {
            Ok((real, entry)) => found.push(Mount {
                configured: mount.clone(),
                real,
                entry: entry.clone(),
            }),
            Err(p) => problems.push(format!("mount {p}")),
        }
    }
    // Two paths of one filesystem (a bind mount, a second mountpoint): the
    // second FIFREEZE would fail with EBUSY inside the run. Nested mounts of
    // distinct filesystems are fine: frozen in order, thawed in reverse.
    for (i, a) in found.iter().enumerate() {
        if let Some(b) = found[..i].iter().find(|b| b.entry.dev() == a.entry.dev()) {
            problems.push(format!(
                "mount {}: is the same filesystem as {} (device {}:{}); list it once",
                a.configured.display(),
                b.configured.display(),
                a.entry.major,
                a.entry.minor
            ));
        }
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(problems)
    }
}

/// The paths volsnap writes or reads while the data mounts are frozen.
pub fn protected_paths(settings: &Settings) -> Vec<Protected<'_>> {
    let mut protected = vec![
        Protected {
            what: "runtime directory",
            path: &settings.runtime_dir,
        },
        Protected {
            what: "configuration file",
            path: &settings.path,
        },
    ];
    if let Some(log) = &settings.log_file {
        protected.push(Protected {
            what: "log file",
            path: log,
        });
    }
    if let Some(metrics) = &settings.metrics_file {
        protected.push(Protected {
            what: "metrics file",
            path: metrics,
        });
    }
    protected.push(Protected {
        what: "hooks directory",
        path: Path::new(&settings.hooks.dir),
    });
    protected
}

/// The volume of each mount (an explicit id wins, else discovery from the
/// disk's serial) and whether Cinder can snapshot it; with how it was found.
pub fn resolve_volumes(
    settings: &Settings,
    cinder: &Cinder,
    mounts: &[Mount],
    sys_root: &Path,
) -> Vec<Result<(CinderVolume, String), String>> {
    let mut listed: Option<Result<Vec<CinderVolume>, String>> = None;
    mounts
        .iter()
        .map(|mount| {
            let (id, how) = match settings.cinder.volumes.get(&mount.configured) {
                Some(id) => (id.clone(), String::new()),
                None => {
                    let all = listed.get_or_insert_with(|| {
                        cinder
                            .volumes()
                            .map_err(|e| format!("cannot list volumes: {e}"))
                    });
                    let all = all.as_ref().map_err(Clone::clone)?;
                    let (id, dev) = discover::volume_of(sys_root, &mount.entry, all)
                        .map_err(|e| format!("{e:#}"))?;
                    (
                        id,
                        format!(" (discovered: {} has serial {})", dev.disk, dev.serial),
                    )
                }
            };
            let volume = cinder.volume(&id).map_err(|e| {
                if e.is_not_found() {
                    format!("volume {id} does not exist in this project ({e})")
                } else {
                    format!("volume {id}: {e}")
                }
            })?;
            snapshottable(&volume.status).map_err(|why| format!("volume {id}{how} {why}"))?;
            Ok((volume, how))
        })
        .collect()
}

/// The one volume-status rule: a snapshot of an attached volume needs it
/// `in-use` (or `available`, detached); anything else (creating, attaching,
/// error, maintenance, …) Cinder refuses or copies mid-change.
pub fn snapshottable(status: &str) -> Result<(), String> {
    match status {
        "in-use" | "available" => Ok(()),
        other => Err(format!(
            "is in status {other:?}; a snapshot needs it in-use or available"
        )),
    }
}

/// Refuses to start when stdout or stderr is a file on a mount about to be
/// frozen: a log line there would hang volsnap inside its own freeze.
fn check_std_streams(mounts: &[Mount]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for (fd, name) in [(1, "stdout"), (2, "stderr")] {
        let Ok(stat) = nix::sys::stat::fstat(fd) else {
            continue;
        };
        for mount in mounts {
            let dev = std::fs::metadata(&mount.real)?.dev();
            if stat.st_dev == dev && (stat.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG {
                bail!(
                    "{name} is a file on {}, which volsnap is about to freeze: writing a log line there would hang it; send {name} elsewhere",
                    mount.real.display()
                );
            }
        }
    }
    Ok(())
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_status_rule() {
        assert!(snapshottable("in-use").is_ok());
        assert!(snapshottable("available").is_ok());
        for bad in ["creating", "attaching", "error", "maintenance", "deleting"] {
            assert!(
                snapshottable(bad).unwrap_err().contains(bad),
                "{bad} must be refused"
            );
        }
    }
}
