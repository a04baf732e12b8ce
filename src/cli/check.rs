//! `volsnap check`: is this machine ready to take a backup?

use serde::Serialize;

use super::Context;
use crate::{check, exit, mounts};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the local checks: configuration, hooks, mounts (no OpenStack calls)
    #[arg(long)]
    pub offline: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    config: String,
    strategy: &'a str,
    datastore: &'a str,
    problems: &'a [String],
}

impl Args {
    pub fn run(self, ctx: &Context) -> anyhow::Result<u8> {
        let settings = ctx.load_settings()?;
        let mountinfo = mounts::read_mountinfo()?;
        let problems = check::offline(&settings, &mountinfo);
        if !self.offline {
            anyhow::bail!(
                "the online checks (authentication, endpoints, volumes, container) are not built yet; run `volsnap check --offline`"
            );
        }
        if ctx.json {
            let report = Report {
                ok: problems.is_empty(),
                config: settings.path.display().to_string(),
                strategy: settings.strategy.name(),
                datastore: settings.datastore.name(),
                problems: &problems,
            };
            println!("{}", serde_json::to_string(&report)?);
        } else if problems.is_empty() {
            println!(
                "ok: {} ({} strategy, datastore {})",
                settings.path.display(),
                settings.strategy.name(),
                settings.datastore.name()
            );
        } else {
            for p in &problems {
                println!("problem: {p}");
            }
        }
        Ok(if problems.is_empty() {
            exit::SUCCESS
        } else {
            exit::FAILURE
        })
    }
}
