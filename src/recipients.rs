//! The age recipients a Swift backup is encrypted to: public keys, parsed
//! and checked when the configuration is read (a private key in their
//! place is refused without being echoed), used by `stream` to encrypt.
//!
//! Recipients are public: `age1…` (X25519) and `ssh-ed25519 …` / `ssh-rsa …`
//! public keys, from `swift.age_recipients` and from `swift.age_recipients_file`
//! (one per line, `#` comments and blank lines ignored, as `age -R` reads).

use std::fmt;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine;
use sha2::{Digest, Sha256};

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
    /// The configured recipients (`swift.age_recipients`, then the lines of
    /// `swift.age_recipients_file`), or `None` when there are none: no
    /// encryption.
    pub fn configured(list: &[String], file: Option<&Path>) -> Result<Option<Recipients>> {
        let mut recipients = Recipients {
            keys: Vec::new(),
            labels: Vec::new(),
        };
        for (i, text) in list.iter().enumerate() {
            recipients
                .add(text)
                .with_context(|| format!("swift.age_recipients[{i}]"))?;
        }
        if let Some(path) = file {
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

    /// The keys, as age's encryptor takes them.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &dyn age::Recipient> {
        self.keys.iter().map(|k| k.as_ref() as &dyn age::Recipient)
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
