//! `volsnap hook freeze|thaw`: the QEMU guest agent's fsfreeze hook.
//!
//! When Nova takes a quiesced snapshot, qemu-ga runs its hook with `freeze`
//! before it freezes the filesystems and `thaw` after it thaws them; it
//! throws the hook's output away and aborts the freeze when `freeze` fails.
//! So this runs the datastore hook only (qemu-ga freezes by itself), logs to
//! `log_file` and syslog where a person can read it, and exits with the
//! hook's verdict.

use anyhow::{Context as _, Result};
use clap::ValueEnum;

use super::Context;
use crate::exit;
use crate::hooks::{self, Hook};
use crate::runtime::{self, RunLock};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Action {
    /// Quiesce the database (before qemu-ga freezes the filesystems)
    Freeze,
    /// Release the database (after qemu-ga thawed them)
    Thaw,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub action: Action,
}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<u8> {
        crate::logging::to_syslog();
        // Installed but not configured yet: quiesce nothing and let qemu-ga
        // freeze (Nova's snapshot is as crash-consistent as without volsnap);
        // failing would abort every quiesced snapshot of the VM.
        if std::fs::symlink_metadata(&ctx.config_path).is_err() {
            let why = format!(
                "{} does not exist: volsnap is not configured, the database is not quiesced",
                ctx.config_path.display()
            );
            log::warn!("qemu-ga fsfreeze hook: {why}");
            let action = match self.action {
                Action::Freeze => "freeze",
                Action::Thaw => "thaw",
            };
            let report = serde_json::json!({
                "ok": true,
                "exit_code": exit::SUCCESS,
                "action": action,
                "datastore": null,
                "values": null,
                "skipped": why,
            });
            ctx.print(&report, || {})?;
            return Ok(exit::SUCCESS);
        }
        let settings = ctx.load_settings()?;
        if let Some(path) = &settings.log_file {
            crate::logging::to_file(path)?;
        }
        let path = hooks::hook_path(&settings);
        hooks::check_file(&path).map_err(anyhow::Error::msg)?;
        // The database stays locked between freeze and thaw for as long as a
        // backup's freeze may last, plus the time a thaw may take to arrive.
        let hook = Hook::new(
            &settings,
            settings.cinder.max_freeze + settings.hooks.timeout,
        );
        let dir = &settings.runtime_dir;
        match self.action {
            Action::Freeze => {
                // A volsnap backup in progress has the database and the
                // filesystems already: qemu-ga's freeze must fail, not stack.
                // Held until the freeze is recorded, so that no backup starts
                // in between.
                let _lock = RunLock::acquire(dir)?;
                let since = runtime::now_unix_ms();
                let out = hook.run("freeze")?;
                runtime::write_quiesced(
                    dir,
                    &runtime::QuiescedRecord {
                        since_unix_ms: since,
                        until_unix_ms: since + hook.lock_timeout().as_millis(),
                    },
                )?;
                let pairs: Vec<String> =
                    out.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                log::info!(
                    "qemu-ga fsfreeze hook: {} freeze done {}",
                    settings.datastore.name(),
                    pairs.join(" ")
                );
                let record = dir.join("fsfreeze-hook.last");
                std::fs::write(&record, pairs.join("\n") + "\n")
                    .with_context(|| format!("cannot write {}", record.display()))?;
                answer(ctx, &settings, "freeze", Some(&out.values), None)?;
            }
            Action::Thaw => {
                // libvirt thaws even after a freeze that failed, and a freeze
                // fails while a backup runs: that backup's database lock is
                // not qemu-ga's to release. (qemu-ga has thawed every frozen
                // filesystem already, the backup's too; the backup finds out
                // at its own thaw and fails.)
                let _lock = match RunLock::acquire(dir) {
                    Ok(lock) => lock,
                    Err(e) if exit::code_for(&e) == exit::LOCKED => {
                        log::warn!(
                            "qemu-ga fsfreeze hook: thaw during a volsnap backup ({e:#}): the database lock is the backup's, left to it"
                        );
                        answer(
                            ctx,
                            &settings,
                            "thaw",
                            None,
                            Some(
                                "a volsnap backup holds the lock: its database lock is left to it",
                            ),
                        )?;
                        return Ok(exit::SUCCESS);
                    }
                    Err(e) => return Err(e),
                };
                hook.run("thaw")?;
                runtime::clear_quiesced(dir)?;
                log::info!(
                    "qemu-ga fsfreeze hook: {} thaw done",
                    settings.datastore.name()
                );
                answer(ctx, &settings, "thaw", None, None)?;
            }
        }
        Ok(exit::SUCCESS)
    }
}

/// `--json`: what the hook did. qemu-ga throws the output away; a script
/// calling `volsnap hook --json` gets one object, as from every command.
fn answer(
    ctx: &Context,
    settings: &crate::config::Settings,
    action: &str,
    values: Option<&std::collections::BTreeMap<String, String>>,
    skipped: Option<&str>,
) -> Result<()> {
    let report = serde_json::json!({
        "ok": true,
        "exit_code": exit::SUCCESS,
        "action": action,
        "datastore": settings.datastore.name(),
        "values": values,
        "skipped": skipped,
    });
    ctx.print(&report, || {})
}
