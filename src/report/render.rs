//! Renderers of a [`Report`]: terminal tables, Markdown, CSV, JSON and a self-contained HTML
//! page. Each is a pure function of the report.

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};

use super::summary::Summary;
use super::value::csv_columns;
use super::{Report, TableData, Value};

/// Columns the terminal tables fit in: long cells wrap.
pub const TERMINAL_WIDTH: u16 = 100;

/// Wrap `text` at spaces into lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0usize;
    for word in text.split(' ') {
        let w = word.chars().count();
        if line > 0 && line + 1 + w > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += w;
    }
    out
}

/// The report as terminal tables, each within [`TERMINAL_WIDTH`] columns (cells wrap).
pub fn terminal(r: &Report) -> String {
    let mut s = String::new();
    for t in &r.tables {
        s.push_str(&terminal_table(t));
    }
    notes(r, &mut s);
    s
}

/// One table for the terminal: its title, the table within [`TERMINAL_WIDTH`] columns, its note.
fn terminal_table(t: &TableData) -> String {
    let mut s = format!("\n{}\n", wrap(&t.title, TERMINAL_WIDTH as usize));
    let mut tt = Table::new();
    tt.load_preset(UTF8_FULL_CONDENSED);
    tt.set_content_arrangement(ContentArrangement::Dynamic);
    tt.set_width(TERMINAL_WIDTH);
    if t.header.iter().any(|h| !h.is_empty()) {
        tt.set_header(t.header.clone());
    }
    for row in &t.rows {
        tt.add_row(row.iter().map(Value::as_str));
    }
    s.push_str(&format!("{tt}\n"));
    if let Some(n) = &t.note {
        s.push_str(&format!("{}\n", wrap(n, TERMINAL_WIDTH as usize)));
    }
    s
}

/// Several sweeps' findings for the terminal.
pub fn summary_terminal(s: &Summary) -> String {
    terminal_table(&s.table)
}

/// Several sweeps' findings as Markdown, each sweep's name linked to its report (`links`, in
/// the sweeps' order).
pub fn summary_markdown(s: &Summary, links: &[String]) -> String {
    let mut out = String::from("# The paper's findings across sweeps\n\n");
    for (sweep, link) in s.sweeps.iter().zip(links) {
        out.push_str(&format!(
            "- [{}]({link}): {} {}, learning metric `{}`\n",
            sweep.sweep,
            sweep.domain,
            sweep.regime,
            sweep.learning_metric.as_deref().unwrap_or("none")
        ));
    }
    out.push('\n');
    out.push_str(&md_table(&s.table));
    out
}

fn notes(r: &Report, s: &mut String) {
    if !r.notes.is_empty() {
        s.push_str("\nNotes:\n");
        for n in &r.notes {
            s.push_str(&format!(
                "- {}\n",
                wrap(n, TERMINAL_WIDTH as usize - 2).replace('\n', "\n  ")
            ));
        }
    }
}

fn md_cell(c: &str) -> String {
    c.replace('|', "\\|").replace('\n', " ")
}

