//! The paper's findings, each decided by a stated test on the sweep's seeds.
//!
//! Every finding that can be tested gets an effect signed so that a positive value is the paper's
//! direction, a 95% interval and a two-sided p-value. The p-values of the findings tested are
//! corrected together (Holm); a finding is "supported" when its corrected p is below 0.05 and the
//! effect has the paper's sign, "contradicted" when it is below 0.05 with the other sign, and
//! otherwise "not enough evidence", with the seeds per configuration that would separate the
//! observed effect from none (80% power at the corrected level).

use super::grid::{fmt_lr, metric_at, Cell, Grid, SeriesKey};
use super::stats::{
    bootstrap_estimate, holm, log_fit, ols, seeds_needed, summarize, welch_estimate, Estimate,
    SplitMix,
};
use super::value::Spread;
use super::{Finding, ReportInput, TableData, TestResult, Value, Verdict};
use crate::spec::values::format_tokens;

/// The level every finding is tested at, after Holm's correction.
pub const ALPHA: f64 = 0.05;

/// Bootstrap replicates for the learning-rate ratio, and their fixed seed.
const BOOTSTRAP_REPLICATES: usize = 2000;
const BOOTSTRAP_SEED: u64 = 0x5eed_1e55;

/// Seeds of every configuration the bootstrap needs: resampling fewer gives a handful of
/// distinct means and understates the variance.
pub const MIN_BOOTSTRAP_SEEDS: usize = 5;

/// The equivalence margin of finding 3, as a fraction of the spread (standard deviation) of
/// forgetting over the sweep's runs.
pub const FRONTIER_MARGIN: f64 = 0.5;

/// One finding before the correction: its claim, its evidence and, where it could be tested,
/// the test.
struct Tested {
    number: u8,
    claim: &'static str,
    evidence: String,
    test: Option<Pending>,
    /// Why there is no test (when `test` is None): decides "not enough data" or "evidence".
    missing: Missing,
}

enum Missing {
    /// The sweep lacks what the comparison needs (a method, a metric, budgets).
    Data,
    /// The data is there, but not the seeds to estimate the noise.
    Seeds,
}

struct Pending {
    name: &'static str,
    unit: String,
    /// What the effect measures.
    effect: String,
    estimate: Estimate,
    /// Seeds per configuration behind the test (the smallest group's).
    seeds: usize,
    /// For an equivalence test: the margin; the p-value is then that of "inside" (|effect| <
    /// margin) or of "outside", whichever the estimate is on, and "supported" means inside.
    margin: Option<f64>,
}

impl Pending {
    /// The p-value that decides the verdict, and whether a significant result is the paper's
    /// direction.
    fn p_and_direction(&self) -> (f64, bool) {
        let e = &self.estimate;
        match self.margin {
            None => (e.p, e.effect > 0.0),
            Some(m) => {
                let t = |x: f64| -> f64 {
                    statrs::distribution::StudentsT::new(0.0, 1.0, e.df)
                        .map(|d| statrs::distribution::ContinuousCDF::cdf(&d, x))
                        .unwrap_or(f64::NAN)
                };
                if e.effect.abs() < m {
                    // Two one-sided tests: below +m and above -m.
                    let p = (1.0 - t((e.effect + m) / e.se)).max(t((e.effect - m) / e.se));
                    (p, true)
                } else {
                    // Outside, on whichever side the estimate fell: two-sided, since the side
                    // was chosen by looking.
                    (
                        (2.0 * (1.0 - t((e.effect.abs() - m) / e.se))).min(1.0),
                        false,
                    )
                }
            }
        }
    }

    /// The distance the seeds must resolve: the effect from zero, or from the margin.
    fn distance(&self) -> f64 {
        match self.margin {
            None => self.estimate.effect,
            Some(m) => m - self.estimate.effect.abs(),
        }
    }
}

/// Findings 1-6, each decided by its test.
pub fn findings(grid: &Grid, input: &ReportInput, forget_name: Option<&str>) -> Vec<Finding> {
    let Some(top) = grid.top() else {
        return not_enough("no results yet");
    };
    let tested = vec![
        learns_less(grid, top),
        forgets_less(grid, top, forget_name),
        one_frontier(grid, top, forget_name),
        high_rank(grid, input, top),
        lr_ratio(grid, top),
        data_scaling(grid),
    ];
    decide(tested)
}

