//! Configuration errors: every one names the file, the line and column, and
//! the key, so an operator can go straight to the mistake. They exit 78.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the mistake has a place in the file.
    pub position: Option<(usize, usize)>,
    /// Dotted key path such as `cinder.max_freeze`.
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position: None,
            key: None,
            message: message.into(),
        }
    }

    /// An error about `key`, placed at that key in `source` when it is there.
    pub fn at_key(file: &Path, source: &str, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position: locate_key(source, key).map(|span| line_column(source, span.start)),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column of a byte offset.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The document with every key's and value's span, parsed by the same
/// parser `toml::from_str` uses (no second TOML parser in the binary).
fn spanned(source: &str) -> Option<toml::de::DeTable<'_>> {
    toml::de::DeTable::parse(source)
        .ok()
        .map(toml::Spanned::into_inner)
}

type Entry<'t, 'i> = (
    &'t toml::Spanned<toml::de::DeString<'i>>,
    &'t toml::Spanned<toml::de::DeValue<'i>>,
);

fn entry<'t, 'i>(table: &'t toml::de::DeTable<'i>, name: &str) -> Option<Entry<'t, 'i>> {
    table.iter().find(|(key, _)| key.get_ref() == name)
}

/// The span of a dotted key (`cinder.volumes./srv/db` style paths are split
/// on the first dots only as far as tables go).
pub fn locate_key(source: &str, dotted: &str) -> Option<Range<usize>> {
    let doc = spanned(source)?;
    let mut table = &doc;
    let mut rest = dotted;
    loop {
        let (head, tail) = match rest.split_once('.') {
            // Keys such as mount paths may contain dots: prefer the longest
            // key that exists.
            Some((head, tail)) if entry(table, head).is_some() && entry(table, rest).is_none() => {
                (head, Some(tail))
            }
            _ => (rest, None),
        };
        let (key, value) = entry(table, head)?;
        match tail {
            None => return Some(key.span()),
            Some(tail) => {
                table = value.get_ref().as_table()?;
                rest = tail;
            }
        }
    }
}

/// The dotted key whose key or value holds byte `offset` — where a parse
/// error points — the innermost one. Found in the document itself, so that
/// no serde wrapper is monomorphized over every config type (that one cost
/// 135 KB of the static binary).
pub fn key_at(source: &str, offset: usize) -> Option<String> {
    let doc = spanned(source)?;
    let mut path = Vec::new();
    holding(&doc, offset, &mut path).then(|| path.join("."))
}

/// Pushes onto `path` the keys down to the innermost one holding `offset`.
fn holding(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if key.span().contains(&offset)
            || value
                .get_ref()
                .as_table()
                .is_some_and(|inner| holding(inner, offset, path))
            || value.span().contains(&offset)
        {
            return true;
        }
        path.pop();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_key_at_an_offset() {
        let src = "a = 1\n[cinder]\nmax_freeze = \"1s\"\nvolumes = { \"/srv/db.1\" = 7 }\n[hooks]\ntimeuot = 3\n";
        let at = |needle: &str| key_at(src, src.find(needle).unwrap()).unwrap();
        assert_eq!(at("a = 1"), "a");
        assert_eq!(at("\"1s\""), "cinder.max_freeze");
        assert_eq!(at("max_freeze"), "cinder.max_freeze");
        assert_eq!(at("7 }"), "cinder.volumes./srv/db.1");
        assert_eq!(at("timeuot"), "hooks.timeuot");
    }

    #[test]
    fn finds_keys_in_tables_and_inline_tables() {
        let src = "a = 1\n[cinder]\nmax_freeze = \"1s\"\nvolumes = { \"/srv/db.1\" = \"x\" }\n";
        let span = locate_key(src, "cinder.max_freeze").unwrap();
        assert_eq!(line_column(src, span.start), (3, 1));
        let span = locate_key(src, "cinder.volumes./srv/db.1").unwrap();
        assert_eq!(line_column(src, span.start), (4, 13));
        assert!(locate_key(src, "cinder.nope").is_none());
    }
}
