//! volsnap: application-consistent backups from inside an OpenStack guest.

pub mod config;
pub mod secret;
