//! Text bound for a terminal, its control characters made visible: a file name, a unit's
//! description or its output must not move the cursor, retitle the window or hide text.

use std::borrow::Cow;
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Whether `c` would act on a terminal or reorder the text around it: C0, DEL and C1 controls
/// (ESC starts every terminal sequence), and the Unicode bidirectional overrides and isolates
/// ("Trojan Source", CVE-2021-42574).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    // Writing to a String cannot fail.
    let _ = match u32::from(c) {
        n @ 0..=0xff => write!(out, "\\x{n:02x}"),
        n => write!(out, "\\u{{{n:x}}}"),
    };
}

/// `s` with every unsafe character written as `\xNN` or `\u{NNNN}`; a tab is left alone, it
/// only moves to the next column. For one line: a newline is escaped too.
pub fn terminal(s: &str) -> Cow<'_, str> {
    escape_except(s, &['\t'])
}

/// `terminal` for text of several lines (a reload's diagnostics): newlines are kept.
pub fn terminal_lines(s: &str) -> Cow<'_, str> {
    escape_except(s, &['\t', '\n'])
}

fn escape_except<'s>(s: &'s str, kept: &[char]) -> Cow<'s, str> {
    let escaped = |c: char| is_unsafe(c) && !kept.contains(&c);
    if !s.chars().any(escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escaped(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A path as a terminal should show it: unsafe characters (tabs too) escaped, and bytes that
/// are not UTF-8 written as `\xNN` rather than replaced, so the name can still be told apart.
pub fn path(p: &Path) -> String {
    let mut out = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if is_unsafe(c) {
                push_escaped(&mut out, c);
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn control_characters_and_bidi_overrides_are_made_visible() {
        for (raw, shown) in [
            ("web", "web"),
            ("a\u{1b}[31mred", "a\\x1b[31mred"),
            ("title\u{1b}]0;pwned\u{7}", "title\\x1b]0;pwned\\x07"),
            ("cr\rlf\n", "cr\\x0dlf\\x0a"),
            ("del\u{7f}c1\u{9b}", "del\\x7fc1\\x9b"),
            ("rtl\u{202e}txt", "rtl\\u{202e}txt"),
            ("tab\tkept", "tab\tkept"),
            ("héllo ✓", "héllo ✓"),
        ] {
            assert_eq!(terminal(raw), shown, "{raw:?}");
        }
        assert!(matches!(terminal("plain"), Cow::Borrowed(_)));
        assert_eq!(
            terminal_lines("a.toml:1:1: error\n\u{1b}[2Jb.toml: error\n"),
            "a.toml:1:1: error\n\\x1b[2Jb.toml: error\n"
        );
    }

    #[test]
    fn paths_show_invalid_utf8_as_bytes() {
        let p = Path::new(OsStr::from_bytes(b"/units/a\xff\x1b[2J\tb.toml"));
        assert_eq!(path(p), "/units/a\\xff\\x1b[2J\\x09b.toml");
        assert_eq!(path(Path::new("/etc/corral/units")), "/etc/corral/units");
    }
}
