//! A table's cell: the text a reader sees and, for programs, the numbers behind it. The
//! terminal, Markdown and HTML show the text; report.json and tables/*.csv carry the numbers
//! ([`csv_columns`] says how a column of them becomes CSV columns).

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::stats::Estimate;
use super::Interval;

/// A mean (or an effect) with its 95% interval, and what else its test gave.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    /// The mean over seeds, or the effect a test estimated.
    pub mean: f64,
    /// The interval's lower end, when there is one.
    pub ci_low: Option<f64>,
    /// Its upper end.
    pub ci_high: Option<f64>,
    /// Seeds behind it.
    pub n: Option<usize>,
    /// The test's two-sided p-value.
    pub p: Option<f64>,
    /// That p-value after Holm's correction.
    pub p_holm: Option<f64>,
}

/// Equal when every field holds the same bits: a spread that could not be had (a NaN mean,
/// [`Value::no_spread`]) equals itself, so that the same report compares equal.
impl PartialEq for Spread {
    fn eq(&self, o: &Spread) -> bool {
        let same = |a: Option<f64>, b: Option<f64>| a.map(f64::to_bits) == b.map(f64::to_bits);
        same(Some(self.mean), Some(o.mean))
            && same(self.ci_low, o.ci_low)
            && same(self.ci_high, o.ci_high)
            && self.n == o.n
            && same(self.p, o.p)
            && same(self.p_holm, o.p_holm)
    }
}

impl From<Interval> for Spread {
    fn from(i: Interval) -> Spread {
        Spread {
            mean: i.mean,
            ci_low: i.ci_low,
            ci_high: i.ci_high,
            n: Some(i.n),
            ..Spread::default()
        }
    }
}

impl From<Estimate> for Spread {
    fn from(e: Estimate) -> Spread {
        Spread {
            mean: e.effect,
            ci_low: Some(e.ci_low),
            ci_high: Some(e.ci_high),
            p: Some(e.p),
            ..Spread::default()
        }
    }
}

/// The number behind a cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// None: the cell is words.
    Words,
    /// Nothing measured ("-"): null in JSON, empty in CSV.
    Missing,
    /// A count: runs, seeds, tokens.
    Count(u64),
    /// One number: a learning rate, a ratio, a fraction.
    Real(f64),
    /// A mean or an effect with its interval.
    Spread(Spread),
}

/// One cell of a [`super::TableData`].
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// What the reader sees.
    pub shown: String,
    /// The number behind it.
    pub number: Number,
    /// Whether the words say more than the number (prose around a test's result): programs
    /// then get both.
    pub with_words: bool,
}

impl Value {
    /// Words only.
    pub fn words(s: impl Into<String>) -> Value {
        Value {
            shown: s.into(),
            number: Number::Words,
            with_words: false,
        }
    }

    /// Nothing to show: "-".
    pub fn missing() -> Value {
        Value {
            shown: "-".into(),
            number: Number::Missing,
            with_words: false,
        }
    }

    /// A count, shown as `shown`.
    pub fn count(n: u64, shown: impl Into<String>) -> Value {
        Value {
            shown: shown.into(),
            number: Number::Count(n),
            with_words: false,
        }
    }

    /// A count, shown as itself.
    pub fn int(n: usize) -> Value {
        Value::count(n as u64, n.to_string())
    }

    /// A budget in tokens, shown as 16k.
    pub fn tokens(n: u64) -> Value {
        Value::count(n, crate::spec::values::format_tokens(n))
    }

    /// A learning rate, shown as 1e-4.
    pub fn lr(lr: f64) -> Value {
        Value::real(lr, super::grid::fmt_lr(lr))
    }

    /// One number, shown as `shown`.
    pub fn real(x: f64, shown: impl Into<String>) -> Value {
        Value {
            shown: shown.into(),
            number: Number::Real(x),
            with_words: false,
        }
    }

    /// A mean or effect with its interval, shown as `shown`.
    pub fn spread(s: impl Into<Spread>, shown: impl Into<String>) -> Value {
        Value {
            shown: shown.into(),
            number: Number::Spread(s.into()),
            with_words: false,
        }
    }

    /// A mean or effect that could not be had, and why: a column of spreads keeps its
    /// numeric columns (empty here) and the words go beside them.
    pub fn no_spread(why: impl Into<String>) -> Value {
        Value {
            shown: why.into(),
            number: Number::Spread(Spread {
                mean: f64::NAN,
                ..Spread::default()
            }),
            with_words: true,
        }
    }

    /// Words that say more than the numbers they hold.
    pub fn described(self) -> Value {
        Value {
            with_words: true,
            ..self
        }
    }

