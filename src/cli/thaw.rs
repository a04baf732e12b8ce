//! `volsnap thaw`: repair by hand what a run recorded as frozen.

use anyhow::{Context as _, Result};

use super::Context;
use crate::exit::{self, Exit};
use crate::freeze::{self, ThawError};
use crate::hooks::Hook;
use crate::runtime::{self, RunLock};

#[derive(Debug, clap::Args)]
pub struct Args {}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<u8> {
        let settings = ctx.load_settings()?;
        let dir = &settings.runtime_dir;
        // A live run owns its freeze: thawing under it would break the
        // snapshot it is taking. Its own watchdog covers it.
        let _lock = RunLock::acquire(dir).map_err(|e| {
            if exit::code_for(&e) == exit::LOCKED {
                Exit::new(
                    exit::LOCKED,
                    format!(
                        "{e:#}; a running backup thaws by itself (its watchdog thaws if it dies)"
                    ),
                )
                .into()
            } else {
                e
            }
        })?;
        // What was done, one line each; `problem: …` lines fail the repair.
        let mut lines = Vec::new();
        match runtime::read_frozen(dir)? {
            None => lines.push(format!(
                "nothing is recorded as frozen in {}",
                dir.display()
            )),
            Some(record) => {
                let mut opened = Vec::new();
                for mount in &record.mounts {
                    match freeze::open_mount(mount) {
                        Ok(file) => opened.push((mount.clone(), file)),
                        Err(e) => lines.push(format!("problem: {e:#}")),
                    }
                }
                for (mount, result) in freeze::thaw_in_reverse(&opened) {
                    lines.push(match result {
                        Ok(()) => format!("thawed {}", mount.display()),
                        Err(ThawError::NotFrozen(_)) => {
                            format!("{} was not frozen", mount.display())
                        }
                        Err(e) => format!("problem: {e}"),
                    });
                }
                lines.push(
                    match Hook::new(&settings, settings.hooks.timeout).run("thaw") {
                        Ok(_) => format!("hook {} thaw ran", settings.datastore.name()),
                        Err(e) => format!("problem: {e:#}"),
                    },
                );
            }
        }
        let failed = lines.iter().any(|l| l.starts_with("problem: "));
        if !failed {
            runtime::clear_frozen(dir).context("clearing the frozen record")?;
        }
        let code = if failed { exit::FAILURE } else { exit::SUCCESS };
        let report = serde_json::json!({ "ok": !failed, "exit_code": code, "done": lines });
        ctx.print(&report, || {
            for line in &lines {
                println!("{line}");
            }
        })?;
        Ok(code)
    }
}
