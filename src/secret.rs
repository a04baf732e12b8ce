//! A string that never shows itself in `Debug`, `Display` or serialized output.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Passwords, application credential secrets and tokens live here, so a
/// `{:?}` in a log line or a panic message prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The only way to the value; grep for it to audit where secrets go.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `any`, not `string`: asked for a string, some deserializers (YAML
        // values) refuse a number with their own message, which quotes it.
        d.deserialize_any(SecretVisitor)
    }
}

/// serde's own "invalid type" errors quote the value (``integer `98765432` ``);
/// for a secret the message names only what was expected.
struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: de::Error>(found: &str) -> E {
        E::custom(format!("invalid type: {found}, expected a string"))
    }

    /// A number or a boolean written bare is most often a password that
    /// needs its quotes.
    fn refuse_bare<E: de::Error>(found: &str) -> E {
        E::custom(format!(
            "invalid type: {found}, expected a string (put the value in quotes)"
        ))
    }
}

impl<'de> de::Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(Self::refuse_bare("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(Self::refuse_bare("an integer"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(Self::refuse_bare("an integer"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(Self::refuse_bare("an integer"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(Self::refuse_bare("an integer"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(Self::refuse_bare("a float"))
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(Self::refuse("bytes"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(Self::refuse("an array"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(Self::refuse("a table or a date"))
    }
}

/// `url` without the `user:password@` of its authority, for every message
/// and log line that shows a URL. Works on text that does not parse as a URL
/// too: that is when it is quoted in an error.
pub fn strip_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end], &rest[at + 1..]).into(),
        None => url.into(),
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// A secret on its way to a trusted child process over a pipe (the
/// watchdog's plan): the one place a secret serializes as its value. Its
/// `Debug` still redacts.
#[derive(Clone, Deserialize)]
pub struct Revealed(pub Secret);

impl Serialize for Revealed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.expose())
    }
}

impl fmt::Debug for Revealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_type_error_names_the_type_never_the_value() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct T {
            password: Secret,
        }
        for (text, found) in [
            ("password = 98765432", "an integer"),
            ("password = 9876.5432", "a float"),
            ("password = true", "a boolean"),
            ("password = [98765432]", "an array"),
            ("password = 1979-05-27", "a table or a date"),
        ] {
            let e = toml::from_str::<T>(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("invalid type: {found}, expected a string")),
                "{e}"
            );
            for leak in ["98765432", "9876.5432", "1979"] {
                // toml's message quotes the line; the value must not be in
                // what volsnap shows, which is `message()`.
                let message = toml::from_str::<T>(text).unwrap_err().message().to_string();
                assert!(!message.contains(leak), "{message}");
            }
        }
        let t: T = toml::from_str("password = \"98765432\"").unwrap();
        assert_eq!(t.password.expose(), "98765432");
    }

    #[test]
    fn userinfo_is_stripped_from_urls() {
        assert_eq!(
            strip_userinfo("https://admin:hunter2@keystone.example:5000/v3?x=a@b"),
            "https://keystone.example:5000/v3?x=a@b"
        );
        assert_eq!(strip_userinfo("http://u@h"), "http://h");
        assert_eq!(strip_userinfo("https://h/p@q"), "https://h/p@q");
        assert_eq!(strip_userinfo("ftp//a:b@c"), "ftp//a:b@c");
    }
}