    /// What the reader sees.
    pub fn as_str(&self) -> &str {
        &self.shown
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::words(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::words(s)
    }
}

impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.shown == *other
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// A finite number, else nothing (JSON has no NaN).
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// In JSON: words as a string, nothing as null, a count or a number as a number, a spread as
/// `{"mean", "ci_low", "ci_high", "n", "p", "p_holm"}` (those it has), with `"text"` when the
/// words say more.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.number {
            Number::Words => s.serialize_str(&self.shown),
            Number::Missing => s.serialize_none(),
            Number::Count(n) if !self.with_words => s.serialize_u64(n),
            Number::Real(x) if !self.with_words => s.serialize_some(&finite(x)),
            Number::Count(n) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("value", &n)?;
                m.serialize_entry("text", &self.shown)?;
                m.end()
            }
            Number::Real(x) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("value", &finite(x))?;
                m.serialize_entry("text", &self.shown)?;
                m.end()
            }
            Number::Spread(v) => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("mean", &finite(v.mean))?;
                for (k, x) in [
                    ("ci_low", v.ci_low),
                    ("ci_high", v.ci_high),
                    ("p", v.p),
                    ("p_holm", v.p_holm),
                ] {
                    if let Some(x) = x {
                        m.serialize_entry(k, &finite(x))?;
                    }
                }
                if let Some(n) = v.n {
                    m.serialize_entry("n", &n)?;
                }
                if self.with_words {
                    m.serialize_entry("text", &self.shown)?;
                }
                m.end()
            }
        }
    }
}

