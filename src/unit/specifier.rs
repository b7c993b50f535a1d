//! Specifiers of templates and their instances: `%i`, `%n` and `%%` in the values that name what runs.

use std::borrow::Cow;

use super::model::UnitName;
use super::values::Invalid;

/// What the specifiers of one instance stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Specifiers {
    /// `%i`: the part of the name after the first `@` (`3` in `worker@3`).
    pub instance: String,
    /// `%n`: the instance's full name (`worker@3`).
    pub name: String,
}

/// The instance a template is checked with on its own (`corral check`): numbered, as
/// instances usually are.
pub(crate) const PLACEHOLDER_INSTANCE: &str = "0";

/// The keys whose strings expand specifiers, as dotted paths (`[]` for every element, `{}` for
/// every value of a table). What names what runs and where; not names of other units, users or
/// limits, whose `%` stays literal.
pub(crate) const EXPANDED_KEYS: &[&str] = &[
    "description",
    "exec.command[]",
    "exec.working-dir",
    "exec.env{}",
    "exec.env-file",
    "exec.env-file[]",
    "namespaces.hostname",
    "health.exec[]",
];

impl Specifiers {
    pub(crate) fn for_instance(name: &UnitName) -> Option<Specifiers> {
        let (_, instance) = name.as_str().split_once('@')?;
        Some(Specifiers {
            instance: instance.to_owned(),
            name: name.as_str().to_owned(),
        })
    }

    /// `text` with `%i`, `%n` and `%%` replaced; any other `%` is an error (systemd's rule, so a
    /// typo such as `%I` is caught rather than run).
    pub(crate) fn expand<'s>(&self, text: &'s str) -> Result<Cow<'s, str>, Invalid> {
        if !text.contains('%') {
            return Ok(Cow::Borrowed(text));
        }
        let mut out = String::with_capacity(text.len() + self.name.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('i') => out.push_str(&self.instance),
                Some('n') => out.push_str(&self.name),
                Some('%') => out.push('%'),
                Some(other) => {
                    return Err(Invalid::new(format!("unknown specifier `%{other}`"))
                        .hint("templates know `%i` (instance) and `%n` (name); write `%%` for a literal %"));
                }
                None => {
                    return Err(Invalid::new("`%` at the end, with no specifier")
                        .hint("write `%%` for a literal %"));
                }
            }
        }
        Ok(Cow::Owned(out))
    }
}

/// What kind of file a unit name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameKind<'n> {
    /// No `@`: a unit of its own.
    Plain,
    /// `worker@`: a template, never started itself.
    Template,
    /// `worker@3`: an instance of the template `worker@`.
    Instance { template: &'n str },
}

/// Sorts a unit name; `Err` for `@3` or `@`, which name no template.
pub(crate) fn name_kind(name: &str) -> Result<NameKind<'_>, Invalid> {
    let Some(at) = name.find('@') else {
        return Ok(NameKind::Plain);
    };
    if at == 0 {
        return Err(
            Invalid::new(format!("invalid unit name {name:?}: nothing before `@`"))
                .hint("a template is named like `worker@`, its instances like `worker@3`"),
        );
    }
    if at + 1 == name.len() {
        return Ok(NameKind::Template);
    }
    Ok(NameKind::Instance {
        template: &name[..=at],
    })
}

/// The longest unit name: a file's name is at most NAME_MAX (255) bytes, `.toml` included. An
/// instance named at runtime is held to it too, so it could always be written as a file.
pub(crate) const MAX_NAME_BYTES: usize = 255 - ".toml".len();

/// The template of an instance named at runtime (`corral start worker@3`, `corral scale`) that
/// has no file: the rules of a file instance's name (docs/units.md, "Templates and instances"),
/// each broken rule an error that names it. `Ok(None)` for a name without `@`, which is no
/// instance.
pub(crate) fn template_of(name: &str) -> Result<Option<UnitName>, Invalid> {
    if UnitName::new(name).is_none() {
        return Err(Invalid::new(format!("invalid unit name {name:?}"))
            .hint("unit names use only letters, digits and `_ . @ -`"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Invalid::new(format!(
            "invalid unit name: {} bytes, more than the {MAX_NAME_BYTES} a unit file's name \
             allows (255 with `.toml`)",
            name.len()
        )));
    }
    match name_kind(name)? {
        NameKind::Plain => Ok(None),
        NameKind::Template => Err(Invalid::new(format!(
            "`{name}` is a template, never started itself"
        ))
        .hint(format!("name one of its instances, such as `{name}1`"))),
        NameKind::Instance { template } => Ok(UnitName::new(template)),
    }
}
