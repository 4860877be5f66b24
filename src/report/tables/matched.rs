//! Forgetting at matched learning, finding 2's second view: at each budget, each method's
//! forgetting where its own learning-forgetting frontier reaches the most learning both methods
//! reach, linear between the frontier's configurations, with a seed bootstrap interval. At each
//! method's best configuration LoRA may forget less only because it learns less; here both are
//! compared at the same learning.

use super::Ctx;
use crate::report::findings::fmt_p;
use crate::report::grid::{decimals, Grid};
use crate::report::stats::{bootstrap_estimate, pareto_front, Estimate, SplitMix};
use crate::report::value::Spread;
use crate::report::{TableData, Value};

const REPLICATES: usize = 2000;
const SEED: u64 = 0x6d61_7463_6865_6421;

/// Forgetting of both methods at one learning level of one budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched {
    /// The learning level, in the learning metric's units: the most learning both methods'
    /// frontiers reach.
    pub learning: f64,
    /// Full fine-tuning's forgetting there, along its frontier.
    pub full: f64,
    /// LoRA's forgetting there, along its frontier.
    pub lora: f64,
    /// full - LoRA (positive: LoRA forgets less at the same learning) with a seed bootstrap
    /// interval; None with fewer than 2 seeds of a configuration.
    pub estimate: Option<Estimate>,
    /// Seeds of the configuration with fewest.
    pub seeds: usize,
    /// Bootstrap resamples whose frontiers shared no learning level (left out of the interval,
    /// which is then conditional on the frontiers meeting; above 5% there is no interval).
    pub unmatched: usize,
}

/// Each configuration of `method` at budget `b`: its seeds' (learning, forgetting), learning
/// signed so that more is better.
fn configs(grid: &Grid, method: &str, b: u64) -> Vec<Vec<(f64, f64)>> {
    let sign = if grid.higher { 1.0 } else { -1.0 };
    grid.cells
        .iter()
        .filter(|((k, bb), c)| {
            *bb == b && k.method == method && !c.learn.is_empty() && c.learn.len() == c.forget.len()
        })
        .map(|(_, c)| {
            c.learn
                .iter()
                .zip(&c.forget)
                .map(|(l, f)| (sign * l, *f))
                .collect()
        })
        .collect()
}

/// Each configuration's mean (learning, forgetting) over its seeds, or over a resample of them
/// (the same seeds for both: a run's learning and forgetting go together).
fn means(configs: &[Vec<(f64, f64)>], rng: Option<&mut SplitMix>) -> Vec<(f64, f64)> {
    let mut rng = rng;
    configs
        .iter()
        .map(|seeds| {
            let n = seeds.len();
            let (mut l, mut f) = (0.0, 0.0);
            for i in 0..n {
                let j = match rng.as_deref_mut() {
                    Some(r) => r.below(n),
                    None => i,
                };
                l += seeds[j].0;
                f += seeds[j].1;
            }
            (l / n as f64, f / n as f64)
        })
        .collect()
}

/// Forgetting along the frontier of `points` at learning `at`: linear between the frontier
/// points on either side; None outside the frontier's learning range.
pub fn along_frontier(points: &[(f64, f64)], at: f64) -> Option<f64> {
    let mut front: Vec<(f64, f64)> = pareto_front(points)
        .into_iter()
        .map(|i| points[i])
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (first, last) = (*front.first()?, *front.last()?);
    if at < first.0 || at > last.0 {
        return None;
    }
    for w in front.windows(2) {
        let (a, b) = (w[0], w[1]);
        if at <= b.0 {
            let t = if b.0 > a.0 {
                (at - a.0) / (b.0 - a.0)
            } else {
                1.0
            };
            return Some(a.1 + t * (b.1 - a.1));
        }
    }
    Some(last.1)
}

/// (learning, full's forgetting, LoRA's) at the most learning both frontiers reach.
fn at_matched(full: &[(f64, f64)], lora: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let most = |p: &[(f64, f64)]| p.iter().map(|x| x.0).fold(f64::NEG_INFINITY, f64::max);
    let at = most(full).min(most(lora));
    Some((at, along_frontier(full, at)?, along_frontier(lora, at)?))
}