/// A column header as a CSV column name: lower case, words joined by `_`, what follows a ±
/// left out ("best lr" -> `best_lr`, "slope b ± 95%" -> `slope_b`, "full's" -> `fulls`,
/// "R²" -> `r2`, "#" -> `number`).
pub fn column_name(header: &str) -> String {
    let mut out = String::new();
    let words = header.split('±').next().unwrap_or_default();
    for c in words.replace('²', "2").chars().flat_map(char::to_lowercase) {
        if c == '\'' {
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '@' {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_').to_string();
    match (out.is_empty(), header.trim()) {
        (true, "#") => "number".into(),
        (true, _) => "column".into(),
        (false, _) => out,
    }
}

/// The CSV columns of one table column (its `header`, its `cells`). Numbers and words never
/// share a column: a column with a spread in it becomes NAME_mean, NAME_ci_low, NAME_ci_high
/// and those of NAME_n, NAME_p, NAME_p_holm any cell has (a lone number there is a mean with no
/// interval); one with other numbers stays NAME, plain; either gets NAME_text for the words of
/// its cells that are words or say more than their numbers. A column of words alone is NAME.
/// Returns the column names and, per cell, its fields.
pub fn csv_columns(header: &str, cells: &[&Value]) -> (Vec<String>, Vec<Vec<String>>) {
    let name = column_name(header);
    let is_words = |c: &Value| c.with_words || c.number == Number::Words;
    let num = |x: Option<f64>| {
        x.and_then(finite)
            .map(|x| x.to_string())
            .unwrap_or_default()
    };
    let words_of = |c: &Value| {
        if is_words(c) {
            c.shown.clone()
        } else {
            String::new()
        }
    };
    let any_spread = cells.iter().any(|c| matches!(c.number, Number::Spread(_)));
    let any_number = cells
        .iter()
        .any(|c| matches!(c.number, Number::Count(_) | Number::Real(_)));
    let words = cells.iter().any(|c| is_words(c));
    if !any_spread && !any_number {
        let rows = cells.iter().map(|c| vec![words_of(c)]).collect();
        return (vec![name], rows);
    }
    let text = format!("{name}_text");
    if !any_spread {
        let mut names = vec![name];
        names.extend(words.then_some(text));
        let rows = cells
            .iter()
            .map(|c| {
                let mut row = vec![match c.number {
                    Number::Count(n) => n.to_string(),
                    Number::Real(x) => num(Some(x)),
                    _ => String::new(),
                }];
                if words {
                    row.push(words_of(c));
                }
                row
            })
            .collect();
        return (names, rows);
    }
    let spreads: Vec<Option<Spread>> = cells
        .iter()
        .map(|c| {
            let mean = match c.number {
                Number::Spread(s) => return Some(s),
                Number::Count(n) => n as f64,
                Number::Real(x) => x,
                Number::Words | Number::Missing => return None,
            };
            Some(Spread {
                mean,
                ..Spread::default()
            })
        })
        .collect();
    let has = |f: &dyn Fn(&Spread) -> bool| spreads.iter().flatten().any(f);
    let (has_n, has_p, has_holm) = (
        has(&|s| s.n.is_some()),
        has(&|s| s.p.is_some()),
        has(&|s| s.p_holm.is_some()),
    );
    let mut names: Vec<String> = ["mean", "ci_low", "ci_high"]
        .map(|f| format!("{name}_{f}"))
        .into();
    for (on, f) in [(has_n, "n"), (has_p, "p"), (has_holm, "p_holm")] {
        if on {
            names.push(format!("{name}_{f}"));
        }
    }
    names.extend(words.then_some(text));
    let rows = cells
        .iter()
        .zip(&spreads)
        .map(|(c, s)| {
            let s = s.unwrap_or(Spread {
                mean: f64::NAN,
                ..Spread::default()
            });
            let mut row = vec![num(Some(s.mean)), num(s.ci_low), num(s.ci_high)];
            if has_n {
                row.push(s.n.map(|n| n.to_string()).unwrap_or_default());
            }
            if has_p {
                row.push(num(s.p));
            }
            if has_holm {
                row.push(num(s.p_holm));
            }
            if words {
                row.push(words_of(c));
            }
            row
        })
        .collect();
    (names, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(mean: f64, lo: f64, hi: f64, n: usize) -> Value {
        let i = Interval {
            mean,
            ci_low: Some(lo),
            ci_high: Some(hi),
            n,
        };
        Value::spread(i, format!("{mean} ± {}", hi - mean))
    }

    #[test]
    fn json_carries_the_numbers_not_the_text() {
        let cells = [
            Value::words("full"),
            Value::tokens(16_384),
            Value::lr(1e-4),
            interval(2.5, 2.0, 3.0, 2),
            Value::missing(),
            Value::real(f64::NAN, "nan"),
        ];
        assert_eq!(
            serde_json::to_value(cells).unwrap(),
            serde_json::json!([
                "full",
                16384,
                1e-4,
                {"mean": 2.5, "ci_low": 2.0, "ci_high": 3.0, "n": 2},
                null,
                null
            ])
        );
        let test = Value::spread(
            Spread {
                mean: 0.3,
                ci_low: Some(0.1),
                ci_high: Some(0.5),
                p: Some(0.01),
                p_holm: Some(0.04),
                n: None,
            },
            "effect 0.3, p = 0.01",
        )
        .described();
        assert_eq!(
            serde_json::to_value(test).unwrap(),
            serde_json::json!({"mean": 0.3, "ci_low": 0.1, "ci_high": 0.5, "p": 0.01,
                "p_holm": 0.04, "text": "effect 0.3, p = 0.01"})
        );
    }

    #[test]
    fn a_column_of_intervals_becomes_numeric_columns() {
        let (a, b, m) = (
            interval(2.5, 2.0, 3.0, 2),
            interval(1.25, 1.0, 1.5, 3),
            Value::missing(),
        );
        let (names, rows) = csv_columns("target_loss", &[&a, &b, &m]);
        assert_eq!(
            names,
            [
                "target_loss_mean",
                "target_loss_ci_low",
                "target_loss_ci_high",
                "target_loss_n"
            ]
        );
        assert_eq!(rows[0], ["2.5", "2", "3", "2"]);
        assert_eq!(rows[1], ["1.25", "1", "1.5", "3"]);
        assert_eq!(rows[2], ["", "", "", ""]);
        // Words in the column (why a cell has no interval) keep a column of their own.
        let why = Value::words("no interval (2 seeds; 5 needed)");
        let (names, rows) = csv_columns("95% seed-bootstrap interval", &[&a, &why]);
        assert_eq!(names[0], "95_seed_bootstrap_interval_mean");
        assert_eq!(names.last().unwrap(), "95_seed_bootstrap_interval_text");
        assert_eq!(rows[1].last().unwrap(), "no interval (2 seeds; 5 needed)");
        assert_eq!(rows[1][0], "");
        // An interval's own text is not words: its row's text is empty.
        assert_eq!(rows[0].last().unwrap(), "");
    }

    #[test]
    fn other_columns_stay_one_with_plain_numbers() {
        let (a, b) = (Value::tokens(16_000), Value::lr(3e-4));
        assert_eq!(
            csv_columns("budget", &[&a]),
            (vec!["budget".into()], vec![vec!["16000".into()]])
        );
        assert_eq!(
            csv_columns("best lr", &[&b]).1,
            vec![vec!["0.0003".to_string()]]
        );
        assert_eq!(column_name("#"), "number");
        assert_eq!(
            column_name("near-best width (decades)"),
            "near_best_width_decades"
        );
        assert_eq!(column_name("humaneval_pass@1"), "humaneval_pass@1");
        assert_eq!(column_name("slope b ± 95%"), "slope_b");
        assert_eq!(
            column_name("1: full's target_loss advantage"),
            "1_fulls_target_loss_advantage"
        );
        assert_eq!(column_name("R²"), "r2");
        // A number that says less than its words keeps them apart; words alone are words.
        let (n, w) = (
            Value::real(-0.25, "-0.25 (needs 2 seeds)").described(),
            Value::words("- (no matched level)"),
        );
        let (names, rows) = csv_columns("full - LoRA", &[&n, &w]);
        assert_eq!(names, ["full_lora", "full_lora_text"]);
        assert_eq!(
            rows,
            [
                ["-0.25", "-0.25 (needs 2 seeds)"],
                ["", "- (no matched level)"]
            ]
        );
        // Words alone are one column of words.
        assert_eq!(
            csv_columns("method", &[&Value::words("full"), &Value::missing()]),
            (
                vec!["method".to_string()],
                vec![vec!["full".to_string()], vec![String::new()]]
            )
        );
    }
}