/// Holm's correction over the findings tested, then each verdict.
fn decide(tested: Vec<Tested>) -> Vec<Finding> {
    let ps: Vec<f64> = tested
        .iter()
        .filter_map(|t| t.test.as_ref().map(|p| p.p_and_direction().0))
        .collect();
    let adjusted = holm(&ps);
    let m = ps.len().max(1) as f64;
    let mut adjusted = adjusted.into_iter();
    tested
        .into_iter()
        .map(|t| {
            let Some(p) = t.test else {
                return Finding {
                    number: t.number,
                    claim: t.claim.into(),
                    verdict: match t.missing {
                        Missing::Data => Verdict::NotEnoughData,
                        Missing::Seeds => Verdict::NotEnoughEvidence,
                    },
                    evidence: t.evidence,
                    test: None,
                };
            };
            let (raw, paper) = p.p_and_direction();
            let p_holm = adjusted.next().unwrap_or(1.0);
            let verdict = verdict_of(p_holm, paper);
            let needed = if verdict == Verdict::NotEnoughEvidence {
                seeds_needed(p.seeds, p.estimate.se, p.distance(), ALPHA / m)
            } else {
                None
            };
            let e = &p.estimate;
            let mut evidence = format!(
                "{}; {}: {:.4} [{:.4}, {:.4}], p = {}, Holm p = {}",
                t.evidence,
                p.name,
                e.effect,
                e.ci_low,
                e.ci_high,
                fmt_p(raw),
                fmt_p(p_holm)
            );
            if let Some(m) = p.margin {
                evidence.push_str(&format!(" (equivalence margin ±{m:.4})"));
            }
            match (verdict, needed) {
                (Verdict::NotEnoughEvidence, Some(n)) => evidence.push_str(&format!(
                    "; about {n} seeds per configuration would decide it (this sweep: {})",
                    p.seeds
                )),
                (Verdict::NotEnoughEvidence, None) => {
                    evidence.push_str("; no seed count would decide it at this effect")
                }
                _ => {}
            }
            Finding {
                number: t.number,
                claim: t.claim.into(),
                verdict,
                evidence,
                test: Some(TestResult {
                    name: p.name.into(),
                    unit: p.unit,
                    effect: p.effect,
                    estimate: *e,
                    p: raw,
                    p_holm,
                    equivalence_margin: p.margin,
                    seeds: p.seeds,
                    seeds_needed: needed,
                }),
            }
        })
        .collect()
}

/// The verdict of a test whose corrected p-value is `p_holm` and whose estimate lies in the
/// paper's direction (or not).
pub fn verdict_of(p_holm: f64, paper_direction: bool) -> Verdict {
    match (p_holm < ALPHA, paper_direction) {
        (true, true) => Verdict::Supported,
        (true, false) => Verdict::Contradicted,
        (false, _) => Verdict::NotEnoughEvidence,
    }
}

