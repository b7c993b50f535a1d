//! Diagnostics: one problem in a unit file, located by file, line, column and key.

use std::fmt;
use std::path::PathBuf;

/// Errors sort before warnings, so `Ord` gives the order a reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found while reading units.
///
/// Displays as `units/web.toml:3:1: error: restart.dlay: unknown key (did you mean `delay`?)`;
/// parts that are `None` are left out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// Dotted path of the offending key: `restart.delay`, `resources.io[0].device`, `after[1]`.
    pub key: Option<String>,
    pub message: String,
    /// A complete hint sentence such as "did you mean `delay`?".
    pub suggestion: Option<String>,
    /// For a problem in a template (or its drop-ins) that shows only in one instance: that
    /// instance's file. `file` and `line` are then the template's.
    pub instance: Option<PathBuf>,
}

impl Diagnostic {
    pub fn new(severity: Severity, file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            file: file.into(),
            line: None,
            column: None,
            key: None,
            message: message.into(),
            suggestion: None,
            instance: None,
        }
    }

    pub fn error(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic::new(Severity::Error, file, message)
    }

    pub fn warning(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic::new(Severity::Warning, file, message)
    }

    pub fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.key = (!key.is_empty()).then_some(key);
        self
    }

    pub fn with_suggestion(mut self, suggestion: Option<String>) -> Self {
        self.suggestion = suggestion;
        self
    }

    pub fn for_instance(mut self, instance_file: impl Into<PathBuf>) -> Self {
        self.instance = Some(instance_file.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Escaped as it is written, since diagnostics go to a terminal: a file named with terminal
/// sequences, or a value quoting them, shows them as `\x1b` instead of acting on the terminal.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::escape::terminal;
        f.write_str(&crate::escape::path(&self.file))?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}: ", self.severity)?;
        if let Some(instance) = &self.instance {
            write!(f, "in instance {}: ", crate::escape::path(instance))?;
        }
        if let Some(key) = &self.key {
            write!(f, "{}: ", terminal(key))?;
        }
        f.write_str(&terminal(&self.message))?;
        if let Some(suggestion) = &self.suggestion {
            write!(f, " ({})", terminal(suggestion))?;
        }
        Ok(())
    }
}

/// Errors first, then by file and position; stable, so equal positions keep discovery order.
pub(crate) fn sort_diagnostics(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by(|a, b| {
        (a.severity, &a.file, a.line, a.column).cmp(&(b.severity, &b.file, b.line, b.column))
    });
}

/// Reading the units failed: every error and warning found, errors first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets from the TOML parser into 1-based line and character column.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, line_starts }
    }

    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.wrapping_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line.max(1), column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_omits_missing_parts() {
        let d = Diagnostic::error("units/web.toml", "unknown key")
            .at(3, 1)
            .with_key("restart.dlay")
            .with_suggestion(Some("did you mean `delay`?".into()));
        assert_eq!(
            d.to_string(),
            "units/web.toml:3:1: error: restart.dlay: unknown key (did you mean `delay`?)"
        );
        let d = Diagnostic::warning("units", "no units found");
        assert_eq!(d.to_string(), "units: warning: no units found");
    }

    #[test]
    fn line_index_counts_characters_from_one() {
        let idx = LineIndex::new("a = 1\nbé = 2\n\nc");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(4), (1, 5));
        assert_eq!(idx.position(6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(idx.position(9), (2, 3));
        assert_eq!(idx.position(14), (3, 1));
        assert_eq!(idx.position(15), (4, 1));
        assert_eq!(idx.position(999), (4, 2));
    }

    #[test]
    fn load_error_sorts_errors_first_then_position() {
        let mut v = vec![
            Diagnostic::warning("a.toml", "w").at(1, 1),
            Diagnostic::error("b.toml", "e2").at(1, 1),
            Diagnostic::error("a.toml", "e1").at(5, 1),
            Diagnostic::error("a.toml", "e0").at(2, 9),
        ];
        sort_diagnostics(&mut v);
        let msgs: Vec<_> = v.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(msgs, ["e0", "e1", "e2", "w"]);
        let err = LoadError { diagnostics: v };
        assert_eq!(err.to_string().lines().count(), 4);
        assert_eq!(err.errors().count(), 3);
    }
}
