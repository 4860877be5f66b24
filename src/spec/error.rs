//! Spec errors: one line that names the file, line and column, what is wrong and what is allowed.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::SpecSource;

/// What kind of problem a spec has; picks nothing but the wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecErrorKind {
    /// The file could not be read.
    Io,
    /// The TOML or its types are wrong (unknown key, wrong type, bad syntax).
    Syntax,
    /// The values are well-formed but not allowed (a learning rate <= 0, an empty grid, ...).
    Invalid,
}

/// A problem with a spec file, located where possible.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct SpecError {
    /// The kind of problem.
    pub kind: SpecErrorKind,
    /// The spec file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, and what is allowed.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// One step of a path into the TOML document: a key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Build a path from keys and indices: `path!["grid", "learning_rate", 2]`.
impl From<&str> for PathSeg {
    fn from(k: &str) -> Self {
        PathSeg::Key(k.to_string())
    }
}
impl From<usize> for PathSeg {
    fn from(i: usize) -> Self {
        PathSeg::Index(i)
    }
}

/// A message about one place in the spec, before it is located in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Where in the document; the longest existing prefix is what gets located.
    pub path: Vec<PathSeg>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: Vec<PathSeg>, message: impl Into<String>) -> Problem {
        Problem {
            path,
            message: message.into(),
        }
    }

    /// The dotted path for messages: `grid.learning_rate[2]`.
    pub fn dotted(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                PathSeg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }
}

impl SpecError {
    /// The file could not be read.
    pub fn io(path: &Path, err: &std::io::Error) -> SpecError {
        let message = match err.kind() {
            std::io::ErrorKind::NotFound => {
                "no such spec file: check the path, or start from sweeps/default.toml".to_string()
            }
            _ => format!("cannot read the spec: {err}"),
        };
        SpecError {
            kind: SpecErrorKind::Io,
            file: path.to_path_buf(),
            position: None,
            message,
        }
    }

    /// Turn a TOML/serde error into a located one-line message, suggesting the closest valid key
    /// for an unknown one.
    pub fn from_toml(src: &SpecSource, err: &toml::de::Error) -> SpecError {
        let raw = err.message().trim().to_string();
        let message = match raw.strip_prefix("unknown field `") {
            Some(rest) => {
                let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
                let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
                let closest = valid
                    .iter()
                    .map(|v| (strsim::damerau_levenshtein(field, v), *v))
                    .filter(|(d, _)| *d <= 3)
                    .min();
                match closest {
                    Some((_, best)) => format!(
                        "unknown key `{field}`: did you mean `{best}`? (allowed: {})",
                        valid.join(", ")
                    ),
                    None => format!("unknown key `{field}` (allowed: {})", valid.join(", ")),
                }
            }
            None => match raw.strip_prefix("data did not match any variant of untagged enum ") {
                Some(ty) => err
                    .span()
                    .and_then(|span| bad_token_count(&src.text, span))
                    .unwrap_or_else(|| untagged_hint(ty.trim()).to_string()),
                None => raw.replace('\n', " "),
            },
        };
        SpecError {
            kind: SpecErrorKind::Syntax,
            file: src.path.clone(),
            position: err.span().map(|s| line_col(&src.text, s.start)),
            message,
        }
    }

    /// Locate a [`Problem`] found by validation in the spec's text.
    pub fn at(src: &SpecSource, problem: &Problem) -> SpecError {
        let offset = locate(&src.text, &problem.path);
        let message = if problem.path.is_empty() {
            problem.message.clone()
        } else {
            format!("{}: {}", problem.dotted(), problem.message)
        };
        SpecError {
            kind: SpecErrorKind::Invalid,
            file: src.path.clone(),
            position: offset.map(|o| line_col(&src.text, o)),
            message,
        }
    }
}

/// The keys whose values are token counts (one or a list).
const TOKEN_KEYS: [&str; 4] = ["token_budget", "checkpoints", "eval_tokens", "epoch_tokens"];