/// A p-value for prose.
pub fn fmt_p(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// No test: the sweep lacks data.
fn no_data(number: u8, claim: &'static str, why: impl Into<String>) -> Tested {
    Tested {
        number,
        claim,
        evidence: why.into(),
        test: None,
        missing: Missing::Data,
    }
}

/// A Welch comparison of two groups of seeds, or the reason there is none.
fn welch_or_why(
    number: u8,
    claim: &'static str,
    evidence: String,
    (a, b): (&[f64], &[f64]),
    effect: String,
    unit: String,
) -> Tested {
    let seeds = a.len().min(b.len());
    match welch_estimate(a, b) {
        Some(estimate) => Tested {
            number,
            claim,
            evidence,
            test: Some(Pending {
                name: "Welch's t-test",
                unit,
                effect,
                estimate,
                seeds,
                margin: None,
            }),
            missing: Missing::Seeds,
        },
        None => Tested {
            number,
            claim,
            evidence: format!(
                "{evidence}; no test: {}",
                if seeds < 2 {
                    "needs at least 2 seeds of each configuration"
                } else {
                    "no variance between seeds"
                }
            ),
            test: None,
            missing: Missing::Seeds,
        },
    }
}

/// The best full and the best LoRA configuration at a budget.
fn best_pair(grid: &Grid, b: u64) -> Option<((SeriesKey, Cell), (SeriesKey, Cell))> {
    Some((
        grid.best_in(&|k| k.method == "full", b)?,
        grid.best_in(&|k| k.method == "lora", b)?,
    ))
}

/// Values signed so that larger is better under the learning metric.
fn oriented(grid: &Grid, v: &[f64]) -> Vec<f64> {
    let s = if grid.higher { 1.0 } else { -1.0 };
    v.iter().map(|x| s * x).collect()
}

fn mean(v: &[f64]) -> f64 {
    summarize(v).map(|s| s.mean).unwrap_or(f64::NAN)
}

const LEARNS_LESS: &str =
    "LoRA learns less: at equal tokens, full fine-tuning reaches a better target metric";

fn learns_less(grid: &Grid, top: u64) -> Tested {
    let Some(((kf, cf), (kl, cl))) = best_pair(grid, top) else {
        return no_data(1, LEARNS_LESS, "needs both methods at the same budget");
    };
    let learn = &grid.learn;
    let evidence = format!(
        "at {} tokens, {learn}: best full ({}) {:.4} vs best LoRA ({}) {:.4}",
        format_tokens(top),
        kf.describe(),
        mean(&cf.learn),
        kl.describe(),
        mean(&cl.learn)
    );
    welch_or_why(
        1,
        LEARNS_LESS,
        evidence,
        (&oriented(grid, &cf.learn), &oriented(grid, &cl.learn)),
        format!(
            "how much better best full's {learn} is than best LoRA's ({})",
            if grid.higher {
                "full - LoRA"
            } else {
                "LoRA - full"
            }
        ),
        "seeds of each method's best configuration".into(),
    )
}

const FORGETS_LESS: &str = "LoRA forgets less: the source-domain metric drops less";

fn forgets_less(grid: &Grid, top: u64, forget_name: Option<&str>) -> Tested {
    let Some(name) = forget_name else {
        return no_data(2, FORGETS_LESS, "needs a source-domain metric");
    };
    let Some(((kf, cf), (kl, cl))) = best_pair(grid, top) else {
        return no_data(2, FORGETS_LESS, "needs both methods at the same budget");
    };
    if cf.forget.is_empty() || cl.forget.is_empty() {
        return no_data(
            2,
            FORGETS_LESS,
            "needs a source-domain metric for both methods",
        );
    }
    let evidence = format!(
        "{name} at {} tokens, each method's best configuration: full ({}) {:.4} vs LoRA ({}) {:.4}",
        format_tokens(top),
        kf.describe(),
        mean(&cf.forget),
        kl.describe(),
        mean(&cl.forget)
    );
    welch_or_why(
        2,
        FORGETS_LESS,
        evidence,
        (&cf.forget, &cl.forget),
        format!("full's {name} minus LoRA's"),
        "seeds of each method's best configuration".into(),
    )
}

const ONE_FRONTIER: &str = "Both methods lie on one learning-forgetting frontier";

/// Forgetting regressed on learning and a LoRA indicator over every run at the top budget: the
/// indicator's coefficient is LoRA's extra forgetting at matched learning, and the finding holds
/// when it is shown to lie within the equivalence margin (two one-sided tests). A straight line
/// through a curved frontier, and noise in the learning metric (which flattens b), can move c
/// when the methods learn different amounts: the report states the model it fitted. Needs 2
/// seeds of every configuration, so that seed noise, not only the lack of fit across learning
/// rates, is in the residual.
fn one_frontier(grid: &Grid, top: u64, forget_name: Option<&str>) -> Tested {
    let Some(name) = forget_name else {
        return no_data(3, ONE_FRONTIER, "needs a source-domain metric");
    };
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut seeds = std::collections::BTreeMap::<&str, usize>::new();
    for ((k, b), c) in &grid.cells {
        if *b != top || c.forget.len() != c.learn.len() {
            continue;
        }
        let lora = if k.method == "lora" { 1.0 } else { 0.0 };
        for (l, f) in oriented(grid, &c.learn).iter().zip(&c.forget) {
            x.push(vec![1.0, *l, lora]);
            y.push(*f);
        }
        let s = seeds
            .entry(if lora > 0.0 { "lora" } else { "full" })
            .or_default();
        *s = (*s).max(c.learn.len());
    }
    let runs = |m: f64| x.iter().filter(|r| r[2] == m).count();
    if runs(0.0) < 2 || runs(1.0) < 2 {
        return no_data(
            3,
            ONE_FRONTIER,
            format!("needs learning and {name} of at least 2 runs of each method"),
        );
    }
    let fewest = grid
        .cells
        .iter()
        .filter(|((_, b), _)| *b == top)
        .map(|(_, c)| c.learn.len())
        .min()
        .unwrap_or(0);
    if fewest < 2 {
        return Tested {
            number: 3,
            claim: ONE_FRONTIER,
            evidence: format!(
                "{} runs at {} tokens; no test: needs at least 2 seeds of each configuration",
                y.len(),
                format_tokens(top)
            ),
            test: None,
            missing: Missing::Seeds,
        };
    }
    let evidence = format!(
        "{name} ~ a + b {} + c lora over {} runs at {} tokens",
        grid.learn,
        y.len(),
        format_tokens(top)
    );
    let spread = summarize(&y).and_then(|s| s.sd).unwrap_or(0.0);
    let fit = ols(&x, &y).and_then(|(b, se, df)| Estimate::from_t(b[2], se[2], df));
    match fit {
        Some(estimate) if spread > 0.0 => Tested {
            number: 3,
            claim: ONE_FRONTIER,
            evidence,
            test: Some(Pending {
                name: "equivalence of LoRA's offset c (two one-sided t-tests)",
                unit: "runs at the top budget (configurations x seeds)".into(),
                effect: format!("LoRA's extra {name} at matched {}", grid.learn),
                estimate,
                seeds: seeds.values().copied().min().unwrap_or(0),
                margin: Some(FRONTIER_MARGIN * spread),
            }),
            missing: Missing::Seeds,
        },
        _ => Tested {
            number: 3,
            claim: ONE_FRONTIER,
            evidence: format!("{evidence}; no test: the fit leaves no residual variance"),
            test: None,
            missing: Missing::Seeds,
        },
    }
}

const HIGH_RANK: &str = "Full fine-tuning's weight change is high rank; LoRA's is at most r";

/// Finding 4 over the seeds of each method's best configuration (the unit the other findings
/// replicate over), not over every run: runs at other learning rates, ranks or modules are not
/// replicates of one another.
fn high_rank(grid: &Grid, input: &ReportInput, top: u64) -> Tested {
    let Some(((kf, cf), (kl, cl))) = best_pair(grid, top) else {
        return no_data(4, HIGH_RANK, "needs both methods at the same budget");
    };
    let of = |ids: &[String], metric: &str| -> Vec<f64> {
        input
            .runs
            .iter()
            .filter(|r| ids.contains(&r.id))
            .filter_map(|r| metric_at(r, metric, top))
            .collect()
    };
    let (f, l) = (of(&cf.ids, "spectral_rank"), of(&cl.ids, "spectral_rank"));
    if f.is_empty() || l.is_empty() {
        return no_data(
            4,
            HIGH_RANK,
            "no run of each method's best configuration measured spectral_rank",
        );
    }
    let random = summarize(&of(&cf.ids, "spectral_rank_random"))
        .map(|s| format!(", a Gaussian matrix of the same shapes {:.1}", s.mean))
        .unwrap_or_default();
    let evidence = format!(
        "rank for 90% of the variance at {} tokens: best full ({}) {:.1}, best LoRA ({}) {:.1}{random}",
        format_tokens(top),
        kf.describe(),
        mean(&f),
        kl.describe(),
        mean(&l)
    );
    welch_or_why(
        4,
        HIGH_RANK,
        evidence,
        (&f, &l),
        "full's spectral rank minus LoRA's".into(),
        "seeds of each method's best configuration".into(),
    )
}

const LR_RATIO: &str = "LoRA's best learning rate is higher than full fine-tuning's";

/// log10 of the ratio of the best learning rates (the best LoRA configuration's group against
/// full fine-tuning), with a seed bootstrap: every configuration's seeds resampled, both best
/// learning rates chosen again.
fn lr_ratio(grid: &Grid, top: u64) -> Tested {
    let Some(((_, _), (kl, _))) = best_pair(grid, top) else {
        return no_data(5, LR_RATIO, "needs an LR sweep of both methods");
    };
    let group = kl.group();
    let all = |_: &SeriesKey, c: &Cell| c.learn.clone();
    let (Some(f), Some(l)) = (
        grid.best_lr_by("full", top, &all),
        grid.best_lr_by(&group, top, &all),
    ) else {
        return no_data(5, LR_RATIO, "needs an LR sweep of both methods");
    };
    let lrs = |g: &str| {
        grid.cells
            .keys()
            .filter(|(k, b)| *b == top && k.group() == g)
            .count()
    };
    let mut evidence = format!(
        "best lr at {} tokens: full {}, {group} {} ({:.1}x)",
        format_tokens(top),
        fmt_lr(f),
        fmt_lr(l),
        l / f
    );
    for other in grid
        .cells
        .keys()
        .filter(|(k, b)| *b == top && k.method == "lora")
        .map(|(k, _)| k.group())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if other != group {
            if let Some(o) = grid.best_lr_by(&other, top, &all) {
                evidence.push_str(&format!(", {other} {} ({:.1}x)", fmt_lr(o), o / f));
            }
        }
    }
    if lrs("full") < 2 || lrs(&group) < 2 {
        return no_data(
            5,
            LR_RATIO,
            format!("{evidence}; needs at least 2 learning rates of each"),
        );
    }
    // A best learning rate at the end of its grid may not be the best: the grid must bracket it.
    let edge = |g: &str, lr: f64| {
        let lrs: Vec<f64> = grid
            .cells
            .keys()
            .filter(|(k, b)| *b == top && k.group() == g)
            .map(|(k, _)| k.lr())
            .collect();
        let lo = lrs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = lrs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        lr <= lo || lr >= hi
    };
    if edge("full", f) || edge(&group, l) {
        return no_data(
            5,
            LR_RATIO,
            format!(
                "{evidence}; a best learning rate is at the end of its grid, so the true best may lie beyond it: extend the grid"
            ),
        );
    }
    let seeds = grid
        .cells
        .iter()
        .filter(|((k, b), _)| *b == top && (k.group() == "full" || k.group() == group))
        .map(|(_, c)| c.learn.len())
        .min()
        .unwrap_or(0);
    if seeds < MIN_BOOTSTRAP_SEEDS {
        return Tested {
            number: 5,
            claim: LR_RATIO,
            evidence: format!(
                "{evidence}; no test: the seed bootstrap needs at least {MIN_BOOTSTRAP_SEEDS} seeds of each configuration (this sweep: {seeds})"
            ),
            test: None,
            missing: Missing::Seeds,
        };
    }
    // The point estimate and its bootstrap between grid points: on a coarse grid the grid's
    // best barely moves under resampling, and its interval would collapse onto one ratio.
    let (Some(fi), Some(li)) = (
        grid.best_lr_interpolated("full", top, &all),
        grid.best_lr_interpolated(&group, top, &all),
    ) else {
        return no_data(5, LR_RATIO, evidence);
    };
    evidence.push_str(&format!(
        "; between grid points (the parabola in log lr through each best and its neighbours): full {}, {group} {} ({:.2}x)",
        fmt_lr_between(fi),
        fmt_lr_between(li),
        li / fi
    ));
    match ratio_bootstrap(grid, &group, top, (li / fi).log10()) {
        Some(estimate) => Tested {
            number: 5,
            claim: LR_RATIO,
            evidence,
            test: Some(Pending {
                name: "seed bootstrap of log10(best LoRA lr / best full lr)",
                unit: format!(
                    "seeds of every configuration, {BOOTSTRAP_REPLICATES} replicates (seed {BOOTSTRAP_SEED:#x})"
                ),
                effect: format!("log10 of {group}'s best lr over full's"),
                estimate,
                seeds,
                margin: None,
            }),
            missing: Missing::Seeds,
        },
        None => Tested {
            number: 5,
            claim: LR_RATIO,
            evidence: format!("{evidence}; no test: the bootstrap has no replicates"),
            test: None,
            missing: Missing::Seeds,
        },
    }
}

