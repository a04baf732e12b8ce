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

/// The span of a dotted key (`cinder.volumes./srv/db` style paths are split
/// on the first dots only as far as tables go).
pub fn locate_key(source: &str, dotted: &str) -> Option<Range<usize>> {
    let doc = toml_edit::ImDocument::parse(source).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut rest = dotted;
    loop {
        let (head, tail) = match rest.split_once('.') {
            // Keys such as mount paths may contain dots: prefer the longest
            // key that exists.
            Some((head, tail)) if table.get(head).is_some() && table.get(rest).is_none() => {
                (head, Some(tail))
            }
            _ => (rest, None),
        };
        let (key, item) = table.get_key_value(head)?;
        match tail {
            None => return key.span().or_else(|| item.span()),
            Some(tail) => {
                table = item.as_table_like()?;
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
    let doc = toml_edit::ImDocument::parse(source).ok()?;
    let mut path: Vec<String> = Vec::new();
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    'descend: loop {
        for (key, item) in table.iter() {
            let (k, _) = table.get_key_value(key)?;
            let holds = |span: Option<Range<usize>>| span.is_some_and(|s| s.contains(&offset));
            let inner = item.as_table_like();
            let in_key = holds(k.span());
            let in_value = holds(item.span())
                || inner.is_some_and(|t| {
                    t.iter().any(|(name, child)| {
                        holds(t.get_key_value(name).and_then(|(k, _)| k.span()))
                            || holds(child.span())
                    })
                });
            if in_key || in_value {
                path.push(key.to_string());
                match inner {
                    Some(t) if !in_key => {
                        table = t;
                        continue 'descend;
                    }
                    _ => return Some(path.join(".")),
                }
            }
        }
        return (!path.is_empty()).then(|| path.join("."));
    }
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
