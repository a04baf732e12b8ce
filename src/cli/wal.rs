//! `volsnap wal push|fetch`: PostgreSQL's `archive_command` and
//! `restore_command`, run as the database's OS user. Neither reads the
//! config nor holds a credential: push hands the file to the spool that
//! `volsnap archive` ships; fetch copies from the directory that `volsnap
//! restore --until` filled (without `--dir`, as root, it downloads from
//! Swift with the config's credentials).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use super::Context;
use crate::archive::{spool, store::Store, wal};
use crate::config::archive::DEFAULT_SPOOL_DIR;
use crate::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: WalCommand,
}

#[derive(Debug, clap::Subcommand)]
enum WalCommand {
    /// archive_command: copy a WAL file into the spool (`volsnap wal push %p`)
    ///
    /// Atomic (temporary file, fsync, rename, fsync of the directory) and
    /// idempotent: the same file pushed again is fine; a different file
    /// under a name the spool holds is refused (exit 1). Exit 0 only once
    /// the copy is on disk.
    Push {
        /// The spool directory ([archive] spool_dir)
        #[arg(long, value_name = "DIR", default_value = DEFAULT_SPOOL_DIR)]
        spool: PathBuf,
        /// The WAL file (%p)
        path: PathBuf,
    },
    /// restore_command: copy archived WAL file NAME to DEST (`volsnap wal fetch --dir DIR %f %p`)
    ///
    /// Exit 1 when the file is not archived (how recovery learns the end
    /// of the archive).
    Fetch {
        /// Copy from this directory (what `volsnap restore --until`
        /// prepared) instead of downloading from Swift with the config
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The WAL file's name (%f)
        name: String,
        /// Where to write it (%p)
        dest: PathBuf,
    },
}

impl Args {
    pub fn run(self, ctx: &Context) -> Result<u8> {
        match self.command {
            WalCommand::Push { spool, path } => {
                let pushed = spool::push(&path, &spool)?;
                log::debug!("{}: {pushed:?}", path.display());
                Ok(exit::SUCCESS)
            }
            WalCommand::Fetch { dir, name, dest } => {
                if wal::kind(&name).is_none() {
                    bail!("{name:?} is not a WAL file name");
                }
                let data = match dir {
                    Some(dir) => match spool::read_nofollow(&dir.join(&name)) {
                        Ok((data, _)) => data,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            eprintln!("volsnap wal fetch: {name} is not in {}", dir.display());
                            return Ok(exit::FAILURE);
                        }
                        Err(e) => {
                            return Err(e).with_context(|| format!("{}/{name}", dir.display()))
                        }
                    },
                    None => {
                        let settings = ctx.load_settings()?;
                        let store = Store::open(&settings)?;
                        match store
                            .swift
                            .head_object(&store.container, &store.object(&name))
                        {
                            Err(e) if e.is_not_found() => {
                                eprintln!("volsnap wal fetch: {name} is not archived");
                                return Ok(exit::FAILURE);
                            }
                            _ => {}
                        }
                        let ids = match &settings.swift.age_identity_file {
                            Some(p) => Some(crate::stream::Identities::from_file(p)?),
                            None => None,
                        };
                        store.fetch(&name, ids.as_ref())?.0
                    }
                };
                write_atomically(&dest, &data)?;
                Ok(exit::SUCCESS)
            }
        }
    }
}

fn write_atomically(dest: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = dest
        .file_name()
        .with_context(|| format!("{}: no file name", dest.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".volsnap-tmp");
    let tmp = dest.with_file_name(tmp_name);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", dest.display()))
}