/// Two decimals, and 0.00 for what rounds to zero from below (never "-0.00").
fn fmt_2(x: f64) -> String {
    let s = format!("{x:.2}");
    if s == "-0.00" {
        "0.00".into()
    } else {
        s
    }
}

/// A best learning rate between grid points as a cell, marked where it is the grid's own.
fn between_value(lr: f64, how: crate::report::grid::Between) -> Value {
    let v = Value::real(lr, format!("{}{}", fmt_lr_between(lr), how.mark()));
    match how {
        crate::report::grid::Between::Vertex => v,
        _ => v.described(),
    }
}

/// A best learning rate between grid points, to three significant digits: 2.61e-3.
fn fmt_lr_between(lr: f64) -> String {
    format!("{lr:.2e}")
}

/// The seed bootstrap of log10(best lr of `group` / best lr of full) at budget `top` around the
/// point estimate `point`: every configuration of the two groups resampled, both best learning
/// rates found again between grid points ([`Grid::best_lr_interpolated`]), in key order with a
/// fixed seed (the same on every machine).
fn ratio_bootstrap(grid: &Grid, group: &str, top: u64, point: f64) -> Option<Estimate> {
    let mut rng = SplitMix(BOOTSTRAP_SEED);
    let replicates: Vec<f64> = (0..BOOTSTRAP_REPLICATES)
        .map(|_| {
            let mut resampled = std::collections::BTreeMap::new();
            for (key, c) in &grid.cells {
                if key.1 == top && (key.0.group() == "full" || key.0.group() == group) {
                    resampled.insert(key.0.clone(), rng.resample(&c.learn));
                }
            }
            let pick = |k: &SeriesKey, _: &Cell| resampled.get(k).cloned().unwrap_or_default();
            match (
                grid.best_lr_interpolated("full", top, &pick),
                grid.best_lr_interpolated(group, top, &pick),
            ) {
                (Some(f), Some(l)) => (l / f).log10(),
                _ => f64::NAN,
            }
        })
        .collect();
    bootstrap_estimate(point, &replicates)
}

