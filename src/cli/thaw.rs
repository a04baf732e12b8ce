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
        let Some(record) = runtime::read_frozen(dir)? else {
            println!("nothing is recorded as frozen in {}", dir.display());
            return Ok(exit::SUCCESS);
        };
        let mut failed = false;
        let mut opened = Vec::new();
        for mount in &record.mounts {
            match freeze::open_mount(mount) {
                Ok(file) => opened.push((mount.clone(), file)),
                Err(e) => {
                    failed = true;
                    println!("problem: {e:#}");
                }
            }
        }
        for (mount, result) in freeze::thaw_in_reverse(&opened) {
            match result {
                Ok(()) => println!("thawed {}", mount.display()),
                Err(ThawError::NotFrozen(_)) => println!("{} was not frozen", mount.display()),
                Err(e) => {
                    failed = true;
                    println!("problem: {e}");
                }
            }
        }
        match Hook::new(&settings, settings.hooks.timeout).run("thaw") {
            Ok(_) => println!("hook {} thaw ran", settings.datastore.name()),
            Err(e) => {
                failed = true;
                println!("problem: {e:#}");
            }
        }
        if failed {
            return Ok(exit::FAILURE);
        }
        runtime::clear_frozen(dir).context("clearing the frozen record")?;
        Ok(exit::SUCCESS)
    }
}
