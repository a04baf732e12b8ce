//! OpenStack clients without an SDK: one module per service, each a few serde
//! structs and the calls volsnap makes. All requests go through
//! [`http::Http`] (TLS, timeouts, retries, errors with the evidence) by way of
//! an [`auth::Session`] (token, 401 re-authentication, catalog).
//!
//! Base URLs are constructor arguments ([`cinder::Cinder::new`],
//! [`swift::Swift::new`]): the catalog supplies them in production, a test
//! supplies its own.

pub mod auth;
pub mod cinder;
pub mod cinder_backups;
mod download;
pub mod http;
mod streamer;
pub mod swift;

pub use auth::{AuthConfig, Env, Service, Session};
pub use cinder::Cinder;
pub use download::Download;
pub use http::Error;
pub use swift::Swift;

use crate::config::OpenStack;

/// Resolves the credentials (volsnap.toml, clouds.yaml, `OS_*`) and
/// authenticates with Keystone.
pub fn connect(config: &OpenStack) -> anyhow::Result<Session> {
    let auth = auth::resolve(config, &Env::from_process())?;
    Session::connect(auth)
}

/// The Cinder client at the catalog's (or the configured) block-storage URL.
pub fn cinder(session: &Session) -> anyhow::Result<Cinder> {
    Ok(Cinder::new(
        session.clone(),
        session.endpoint(Service::BlockStorage)?,
    ))
}

/// The Swift client at the catalog's (or the configured) object-store URL.
pub fn swift(session: &Session) -> anyhow::Result<Swift> {
    Ok(Swift::new(
        session.clone(),
        session.endpoint(Service::ObjectStore)?,
    ))
}

#[cfg(test)]
mod tests {
    /// Segment uploads and snapshot polls run on several threads at once.
    #[test]
    fn clients_are_shared_between_threads() {
        fn shared<T: Send + Sync + Clone>() {}
        shared::<super::Session>();
        shared::<super::Cinder>();
        shared::<super::Swift>();
    }
}
