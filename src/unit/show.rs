//! A merged unit written back as TOML, each key followed by the file and line it came from
//! (`corral check --show`).

use std::fmt::Write;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::diagnostic::Diagnostic;
use super::layers::{self, Sources, UnitLayers};

/// The unit's files merged (and for an instance, its specifiers expanded) as TOML: scalars
/// and arrays first, then each table as a `[section]`; every key ends in
/// `# from FILE:LINE`, FILE relative to `dir`. The text is safe for a terminal: control and
/// bidi characters in strings and keys are written as TOML escapes, in file names as `\xNN`.
pub(crate) fn render(unit: &UnitLayers, dir: &Path) -> Result<String, Vec<Diagnostic>> {
    let text = layers::concatenate(&unit.layers);
    let sources = Sources::new(&text, &unit.layers);
    let mut doc = layers::merge(&sources)?;
    if let Some(specifiers) = &unit.specifiers {
        // A bad specifier stays as written here; `check` reports it.
        layers::expand(doc.get_mut(), specifiers, |_, _, _| {});
    }
    let mut out = String::new();
    let files: Vec<String> = unit.layers.iter().map(|l| relative(&l.file, dir)).collect();
    let _ = writeln!(out, "# merged from {}", files.join(", "));
    let writer = Writer {
        sources: &sources,
        dir,
    };
    writer.table(&mut out, "", doc.get_ref());
    Ok(out)
}

fn relative(file: &Path, dir: &Path) -> String {
    crate::escape::path(file.strip_prefix(dir).unwrap_or(file))
}

struct Writer<'a> {
    sources: &'a Sources<'a>,
    dir: &'a Path,
}

impl Writer<'_> {
    fn origin(&self, offset: usize) -> String {
        match self.sources.position(offset) {
            Some((file, line, _)) => format!("{}:{line}", relative(file, self.dir)),
            None => "?".to_owned(),
        }
    }

    fn table(&self, out: &mut String, path: &str, table: &DeTable<'_>) {
        for (k, v) in table.iter() {
            if matches!(v.get_ref(), DeValue::Table(_)) {
                continue;
            }
            let mut value = String::new();
            write_value(&mut value, v.get_ref());
            let _ = writeln!(
                out,
                "{} = {value}  # from {}",
                key(k.get_ref()),
                self.origin(k.span().start)
            );
        }
        for (k, v) in table.iter() {
            let DeValue::Table(inner) = v.get_ref() else {
                continue;
            };
            let inner_path = if path.is_empty() {
                key(k.get_ref())
            } else {
                format!("{path}.{}", key(k.get_ref()))
            };
            let _ = writeln!(out, "\n[{inner_path}]");
            self.table(out, &inner_path, inner);
        }
    }
}

/// A key as TOML writes it: bare when it can be, else a quoted string.
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        k.to_owned()
    } else {
        let mut s = String::new();
        write_string(&mut s, k);
        s
    }
}

fn write_value(out: &mut String, v: &DeValue<'_>) {
    match v {
        DeValue::String(s) => write_string(out, s),
        DeValue::Integer(i) => out.push_str(&i.to_string()),
        DeValue::Float(f) => out.push_str(&f.to_string()),
        DeValue::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        DeValue::Datetime(d) => out.push_str(&d.to_string()),
        DeValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item.get_ref());
            }
            out.push(']');
        }
        DeValue::Table(table) => {
            out.push('{');
            for (i, (k, v)) in table.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { " " });
                out.push_str(&key(k.get_ref()));
                out.push_str(" = ");
                write_value(out, v.get_ref());
            }
            out.push_str(if table.is_empty() { "}" } else { " }" });
        }
    }
}

/// A TOML basic string; every character a terminal would act on is a `\uXXXX` escape.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if crate::escape::is_unsafe(c) => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