/// The LoRA/full best-learning-rate ratio of every LoRA group at the largest budget, with its
/// seed-bootstrap interval (5 seeds or more), and how the best learning rate moves with the rank
/// (slope of log10 best lr against log10 rank over the groups of the same modules and alpha
/// rule, with its interval, from 3 ranks). An alpha rule is the sweep's groups on one line:
/// alpha = k x rank (as "2r" resolves) or one alpha for every rank; `rslora` (the sweep's
/// scaling alpha / sqrt(rank)) is named beside it.
pub fn lr_ratios(grid: &Grid, rslora: bool) -> Option<TableData> {
    let top = grid.top()?;
    let all = |_: &SeriesKey, c: &Cell| c.learn.clone();
    let (full, full_how) = grid.best_lr_between("full", top, &all)?;
    type Group = (Option<u64>, Option<String>, Option<f64>, Option<f64>);
    let mut groups: std::collections::BTreeMap<String, Group> = Default::default();
    let mut dropouts = std::collections::BTreeSet::new();
    for (k, b) in grid.cells.keys() {
        if *b == top && k.method == "lora" {
            groups.insert(
                k.group(),
                (k.rank, k.modules.clone(), k.alpha(), k.dropout()),
            );
            dropouts.extend(k.dropout().map(f64::to_bits));
        }
    }
    if groups.is_empty() {
        return None;
    }
    // Full fine-tuning's first: what every ratio is over.
    let mut rows = vec![vec![
        "full (the reference)".into(),
        grid.best_lr_by("full", top, &all)
            .map_or_else(Value::missing, Value::lr),
        between_value(full, full_how),
        Value::real(1.0, "1.00x"),
        Value::missing(),
    ]];
    // (modules and dropout, rank, alpha, best lr) of each group: a rule is followed at one
    // dropout.
    let mut points: Vec<(String, u64, f64, f64)> = Vec::new();
    for (g, (rank, modules, alpha, dropout)) in &groups {
        let (Some(on_grid), Some((l, how))) = (
            grid.best_lr_by(g, top, &all),
            grid.best_lr_between(g, top, &all),
        ) else {
            continue;
        };
        let seeds = grid
            .cells
            .iter()
            .filter(|((k, b), _)| *b == top && (k.group() == *g || k.group() == "full"))
            .map(|(_, c)| c.learn.len())
            .min()
            .unwrap_or(0);
        let ratio = l / full;
        let interval = if seeds >= MIN_BOOTSTRAP_SEEDS {
            ratio_bootstrap(grid, g, top, ratio.log10())
                .map(|e| {
                    let (lo, hi) = (10f64.powf(e.ci_low), 10f64.powf(e.ci_high));
                    let spread = Spread {
                        mean: ratio,
                        ci_low: Some(lo),
                        ci_high: Some(hi),
                        n: Some(seeds),
                        ..Spread::default()
                    };
                    Value::spread(spread, format!("{ratio:.2}x [{lo:.2}x, {hi:.2}x]"))
                })
                .unwrap_or_else(|| Value::no_spread("- (the bootstrap has no replicates)"))
        } else {
            let no_interval = Spread {
                mean: ratio,
                n: Some(seeds),
                ..Spread::default()
            };
            Value::spread(
                no_interval,
                format!("no interval ({seeds} seeds; {MIN_BOOTSTRAP_SEEDS} needed)"),
            )
            .described()
        };
        rows.push(vec![
            g.as_str().into(),
            Value::lr(on_grid),
            between_value(l, how),
            Value::real(ratio, format!("{ratio:.2}x")),
            interval,
        ]);
        if let (Some(r), Some(m), Some(a), Some(d)) = (rank, modules, alpha, dropout) {
            let m = if dropouts.len() > 1 {
                format!("{m} dropout={d}")
            } else {
                m.clone()
            };
            points.push((m, *r, *a, l));
        }
    }
    let mut slopes = Vec::new();
    for (m, pts) in alpha_rules(&points, rslora) {
        let x: Vec<Vec<f64>> = pts.iter().map(|p| vec![1.0, p.0]).collect();
        let y: Vec<f64> = pts.iter().map(|p| p.1).collect();
        slopes.push(match ols(&x, &y) {
            Some((b, se, df)) if pts.len() >= 3 => match Estimate::from_t(b[1], se[1], df) {
                Some(e) => format!(
                    "{m}: slope of log best lr on log rank {} [{}, {}] over {} ranks",
                    fmt_2(e.effect),
                    fmt_2(e.ci_low),
                    fmt_2(e.ci_high),
                    pts.len()
                ),
                None => format!(
                    "{m}: slope {} over {} ranks (no residual variance)",
                    fmt_2(b[1]),
                    pts.len()
                ),
            },
            _ if pts.is_empty() => m.clone(),
            _ => format!("{m}: {} rank(s), needs 3 for a slope", pts.len()),
        });
    }
    if slopes.is_empty() {
        slopes.push("one rank per alpha rule; needs 3 for a slope".into());
    }
    Some(TableData {
        key: "lr_ratio".into(),
        title: format!(
            "LoRA's best learning rate over full fine-tuning's ({}), per LoRA group at {} tokens",
            fmt_lr_between(full),
            format_tokens(top)
        ),
        header: vec![
            "configuration".into(),
            "best lr".into(),
            "best lr between grid points".into(),
            "ratio".into(),
            "95% seed-bootstrap interval".into(),
        ],
        rows,
        note: Some(format!(
            "between grid points: the vertex of the parabola in log lr through the grid's best and its two neighbours (a best at the end of its grid stays, and may not be the best); the ratio and its interval are between grid points; rank dependence: {}",
            slopes.join("; ")
        )),
    })
}

