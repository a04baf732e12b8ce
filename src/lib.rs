//! volsnap: application-consistent backups from inside an OpenStack guest.

pub mod agent;
pub mod archive;
pub mod check;
pub mod cli;
pub mod config;
pub mod discover;
pub mod exit;
pub mod freeze;
pub mod hooks;
pub mod logging;
pub mod metrics;
pub mod mounts;
pub mod openstack;
pub mod recipients;
pub mod retention;
pub mod runtime;
pub mod secret;
pub mod stream;
pub mod time;
pub mod watchdog;
