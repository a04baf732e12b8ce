//! `volsnap check`: everything that can be known before a backup runs.

use std::path::Path;

use crate::config::Settings;
use crate::hooks;
use crate::mounts::{self, MountEntry, Protected};

/// The local checks: hooks and mounts. Each problem is one line of text.
pub fn offline(settings: &Settings, mountinfo: &[MountEntry]) -> Vec<String> {
    let mut problems = Vec::new();
    match hooks::check_dir(&settings.hooks.dir) {
        Ok(()) => {
            if let Err(p) = hooks::check_file(&hooks::hook_path(settings)) {
                problems.push(p);
            }
        }
        Err(p) => problems.push(p),
    }
    let protected = protected_paths(settings);
    for mount in &settings.mounts {
        if let Err(p) = mounts::check_freezable(mount, mountinfo, &protected) {
            problems.push(format!("mount {p}"));
        }
    }
    problems
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
    protected.push(Protected {
        what: "hooks directory",
        path: Path::new(&settings.hooks.dir),
    });
    protected
}