fn md_table(t: &TableData) -> String {
    let mut s = format!("## {}\n\n", t.title);
    let cols = t.header.len().max(t.rows.first().map_or(0, |r| r.len()));
    let header: Vec<String> = (0..cols)
        .map(|i| md_cell(t.header.get(i).map(String::as_str).unwrap_or("")))
        .collect();
    s.push_str(&format!("| {} |\n", header.join(" | ")));
    s.push_str(&format!("|{}\n", "---|".repeat(cols)));
    for row in &t.rows {
        s.push_str(&format!(
            "| {} |\n",
            row.iter()
                .map(|c| md_cell(c.as_str()))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    if t.rows.is_empty() {
        s.push_str("\n(no rows)\n");
    }
    if let Some(n) = &t.note {
        s.push_str(&format!("\n{n}\n"));
    }
    s.push('\n');
    s
}

/// The key of the findings' table: the plots follow it, each saying which findings it shows.
const FINDINGS: &str = "findings";

/// Which findings a plot shows, by its key.
fn shows(key: &str) -> &'static str {
    match key {
        "learning_forgetting" => "Findings 2 and 3: how much each method forgets for what it learns, and whether they share one frontier.",
        "lr_sensitivity" => "Finding 5: each configuration's best learning rate.",
        "data_scaling" => "Findings 1 and 6: how much each method learns, and how that grows with the tokens trained.",
        "spectral_rank" => "Finding 4: the rank of each configuration's weight change (the rank for 90% of its variance), full fine-tuning's against LoRA's.",
        _ => "",
    }
}

/// The report as Markdown, with the plots as linked SVG files (`KEY.svg` beside it), right
/// after the findings they show.
pub fn markdown(r: &Report) -> String {
    let mut s = format!("# Sweep report: {}\n\n", r.sweep);
    if let Some(l) = &r.learning_metric {
        s.push_str(&format!(
            "Learning metric: `{l}`. Forgetting metric: `{}`.\n\n",
            r.forgetting_metric.as_deref().unwrap_or("none measured")
        ));
    }
    let plots_md = |s: &mut String| {
        for p in &r.plots {
            s.push_str(&format!(
                "{}\n\n![{}]({}.svg)\n\n",
                shows(&p.key),
                p.title,
                p.key
            ));
        }
    };
    for t in &r.tables {
        s.push_str(&md_table(t));
        if t.key == FINDINGS {
            plots_md(&mut s);
        }
    }
    if !r.tables.iter().any(|t| t.key == FINDINGS) {
        plots_md(&mut s);
    }
    let mut n = String::new();
    notes(r, &mut n);
    s.push_str(&n);
    s
}

/// A table's CSV header and rows: its numbers, each column as [`csv_columns`] spreads it.
fn table_numbers(t: &TableData) -> (Vec<String>, Vec<Vec<String>>) {
    let cols = t
        .header
        .len()
        .max(t.rows.iter().map(Vec::len).max().unwrap_or(0));
    let missing = Value::missing();
    let mut header = Vec::new();
    let mut rows = vec![Vec::new(); t.rows.len()];
    for j in 0..cols {
        let cells: Vec<&Value> = t
            .rows
            .iter()
            .map(|r| r.get(j).unwrap_or(&missing))
            .collect();
        let (names, fields) = csv_columns(t.header.get(j).map_or("", String::as_str), &cells);
        header.extend(names);
        for (row, f) in rows.iter_mut().zip(fields) {
            row.extend(f);
        }
    }
    (header, rows)
}

/// One CSV text per table (its cells' numbers, [`table_numbers`]): (key, csv).
pub fn csv_tables(r: &Report) -> Vec<(String, String)> {
    let csv_of = |header: &[String], rows: &[Vec<String>]| {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(header);
        for row in rows {
            let _ = w.write_record(row);
        }
        let bytes = w.into_inner().unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let mut out: Vec<(String, String)> = r
        .tables
        .iter()
        .map(|t| {
            let (header, rows) = table_numbers(t);
            (t.key.clone(), csv_of(&header, &rows))
        })
        .collect();
    // The tables as numbers, one row per configuration and budget.
    let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let header: Vec<String> = [
        "config_id",
        "method",
        "group",
        "learning_rate",
        "rank",
        "modules",
        "budget_tokens",
        "learning_mean",
        "learning_ci_low",
        "learning_ci_high",
        "learning_n",
        "forgetting_mean",
        "forgetting_ci_low",
        "forgetting_ci_high",
        "forgetting_n",
        "diverged",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = r
        .cells
        .iter()
        .map(|c| {
            let mut row = vec![
                c.config_id.clone(),
                c.method.clone(),
                c.group.clone(),
                c.learning_rate.to_string(),
                c.rank.map(|x| x.to_string()).unwrap_or_default(),
                c.modules.clone().unwrap_or_default(),
                c.budget_tokens.to_string(),
            ];
            for i in [c.learning, c.forgetting] {
                row.extend([
                    num(i.map(|i| i.mean)),
                    num(i.and_then(|i| i.ci_low)),
                    num(i.and_then(|i| i.ci_high)),
                    i.map(|i| i.n.to_string()).unwrap_or_default(),
                ]);
            }
            row.push(c.diverged.to_string());
            row
        })
        .collect();
    out.push(("cells".into(), csv_of(&header, &rows)));
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page (inline CSS and SVG; opens offline).
pub fn html(r: &Report) -> String {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sweep report: {0}</title>\n<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:14px}}th{{background:#f3f3f3}}.note{{color:#555;font-size:13px}}</style></head>\n<body>\n<h1>Sweep report: {0}</h1>\n",
        esc(&r.sweep)
    );
    let plots_html = |s: &mut String| {
        for p in &r.plots {
            s.push_str(&format!(
                "<h2 id=\"plot-{}\">{}</h2>\n<p class=\"note\">{}</p>\n{}\n",
                esc(&p.key),
                esc(&p.title),
                esc(shows(&p.key)),
                super::svg::plot(p)
            ));
        }
    };
    for t in &r.tables {
        s.push_str(&format!(
            "<h2 id=\"{}\">{}</h2>\n<table>\n",
            esc(&t.key),
            esc(&t.title)
        ));
        if t.header.iter().any(|h| !h.is_empty()) {
            s.push_str(&format!(
                "<tr>{}</tr>\n",
                t.header
                    .iter()
                    .map(|h| format!("<th>{}</th>", esc(h)))
                    .collect::<String>()
            ));
        }
        for row in &t.rows {
            s.push_str(&format!(
                "<tr>{}</tr>\n",
                row.iter()
                    .map(|c| format!("<td>{}</td>", esc(c.as_str())))
                    .collect::<String>()
            ));
        }
        s.push_str("</table>\n");
        if let Some(n) = &t.note {
            s.push_str(&format!("<p class=\"note\">{}</p>\n", esc(n)));
        }
        if t.key == FINDINGS {
            plots_html(&mut s);
        }
    }
    if !r.tables.iter().any(|t| t.key == FINDINGS) {
        plots_html(&mut s);
    }
    if !r.notes.is_empty() {
        s.push_str("<h2>Notes</h2>\n<ul>\n");
        for n in &r.notes {
            s.push_str(&format!("<li>{}</li>\n", esc(n)));
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</body></html>\n");
    s
}
