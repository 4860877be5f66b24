//! SVG plots drawn by hand: axes with ticks, lines with interval bands, scatter points. Pure text
//! output, no fonts needed, so the same data always gives the same file.

use super::{Plot, Series};

const W: f64 = 640.0;
const H: f64 = 400.0;
const L: f64 = 70.0;
const R: f64 = 170.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
/// The dash patterns of dashed lines, in turn.
const DASHES: &[&str] = &["5,4", "2,3", "9,3,2,3"];
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A tick's label: a power of ten or a multiple of one as "1e-3", "2e-3" on a log axis; on a
/// linear one as many decimals as the step between ticks needs.
fn fmt_tick(v: f64, log: bool, step: f64) -> String {
    if log || v.abs() >= 1e5 {
        return format!("{v:.0e}");
    }
    if v == 0.0 {
        return "0".into();
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize
        + usize::from(nice_mantissa(step) == 2.5 && step < 10.0);
    format!("{v:.decimals$}")
}

/// The mantissa of a tick step (1, 2, 2.5 or 5).
fn nice_mantissa(step: f64) -> f64 {
    let m = step / 10f64.powf(step.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .min_by(|a, b| (a - m).abs().total_cmp(&(b - m).abs()))
        .unwrap_or(1.0)
}

/// Ticks of a linear axis over [lo, hi]: multiples of a round step (1, 2, 2.5 or 5 times a power
/// of ten) that gives 3 to 6 of them; with that step.
pub fn linear_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    let span = (hi - lo).max(1e-12);
    let raw = span / 4.0;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * p);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let ticks = (first..=last).map(|i| i as f64 * step).collect();
    (ticks, step)
}

/// Ticks of a log axis over [10^lo, 10^hi] (`lo`, `hi` in decades): the powers of ten inside,
/// and 2 and 5 times them when fewer than three powers fall inside; as log10 values.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let eps = 1e-9;
    let decades: Vec<f64> = ((lo - eps).ceil() as i64..=(hi + eps).floor() as i64)
        .map(|d| d as f64)
        .collect();
    if decades.len() >= 3 {
        return decades;
    }
    let mut out = Vec::new();
    for d in (lo.floor() as i64)..=(hi.ceil() as i64) {
        for m in [1.0f64, 2.0, 5.0] {
            let v = d as f64 + m.log10();
            if v >= lo - eps && v <= hi + eps {
                out.push(v);
            }
        }
    }
    out
}

