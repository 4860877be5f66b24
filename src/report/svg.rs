//! SVG plots drawn by hand: axes with ticks, lines with interval bands, scatter points. Pure text
//! output, no fonts needed, so the same data always gives the same file.

use super::{Plot, Series};

const W: f64 = 640.0;
const H: f64 = 400.0;
const L: f64 = 70.0;
const R: f64 = 170.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_tick(v: f64, log: bool) -> String {
    if log || v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-2) {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draw a plot as an SVG document.
pub fn plot(p: &Plot) -> String {
    let all: Vec<&Series> = p.lines.iter().chain(p.scatter.iter()).collect();
    let tx = |x: f64| if p.log_x { x.max(1e-300).log10() } else { x };
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for s in &all {
        for &(x, y, ci) in &s.points {
            if x.is_finite() && y.is_finite() && (!p.log_x || x > 0.0) {
                xs.push(tx(x));
                ys.push(y - ci.unwrap_or(0.0));
                ys.push(y + ci.unwrap_or(0.0));
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
    let (mut y0, mut y1) = (
        ys.iter().cloned().fold(f64::INFINITY, f64::min),
        ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    if x1 - x0 < 1e-12 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if y1 - y0 < 1e-12 {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| L + (tx(x) - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
    // Axes and ticks.
    out.push_str(&format!("<line x1=\"{L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\n<line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{0}\" stroke=\"black\"/>\n", H - B, W - R));
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let xv = x0 + f * (x1 - x0);
        let xr = if p.log_x { 10f64.powf(xv) } else { xv };
        let x = L + f * (W - L - R);
        out.push_str(&format!("<line x1=\"{x:.1}\" y1=\"{0}\" x2=\"{x:.1}\" y2=\"{1}\" stroke=\"black\"/><text x=\"{x:.1}\" y=\"{2}\" text-anchor=\"middle\">{3}</text>\n", H - B, H - B + 4.0, H - B + 16.0, fmt_tick(xr, p.log_x)));
        let yv = y0 + f * (y1 - y0);
        let y = py(yv);
        out.push_str(&format!("<line x1=\"{0}\" y1=\"{y:.1}\" x2=\"{L}\" y2=\"{y:.1}\" stroke=\"black\"/><text x=\"{1}\" y=\"{2:.1}\" text-anchor=\"end\">{3}</text>\n", L - 4.0, L - 6.0, y + 4.0, fmt_tick(yv, false)));
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
        (L + W - R) / 2.0,
        H - 12.0,
        esc(&p.x_label)
    ));
    out.push_str(&format!("<text x=\"16\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {0})\">{1}</text>\n", (T + H - B) / 2.0, esc(&p.y_label)));
    let mut color_i = 0;
    for (legend, (si, s)) in all.iter().enumerate().enumerate() {
        let is_line = si < p.lines.len();
        let color = if s.dashed {
            "#444"
        } else {
            COLORS[color_i % COLORS.len()]
        };
        if !s.dashed {
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
            out.push_str(&format!("<polygon points=\"{} {}\" fill=\"{color}\" fill-opacity=\"0.15\" stroke=\"none\"/>\n", upper.join(" "), lower.join(" ")));
        }
        if is_line {
            let path: Vec<String> = pts
                .iter()
                .map(|(x, y, _)| format!("{:.1},{:.1}", px(*x), py(*y)))
                .collect();
            out.push_str(&format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"{}/>\n", path.join(" "), if s.dashed { " stroke-dasharray=\"5,4\"" } else { "" }));
        }
        for (x, y, _) in &pts {
            out.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"{color}\"/>\n",
                px(*x),
                py(*y),
                if is_line { 2.5 } else { 3.5 }
            ));
        }
        let ly = T + 14.0 * legend as f64 + 6.0;
        out.push_str(&format!("<rect x=\"{0}\" y=\"{1:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{2}\" y=\"{3:.1}\">{4}</text>\n", W - R + 10.0, ly - 8.0, W - R + 24.0, ly + 1.0, esc(&s.label)));
    }
    out.push_str("</svg>\n");
    out
}
