//! `[exec] env-file`: systemd's EnvironmentFile= syntax, text in, variables out (no files here).
//!
//! The grammar is the one systemd.exec(5) documents for EnvironmentFile= (systemd v254 and
//! later): newline-separated `KEY=VALUE`; blank lines and lines starting with `#` or `;` are
//! comments; leading and trailing whitespace (space, tab, CR) around the value is dropped.
//! * unquoted: a backslash keeps the next character (`\\` is `\`), a backslash before the
//!   newline continues the value on the next line; quotes after the first character are kept;
//! * `'...'`: verbatim, newlines too, no escapes;
//! * `"..."`: may span lines; `\` before `"`, `\`, `` ` `` or `$` keeps that character,
//!   before a newline continues the line, before anything else is kept with it;
//! * quoted and unquoted parts that follow each other join (`A='x'"y"z` is `xyz`).
//!
//! Where systemd skips a line silently, corral refuses the file with its line, since a
//! variable that quietly goes missing is the harder bug: a line without `=`, a name that is not
//! `[A-Za-z_][A-Za-z0-9_]*` (systemd's rule for Environment=; `export KEY=...` is such a name:
//! systemd has no `export`), an unterminated quote, a NUL.
//! Messages name the line and the variable, never the value: env files hold secrets.

/// Why an env file was refused, at which 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

fn error(line: usize, message: impl Into<String>) -> EnvFileError {
    EnvFileError {
        line,
        message: message.into(),
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r')
}

/// The variables of an env file, in file order (a later one of the same name wins when they are
/// put in a map).
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut vars = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    // Before a key: blanks, empty lines, comments.
    while let Some(&c) = chars.peek() {
        if c == '\n' {
            chars.next();
            line += 1;
            continue;
        }
        if is_blank(c) {
            chars.next();
            continue;
        }
        if c == '#' || c == ';' {
            // A comment ends at its newline, a trailing backslash or not (systemd v254).
            for c in chars.by_ref() {
                if c == '\n' {
                    line += 1;
                    break;
                }
            }
            continue;
        }
        let start = line;
        let mut key = String::new();
        let mut found_equals = false;
        for c in chars.by_ref() {
            match c {
                '=' => {
                    found_equals = true;
                    break;
                }
                '\n' => break,
                c => key.push(c),
            }
        }
        let key = key.trim_end_matches(is_blank).to_owned();
        if !found_equals {
            return Err(error(start, "expected KEY=VALUE, found no `=`"));
        }
        if let Some(name) = key
            .strip_prefix("export")
            .filter(|r| r.starts_with(is_blank))
        {
            return Err(error(
                start,
                format!(
                    "`export {}`: env files have no `export` (systemd's EnvironmentFile= does not take it either); write `{}=...`",
                    name.trim(),
                    name.trim()
                ),
            ));
        }
        if !is_valid_name(&key) {
            return Err(error(
                start,
                format!(
                    "invalid variable name {:?}: names are letters, digits and `_`, not starting with a digit",
                    crate::escape::terminal(&key)
                ),
            ));
        }
        let value = value(&mut chars, &mut line, start, &key)?;
        vars.push((key, value));
    }
    Ok(vars)
}

/// The value after `=`, up to and including the newline that ends it.
fn value(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    line: &mut usize,
    start: usize,
    key: &str,
) -> Result<String, EnvFileError> {
    let mut value = String::new();
    // How long `value` was before the unquoted blanks at its end, which are dropped.
    let mut keep = 0;
    let mut started = false;
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                *line += 1;
                break;
            }
            c if is_blank(c) && !started => {}
            '\'' if !started => {
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '\'' {
                        closed = true;
                        break;
                    }
                    if c == '\n' {
                        *line += 1;
                    }
                    value.push(c);
                }
                if !closed {
                    return Err(error(start, format!("{key}: the ' quote is never closed")));
                }
                started = false;
                keep = value.len();
                continue;
            }
            '"' if !started => {
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some('\n') => *line += 1,
                            Some(c @ ('"' | '\\' | '`' | '$')) => value.push(c),
                            Some(c) => {
                                value.push('\\');
                                value.push(c);
                            }
                            None => break,
                        },
                        '\n' => {
                            *line += 1;
                            value.push('\n');
                        }
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(error(start, format!("{key}: the \" quote is never closed")));
                }
                started = false;
                keep = value.len();
                continue;
            }
            '\\' => {
                started = true;
                match chars.next() {
                    Some('\n') => *line += 1,
                    Some(c) => value.push(c),
                    None => {}
                }
                keep = value.len();
                continue;
            }
            c => {
                started = true;
                value.push(c);
                if !is_blank(c) {
                    keep = value.len();
                }
                continue;
            }
        }
    }
    value.truncate(keep);
    if value.contains('\0') {
        return Err(error(
            start,
            format!("{key}: the value holds a NUL character"),
        ));
    }
    Ok(value)
}