/// The (log10 rank, log10 best lr) points of each alpha rule of each module set, from the
/// (modules, rank, alpha, best lr) of the LoRA groups: alpha = k x rank for each k, and one
/// alpha for every rank, each where it holds at 2 ranks or more (a group can be on both; at one
/// dropout each group has its own rank). A module set of one rank is its one point; one of
/// several ranks where no rule reaches 2 of them gets no points, and says so. Labelled "MODULES, alpha = 2r".
fn alpha_rules(points: &[(String, u64, f64, f64)], rslora: bool) -> Vec<(String, Vec<(f64, f64)>)> {
    let scaling = if rslora { ", rsLoRA" } else { "" };
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let modules: std::collections::BTreeSet<&String> = points.iter().map(|p| &p.0).collect();
    for m in modules {
        let mine: Vec<GroupPoint> = points
            .iter()
            .filter(|p| &p.0 == m)
            .map(|p| (p.1, p.2, p.3))
            .collect();
        let per_rank = |p: &GroupPoint| p.1 / p.0 as f64;
        let mut rules: Vec<(String, Vec<GroupPoint>)> = Vec::new();
        for p in &mine {
            let k = per_rank(p);
            let by_rank = mine
                .iter()
                .filter(|q| (per_rank(q) - k).abs() <= 1e-9 * k.abs().max(1.0))
                .copied()
                .collect();
            rules.push((format!("{m}, alpha = {}r{scaling}", fmt_number(k)), by_rank));
        }
        for p in &mine {
            let fixed = mine.iter().filter(|q| q.1 == p.1).copied().collect();
            rules.push((format!("{m}, alpha = {}{scaling}", fmt_number(p.1)), fixed));
        }
        let mut kept: Vec<(String, Vec<GroupPoint>)> = Vec::new();
        for (label, on) in rules {
            let ranks: std::collections::BTreeSet<u64> = on.iter().map(|p| p.0).collect();
            if ranks.len() >= 2 && !kept.iter().any(|(l, _)| *l == label) {
                kept.push((label, on));
            }
        }
        let ranks: std::collections::BTreeSet<u64> = mine.iter().map(|p| p.0).collect();
        if kept.is_empty() && ranks.len() <= 1 {
            kept.push((format!("{m}{scaling}"), mine.clone()));
        } else if kept.is_empty() {
            kept.push((
                format!("{m}{scaling}: no alpha rule holds at 2 ranks or more (no slope)"),
                Vec::new(),
            ));
        }
        for (label, on) in kept {
            let pts = on
                .iter()
                .map(|p| ((p.0 as f64).log10(), p.2.log10()))
                .collect();
            out.push((label, pts));
        }
    }
    out
}

