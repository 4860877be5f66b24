//! Statistics for the report: summaries with Student-t intervals, Welch's t-test, a least-squares
//! fit of metric = a + b ln(tokens), and the Pareto frontier. Pure functions.

use statrs::distribution::{ContinuousCDF, StudentsT};

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
    let p = 2.0 * (1.0 - dist.cdf(t.abs()));
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