/// Forgetting at matched learning at budget `b`; None when a method has no configuration with
/// both metrics there, or the frontiers share no learning level.
pub fn matched_at(grid: &Grid, b: u64) -> Option<Matched> {
    let (full, lora) = (configs(grid, "full", b), configs(grid, "lora", b));
    let (at, f, l) = at_matched(&means(&full, None), &means(&lora, None))?;
    let seeds = full.iter().chain(&lora).map(Vec::len).min().unwrap_or(0);
    let mut unmatched = 0;
    let estimate = (seeds >= 2)
        .then(|| {
            let mut rng = SplitMix(SEED ^ b);
            let replicates: Vec<f64> = (0..REPLICATES)
                .map(|_| {
                    let full = means(&full, Some(&mut rng));
                    let lora = means(&lora, Some(&mut rng));
                    at_matched(&full, &lora).map_or(f64::NAN, |(_, f, l)| f - l)
                })
                .collect();
            unmatched = replicates.iter().filter(|r| r.is_nan()).count();
            (unmatched * 20 <= REPLICATES)
                .then(|| bootstrap_estimate(f - l, &replicates))
                .flatten()
        })
        .flatten();
    Some(Matched {
        learning: if grid.higher { at } else { -at },
        full: f,
        lora: l,
        estimate,
        seeds,
        unmatched,
    })
}

/// Why there is no matched level at budget `b`.
fn why_unmatched(grid: &Grid, b: u64) -> &'static str {
    let (full, lora) = (configs(grid, "full", b), configs(grid, "lora", b));
    let (full, lora) = (means(&full, None), means(&lora, None));
    if full.is_empty() || lora.is_empty() {
        return "needs both methods with learning and forgetting";
    }
    let least = |p: &[(f64, f64)]| p.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
    let most = |p: &[(f64, f64)]| p.iter().map(|x| x.0).fold(f64::NEG_INFINITY, f64::max);
    if least(&full) > most(&lora) {
        "every full configuration learns more than LoRA's best: add lower learning rates for full fine-tuning"
    } else if least(&lora) > most(&full) {
        "every LoRA configuration learns more than full fine-tuning's best"
    } else {
        "the frontiers share no learning level"
    }
}

/// The table of [`matched_at`] at every budget; None without a forgetting metric.
pub fn matched(ctx: &Ctx<'_>) -> Option<TableData> {
    let forget = ctx.forget_name?;
    let grid = ctx.grid;
    let rows = grid
        .budgets
        .iter()
        .map(|&b| {
            let mut row = vec![Value::tokens(b)];
            match matched_at(grid, b) {
                None => row.extend([
                    Value::missing(),
                    Value::missing(),
                    Value::missing(),
                    Value::no_spread(format!("- ({})", why_unmatched(grid, b))),
                ]),
                Some(m) => {
                    let d = decimals(m.learning);
                    let f = decimals(m.full.abs().max(m.lora.abs()));
                    row.push(Value::real(m.learning, format!("{:.d$}", m.learning)));
                    row.push(Value::real(m.full, format!("{:.f$}", m.full)));
                    row.push(Value::real(m.lora, format!("{:.f$}", m.lora)));
                    let unmatched = match m.unmatched {
                        0 => String::new(),
                        k => format!(" ({k} of {REPLICATES} resamples did not meet)"),
                    };
                    let diff = m.full - m.lora;
                    row.push(match m.estimate {
                        Some(e) => {
                            let v = Value::spread(
                                e,
                                format!(
                                    "{:.f$} [{:.f$}, {:.f$}], p = {}{unmatched}",
                                    e.effect,
                                    e.ci_low,
                                    e.ci_high,
                                    fmt_p(e.p)
                                ),
                            );
                            // The count of resamples that did not meet is words.
                            if unmatched.is_empty() {
                                v
                            } else {
                                v.described()
                            }
                        }
                        // A difference with no interval: still the column's mean.
                        None if m.seeds < 2 => Value::spread(
                            Spread {
                                mean: diff,
                                ..Spread::default()
                            },
                            format!("{diff:.f$} (needs 2 seeds for an interval)"),
                        )
                        .described(),
                        None => Value::spread(
                            Spread {
                                mean: diff,
                                ..Spread::default()
                            },
                            format!(
                                "{diff:.f$} (no interval: {} of {REPLICATES} resamples did not meet)",
                                m.unmatched
                            ),
                        )
                        .described(),
                    });
                }
            }
            row
        })
        .collect();
    Some(TableData {
        key: "matched_learning".into(),
        title: format!("Forgetting at matched {}: each method along its own frontier", ctx.learn),
        header: vec![
            "budget".into(),
            format!("matched {}", ctx.learn),
            format!("full's {forget}"),
            format!("LoRA's {forget}"),
            "full - LoRA (> 0: LoRA forgets less)".into(),
        ],
        rows,
        note: Some(format!(
            "matched: the most learning both methods' frontiers reach; each method's {forget} there is linear between its frontier's configurations (means over seeds); 95% interval and p from a seed bootstrap ({REPLICATES} resamples of each configuration's seeds, fixed seed; resamples whose frontiers do not meet are left out and counted, and above 5% of them there is no interval)"
        )),
    })
}