/// (rank, alpha, best lr) of a LoRA group.
type GroupPoint = (u64, f64, f64);

/// A number as short as it reads: 2, 0.5, 16.
fn fmt_number(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

const DATA_SCALING: &str = "More tokens help full fine-tuning more than LoRA";

/// Minimum budgets for a slope to mean anything.
pub const MIN_BUDGETS: usize = 3;

/// Each seed's slope of learning against ln(tokens), for the best full and the best LoRA
/// configuration (chosen at the top budget), compared by Welch's test.
fn data_scaling(grid: &Grid) -> Tested {
    if grid.budgets.len() < MIN_BUDGETS {
        return no_data(
            6,
            DATA_SCALING,
            format!(
                "not enough budgets: needs at least {MIN_BUDGETS} (this sweep has {})",
                grid.budgets.len()
            ),
        );
    }
    let top = grid.budgets[grid.budgets.len() - 1];
    let Some(((kf, _), (kl, _))) = best_pair(grid, top) else {
        return no_data(6, DATA_SCALING, "needs both methods at every budget");
    };
    let slopes = |k: &SeriesKey| -> Vec<f64> {
        let mut by_seed = std::collections::BTreeMap::<u64, Vec<(f64, f64)>>::new();
        for &b in &grid.budgets {
            if let Some(c) = grid.cells.get(&(k.clone(), b)) {
                for (s, v) in c.seeds.iter().zip(oriented(grid, &c.learn)) {
                    by_seed.entry(*s).or_default().push((b as f64, v));
                }
            }
        }
        by_seed
            .values()
            .filter(|pts| pts.len() >= MIN_BUDGETS)
            .filter_map(|pts| log_fit(pts).map(|f| f.b))
            .collect()
    };
    let (sf, sl) = (slopes(&kf), slopes(&kl));
    if sf.is_empty() || sl.is_empty() {
        return no_data(
            6,
            DATA_SCALING,
            format!("needs each method's best configuration at {MIN_BUDGETS} budgets or more"),
        );
    }
    let evidence = format!(
        "improvement of {} per ln(tokens) over {} budgets: full ({}) {:.4}, LoRA ({}) {:.4}",
        grid.learn,
        grid.budgets.len(),
        kf.describe(),
        mean(&sf),
        kl.describe(),
        mean(&sl)
    );
    welch_or_why(
        6,
        DATA_SCALING,
        evidence,
        (&sf, &sl),
        "full's slope minus LoRA's".into(),
        "seeds (one slope per seed) of each method's best configuration".into(),
    )
}

/// Findings 1 and 2 tested at every budget (uncorrected p-values: the findings table decides
/// at the largest budget).
pub fn by_budget(grid: &Grid, forget_name: Option<&str>) -> TableData {
    let cell = |t: &Tested| match &t.test {
        Some(p) => {
            let e = &p.estimate;
            let decides = p.p_and_direction().0;
            Value::spread(
                Spread {
                    p: Some(decides),
                    n: Some(p.seeds),
                    ..Spread::from(*e)
                },
                format!(
                    "{:.4} [{:.4}, {:.4}], p = {}",
                    e.effect,
                    e.ci_low,
                    e.ci_high,
                    fmt_p(decides)
                ),
            )
        }
        None => Value::missing(),
    };
    let rows = grid
        .budgets
        .iter()
        .map(|&b| {
            vec![
                Value::tokens(b),
                cell(&learns_less(grid, b)),
                cell(&forgets_less(grid, b, forget_name)),
            ]
        })
        .collect();
    TableData {
        key: "findings_by_budget".into(),
        title: "Findings 1 and 2 at every budget (each method's best configuration there)".into(),
        header: vec![
            "budget".into(),
            format!("1: full's {} advantage", grid.learn),
            format!(
                "2: LoRA's {} advantage",
                forget_name.unwrap_or("forgetting")
            ),
        ],
        rows,
        note: Some(
            "Welch's t-test over seeds; effect > 0 is the paper's direction; p-values uncorrected"
                .into(),
        ),
    }
}

/// Every finding "not enough data", for `why`.
pub fn not_enough(why: &str) -> Vec<Finding> {
    [
        (1, LEARNS_LESS),
        (2, FORGETS_LESS),
        (3, ONE_FRONTIER),
        (4, HIGH_RANK),
        (5, LR_RATIO),
        (6, DATA_SCALING),
    ]
    .iter()
    .map(|(n, c)| Finding {
        number: *n,
        claim: c.to_string(),
        verdict: Verdict::NotEnoughData,
        evidence: why.into(),
        test: None,
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(effect: f64, se: f64, margin: Option<f64>) -> Tested {
        Tested {
            number: 1,
            claim: LEARNS_LESS,
            evidence: String::new(),
            test: Some(Pending {
                name: "t",
                unit: "seeds".into(),
                effect: "e".into(),
                estimate: Estimate::from_t(effect, se, 10.0).unwrap(),
                seeds: 3,
                margin,
            }),
            missing: Missing::Seeds,
        }
    }

    /// Holm's correction decides: three effects each significant alone (p about 0.02-0.04) are
    /// undecided together; one alone is supported, or contradicted with the other sign.
    #[test]
    fn verdicts_follow_the_corrected_p_value_and_the_sign() {
        // t = 2.6, 2.4, 2.3 with 10 df: two-sided p = 0.0265, 0.0373, 0.0443 (scipy).
        let three = decide(vec![
            pending(0.26, 0.1, None),
            pending(0.24, 0.1, None),
            pending(0.23, 0.1, None),
        ]);
        for f in &three {
            assert_eq!(f.verdict, Verdict::NotEnoughEvidence, "{}", f.evidence);
            let t = f.test.as_ref().unwrap();
            assert!(t.p < 0.05 && t.p_holm >= 0.05, "{t:?}");
            assert!(t.seeds_needed.unwrap() > 3, "{t:?}");
        }
        assert_eq!(
            decide(vec![pending(0.26, 0.1, None)])[0].verdict,
            Verdict::Supported
        );
        assert_eq!(
            decide(vec![pending(-0.26, 0.1, None)])[0].verdict,
            Verdict::Contradicted
        );
        let big = decide(vec![pending(2.6, 0.1, None), pending(0.26, 0.1, None)]);
        assert_eq!(
            (big[0].verdict, big[1].verdict),
            (Verdict::Supported, Verdict::Supported),
            "Holm steps down: the second is compared at alpha/1"
        );
    }

    /// The equivalence test: inside the margin, p = the larger one-sided p; outside, the p of
    /// being outside. Hand-computed with scipy.stats.t.cdf at 10 df.
    #[test]
    fn the_frontier_test_is_an_equivalence_test() {
        // effect 0.01, se 0.01, margin 0.05: max(1 - F(6), F(-4)) = F(-4) = 0.0012592.
        let inside = decide(vec![pending(0.01, 0.01, Some(0.05))]);
        let t = inside[0].test.as_ref().unwrap();
        assert!((t.p - 0.0012592).abs() < 1e-6, "{t:?}");
        assert_eq!(inside[0].verdict, Verdict::Supported);
        // effect -0.08: outside by 0.03, 2 (1 - F(3)) = 0.0133437 (two-sided: the side was
        // chosen by looking): a different frontier.
        let outside = decide(vec![pending(-0.08, 0.01, Some(0.05))]);
        let t = outside[0].test.as_ref().unwrap();
        assert!((t.p - 0.0133437).abs() < 1e-6, "{t:?}");
        assert_eq!(outside[0].verdict, Verdict::Contradicted);
        // Near the margin with a wide interval: undecided, and more seeds would tell.
        let near = decide(vec![pending(0.04, 0.05, Some(0.05))]);
        assert_eq!(near[0].verdict, Verdict::NotEnoughEvidence);
        assert!(near[0].test.as_ref().unwrap().seeds_needed.unwrap() > 3);
    }
}