/// For a value of a token-count key that does not parse (`"16kk"`, or one such item of a list),
/// the parser's own words: what was wrong and the forms allowed.
fn bad_token_count(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    // The key is the last one before the value on its line: `token_budget = ...`, a dotted
    // `grid.token_budget = ...` or an inline table's `grid = { token_budget = ... }`.
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..start];
    let before = &before[..before.rfind('=')?];
    let key = before
        .trim_end()
        .rsplit(|c: char| c == '.' || c == '{' || c == ',' || c.is_whitespace())
        .next()?
        .trim_matches(|c| c == '"' || c == '\'');
    if !TOKEN_KEYS.contains(&key) {
        return None;
    }
    // The value without its comments (a multi-line list may hold some).
    let value: String = text
        .get(span)?
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    value
        .trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace())
        .split(',')
        .map(|v| v.trim().trim_matches('"').trim_matches('\''))
        .filter(|v| !v.is_empty())
        .find_map(|v| crate::spec::values::parse_token_amount(v).err())
}

/// What a value of one of the spec's multi-form types may look like.
fn untagged_hint(ty: &str) -> &'static str {
    match ty {
        "Seeds" => "seeds is a count (seeds = 2) or a list of integers (seeds = [0, 1, 2])",
        "LrAxis" => "a learning rate is a number, a list of numbers, or { log_range = [1e-5, 1e-3], points = 5 }",
        "TokenCount" => "a token count is an integer or a string such as \"20k\", \"250M\", \"1B\" or \"2ep\"",
        "Alpha" => "alpha is a number or a multiple of the rank such as \"2r\"",
        "OneOrMany" => "this key takes one value or a list of values: see sweeps/default.toml",
        "ModuleSetSpec" => "a module set is \"attention\", \"mlp\", \"all\", or a list such as [\"q\", \"v\"]",
        _ => "this value has the wrong type: see sweeps/default.toml for what each key takes",
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// The byte offset of the value at `path`, or of its longest existing prefix.
fn locate(text: &str, path: &[PathSeg]) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let mut best = None;
    let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
    let mut value: Option<&DeValue<'_>> = None;
    for seg in path {
        let next = match (seg, table, value) {
            (PathSeg::Key(k), Some(t), _) => t.get(k.as_str()),
            (PathSeg::Key(k), None, Some(DeValue::Table(t))) => t.get(k.as_str()),
            (PathSeg::Index(i), _, Some(DeValue::Array(a))) => a.get(*i),
            _ => None,
        };
        let Some(next) = next else { break };
        best = Some(next.span().start);
        table = None;
        value = Some(next.get_ref());
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> SpecSource {
        SpecSource {
            path: "s.toml".into(),
            text: text.into(),
        }
    }

    /// A token count that does not parse gets the parser's allowed forms wherever its key is
    /// written: at the top of a table, dotted, in an inline table, quoted.
    #[test]
    fn a_bad_token_count_is_named_in_every_form_of_its_key() {
        let tables = "[model]\nbuiltin = \"tiny\"\n[data]\nregime = \"cpt\"\ndomain = \"code\"\ntarget = \"a\"\nsource = \"b\"\n";
        for (top, tail) in [
            ("", "[grid]\ntoken_budget = [\"4k\", \"16kk\"]\n"),
            ("grid.token_budget = \"16kk\"\n", ""),
            (
                "grid = { method = [\"full\"], token_budget = \"16kk\" }\n",
                "",
            ),
            ("", "[grid]\n\"token_budget\" = \"16kk\"\n"),
            (
                "",
                "[grid]\ntoken_budget = [\n  \"4k\", # small\n  \"16kk\",\n]\n",
            ),
        ] {
            let text = format!("name = \"x\"\n{top}{tables}{tail}");
            let e = src(&text).parse().unwrap_err().to_string();
            assert!(
                e.contains("`16kk` is not a token count") && e.contains("\"250M\""),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn locates_nested_values() {
        let s = src("name = \"x\"\n[grid]\nlearning_rate = [1e-4, -2.0]\n");
        let e = SpecError::at(
            &s,
            &Problem::new(
                vec!["grid".into(), "learning_rate".into(), 1.into()],
                "must be > 0",
            ),
        );
        assert_eq!(
            e.to_string(),
            "s.toml:3:24: grid.learning_rate[1]: must be > 0"
        );
    }

    #[test]
    fn falls_back_to_the_longest_prefix() {
        let s = src("[grid]\nrank = 3\n");
        let e = SpecError::at(&s, &Problem::new(vec!["grid".into(), "seeds".into()], "x"));
        assert_eq!(e.position, Some((1, 1)));
    }
}
