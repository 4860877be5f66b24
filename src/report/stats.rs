//! Statistics for the report: summaries with Student-t intervals, Welch's t-test and its
//! interval, Holm's correction, a seeded bootstrap, least squares (metric = a + b ln(tokens), and
//! any few-regressor fit), the seeds a test would need, and the Pareto frontier. Pure functions.

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Mean, standard deviation and a 95% confidence interval over seeds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (None for n < 2).
    pub sd: Option<f64>,
    /// Half-width of the 95% Student-t interval (None for n < 2: never shown as zero width).
    pub ci95: Option<f64>,
}

/// Summarise values (NaNs are dropped).
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        return None;
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return Some(Summary {
            n,
            mean,
            sd: None,
            ci95: None,
        });
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let sd = var.sqrt();
    let t = t_quantile(0.975, (n - 1) as f64);
    Some(Summary {
        n,
        mean,
        sd: Some(sd),
        ci95: t.map(|t| t * sd / (n as f64).sqrt()),
    })
}

/// The Wilson score 95% interval of a proportion `p` observed over `n` trials (`p` may be a mean
/// of such proportions, then `n` counts all their trials): it stays within [0, 1], unlike the
/// normal or Student-t one, and is not empty at 0 or 1.
pub fn wilson(p: f64, n: f64) -> (f64, f64) {
    let z = normal_quantile(0.975);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The p-quantile of Student's t with `df` degrees of freedom.
pub fn t_quantile(p: f64, df: f64) -> Option<f64> {
    StudentsT::new(0.0, 1.0, df).ok().map(|d| d.inverse_cdf(p))
}

/// Welch's t-test of two samples.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Welch {
    /// Difference of means, a - b.
    pub diff: f64,
    /// The t statistic.
    pub t: f64,
    /// Welch-Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
    /// Cohen's d with the pooled standard deviation.
    pub cohens_d: f64,
}

/// Welch's t-test; None when either sample has fewer than 2 values or no variance at all.
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    let (sa, sb) = (summarize(a)?, summarize(b)?);
    let (va, vb) = (sa.sd?.powi(2), sb.sd?.powi(2));
    let (na, nb) = (sa.n as f64, sb.n as f64);
    let se2 = va / na + vb / nb;
    if se2 <= 0.0 {
        return None;
    }
    let diff = sa.mean - sb.mean;
    let t = diff / se2.sqrt();
    let df = se2.powi(2) / ((va / na).powi(2) / (na - 1.0) + (vb / nb).powi(2) / (nb - 1.0));
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    // The lower tail at -|t|: 1 - cdf(|t|) rounds to 0 for a large t.
    let p = 2.0 * dist.cdf(-t.abs());
    let pooled = (((na - 1.0) * va + (nb - 1.0) * vb) / (na + nb - 2.0)).sqrt();
    Some(Welch {
        diff,
        t,
        df,
        p,
        cohens_d: if pooled > 0.0 {
            diff / pooled
        } else {
            f64::NAN
        },
    })
}

/// An effect with its standard error, a 95% interval and a two-sided p-value against no effect.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// The effect.
    pub effect: f64,
    /// Its standard error.
    pub se: f64,
    /// Degrees of freedom of its t distribution (infinite for a bootstrap).
    pub df: f64,
    /// Lower end of the 95% interval.
    pub ci_low: f64,
    /// Upper end of the 95% interval.
    pub ci_high: f64,
    /// Two-sided p-value of "no effect".
    pub p: f64,
}

impl Estimate {
    /// An estimate whose effect / se follows Student's t with `df` degrees of freedom; None
    /// without variance (an se at rounding level of the effect: the values are deterministic).
    pub fn from_t(effect: f64, se: f64, df: f64) -> Option<Estimate> {
        let usable = se > 1e-9 * effect.abs() && se.is_finite() && effect.is_finite() && df > 0.0;
        if !usable {
            return None;
        }
        let dist = StudentsT::new(0.0, 1.0, df).ok()?;
        let q = dist.inverse_cdf(0.975);
        Some(Estimate {
            effect,
            se,
            df,
            ci_low: effect - q * se,
            ci_high: effect + q * se,
            p: (2.0 * dist.cdf(-(effect / se).abs())).min(1.0),
        })
    }
}

