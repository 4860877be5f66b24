//! Small value types of a sweep spec that accept more than one spelling: token counts (`250M`),
//! learning-rate axes (a list or a log range), the alpha rule (`"2r"`), target-module sets, seeds.

use serde::{Deserialize, Serialize};

use crate::model::config::Module;

/// A count of tokens, written as an integer or a string with a k/M/B/T suffix (`"20k"`, `"1.5B"`),
/// or, for token budgets, a number of epochs over the target data (`"2ep"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenCount {
    /// A plain integer.
    Int(u64),
    /// A string such as `"250M"` or `"4ep"`, with the text as written.
    #[serde(with = "token_string")]
    Text(TokenAmount, String),
}

/// A parsed token amount.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum TokenAmount {
    /// An exact number of tokens.
    Tokens(u64),
    /// A number of passes over the target data.
    Epochs(f64),
}

impl TokenCount {
    /// The amount this value stands for.
    pub fn amount(&self) -> TokenAmount {
        match self {
            TokenCount::Int(n) => TokenAmount::Tokens(*n),
            TokenCount::Text(a, _) => *a,
        }
    }

    /// The value as the spec wrote it (`250M`, `1ep`, `16384`).
    pub fn written(&self) -> String {
        match self {
            TokenCount::Int(n) => n.to_string(),
            TokenCount::Text(_, t) => t.trim().to_string(),
        }
    }
}

/// Parse `"20k"`, `"250M"`, `"1B"`, `"2T"`, `"1_000"`, `"4096"` or `"2ep"`.
pub fn parse_token_amount(text: &str) -> Result<TokenAmount, String> {
    let t = text.trim().replace('_', "");
    let err = || {
        format!("`{text}` is not a token count: write an integer or a number with k, M, B or T (\"250M\"), or epochs (\"2ep\")")
    };
    if let Some(ep) = t.strip_suffix("ep") {
        let e: f64 = ep.trim().parse().map_err(|_| err())?;
        if !(e.is_finite() && e > 0.0) {
            return Err(err());
        }
        return Ok(TokenAmount::Epochs(e));
    }
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('M' | 'm') => (&t[..t.len() - 1], 1e6),
        Some('B' | 'b' | 'G' | 'g') => (&t[..t.len() - 1], 1e9),
        Some('T' | 't') => (&t[..t.len() - 1], 1e12),
        _ => (t.as_str(), 1.0),
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    let n = v * mult;
    if !(n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n < 1e19) {
        return Err(err());
    }
    Ok(TokenAmount::Tokens(n as u64))
}

/// Render a token count compactly (`250M`, `1.5B`, `20k`), the inverse of the parser for round values.
pub fn format_tokens(n: u64) -> String {
    let f = n as f64;
    for (div, suffix) in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")] {
        if f >= div {
            let v = f / div;
            return if (v * 100.0).round() == (v.round() * 100.0) {
                format!("{}{suffix}", v.round())
            } else {
                let s = format!("{v:.2}");
                format!("{}{suffix}", s.trim_end_matches('0').trim_end_matches('.'))
            };
        }
    }
    n.to_string()
}

mod token_string {
    use super::{parse_token_amount, TokenAmount};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &TokenAmount, _: &String, s: S) -> Result<S::Ok, S::Error> {
        match a {
            TokenAmount::Tokens(n) => s.serialize_u64(*n),
            TokenAmount::Epochs(e) => s.serialize_str(&format!("{e}ep")),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(TokenAmount, String), D::Error> {
        let text = String::deserialize(d)?;
        let a = parse_token_amount(&text).map_err(serde::de::Error::custom)?;
        Ok((a, text))
    }
}

/// A learning-rate axis: an explicit list, or `{ log_range = [lo, hi], points = n }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LrAxis {
    /// One learning rate.
    One(f64),
    /// Explicit values.
    List(Vec<f64>),
    /// Log-spaced values from lo to hi inclusive.
    LogRange(LogRange),
}

/// `{ log_range = [lo, hi], points = n }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRange {
    /// The two ends, both included.
    pub log_range: [f64; 2],
    /// How many values, at least 1.
    pub points: usize,
}

impl LrAxis {
    /// The values of the axis, in the order written (a log range ascends).
    pub fn values(&self) -> Vec<f64> {
        match self {
            LrAxis::One(v) => vec![*v],
            LrAxis::List(v) => v.clone(),
            LrAxis::LogRange(r) => log_space(r.log_range[0], r.log_range[1], r.points),
        }
    }
}

/// `n` log-spaced values from `lo` to `hi` inclusive, rounded to 6 significant digits so that ids
/// do not depend on the last bits of a `powf`.
pub fn log_space(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n <= 1 {
        return vec![lo];
    }
    let (a, b) = (lo.ln(), hi.ln());
    (0..n)
        .map(|i| round_sig((a + (b - a) * i as f64 / (n - 1) as f64).exp(), 6))
        .collect()
}

/// Round to `digits` significant digits.
pub fn round_sig(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let p = digits - 1 - x.abs().log10().floor() as i32;
    let s = 10f64.powi(p);
    (x * s).round() / s
}

/// LoRA alpha: a number, or the rule `"2r"` (the paper's: alpha = 2 x rank); `"Nr"` in general.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Alpha {
    /// A fixed alpha.
    Fixed(f64),
    /// A multiple of the rank, written `"2r"`.
    #[serde(with = "alpha_rule")]
    TimesRank(f64),
}

