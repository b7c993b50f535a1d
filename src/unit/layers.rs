//! A unit made of several files (a template, its instance's file, drop-ins): merged into one
//! TOML table whose every value still knows the file and line it came from.
//!
//! The files' texts are laid end to end in one buffer and each is parsed on its own; the spans
//! of each tree are moved by its file's offset, so a span is a position in the buffer and
//! [`Sources`] turns it back into file, line and column.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::{Diagnostic, LineIndex};
use super::model::UnitName;
use super::specifier::{EXPANDED_KEYS, PLACEHOLDER_INSTANCE, Specifiers};
use super::values::Invalid;

/// One file of a unit, as read.
#[derive(Debug, Clone)]
pub struct Layer {
    pub file: PathBuf,
    /// Shared: a template's text serves every instance.
    pub text: Rc<str>,
}

impl Layer {
    pub fn new(file: impl Into<PathBuf>, text: &str) -> Layer {
        Layer {
            file: file.into(),
            text: Rc::from(text),
        }
    }
}

/// What a unit is made of: its files in merge order (later wins), and for an instance the
/// values of its specifiers.
#[derive(Debug, Clone)]
pub struct UnitLayers {
    /// The file that names the unit: `web.toml`, `worker@3.toml`, or for a template checked on
    /// its own `worker@.toml`. Problems with no position are reported there.
    pub main: PathBuf,
    pub layers: Vec<Layer>,
    /// `Some` for a template (checked with a placeholder) and its instances.
    pub(crate) specifiers: Option<Specifiers>,
    /// How many of `layers`, from the first, are the template's (the template and its
    /// drop-ins): problems there are the template's, seen through this instance.
    pub(crate) template_layers: usize,
}

impl UnitLayers {
    /// A plain unit: its file and its drop-ins.
    pub fn plain(main: impl Into<PathBuf>, layers: Vec<Layer>) -> UnitLayers {
        UnitLayers {
            main: main.into(),
            layers,
            specifiers: None,
            template_layers: 0,
        }
    }

    /// A template checked on its own, with a placeholder instance.
    pub(crate) fn template(
        main: impl Into<PathBuf>,
        layers: Vec<Layer>,
        name: &UnitName,
    ) -> UnitLayers {
        UnitLayers {
            main: main.into(),
            layers,
            specifiers: Some(Specifiers {
                instance: PLACEHOLDER_INSTANCE.to_owned(),
                name: format!("{name}{PLACEHOLDER_INSTANCE}"),
            }),
            template_layers: 0,
        }
    }

    /// An instance: the first `template_layers` of `layers` are its template's.
    pub(crate) fn instance(
        name: &UnitName,
        main: impl Into<PathBuf>,
        layers: Vec<Layer>,
        template_layers: usize,
    ) -> UnitLayers {
        UnitLayers {
            main: main.into(),
            layers,
            specifiers: Specifiers::for_instance(name),
            template_layers,
        }
    }

    /// The same files with specifiers left as written (a template shown).
    pub(crate) fn unexpanded(self) -> UnitLayers {
        UnitLayers {
            specifiers: None,
            ..self
        }
    }
}

/// The buffer all layers of a unit were laid in: offset -> file, line, column.
pub(crate) struct Sources<'a> {
    text: &'a str,
    segments: Vec<Segment<'a>>,
}

struct Segment<'a> {
    file: &'a Path,
    start: usize,
    lines: LineIndex<'a>,
}

/// Lays the layers' texts end to end, a newline between them so that a span at the end of one
/// (an unterminated string) stays in it.
pub(crate) fn concatenate(layers: &[Layer]) -> String {
    let mut text = String::new();
    for (i, layer) in layers.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(&layer.text);
    }
    text
}

impl<'a> Sources<'a> {
    /// `text` must be [`concatenate`] of `layers`.
    pub(crate) fn new(text: &'a str, layers: &'a [Layer]) -> Sources<'a> {
        let mut segments = Vec::with_capacity(layers.len());
        let mut start = 0;
        for layer in layers {
            let end = (start + layer.text.len()).min(text.len());
            segments.push(Segment {
                file: &layer.file,
                start,
                lines: LineIndex::new(text.get(start..end).unwrap_or("")),
            });
            start = end + 1;
        }
        Sources { text, segments }
    }

    fn segment_index(&self, offset: usize) -> usize {
        self.segments
            .partition_point(|s| s.start <= offset)
            .saturating_sub(1)
    }

    /// Which layer `offset` is in.
    pub(crate) fn layer_of(&self, offset: usize) -> usize {
        self.segment_index(offset)
    }

    /// The file, 1-based line and column of `offset`.
    pub(crate) fn position(&self, offset: usize) -> Option<(&'a Path, usize, usize)> {
        let segment = self.segments.get(self.segment_index(offset))?;
        let (line, column) = segment.lines.position(offset.saturating_sub(segment.start));
        Some((segment.file, line, column))
    }

    /// `d` moved to the file and position of `span`.
    pub(crate) fn locate(&self, span: Range<usize>, mut d: Diagnostic) -> Diagnostic {
        if let Some((file, line, column)) = self.position(span.start) {
            d.file = file.to_owned();
            d = d.at(line, column);
        }
        d
    }

    /// Each layer's text and where it starts in the buffer.
    fn segments(&self) -> impl Iterator<Item = (usize, &'a str)> + '_ {
        let mut starts = self.segments.iter().map(|s| s.start).peekable();
        std::iter::from_fn(move || {
            let start = starts.next()?;
            let end = starts
                .peek()
                .map_or(self.text.len(), |next| next.saturating_sub(1));
            Some((start, self.text.get(start..end).unwrap_or("")))
        })
    }
}