/// Welch's estimate of mean(a) - mean(b) with its interval; None as for [`welch`].
pub fn welch_estimate(a: &[f64], b: &[f64]) -> Option<Estimate> {
    let w = welch(a, b)?;
    let (sa, sb) = (summarize(a)?, summarize(b)?);
    let se = (sa.sd?.powi(2) / sa.n as f64 + sb.sd?.powi(2) / sb.n as f64).sqrt();
    // Equal means still have an interval (diff / t would be 0 / 0).
    if w.diff == 0.0 {
        let e = Estimate::from_t(1.0, se, w.df)?;
        return Some(Estimate {
            effect: 0.0,
            ci_low: e.ci_low - 1.0,
            ci_high: e.ci_high - 1.0,
            p: 1.0,
            ..e
        });
    }
    Estimate::from_t(w.diff, se, w.df)
}

/// The difference of two independent estimates, a - b, with Welch-Satterthwaite degrees of
/// freedom.
pub fn difference(a: &Estimate, b: &Estimate) -> Option<Estimate> {
    let (va, vb) = (a.se.powi(2), b.se.powi(2));
    let df = (va + vb).powi(2) / (va.powi(2) / a.df + vb.powi(2) / b.df);
    Estimate::from_t(a.effect - b.effect, (va + vb).sqrt(), df)
}

/// Holm's step-down adjusted p-values, in the order given (each at most 1, never below the one
/// of a smaller raw p-value).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (k, &i) in order.iter().enumerate() {
        running = running.max(((m - k) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// The p-quantile of the standard normal distribution.
pub fn normal_quantile(p: f64) -> f64 {
    Normal::new(0.0, 1.0)
        .map(|d| d.inverse_cdf(p))
        .unwrap_or(f64::NAN)
}

/// Seeds per configuration a two-sided test at level `alpha` would need to detect `distance`
/// with 80% power, when `seeds` gave standard error `se` (which falls as 1/sqrt(seeds)): the
/// smallest n with (t(1 - alpha/2, df) + t(0.8, df)) se sqrt(seeds / n) <= |distance|, df =
/// 2 (n - 1) as for two groups of n (Student's t, not the normal: with few seeds its tails
/// decide). At least 2; None when nothing was measured, the distance is zero, or more than
/// 100,000 would be needed.
pub fn seeds_needed(seeds: usize, se: f64, distance: f64, alpha: f64) -> Option<usize> {
    if seeds == 0
        || se.is_nan()
        || se <= 0.0
        || !se.is_finite()
        || distance.is_nan()
        || distance == 0.0
    {
        return None;
    }
    (2..=100_000usize).find(|&n| {
        let df = 2.0 * (n as f64 - 1.0);
        match (t_quantile(1.0 - alpha / 2.0, df), t_quantile(0.8, df)) {
            (Some(a), Some(b)) => (a + b) * se * (seeds as f64 / n as f64).sqrt() <= distance.abs(),
            _ => false,
        }
    })
}

/// A small deterministic generator (SplitMix64) for seeded bootstraps: the same seed gives the
/// same report on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A uniform index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// A resample of `values` with replacement, of the same length.
    pub fn resample(&mut self, values: &[f64]) -> Vec<f64> {
        (0..values.len())
            .map(|_| values[self.below(values.len())])
            .collect()
    }
}

/// A bootstrap estimate from replicate statistics around the point estimate `effect`: the
/// percentile interval, the replicates' standard deviation as se, and the two-sided p-value
/// 2 min(P(r <= 0), P(r >= 0)), each proportion counted as (count + 1) / (B + 1) so that it is
/// never 0 (with B replicates all on one side, p = 2 / (B + 1)). None with fewer than 2 finite
/// replicates.
pub fn bootstrap_estimate(effect: f64, replicates: &[f64]) -> Option<Estimate> {
    let mut r: Vec<f64> = replicates
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if r.len() < 2 || !effect.is_finite() {
        return None;
    }
    r.sort_by(f64::total_cmp);
    let n = r.len() as f64;
    let at = |q: f64| r[((q * (n - 1.0)).round() as usize).min(r.len() - 1)];
    let mean = r.iter().sum::<f64>() / n;
    let se = (r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let le = (r.iter().filter(|&&x| x <= 0.0).count() as f64 + 1.0) / (n + 1.0);
    let ge = (r.iter().filter(|&&x| x >= 0.0).count() as f64 + 1.0) / (n + 1.0);
    Some(Estimate {
        effect,
        se,
        df: f64::INFINITY,
        ci_low: at(0.025),
        ci_high: at(0.975),
        p: (2.0 * le.min(ge)).min(1.0),
    })
}

/// Ordinary least squares of y on the columns of `x` (each row one observation, a column of 1s
/// included by the caller): coefficients, their standard errors and the residual degrees of
/// freedom. None when the design is singular or has no residual degrees of freedom.
pub fn ols(x: &[Vec<f64>], y: &[f64]) -> Option<(Vec<f64>, Vec<f64>, f64)> {
    let (n, k) = (y.len(), x.first()?.len());
    if n <= k || x.len() != n {
        return None;
    }
    // Normal equations, inverted by Gauss-Jordan elimination with partial pivoting.
    let mut a = vec![vec![0.0; 2 * k]; k];
    for (i, row) in a.iter_mut().enumerate() {
        for j in 0..k {
            row[j] = x.iter().map(|r| r[i] * r[j]).sum();
        }
        row[k + i] = 1.0;
    }
    for c in 0..k {
        let piv = (c..k).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[piv][c].abs() < 1e-12 {
            return None;
        }
        a.swap(c, piv);
        let d = a[c][c];
        a[c].iter_mut().for_each(|v| *v /= d);
        for r in 0..k {
            if r != c {
                let f = a[r][c];
                let pivot_row = a[c].clone();
                a[r].iter_mut()
                    .zip(&pivot_row)
                    .for_each(|(v, p)| *v -= f * p);
            }
        }
    }
    let xty: Vec<f64> = (0..k)
        .map(|i| x.iter().zip(y).map(|(r, yy)| r[i] * yy).sum())
        .collect();
    let beta: Vec<f64> = (0..k)
        .map(|i| (0..k).map(|j| a[i][k + j] * xty[j]).sum())
        .collect();
    let rss: f64 = x
        .iter()
        .zip(y)
        .map(|(r, yy)| (yy - r.iter().zip(&beta).map(|(a, b)| a * b).sum::<f64>()).powi(2))
        .sum();
    let df = (n - k) as f64;
    let s2 = rss / df;
    let se = (0..k).map(|i| (s2 * a[i][k + i]).max(0.0).sqrt()).collect();
    Some((beta, se, df))
}

/// A least-squares fit y = a + b ln(x).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LogFit {
    /// Intercept.
    pub a: f64,
    /// Slope per unit of ln(tokens).
    pub b: f64,
    /// Standard error of the slope (None with fewer than 3 points).
    pub b_se: Option<f64>,
    /// Half-width of the slope's 95% interval.
    pub b_ci95: Option<f64>,
    /// Coefficient of determination.
    pub r2: f64,
    /// Points fitted.
    pub n: usize,
}

/// Fit y = a + b ln(x) over points with x > 0; None with fewer than 2 distinct x.
pub fn log_fit(points: &[(f64, f64)]) -> Option<LogFit> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && y.is_finite())
        .map(|(x, y)| (x.ln(), *y))
        .collect();
    let n = pts.len();
    if n < 2 {
        return None;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let b = sxy / sxx;
    let a = my - b * mx;
    let ss_res: f64 = pts.iter().map(|p| (p.1 - a - b * p.0).powi(2)).sum();
    let ss_tot: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        1.0
    };
    let (b_se, b_ci95) = if n > 2 {
        let se = (ss_res / (n - 2) as f64 / sxx).sqrt();
        (Some(se), t_quantile(0.975, (n - 2) as f64).map(|t| t * se))
    } else {
        (None, None)
    };
    Some(LogFit {
        a,
        b,
        b_se,
        b_ci95,
        r2,
        n,
    })
}