impl Alpha {
    /// Alpha for a given rank.
    pub fn resolve(self, rank: u64) -> f64 {
        match self {
            Alpha::Fixed(a) => a,
            Alpha::TimesRank(k) => k * rank as f64,
        }
    }
}

mod alpha_rule {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(k: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{k}r"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let text = String::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(format!(
                "alpha `{text}`: write a number or a multiple of the rank such as \"2r\""
            ))
        };
        let k = text.trim().strip_suffix('r').ok_or_else(bad)?;
        let k: f64 = if k.is_empty() {
            Ok(1.0)
        } else {
            k.parse().map_err(|_| bad())
        }?;
        if k.is_finite() && k > 0.0 {
            Ok(k)
        } else {
            Err(bad())
        }
    }
}

/// One value or a list of them, for axes that accept both (`rank = 16` or `rank = [16, 256]`).
/// A list is tried first, so `target_modules = ["attention", "mlp"]` is two sets; an explicit
/// set of modules is a nested list (`[["q", "v"]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A list.
    Many(Vec<T>),
    /// A single value.
    One(T),
}

impl<T: Clone> OneOrMany<T> {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A set of target modules as written: a named set (`attention`, `mlp`, `all`) or a list of module
/// names (`["q", "v"]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSetSpec {
    /// `attention`, `mlp`, `all`, or a single module name.
    Named(String),
    /// Explicit module names.
    List(Vec<String>),
}

impl ModuleSetSpec {
    /// The modules of the set, sorted, or the name that is not a module.
    pub fn resolve(&self) -> Result<Vec<Module>, String> {
        let names: Vec<String> = match self {
            ModuleSetSpec::Named(n) => match n.as_str() {
                "attention" | "attn" => return Ok(Module::ATTENTION.to_vec()),
                "mlp" => return Ok(Module::MLP.to_vec()),
                "all" => return Ok(Module::ALL.to_vec()),
                other => vec![other.to_string()],
            },
            ModuleSetSpec::List(v) => v.clone(),
        };
        let mut out = Vec::new();
        for n in &names {
            out.push(Module::parse(n).ok_or_else(|| n.clone())?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// The name a report uses for a module set: `attention`, `mlp`, `all`, or `q+v`.
pub fn module_set_label(modules: &[Module]) -> String {
    if modules == Module::ALL {
        "all".into()
    } else if modules == Module::ATTENTION {
        "attention".into()
    } else if modules == Module::MLP {
        "mlp".into()
    } else {
        modules
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// Seeds: a count (`seeds = 3` means 0, 1, 2) or an explicit list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Seeds {
    /// The first n seeds, from 0.
    Count(u64),
    /// Explicit seeds.
    List(Vec<u64>),
}

impl Default for Seeds {
    fn default() -> Self {
        Seeds::Count(1)
    }
}

impl Seeds {
    /// The seeds as a list.
    pub fn values(&self) -> Vec<u64> {
        match self {
            Seeds::Count(n) => (0..*n).collect(),
            Seeds::List(v) => v.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_parse_with_suffixes() {
        assert_eq!(parse_token_amount("20k"), Ok(TokenAmount::Tokens(20_000)));
        assert_eq!(
            parse_token_amount("250M"),
            Ok(TokenAmount::Tokens(250_000_000))
        );
        assert_eq!(
            parse_token_amount("1B"),
            Ok(TokenAmount::Tokens(1_000_000_000))
        );
        assert_eq!(
            parse_token_amount("0.25B"),
            Ok(TokenAmount::Tokens(250_000_000))
        );
        assert_eq!(parse_token_amount("1_000"), Ok(TokenAmount::Tokens(1000)));
        assert_eq!(parse_token_amount("2ep"), Ok(TokenAmount::Epochs(2.0)));
        assert!(parse_token_amount("lots").is_err());
        assert!(parse_token_amount("1.5").is_err());
        assert!(parse_token_amount("-3k").is_err());
        assert_eq!(format_tokens(250_000_000), "250M");
        assert_eq!(format_tokens(1_500_000_000), "1.5B");
        assert_eq!(format_tokens(20_000), "20k");
        assert_eq!(format_tokens(512), "512");
    }

    #[test]
    fn log_range_includes_both_ends() {
        let v = LrAxis::LogRange(LogRange {
            log_range: [1e-5, 1e-3],
            points: 5,
        })
        .values();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0], 1e-5);
        assert_eq!(v[4], 1e-3);
        assert!((v[2] - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn alpha_rule_and_module_sets() {
        let a: Alpha = serde_json::from_str("\"2r\"").unwrap();
        assert_eq!(a.resolve(16), 32.0);
        let a: Alpha = serde_json::from_str("8").unwrap();
        assert_eq!(a.resolve(16), 8.0);
        assert!(serde_json::from_str::<Alpha>("\"two\"").is_err());
        let m = ModuleSetSpec::List(vec!["v".into(), "q_proj".into()])
            .resolve()
            .unwrap();
        assert_eq!(m, vec![Module::Q, Module::V]);
        assert_eq!(module_set_label(&m), "q+v");
        assert_eq!(
            ModuleSetSpec::Named("mlp".into()).resolve().unwrap().len(),
            3
        );
        assert_eq!(
            ModuleSetSpec::Named("ffn".into()).resolve(),
            Err("ffn".into())
        );
        assert_eq!(Seeds::Count(3).values(), vec![0, 1, 2]);
    }
}