/// Parses every layer and merges them in order: tables merge key by key, anything else (arrays
/// included) replaces what was there. `Err` carries every layer's syntax error.
pub(crate) fn merge<'i>(sources: &Sources<'i>) -> Result<Spanned<DeTable<'i>>, Vec<Diagnostic>> {
    let mut merged: Option<Spanned<DeTable<'i>>> = None;
    let mut errors = Vec::new();
    for (start, text) in sources.segments() {
        match DeTable::parse(text) {
            Ok(table) => {
                let span = shift(table.span(), start);
                let table = shift_table(table.into_inner(), start);
                match &mut merged {
                    None => merged = Some(Spanned::new(span, table)),
                    Some(base) => merge_table(base.get_mut(), table),
                }
            }
            Err(e) => {
                let span = e.span().map_or(start..start, |s| shift(s, start));
                errors.push(sources.locate(
                    span,
                    Diagnostic::error("", format!("invalid TOML: {}", e.message())),
                ));
            }
        }
    }
    match merged {
        Some(table) if errors.is_empty() => Ok(table),
        _ => Err(errors),
    }
}

fn shift(span: Range<usize>, by: usize) -> Range<usize> {
    span.start + by..span.end + by
}

fn shift_table(table: DeTable<'_>, by: usize) -> DeTable<'_> {
    let mut out = DeTable::new();
    for (k, v) in table {
        let key_span = shift(k.span(), by);
        out.insert(Spanned::new(key_span, k.into_inner()), shift_value(v, by));
    }
    out
}

fn shift_value(value: Spanned<DeValue<'_>>, by: usize) -> Spanned<DeValue<'_>> {
    let span = shift(value.span(), by);
    let inner = match value.into_inner() {
        DeValue::Table(t) => DeValue::Table(shift_table(t, by)),
        DeValue::Array(mut items) => {
            for item in items.iter_mut() {
                let moved = std::mem::replace(item, Spanned::new(0..0, DeValue::Boolean(false)));
                *item = shift_value(moved, by);
            }
            DeValue::Array(items)
        }
        other => other,
    };
    Spanned::new(span, inner)
}

/// `over` merged into `base`: a table over a table merges key by key (the base's key and span
/// kept, so the section is still found where it was opened); anything else replaces the
/// entry, key and all, so the key is found in the file that set it.
pub(crate) fn merge_table<'i>(base: &mut DeTable<'i>, over: DeTable<'i>) {
    for (k, v) in over {
        let name: String = k.get_ref().to_string();
        if let Some(existing) = base.get_mut(name.as_str())
            && let DeValue::Table(base_table) = existing.get_mut()
            && matches!(v.get_ref(), DeValue::Table(_))
        {
            if let DeValue::Table(over_table) = v.into_inner() {
                merge_table(base_table, over_table);
            }
            continue;
        }
        base.remove(name.as_str());
        base.insert(k, v);
    }
}

/// Replaces specifiers in the strings of [`EXPANDED_KEYS`]; each bad one is reported at its
/// string, under its key.
pub(crate) fn expand(
    root: &mut DeTable<'_>,
    specifiers: &Specifiers,
    mut report: impl FnMut(Range<usize>, String, Invalid),
) {
    for pattern in EXPANDED_KEYS {
        let (path, each) = match pattern
            .strip_suffix("[]")
            .map(|p| (p, Each::Element))
            .or_else(|| pattern.strip_suffix("{}").map(|p| (p, Each::Value)))
        {
            Some(split) => split,
            None => (*pattern, Each::Itself),
        };
        let Some(value) = lookup_mut(root, path) else {
            continue;
        };
        let mut visit = |key: String, v: &mut Spanned<DeValue<'_>>| {
            let span = v.span();
            if let DeValue::String(s) = v.get_mut() {
                match specifiers.expand(s) {
                    Ok(Cow::Borrowed(_)) => {}
                    Ok(Cow::Owned(expanded)) => *s = Cow::Owned(expanded),
                    Err(problem) => report(span, key, problem),
                }
            }
        };
        match (each, value.get_mut()) {
            (Each::Itself, _) => visit((*path).to_owned(), value),
            (Each::Element, DeValue::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    visit(format!("{path}[{i}]"), item);
                }
            }
            (Each::Value, DeValue::Table(table)) => {
                for (k, v) in table.iter_mut() {
                    visit(format!("{path}.{}", k.get_ref()), v);
                }
            }
            _ => {}
        }
    }
}

#[derive(Clone, Copy)]
enum Each {
    Itself,
    Element,
    Value,
}

fn lookup_mut<'t, 'i>(
    table: &'t mut DeTable<'i>,
    dotted: &str,
) -> Option<&'t mut Spanned<DeValue<'i>>> {
    let (head, rest) = match dotted.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (dotted, None),
    };
    let value = table.get_mut(head)?;
    match rest {
        None => Some(value),
        Some(rest) => match value.get_mut() {
            DeValue::Table(inner) => lookup_mut(inner, rest),
            _ => None,
        },
    }
}
