//! Continuous archiving of PostgreSQL's WAL into Swift, and restores to a
//! point in time (issue #15; MariaDB's binlog is to follow on the same
//! parts: a spool filled by the database side, [`ship`] to Swift,
//! [`store`] for the objects, [`pitr`] for the restore).
//!
//! - `volsnap wal push %p` ([`spool::push`]): PostgreSQL's
//!   `archive_command`, run as its OS user with no credential;
//! - `volsnap archive` ([`ship`]): the root service shipping the spool;
//! - `volsnap restore --until TIME --datadir DIR` ([`pitr`]): a base — a
//!   backup from Swift, or with `--snapshot ID` the data directory on a
//!   volume made of a Cinder snapshot ([`snapshot_base`] checks the
//!   snapshot, datastore-neutral) — and the archived WAL up to TIME,
//!   fetched by root into a directory that `restore_command` = `volsnap
//!   wal fetch --dir DIR %f %p` reads as the database's OS user, again
//!   without a credential;
//! - `volsnap check` ([`check`], [`pg_check`]): the spool, the metrics file,
//!   the server's archiving settings (all but the last with `--offline` too).

pub mod check;
pub mod metrics;
pub mod pg_check;
pub mod pitr;
pub mod retention;
pub mod ship;
pub mod snapshot_base;
pub mod spool;
pub mod store;
pub mod wal;
pub mod window;
