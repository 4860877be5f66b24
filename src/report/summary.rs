//! Several sweeps' findings side by side (`sweep report A B ...`): the paper's findings per
//! domain and regime, as the paper reports them (code and math, continued pretraining and
//! instruction fine-tuning), in one table.
//!
//! Each sweep's report decides its findings with Holm's correction over its own tests. Read
//! together, the tests of every sweep are one family: the summary corrects them again, all
//! together, and gives each cell the verdict of that correction (by the same rule: supported
//! when the corrected p is below 0.05 in the paper's direction, contradicted in the other). A
//! finding is then "supported in k of n sweeps" only as a reviewer reading all of them would
//! accept.

use serde::Serialize;

use super::findings::verdict_of;
use super::stats::holm;
use super::value::Spread;
use super::{Report, TableData, TestResult, Value, Verdict};

/// The findings of several sweeps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The sweeps, in the order given.
    pub sweeps: Vec<SweepLabel>,
    /// Findings 1-6, each with one cell per sweep.
    pub findings: Vec<SummaryRow>,
    /// Tests in the family corrected together.
    pub tests: usize,
    /// The table every renderer shows.
    pub table: TableData,
}

/// One sweep of a summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepLabel {
    /// The sweep.
    pub sweep: String,
    /// Its target domain.
    pub domain: String,
    /// Its training regime.
    pub regime: String,
    /// The learning metric its report used.
    pub learning_metric: Option<String>,
}

/// One finding across the sweeps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    /// 1 to 6.
    pub number: u8,
    /// The claim.
    pub claim: String,
    /// One per sweep, in the sweeps' order.
    pub cells: Vec<SummaryCell>,
    /// Sweeps whose corrected verdict is each of: supported, contradicted, not enough evidence,
    /// not enough data.
    pub supported: usize,
    /// See `supported`.
    pub contradicted: usize,
    /// See `supported`.
    pub undecided: usize,
    /// See `supported`.
    pub no_data: usize,
}

/// One finding of one sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryCell {
    /// The verdict of the sweep's own report.
    pub verdict: Verdict,
    /// The verdict after Holm's correction over every sweep's tests.
    pub verdict_all: Verdict,
    /// The test, where the sweep could run it.
    pub test: Option<TestResult>,
    /// Its p-value after Holm's correction over every sweep's tests.
    pub p_holm_all: Option<f64>,
}

/// The summary of `reports` (at least one).
pub fn summarize(reports: &[Report]) -> Summary {
    let ps: Vec<f64> = reports
        .iter()
        .flat_map(|r| {
            r.findings
                .iter()
                .filter_map(|f| f.test.as_ref().map(|t| t.p))
        })
        .collect();
    let mut adjusted = holm(&ps).into_iter();
    // Cells in the reports' order, then their findings' (as the p-values were collected).
    let cells: Vec<Vec<(u8, String, SummaryCell)>> = reports
        .iter()
        .map(|r| {
            r.findings
                .iter()
                .map(|f| {
                    let p_holm_all = f.test.as_ref().map(|_| adjusted.next().unwrap_or(1.0));
                    let verdict_all = match (&f.test, p_holm_all) {
                        (Some(t), Some(p)) => verdict_of(p, t.in_paper_direction()),
                        // Untested: as the sweep's report has it (no data, or no seeds).
                        _ => f.verdict,
                    };
                    let cell = SummaryCell {
                        verdict: f.verdict,
                        verdict_all,
                        test: f.test.clone(),
                        p_holm_all,
                    };
                    (f.number, f.claim.clone(), cell)
                })
                .collect()
        })
        .collect();
    let mut numbers: Vec<(u8, String)> = cells
        .iter()
        .flatten()
        .map(|(n, claim, _)| (*n, claim.clone()))
        .collect();
    numbers.sort_by_key(|(n, _)| *n);
    numbers.dedup_by_key(|(n, _)| *n);
    let findings: Vec<SummaryRow> = numbers
        .into_iter()
        .map(|(number, claim)| {
            let row: Vec<SummaryCell> = cells
                .iter()
                .map(|of_sweep| {
                    of_sweep
                        .iter()
                        .find(|(n, _, _)| *n == number)
                        .map(|(_, _, c)| c.clone())
                        .unwrap_or(SummaryCell {
                            verdict: Verdict::NotEnoughData,
                            verdict_all: Verdict::NotEnoughData,
                            test: None,
                            p_holm_all: None,
                        })
                })
                .collect();
            let count = |v: Verdict| row.iter().filter(|c| c.verdict_all == v).count();
            SummaryRow {
                number,
                claim,
                supported: count(Verdict::Supported),
                contradicted: count(Verdict::Contradicted),
                undecided: count(Verdict::NotEnoughEvidence),
                no_data: count(Verdict::NotEnoughData),
                cells: row,
            }
        })
        .collect();
    let sweeps: Vec<SweepLabel> = reports
        .iter()
        .map(|r| SweepLabel {
            sweep: r.sweep.clone(),
            domain: r.domain.clone(),
            regime: r.regime.clone(),
            learning_metric: r.learning_metric.clone(),
        })
        .collect();
    let table = table(&sweeps, &findings, ps.len());
    Summary {
        sweeps,
        findings,
        tests: ps.len(),
        table,
    }
}

