//! `volsnap check`: is this machine ready to take a backup?

use serde::Serialize;

use super::Context;
use crate::openstack::auth::{self, Env};
use crate::{check, exit, mounts};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the local checks: configuration, hooks, mounts, and with
    /// [archive] the spool, the metrics file and the archiving settings of a
    /// PostgreSQL on this machine, when it listens (no OpenStack calls).
    /// Without it, also: authentication, the endpoint, and the Cinder volumes
    /// or the Swift containers (never created here; with create_container =
    /// true a missing one is what a backup creates), removing this host's
    /// orphan segments of killed runs
    #[arg(long)]
    pub offline: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    exit_code: u8,
    config: String,
    strategy: &'a str,
    datastore: &'a str,
    problems: &'a [String],
    /// The checks reported one by one, passed or not: the online ones, and
    /// those of `[archive]` (with --offline, only those).
    checks: &'a [check::Check],
}

impl Args {
    pub fn run(self, ctx: &Context) -> anyhow::Result<u8> {
        let settings = ctx.load_settings()?;
        let mountinfo = mounts::read_mountinfo()?;
        let mut problems = Vec::new();
        // A broken or unsafe clouds.yaml was refused (78) by load_settings;
        // a cloud that is not in it is a problem offline too. (Online, the
        // credentials check says so.)
        if self.offline {
            if let Err(e) = auth::check_cloud_files(&settings.openstack, &Env::from_process()) {
                problems.push(format!("credentials: {e:#}"));
            }
        }
        problems.extend(check::offline(&settings, &mountinfo));
        let checks = if self.offline {
            check::archive_offline(&settings)
        } else {
            check::online(&settings, &mountinfo, std::path::Path::new("/sys"))
        };
        problems.extend(
            checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail)),
        );
        if ctx.json {
            let report = Report {
                ok: problems.is_empty(),
                exit_code: if problems.is_empty() {
                    exit::SUCCESS
                } else {
                    exit::FAILURE
                },
                config: settings.path.display().to_string(),
                strategy: settings.strategy.name(),
                datastore: settings.datastore.name(),
                problems: &problems,
                checks: &checks,
            };
            super::print_json(&report)?;
        } else if problems.is_empty() {
            for c in &checks {
                println!("ok: {}: {}", c.name, c.detail);
            }
            println!(
                "ok: {} ({} strategy, datastore {})",
                settings.path.display(),
                settings.strategy.name(),
                settings.datastore.name()
            );
        } else {
            for c in checks.iter().filter(|c| c.ok) {
                println!("ok: {}: {}", c.name, c.detail);
            }
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
