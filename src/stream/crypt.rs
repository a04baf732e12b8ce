//! age encryption: the identities a restore decrypts with, and the
//! writer/reader that do it; the recipients a backup is encrypted to are
//! parsed in [`crate::recipients`], with the configuration.
//!
//! The stored object is a plain age v1 file, so `age -d -i key.txt` opens it.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::SwiftSettings;
pub use crate::recipients::Recipients;

impl Recipients {
    /// The configured recipients (inline list, then the file), or `None` when
    /// the config asks for no encryption.
    pub fn from_settings(swift: &SwiftSettings) -> Result<Option<Recipients>> {
        Recipients::configured(&swift.age_recipients, swift.age_recipients_file.as_deref())
    }

    /// Wraps `inner` so that what is written to it is encrypted.
    pub(crate) fn encrypt<W: Write>(&self, inner: W) -> Result<age::stream::StreamWriter<W>> {
        let encryptor = age::Encryptor::with_recipients(self.keys())
            .map_err(|e| anyhow::anyhow!("age: {e}"))?;
        encryptor
            .wrap_output(inner)
            .context("writing the age header")
    }
}

/// Private keys for decrypting: an age identity file (`AGE-SECRET-KEY-1…`
/// lines, as `age-keygen` writes) or an unencrypted OpenSSH private key.
pub struct Identities {
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
    path: PathBuf,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Identities({} from {})",
            self.keys.len(),
            self.path.display()
        )
    }
}

/// No identity file, age or ssh, is anywhere near this.
const MAX_IDENTITY_FILE: u64 = 1 << 20;

impl Identities {
    pub fn from_file(path: &Path) -> Result<Identities> {
        let file = fs::File::open(path)
            .with_context(|| format!("opening age identity file {}", path.display()))?;
        if let Ok(meta) = file.metadata() {
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!(
                    "age identity file {} is readable by others than its owner",
                    path.display()
                );
            }
        }
        let mut text = String::new();
        file.take(MAX_IDENTITY_FILE)
            .read_to_string(&mut text)
            .with_context(|| format!("reading age identity file {}", path.display()))?;
        Identities::parse(&text, path)
    }

    /// Parses an identity file's text; `path` is for messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Identities> {
        let shown = path.display();
        let keys: Vec<Box<dyn age::Identity + Send + Sync>> = if text.contains("-----BEGIN") {
            let name = Some(shown.to_string());
            match age::ssh::Identity::from_buffer(text.as_bytes(), name)
                .with_context(|| format!("{shown}: not an SSH private key age can use"))?
            {
                age::ssh::Identity::Unencrypted(key) => {
                    vec![Box::new(age::ssh::Identity::Unencrypted(key))]
                }
                age::ssh::Identity::Encrypted(_) => bail!(
                    "{shown}: the SSH key is protected by a passphrase, and volsnap runs \
                     unattended; use an age identity (age-keygen) or an unencrypted key"
                ),
                age::ssh::Identity::Unsupported(k) => {
                    bail!("{shown}: unsupported SSH key ({k:?})")
                }
            }
        } else {
            age::IdentityFile::from_buffer(text.as_bytes())
                .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?
                .into_identities()
                .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?
        };
        if keys.is_empty() {
            bail!(
                "{shown}: no age identity in it (AGE-SECRET-KEY-1… lines, or an SSH private key)"
            );
        }
        Ok(Identities {
            keys,
            path: path.to_path_buf(),
        })
    }

    /// Opens an age stream. `recipients` (from the metadata) only makes the
    /// "wrong key" message say whom the backup was encrypted to.
    pub(crate) fn decrypt<R: Read>(
        &self,
        stored: R,
        recipients: &[String],
    ) -> Result<age::stream::StreamReader<R>> {
        let decryptor = age::Decryptor::new(stored).map_err(|e| match e {
            age::DecryptError::Io(e) => anyhow::Error::new(e).context("reading the age header"),
            e => anyhow::anyhow!(
                "the stored stream does not start with a valid age header ({e}): \
                 it is damaged, or not encrypted"
            ),
        })?;
        decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => anyhow::anyhow!(
                    "the age identity in {} does not match any recipient of this backup \
                     (it was encrypted to: {})",
                    self.path.display(),
                    if recipients.is_empty() {
                        "recipients not recorded".to_string()
                    } else {
                        recipients.join(", ")
                    }
                ),
                age::DecryptError::InvalidMac => anyhow::anyhow!(
                    "the age header's MAC does not verify: the stored header is damaged \
                     or was tampered with"
                ),
                e => anyhow::anyhow!("age: {e}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use age::secrecy::ExposeSecret;

    /// A fresh identity: its secret line and its public recipient.
    fn key() -> (String, String) {
        let id = age::x25519::Identity::generate();
        (
            id.to_string().expose_secret().to_string(),
            id.to_public().to_string(),
        )
    }

    #[test]
    fn recipients_file_reads_like_age_r() {
        let (_, public) = key();
        let text = format!(
            "# backup key\n\n  {public}  \n# ssh too\n\
             ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN alice@rust\n"
        );
        let r = Recipients::parse(&text, "test").unwrap();
        assert_eq!(r.labels().len(), 2);
        assert_eq!(r.labels()[0], public);
        assert!(
            r.labels()[1].starts_with("ssh-ed25519 SHA256:"),
            "{:?}",
            r.labels()
        );
        assert!(
            !r.labels()[1].contains("AAAA"),
            "a fingerprint, not the key"
        );
    }

    #[test]
    fn a_bad_recipient_names_its_line() {
        let err = Recipients::parse("# x\nage1nope\n", "recipients.txt").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("recipients.txt, line 2"), "{msg}");
        assert!(msg.contains("not an age X25519 recipient"), "{msg}");
        let err = Recipients::parse("ssh-dss AAAA\n", "r").unwrap_err();
        assert!(format!("{err:#}").contains("ssh-dss"), "{err:#}");
        let err = Recipients::parse("hello\n", "r").unwrap_err();
        assert!(format!("{err:#}").contains("not an age recipient"));
        assert!(Recipients::parse("# only comments\n", "r").is_err());
    }

    #[test]
    fn a_secret_key_never_shows_in_messages() {
        let (secret, _) = key();
        let err = Recipients::parse(&secret, "r").unwrap_err();
        let msg = format!("{err:#}");
        assert!(!msg.contains(&secret[16..24]), "{msg}");
        assert!(msg.contains("private key, not a recipient"), "{msg}");
    }

    #[test]
    fn identity_file_parses_and_decrypts() {
        let (secret, public) = key();
        let text = format!("# created: now\n# public key: {public}\n{secret}\n");
        let ids = Identities::parse(&text, Path::new("key.txt")).unwrap();
        let r = Recipients::parse(&public, "r").unwrap();
        let mut w = r.encrypt(Vec::new()).unwrap();
        w.write_all(b"hello").unwrap();
        let stored = w.finish().unwrap();
        let mut back = String::new();
        ids.decrypt(&stored[..], r.labels())
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "hello");
        assert!(Identities::parse("# nothing\n", Path::new("empty.txt")).is_err());
        assert!(Identities::parse("hello\n", Path::new("bad.txt")).is_err());
    }
}