/// The summary as one table: a row per finding, a column per sweep.
fn table(sweeps: &[SweepLabel], rows: &[SummaryRow], tests: usize) -> TableData {
    let mut header = vec!["finding".to_string()];
    header.extend(
        sweeps
            .iter()
            .map(|s| format!("{} ({} {})", s.sweep, s.domain, s.regime)),
    );
    header.push("across sweeps".into());
    let rows = rows
        .iter()
        .map(|r| {
            let mut row = vec![Value::words(format!("{}. {}", r.number, r.claim))];
            row.extend(r.cells.iter().map(cell_value));
            let n = r.cells.len();
            row.push(Value::words(if r.contradicted > 0 {
                format!(
                    "contradicted in {} of {n}, supported in {}",
                    r.contradicted, r.supported
                )
            } else {
                format!("supported in {} of {n}", r.supported)
            }));
            row
        })
        .collect();
    TableData {
        key: "summary".into(),
        title: "The paper's findings across sweeps".into(),
        header,
        rows,
        note: Some(format!(
            "Each cell: the verdict after Holm's correction over all {tests} tests of these sweeps, the effect (positive: the paper's direction) with its 95% interval (not corrected), and that corrected p; in brackets, the sweep's own report's verdict where it differs (corrected over its own tests only). In summary.json, p is each test's own and p_holm is corrected over all {tests} tests."
        )),
    }
}

