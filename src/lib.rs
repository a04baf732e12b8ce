//! volsnap: application-consistent backups from inside an OpenStack guest.
