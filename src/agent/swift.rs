//! The Swift strategy.

use std::sync::atomic::AtomicBool;

use anyhow::{bail, Result};

use crate::cli::Context;
use crate::config::Settings;

pub fn backup_command(
    _settings: &Settings,
    _ctx: &Context,
    _dry_run: bool,
    _stop: &AtomicBool,
) -> Result<u8> {
    bail!("WIP")
}
pub fn list_command(_settings: &Settings, _ctx: &Context) -> Result<u8> {
    bail!("WIP")
}
pub fn restore_command(
    _settings: &Settings,
    _ctx: &Context,
    _backup: Option<&str>,
    _latest: bool,
) -> Result<u8> {
    bail!("WIP")
}
pub fn prune(_settings: &Settings, _dry_run: bool) -> Result<Vec<String>> {
    bail!("WIP")
}
