//! age encryption: the recipients a backup is encrypted to, the identities
//! a restore decrypts with, and the writer/reader that do it.
//!
//! Recipients are public: `age1…` (X25519) and `ssh-ed25519 …` / `ssh-rsa …`
//! public keys, from `swift.age_recipients` and from `swift.age_recipients_file`
//! (one per line, `#` comments and blank lines ignored, as `age -R` reads).
//! The stored object is a plain age v1 file, so `age -d -i key.txt` opens it.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::config::SwiftSettings;

/// The public keys a backup is encrypted to.
pub struct Recipients {
    keys: Vec<Box<dyn age::Recipient + Send + Sync>>,
    labels: Vec<String>,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Recipients").field(&self.labels).finish()
    }
}

impl Recipients {
    /// The configured recipients (inline list, then the file), or `None` when
    /// the config asks for no encryption.
    pub fn from_settings(swift: &SwiftSettings) -> Result<Option<Recipients>> {
        let mut recipients = Recipients {
            keys: Vec::new(),
            labels: Vec::new(),
        };
        for (i, text) in swift.age_recipients.iter().enumerate() {
            recipients
                .add(text)
                .with_context(|| format!("swift.age_recipients[{i}]"))?;
        }
        if let Some(path) = &swift.age_recipients_file {
            recipients.add_file(path)?;
        }
        Ok((!recipients.keys.is_empty()).then_some(recipients))
    }

    /// Parses recipients as `age -R` reads a file: one a line, `#` comments.
    /// `origin` names the source in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Recipients> {
        let mut recipients = Recipients {
            keys: Vec::new(),
            labels: Vec::new(),
        };
        recipients.add_lines(text, origin)?;
        if recipients.keys.is_empty() {
            bail!("{origin}: no recipient in it");
        }
        Ok(recipients)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading age recipients file {}", path.display()))?;
        let before = self.keys.len();
        self.add_lines(&text, &path.display().to_string())?;
        if self.keys.len() == before {
            bail!(
                "age recipients file {}: no recipient in it (one age1…, ssh-ed25519 … or \
                 ssh-rsa … a line)",
                path.display()
            );
        }
        Ok(())
    }

    fn add_lines(&mut self, text: &str, origin: &str) -> Result<()> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            self.add(line)
                .with_context(|| format!("{origin}, line {}", n + 1))?;
        }
        Ok(())
    }

    fn add(&mut self, text: &str) -> Result<()> {
        let text = text.trim();
        if text.starts_with("AGE-SECRET-KEY-") || text.contains("PRIVATE KEY") {
            // Never echo it: this line is a secret in the wrong place.
            bail!(
                "this is a private key, not a recipient: list its public key \
                 (age-keygen -y, or the .pub file) and keep the private key off this machine"
            );
        }
        if text.starts_with("age1") {
            let key: age::x25519::Recipient = text.parse().map_err(|e: &str| {
                anyhow::anyhow!("{text:?} is not an age X25519 recipient: {e}")
            })?;
            self.labels.push(key.to_string());
            self.keys.push(Box::new(key));
        } else if text.starts_with("ssh-") {
            let key: age::ssh::Recipient = text.parse().map_err(|e| {
                let why = match e {
                    age::ssh::ParseRecipientKeyError::RsaModulusTooSmall => {
                        "an RSA key shorter than 2048 bits".to_string()
                    }
                    age::ssh::ParseRecipientKeyError::RsaModulusTooLarge => {
                        "an RSA key longer than age supports".to_string()
                    }
                    age::ssh::ParseRecipientKeyError::Unsupported(t) => {
                        format!("the unsupported key type {t}")
                    }
                    _ => "not an ssh-ed25519 or ssh-rsa public key".to_string(),
                };
                anyhow::anyhow!("{}: {why}", short(text))
            })?;
            self.labels.push(ssh_fingerprint(&key));
            self.keys.push(Box::new(key));
        } else {
            bail!(
                "{} is not an age recipient (age1…, ssh-ed25519 … or ssh-rsa …)",
                short(text)
            );
        }
        Ok(())
    }

    /// What the metadata records for each recipient: an `age1…` string as it
    /// is (it is short and public), an SSH key as its type and SHA-256
    /// fingerprint, as `ssh-keygen -l` prints it. Never a secret.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Wraps `inner` so that what is written to it is encrypted.
    pub(crate) fn encrypt<W: Write>(&self, inner: W) -> Result<age::stream::StreamWriter<W>> {
        let encryptor = age::Encryptor::with_recipients(
            self.keys.iter().map(|k| k.as_ref() as &dyn age::Recipient),
        )
        .map_err(|e| anyhow::anyhow!("age: {e}"))?;
        encryptor
            .wrap_output(inner)
            .context("writing the age header")
    }
}

/// `ssh-ed25519 SHA256:…`, the fingerprint `ssh-keygen -l` shows.
fn ssh_fingerprint(key: &age::ssh::Recipient) -> String {
    let (kind, blob) = match key {
        age::ssh::Recipient::SshEd25519(blob, _) => ("ssh-ed25519", blob),
        age::ssh::Recipient::SshRsa(blob, _) => ("ssh-rsa", blob),
    };
    let digest = Sha256::digest(blob);
    format!(
        "{kind} SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// The start of a key for an error message: enough to recognize it.
fn short(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    format!("{s:?}")
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