/// A sweep's cell: its verdict in words, with the test's effect, interval and p-values behind it.
fn cell_value(c: &SummaryCell) -> Value {
    let mut s = c.verdict_all.words().to_string();
    let tested = match (&c.test, c.p_holm_all) {
        (Some(t), Some(p)) => {
            let e = &t.estimate;
            s.push_str(&format!(
                ": {:.3} [{:.3}, {:.3}], p = {}",
                e.effect,
                e.ci_low,
                e.ci_high,
                super::findings::fmt_p(p)
            ));
            Some(Spread {
                p: Some(t.p),
                p_holm: Some(p),
                n: Some(t.seeds),
                ..Spread::from(t.estimate)
            })
        }
        _ => None,
    };
    if c.verdict != c.verdict_all {
        s.push_str(&format!(" (own report: {})", c.verdict.words()));
    }
    match tested {
        Some(spread) => Value::spread(spread, s).described(),
        None => Value::words(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::stats::Estimate;
    use crate::report::Finding;

    fn tested(number: u8, effect: f64, p: f64, verdict: Verdict) -> Finding {
        Finding {
            number,
            claim: format!("claim {number}"),
            verdict,
            evidence: String::new(),
            test: Some(TestResult {
                name: "t".into(),
                unit: "seeds".into(),
                effect: "e".into(),
                estimate: Estimate {
                    effect,
                    se: 0.1,
                    ci_low: effect - 0.2,
                    ci_high: effect + 0.2,
                    df: 4.0,
                    p,
                },
                p,
                p_holm: p,
                equivalence_margin: None,
                seeds: 3,
                seeds_needed: None,
            }),
        }
    }

    fn report(name: &str, domain: &str, findings: Vec<Finding>) -> Report {
        Report {
            sweep: name.into(),
            domain: domain.into(),
            regime: "cpt".into(),
            learning_metric: Some("target_loss".into()),
            forgetting_metric: Some("source_loss".into()),
            tables: vec![],
            findings,
            cells: vec![],
            best: vec![],
            plots: vec![],
            notes: vec![],
        }
    }

    /// Holm over every sweep's tests, by hand: p = 0.001, 0.03 (code, findings 1 and 3, an
    /// untested finding 2 between them) and 0.012, 0.3 (math, findings 1 and 3), sorted and
    /// multiplied by 4, 3, 2, 1: 0.004, 0.036, 0.06, 0.3, each back on its own cell (all
    /// distinct, so a cell given another's value fails). The code sweep's finding 3 passed its
    /// own correction (over its 2 tests: 0.03) but not the family's; the math sweep's
    /// contradiction survives it; the untested finding keeps its own verdict, and one a sweep
    /// does not report has no data.
    #[test]
    fn verdicts_are_corrected_over_every_sweep() {
        let untested = Finding {
            number: 2,
            claim: "claim 2".into(),
            verdict: Verdict::NotEnoughData,
            evidence: String::new(),
            test: None,
        };
        let code = report(
            "code",
            "code",
            vec![
                tested(1, 0.5, 0.001, Verdict::Supported),
                untested,
                tested(3, 0.4, 0.03, Verdict::Supported),
            ],
        );
        let math = report(
            "math",
            "math",
            vec![
                tested(1, -0.5, 0.012, Verdict::Contradicted),
                tested(3, 0.1, 0.3, Verdict::NotEnoughEvidence),
            ],
        );
        let s = summarize(&[code, math]);
        assert_eq!(s.tests, 4);
        assert_eq!(
            s.findings.iter().map(|r| r.number).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let p = |row: usize, col: usize| s.findings[row].cells[col].p_holm_all;
        let close = |x: Option<f64>, want: f64| (x.unwrap() - want).abs() < 1e-12;
        assert!(close(p(0, 0), 0.004), "{:?}", p(0, 0));
        assert!(close(p(0, 1), 0.036), "{:?}", p(0, 1));
        assert!(close(p(2, 0), 0.06), "{:?}", p(2, 0));
        assert!(close(p(2, 1), 0.3), "{:?}", p(2, 1));
        assert_eq!((p(1, 0), p(1, 1)), (None, None));
        let v = |row: usize, col: usize| s.findings[row].cells[col].verdict_all;
        assert_eq!(v(0, 0), Verdict::Supported);
        assert_eq!(v(0, 1), Verdict::Contradicted);
        assert_eq!(v(1, 0), Verdict::NotEnoughData, "untested: its own verdict");
        assert_eq!(v(1, 1), Verdict::NotEnoughData, "not reported by the sweep");
        assert_eq!(s.findings[2].cells[0].verdict, Verdict::Supported);
        assert_eq!(v(2, 0), Verdict::NotEnoughEvidence);
        assert_eq!((s.findings[2].supported, s.findings[2].undecided), (0, 2));
        assert_eq!(
            (s.findings[0].supported, s.findings[0].contradicted),
            (1, 1)
        );
        assert_eq!(s.table.header.len(), 4, "{:?}", s.table.header);
        assert_eq!(s.table.header[1], "code (code cpt)");
        assert_eq!(s.table.rows[0][3], "contradicted in 1 of 2, supported in 1");
        assert_eq!(s.table.rows[2][3], "supported in 0 of 2");
        assert!(
            s.table.rows[2][1]
                .as_str()
                .contains("(own report: supported)"),
            "{:?}",
            s.table.rows[2]
        );
    }
}