/// Indices of the points on the Pareto frontier when maximising `x` (learning) and minimising `y`
/// (forgetting): no other point is at least as good in both and better in one.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    idx.sort_by(|&i, &j| {
        points[j]
            .0
            .total_cmp(&points[i].0)
            .then(points[i].1.total_cmp(&points[j].1))
    });
    let mut front = Vec::new();
    let mut best_y = f64::INFINITY;
    for i in idx {
        if points[i].1 < best_y {
            best_y = points[i].1;
            front.push(i);
        }
    }
    front.sort_unstable();
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Wilson interval against scipy 1.x's `binomtest(k, n).proportion_ci(method="wilson")`.
    #[test]
    fn the_wilson_interval_is_scipys() {
        for (k, n, lo, hi) in [
            (1.0, 10.0, 0.017876213095072896, 0.4041500267952385),
            (0.0, 8.0, 0.0, 0.32440756488388023),
            (8.0, 8.0, 0.6755924351161198, 1.0),
            (5.0, 12.0, 0.1932603136587566, 0.6804886874504502),
            (37.0, 100.0, 0.28182360534324535, 0.4677947041905709),
        ] {
            let (a, b) = wilson(k / n, n);
            assert!(
                (a - lo).abs() < 1e-12 && (b - hi).abs() < 1e-12,
                "{k}/{n}: ({a}, {b}) vs ({lo}, {hi})"
            );
        }
    }

    /// A large t keeps its tiny p-value (1 - cdf rounded it to 0): scipy's
    /// 2 * stats.t.sf(40, 8) = 1.67857e-10.
    #[test]
    fn a_large_t_keeps_its_p_value() {
        let e = Estimate::from_t(40.0, 1.0, 8.0).unwrap();
        assert!((e.p / 1.678_571_9e-10 - 1.0).abs() < 1e-6, "{}", e.p);
    }

    #[test]
    fn summary_interval_matches_hand_computation() {
        // mean 2, sd 1, n 3: t(0.975, 2) = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138.
        let s = summarize(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.mean, 2.0);
        assert!((s.sd.unwrap() - 1.0).abs() < 1e-12);
        assert!((s.ci95.unwrap() - 2.484138).abs() < 1e-5, "{:?}", s.ci95);
        let one = summarize(&[5.0]).unwrap();
        assert_eq!(
            (one.sd, one.ci95),
            (None, None),
            "one seed: no interval, never zero width"
        );
        assert!(summarize(&[f64::NAN]).is_none());
    }

    #[test]
    fn welch_matches_a_known_example() {
        // a = [1,2,3,4], b = [2,4,6,8]: means 2.5 and 5, variances 5/3 and 20/3;
        // se^2 = 5/12 + 20/12 = 25/12, t = -2.5 / 1.443376 = -1.732051,
        // df = (25/12)^2 / ((5/12)^2/3 + (20/12)^2/3) = 4.411765.
        let w = welch(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 8.0]).unwrap();
        assert!((w.t + 1.732051).abs() < 1e-5);
        assert!((w.df - 4.411765).abs() < 1e-5);
        assert!(w.p > 0.1 && w.p < 0.2, "{}", w.p);
        assert!(welch(&[1.0], &[2.0, 3.0]).is_none());
        // Equal means with variance: effect 0, p 1, a symmetric interval (not "no variance").
        let e = welch_estimate(&[1.0, 3.0], &[0.0, 4.0]).unwrap();
        assert_eq!((e.effect, e.p), (0.0, 1.0));
        assert!(
            e.ci_low < 0.0 && (e.ci_low + e.ci_high).abs() < 1e-9,
            "{e:?}"
        );
    }

    #[test]
    fn welch_interval_matches_hand_computation() {
        // The example above: diff -2.5, se 1.443376, df 4.411765; t(0.975, 4.411765) = 2.677174
        // (scipy.stats.t.ppf), so the interval is -2.5 -+ 3.864167; p = 0.1515 (scipy's
        // ttest_ind(equal_var=False)).
        let e = welch_estimate(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 8.0]).unwrap();
        assert!((e.se - 1.443376).abs() < 1e-5);
        assert!((e.ci_low + 2.5 + 3.864167).abs() < 1e-4, "{e:?}");
        assert!((e.ci_high + 2.5 - 3.864167).abs() < 1e-4, "{e:?}");
        assert!((e.p - 0.151581).abs() < 1e-5, "{}", e.p);
    }

    #[test]
    fn holm_matches_hand_computation() {
        // Sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 = 0.04, 0.06, 0.06 (kept monotone), 0.06.
        let adj = holm(&[0.03, 0.01, 0.04, 0.02]);
        let want = [0.06, 0.04, 0.06, 0.06];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-12, "{adj:?}");
        }
        assert_eq!(holm(&[0.9, 0.6]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn seeds_needed_follows_students_t() {
        // 3 seeds with se 0.1 for an effect of 0.1: n = 25 is the first with
        // (t(0.975, 48) + t(0.8, 48)) x 0.1 x sqrt(3/25) <= 0.1 (scipy: (2.010635 + 0.849174)
        // x 0.034641 = 0.099067; n = 24 gives (2.012896 + 0.849505) x 0.035355 = 0.101201).
        assert_eq!(seeds_needed(3, 0.1, 0.1, 0.05), Some(25));
        assert_eq!(seeds_needed(3, 0.1, -0.1, 0.05), Some(25));
        assert_eq!(seeds_needed(3, 0.0, 0.1, 0.05), None);
        assert_eq!(seeds_needed(2, 0.001, 1.0, 0.05), Some(2), "never below 2");
        // Two seeds that did not decide need more than two: t's tails at df 2 are wide.
        // se 0.17 for 0.53 (the demo's math finding 1 at alpha 0.05/5): more than 2.
        assert!(seeds_needed(2, 0.17, 0.53, 0.01).unwrap() > 2);
    }

    #[test]
    fn the_bootstrap_is_seeded_and_its_p_counts_both_tails() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        let draw = |seed| {
            let mut g = SplitMix(seed);
            (0..200)
                .map(|_| g.resample(&v).iter().sum::<f64>() / 5.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7), "same seed, same replicates");
        assert_ne!(draw(7), draw(8));
        let e = bootstrap_estimate(3.0, &draw(7)).unwrap();
        assert!(e.ci_low >= 1.0 && e.ci_low < 3.0 && e.ci_high > 3.0 && e.ci_high <= 5.0);
        assert!(
            (e.p - 2.0 / 201.0).abs() < 1e-12,
            "none at or below zero: 2 x 1/201"
        );
        // Replicates -1, 0, 1, 2: P(<= 0) = 3/5, P(>= 0) = 4/5, p = 1.
        let e = bootstrap_estimate(0.5, &[-1.0, 0.0, 1.0, 2.0]).unwrap();
        assert_eq!(e.p, 1.0);
        // 1, 2, 3, -1: P(<= 0) = 2/5, p = 0.8.
        let e = bootstrap_estimate(1.0, &[1.0, 2.0, 3.0, -1.0]).unwrap();
        assert!((e.p - 0.8).abs() < 1e-12, "{}", e.p);
        assert!(bootstrap_estimate(1.0, &[1.0]).is_none());
        let e = bootstrap_estimate(1.0, &[1.0; 50]).unwrap();
        assert!(
            (e.p - 2.0 / 51.0).abs() < 1e-12,
            "all on one side: 2 / (B + 1), never 0"
        );
    }

    #[test]
    fn ols_matches_hand_computation() {
        // y = 1 + 2 x + 3 g exactly, then one residual: coefficients from numpy.linalg.lstsq
        // of the perturbed data, se from sigma^2 (X'X)^-1.
        let x: Vec<Vec<f64>> = [
            (0.0, 0.0),
            (1.0, 0.0),
            (2.0, 0.0),
            (0.0, 1.0),
            (1.0, 1.0),
            (2.0, 1.0),
        ]
        .iter()
        .map(|&(a, g)| vec![1.0, a, g])
        .collect();
        let exact: Vec<f64> = x.iter().map(|r| 1.0 + 2.0 * r[1] + 3.0 * r[2]).collect();
        let (b, se, df) = ols(&x, &exact).unwrap();
        assert!(
            (b[0] - 1.0).abs() < 1e-9 && (b[1] - 2.0).abs() < 1e-9 && (b[2] - 3.0).abs() < 1e-9
        );
        assert!(se.iter().all(|s| *s < 1e-6) && df == 3.0);
        let mut y = exact.clone();
        y[0] += 0.6;
        let (b, se, _) = ols(&x, &y).unwrap();
        // numpy.linalg.lstsq: beta = [1.35, 1.85, 2.8]; rss = 0.15, sigma^2 = 0.05;
        // (X'X)^-1 diagonal = [7/12, 1/4, 2/3].
        assert!(
            (b[0] - 1.35).abs() < 1e-9 && (b[1] - 1.85).abs() < 1e-9 && (b[2] - 2.8).abs() < 1e-9,
            "{b:?}"
        );
        assert!((se[1] - (0.05f64 * 0.25).sqrt()).abs() < 1e-9, "{se:?}");
        assert!(
            (se[2] - (0.05f64 * 2.0 / 3.0).sqrt()).abs() < 1e-9,
            "{se:?}"
        );
        assert!(
            ols(&x[..3], &y[..3]).is_none(),
            "no residual degrees of freedom"
        );
    }

    #[test]
    fn log_fit_recovers_a_line() {
        let pts: Vec<(f64, f64)> = [1e3, 1e4, 1e5, 1e6]
            .iter()
            .map(|&x: &f64| (x, 2.0 - 0.1 * x.ln()))
            .collect();
        let f = log_fit(&pts).unwrap();
        assert!(
            (f.b + 0.1).abs() < 1e-12 && (f.a - 2.0).abs() < 1e-9 && (f.r2 - 1.0).abs() < 1e-12
        );
        assert!(f.b_ci95.unwrap() < 1e-9);
        assert!(log_fit(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }

    #[test]
    fn pareto_front_keeps_undominated_points() {
        // (learning, forgetting): higher x better, lower y better.
        let pts = [
            (0.5, 0.2),
            (0.6, 0.3),
            (0.4, 0.1),
            (0.5, 0.25),
            (0.6, 0.35),
            (0.3, 0.15),
        ];
        assert_eq!(pareto_front(&pts), vec![0, 1, 2]);
    }
}
