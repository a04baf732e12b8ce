//! Continuous archiving of PostgreSQL's WAL and MariaDB's binary logs into
//! Swift, and restores to a point in time (issue #15): [`ship`] to Swift,
//! [`store`] for the objects, [`retention`], [`window`] and [`metrics`]
//! serve both.
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
//!
//! MariaDB (datastore mysql), with no spool: root reads the binary logs
//! where the server writes them.
//!
//! - [`binlog`]: their names and the little of their format read here;
//! - [`binlog_ship`]: the service's pass — the closed files shipped, the
//!   file being written closed at max_lag (through the mysql hook);
//! - [`binlog_check`]: `log_bin`, `binlog_format`, `server_id`, expiry;
//! - [`pitr_mariadb`]: `restore --until` from a Swift base (mariadb-backup)
//!   or, with `--snapshot ID`, a Cinder snapshot's data directory
//!   ([`snapshot_base`] again), [`binlog_replay`]: the replay into a
//!   temporary mariadbd, one for both;
//! - [`binlog_window`]: `list`'s window and retention for binary logs.

pub mod binlog;
pub mod binlog_check;
pub mod binlog_replay;
pub mod binlog_ship;
pub mod binlog_window;
pub mod check;
pub mod metrics;
pub mod pg_check;
pub mod pitr;
pub mod pitr_mariadb;
pub mod reach;
pub mod report;
pub mod retention;
pub mod ship;
pub mod snapshot_base;
pub mod spool;
pub mod store;
pub mod wal;
pub mod window;
