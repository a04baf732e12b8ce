//! The command line: one file per subcommand, each with `run`.

mod archive;
mod backup;
mod check;
mod hook;
mod list;
mod prune;
mod restore;
mod thaw;
mod verify;
mod wal;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{ArgAction, Parser, Subcommand};

use crate::config::{self, Settings};
use crate::exit;

#[derive(Debug, Parser)]
#[command(
    name = "volsnap",
    version,
    about = "Application-consistent database backups from inside an OpenStack guest",
    long_about = "Application-consistent database backups from inside an OpenStack guest.\n\n\
        With the Cinder strategy volsnap quiesces the database through its datastore hook, \
        freezes the data filesystems, snapshots their Cinder volumes and thaws as soon as \
        Cinder reports the snapshots available. With the Swift strategy it streams a native \
        database backup into Swift.",
    after_help = exit::HELP
)]
pub struct Cli {
    /// Configuration file
    #[arg(
        long,
        global = true,
        env = "VOLSNAP_CONFIG",
        value_name = "PATH",
        default_value = config::DEFAULT_PATH
    )]
    pub config: PathBuf,

    /// More log output (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only)
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    /// Print the result as one JSON object on stdout
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a backup with the configured strategy
    Backup(backup::Args),
    /// List this host's backups, newest first
    List(list::Args),
    /// Restore a backup (Cinder: a new volume from a snapshot; Swift: through the datastore hook)
    Restore(restore::Args),
    /// Delete old backups by the [retention] policy
    Prune(prune::Args),
    /// Download a Swift backup and check it decrypts, decompresses and matches its SHA-256
    Verify(verify::Args),
    /// Check the configuration, the hooks and the mounts
    Check(check::Args),
    /// Run the datastore hook's freeze or thaw, as the QEMU guest agent's fsfreeze hook
    ///
    /// Freezes nothing itself: qemu-ga does. Installed as qemu-ga's hook with
    /// `qemu-ga -F/usr/lib/volsnap/fsfreeze-hook` (the drop-in in
    /// /usr/share/volsnap/qemu-ga/ sets it), so that a failed quiesce aborts
    /// the freeze. Without a config file it quiesces nothing and exits 0 (an
    /// installed but unconfigured volsnap does not abort Nova's snapshots).
    /// The binary run under a name ending in `fsfreeze-hook` behaves as
    /// `volsnap hook`.
    Hook(hook::Args),
    /// Thaw the filesystems a run recorded as frozen, and run the hook's thaw
    Thaw(thaw::Args),
    /// Ship the WAL that PostgreSQL's archive_command left in the spool to Swift ([archive])
    Archive(archive::Args),
    /// PostgreSQL's archive_command and restore_command (run as the database's OS user)
    // No `volsnap wal help SUB`: `--help` is there, and the man pages
    // (packaging/gen) show one help per command.
    #[command(disable_help_subcommand = true)]
    Wal(wal::Args),
    /// The watchdog process a backup starts (internal)
    #[command(name = "__watchdog", hide = true)]
    Watchdog,
}

/// What every subcommand gets: the global options.
pub struct Context {
    pub config_path: PathBuf,
    pub json: bool,
    /// `-q`: no progress line.
    pub quiet: bool,
    /// The command may talk to OpenStack (every one but `hook` and `thaw`).
    pub uses_openstack: bool,
}

/// Whether this process printed its `--json` object already: `main` then
/// prints none of its own, so stdout always holds exactly one.
static JSON_PRINTED: AtomicBool = AtomicBool::new(false);

pub fn json_printed() -> bool {
    JSON_PRINTED.load(Ordering::SeqCst)
}

/// Prints one JSON object on stdout, as every `--json` answer is printed.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let line = serde_json::to_string(value)?;
    JSON_PRINTED.store(true, Ordering::SeqCst);
    // Not println!: a reader that went away (EPIPE) is an error, not a panic.
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(())
}

impl Context {
    /// Prints `value` as one JSON object with `--json`, else runs `human`.
    pub fn print<T: serde::Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(),
    ) -> anyhow::Result<()> {
        if self.json {
            print_json(value)?;
        } else {
            human();
        }
        Ok(())
    }

    /// The settings, and for the commands that talk to OpenStack the
    /// clouds.yaml and secure.yaml they will read: a broken or unsafe one is
    /// refused here (78), before anything is locked.
    pub fn load_settings(&self) -> anyhow::Result<Settings> {
        let settings = config::load(&self.config_path)?;
        if self.uses_openstack {
            let env = crate::openstack::auth::Env::from_process();
            if let Err(e) = crate::openstack::auth::check_cloud_files(&settings.openstack, &env) {
                // Anything else (no such cloud) is the credentials' own
                // error, reported where they are resolved.
                if exit::code_for(&e) == exit::CONFIG {
                    return Err(e);
                }
            }
        }
        Ok(settings)
    }
}

/// The orphan segments a sweep found: what it freed, then one line per run
/// it left (in flight, too recent to judge, a failed DELETE).
fn print_orphans(indent: &str, sweep: &crate::agent::swift::Sweep) {
    if let Some(freed) = sweep.freed() {
        println!("{indent}{freed}");
    }
    for orphan in sweep
        .found
        .iter()
        .filter(|o| o.state != crate::agent::swift::OrphanState::Removed)
    {
        println!("{indent}{}", orphan.describe());
    }
}

impl Cli {
    /// Runs the subcommand; the returned code is the process's exit code.
    pub fn run(self) -> anyhow::Result<u8> {
        let ctx = Context {
            config_path: self.config,
            json: self.json,
            quiet: self.quiet > 0,
            uses_openstack: !matches!(
                self.command,
                Command::Hook(_) | Command::Thaw(_) | Command::Watchdog | Command::Wal(_)
            ),
        };
        match self.command {
            Command::Backup(args) => args.run(&ctx),
            Command::List(args) => args.run(&ctx),
            Command::Restore(args) => args.run(&ctx),
            Command::Prune(args) => args.run(&ctx),
            Command::Verify(args) => args.run(&ctx),
            Command::Check(args) => args.run(&ctx),
            Command::Hook(args) => args.run(&ctx),
            Command::Thaw(args) => args.run(&ctx),
            Command::Archive(args) => args.run(&ctx),
            Command::Wal(args) => args.run(&ctx),
            Command::Watchdog => crate::watchdog::run_child().map(|()| exit::SUCCESS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for code in ["0 ", "1 ", "2 ", "3 ", "4 ", "75 ", "78 "] {
            assert!(
                help.contains(&format!("\n  {code}")),
                "{code} missing:\n{help}"
            );
        }
    }
}