/// A point's x value for its hover title.
fn fmt_value(x: f64, log: bool) -> String {
    if log {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

/// Draw a plot as an SVG document.
pub fn plot(p: &Plot) -> String {
    let all: Vec<&Series> = p.lines.iter().chain(p.scatter.iter()).collect();
    let tx = |x: f64| if p.log_x { x.max(1e-300).log10() } else { x };
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    let mut bands = (f64::INFINITY, f64::NEG_INFINITY);
    for s in &all {
        for &(x, y, ci) in &s.points {
            if x.is_finite() && y.is_finite() && (!p.log_x || x > 0.0) {
                xs.push(tx(x));
                ys.push(y);
                let c = ci.filter(|c| c.is_finite()).unwrap_or(0.0);
                bands = (bands.0.min(y - c), bands.1.max(y + c));
            }
        }
    }
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    out.push_str(&format!("<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n", (L + W - R) / 2.0, esc(&p.title)));
    if xs.is_empty() {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>\n</svg>\n",
            W / 2.0,
            H / 2.0
        ));
        return out;
    }
    let (mut x0, mut x1) = (
        xs.iter().cloned().fold(f64::INFINITY, f64::min),
        xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    if x1 - x0 < 1e-12 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    // The y range holds every point; an interval band widens it by at most half the points'
    // own spread on each side (a two-seed band can be wide), and is clipped there.
    let (py0, py1) = (
        ys.iter().cloned().fold(f64::INFINITY, f64::min),
        ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    let spread = if py1 - py0 > 1e-12 {
        py1 - py0
    } else {
        (bands.1 - bands.0).max(1.0)
    };
    let (mut y0, mut y1) = (
        bands.0.max(py0 - spread / 2.0).min(py0),
        bands.1.min(py1 + spread / 2.0).max(py1),
    );
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| L + (tx(x) - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
    // Axes, and ticks at round values, each drawn where its value is.
    out.push_str(&format!("<line x1=\"{L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\n<line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{0}\" stroke=\"black\"/>\n", H - B, W - R));
    out.push_str(&format!(
        "<clipPath id=\"area\"><rect x=\"{L}\" y=\"{T}\" width=\"{}\" height=\"{}\"/></clipPath>\n",
        W - L - R,
        H - T - B
    ));
    let (x_ticks, x_step) = if p.log_x {
        (log_ticks(x0, x1), 1.0)
    } else {
        linear_ticks(x0, x1)
    };
    for xv in x_ticks {
        let xr = if p.log_x { 10f64.powf(xv) } else { xv };
        let x = L + (xv - x0) / (x1 - x0) * (W - L - R);
        out.push_str(&format!("<line x1=\"{x:.1}\" y1=\"{0}\" x2=\"{x:.1}\" y2=\"{1}\" stroke=\"black\"/><text x=\"{x:.1}\" y=\"{2}\" text-anchor=\"middle\">{3}</text>\n", H - B, H - B + 4.0, H - B + 16.0, fmt_tick(xr, p.log_x, x_step)));
    }
    let (y_ticks, y_step) = linear_ticks(y0, y1);
    for yv in y_ticks {
        let y = py(yv);
        out.push_str(&format!("<line x1=\"{0}\" y1=\"{y:.1}\" x2=\"{L}\" y2=\"{y:.1}\" stroke=\"black\"/><text x=\"{1}\" y=\"{2:.1}\" text-anchor=\"end\">{3}</text>\n", L - 4.0, L - 6.0, y + 4.0, fmt_tick(yv, false, y_step)));
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
        (L + W - R) / 2.0,
        H - 12.0,
        esc(&p.x_label)
    ));
    out.push_str(&format!("<text x=\"16\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {0})\">{1}</text>\n", (T + H - B) / 2.0, esc(&p.y_label)));
    let mut color_i = 0;
    let mut dashed_i = 0;
    for (legend, (si, s)) in all.iter().enumerate().enumerate() {
        let is_line = si < p.lines.len();
        let color = if s.dashed {
            "#444"
        } else {
            COLORS[color_i % COLORS.len()]
        };
        // Dashed lines (fits, frontiers) in grey, each with its own dashes.
        let dashes = DASHES[dashed_i % DASHES.len()];
        if s.dashed {
            dashed_i += 1;
        } else {
            color_i += 1;
        }
        let pts: Vec<(f64, f64, Option<f64>)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y, _)| x.is_finite() && y.is_finite() && (!p.log_x || *x > 0.0))
            .collect();
        if is_line && pts.iter().any(|p| p.2.is_some()) && pts.len() > 1 {
            let upper: Vec<String> = pts
                .iter()
                .map(|(x, y, c)| format!("{:.1},{:.1}", px(*x), py(y + c.unwrap_or(0.0))))
                .collect();
            let lower: Vec<String> = pts
                .iter()
                .rev()
                .map(|(x, y, c)| format!("{:.1},{:.1}", px(*x), py(y - c.unwrap_or(0.0))))
                .collect();
            out.push_str(&format!("<polygon points=\"{} {}\" fill=\"{color}\" fill-opacity=\"0.15\" stroke=\"none\" clip-path=\"url(#area)\"/>\n", upper.join(" "), lower.join(" ")));
        }
        if is_line {
            let path: Vec<String> = pts
                .iter()
                .map(|(x, y, _)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            out.push_str(&format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"{}/>\n", path.join(" "), if s.dashed { format!(" stroke-dasharray=\"{dashes}\"") } else { String::new() }));
        } else {
            // A scatter point's interval: a vertical bar, clipped to the plot.
            for (x, y, c) in &pts {
                if let Some(c) = c.filter(|c| c.is_finite() && *c > 0.0) {
                    out.push_str(&format!("<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"{color}\" stroke-opacity=\"0.5\" clip-path=\"url(#area)\"/>\n", px(*x), py(y - c), py(y + c)));
                }
            }
        }
        for (x, y, c) in &pts {
            // Hovered in a browser, a point says what it is.
            let interval = c.map(|c| format!(" ± {c:.4}")).unwrap_or_default();
            out.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"{color}\"><title>{}: {} = {}, {} = {y:.4}{interval}</title></circle>\n",
                px(*x),
                py(*y),
                if is_line { 2.5 } else { 3.5 },
                esc(&s.label),
                esc(&p.x_label),
                fmt_value(*x, p.log_x),
                esc(&p.y_label),
            ));
        }
        let ly = T + 14.0 * legend as f64 + 6.0;
        out.push_str(&format!("<rect x=\"{0}\" y=\"{1:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{2}\" y=\"{3:.1}\">{4}</text>\n", W - R + 10.0, ly - 8.0, W - R + 24.0, ly + 1.0, esc(&s.label)));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ticks_are_round_values() {
        let (t, step) = linear_ticks(0.937, 2.495);
        assert_eq!(step, 0.5);
        assert_eq!(t, [1.0, 1.5, 2.0]);
        let labels: Vec<String> = t.iter().map(|v| fmt_tick(*v, false, step)).collect();
        assert_eq!(labels, ["1.0", "1.5", "2.0"]);
        let (t, step) = linear_ticks(-0.02, 1.03);
        assert_eq!((t.first(), t.last(), step), (Some(&0.0), Some(&1.0), 0.2));
        assert_eq!(fmt_tick(0.4, false, step), "0.4");
        assert_eq!(fmt_tick(0.0, false, step), "0");
        assert_eq!(fmt_tick(0.75, false, 0.25), "0.75");
        assert_eq!(fmt_tick(25.0, false, 25.0), "25");
        let (t, step) = linear_ticks(2.2551, 2.6122);
        assert!(t.len() >= 3 && t.len() <= 6, "{t:?}");
        assert!(t
            .iter()
            .all(|v| (v / step - (v / step).round()).abs() < 1e-9));
    }

    #[test]
    fn log_ticks_are_powers_of_ten_or_their_multiples() {
        assert_eq!(log_ticks(-5.0, -1.3), [-5.0, -4.0, -3.0, -2.0]);
        let narrow: Vec<f64> = log_ticks((3e-3f64).log10(), (2e-2f64).log10())
            .iter()
            .map(|v| 10f64.powf(*v))
            .collect();
        let want = [5e-3, 1e-2, 2e-2];
        assert_eq!(narrow.len(), want.len(), "{narrow:?}");
        for (a, b) in narrow.iter().zip(want) {
            assert!((a / b - 1.0).abs() < 1e-9, "{narrow:?}");
        }
    }

    /// Every tick's label is the value at its position (the "1e-2" tick once sat at 1.28e-2), a
    /// wide band does not stretch the y axis beyond half the points' spread, and each point
    /// says what it is when hovered.
    #[test]
    fn ticks_sit_at_their_values_and_bands_are_clipped() {
        let p = Plot {
            key: "k".into(),
            title: "t".into(),
            x_label: "learning rate".into(),
            y_label: "loss".into(),
            log_x: true,
            lines: vec![Series {
                label: "full".into(),
                points: vec![(1e-4, 2.0, Some(0.1)), (1.28e-2, 2.5, Some(5.0))],
                dashed: false,
            }],
            scatter: vec![],
        };
        let svg = plot(&p);
        let (x0, x1) = (1e-4f64.log10(), 1.28e-2f64.log10());
        for tick in ["1e-4", "1e-3", "1e-2"] {
            let at = svg
                .find(&format!(">{tick}</text>"))
                .unwrap_or_else(|| panic!("no {tick} tick: {svg}"));
            let x: f64 = svg[..at]
                .rsplit("<text x=\"")
                .next()
                .and_then(|r| r.split('"').next())
                .unwrap()
                .parse()
                .unwrap();
            let v: f64 = tick.parse().unwrap();
            let want = L + (v.log10() - x0) / (x1 - x0) * (W - L - R);
            assert!((x - want).abs() < 0.1, "{tick} at {x}, its value at {want}");
        }
        // The points span 2.0 to 2.5: the axis ends by 2.75 (+ 5% padding), not at 7.5.
        assert!(
            !svg.contains(">7.0</text>") && !svg.contains(">3.0</text>"),
            "{svg}"
        );
        assert!(svg.contains("clip-path=\"url(#area)\""));
        assert!(
            svg.contains("<title>full: learning rate = 1.280e-2, loss = 2.5000 ± 5.0000</title>")
        );
    }
}
