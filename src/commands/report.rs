//! `sweep report SPEC|DIR...`: tables in the terminal, and report.md, report.html, SVG plots, CSV
//! tables and report.json in results/NAME/report/; with several sweeps, their findings side by
//! side in results/summary/.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{load_plan, sweep_dir};
use crate::cli::{GlobalArgs, ReportArgs};
use crate::report::summary::{summarize, Summary};
use crate::report::{build, load::load, render, svg, Report};
use crate::util::write_atomic;

/// The results folder named by a spec (its results/NAME, with the sweep it must hold) or given
/// directly.
fn results_dir(g: &GlobalArgs, arg: &Path) -> anyhow::Result<(PathBuf, Option<String>)> {
    if arg.is_dir() {
        return Ok((arg.to_path_buf(), None));
    }
    let (_, plan) = load_plan(arg, true)?;
    Ok((sweep_dir(g, &plan.name), Some(plan.name)))
}

/// The folder of the best run of the sweep `arg` names (its spec or results folder), of `of`'s
/// methods, as its report names it; with that run and the report's learning metric.
#[cfg(feature = "torch")]
pub fn best_run(
    g: &GlobalArgs,
    arg: &Path,
    of: crate::cli::BestOf,
) -> anyhow::Result<(PathBuf, crate::report::tables::BestRun, String)> {
    use crate::cli::BestOf;
    let (dir, _) = results_dir(g, arg)?;
    let report = build(&load(&dir)?);
    let (pick, what) = match of {
        BestOf::Any => (report.best.iter().find(|b| b.overall), "completed"),
        BestOf::Full => (
            report.best.iter().find(|b| b.method == "full"),
            "full fine-tuning",
        ),
        BestOf::Lora => (report.best.iter().find(|b| b.method == "lora"), "LoRA"),
    };
    match pick {
        Some(b) => Ok((
            dir.join("runs").join(&b.run_id),
            b.clone(),
            report.learning_metric.unwrap_or_default(),
        )),
        None => Err(super::UsageError(format!(
            "{}: no {what} run has a learning evaluation yet, so there is no best run to export: `sweep status {}` says how far the runs have got",
            dir.display(),
            arg.display()
        ))
        .into()),
    }
}

/// Write every report file into `dir` (created); returns the HTML path.
pub fn write_report(report: &Report, dir: &Path) -> anyhow::Result<PathBuf> {
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let p = dir.join(name);
        write_atomic(&p, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", p.display()))
    };
    write("report.md", &render::markdown(report))?;
    write("report.html", &render::html(report))?;
    write("report.json", &serde_json::to_string_pretty(report)?)?;
    for p in &report.plots {
        write(&format!("{}.svg", p.key), &svg::plot(p))?;
    }
    for (key, csv) in render::csv_tables(report) {
        write(&format!("tables/{key}.csv"), &csv)?;
    }
    Ok(dir.join("report.html"))
}

/// Run `sweep report`.
pub fn run(g: &GlobalArgs, args: &ReportArgs) -> anyhow::Result<()> {
    if let [spec] = args.specs.as_slice() {
        if args.summary.is_some() {
            return Err(super::UsageError(
                "--summary puts several sweeps' findings side by side: give two sweeps or more"
                    .into(),
            )
            .into());
        }
        return run_one(g, spec);
    }
    // The same results folder twice, however it is named, before anything is written.
    let mut seen: Vec<PathBuf> = Vec::new();
    for spec in &args.specs {
        let (dir, _) = results_dir(g, spec)?;
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if let Some(i) = seen.iter().position(|d| *d == dir) {
            return Err(super::UsageError(format!(
                "{} and {} are the same sweep's results ({}): name each sweep once",
                args.specs[i].display(),
                spec.display(),
                dir.display()
            ))
            .into());
        }
        seen.push(dir);
    }
    let mut reports = Vec::new();
    let mut htmls = Vec::new();
    for spec in &args.specs {
        let (report, html) = build_and_write(g, spec)?;
        reports.push(report);
        htmls.push(html);
    }
    let summary = summarize(&reports);
    let dir = args
        .summary
        .clone()
        .unwrap_or_else(|| g.results.join("summary"));
    if dir.join("plan.jsonl").exists() {
        return Err(super::UsageError(format!(
            "{} holds a sweep's results (plan.jsonl): write the summary elsewhere with --summary DIR",
            dir.display()
        ))
        .into());
    }
    let md = write_summary(&summary, &htmls, &dir)?;
    if g.json {
        serde_json::to_writer_pretty(
            std::io::stdout(),
            &serde_json::json!({"reports": reports, "summary": summary}),
        )?;
        println!();
    } else if !g.quiet {
        for html in &htmls {
            println!("wrote {}", html.display());
        }
        print!("{}", render::summary_terminal(&summary));
        println!("\nwrote {} (and summary.json)", md.display());
    }
    Ok(())
}

/// One sweep's report, in the terminal (or as JSON) and in its folder.
fn run_one(g: &GlobalArgs, spec: &Path) -> anyhow::Result<()> {
    let (report, html) = build_and_write(g, spec)?;
    if g.json {
        serde_json::to_writer_pretty(std::io::stdout(), &report)?;
        println!();
    } else if !g.quiet {
        print!("{}", render::terminal(&report));
        println!(
            "\nwrote {} (and report.md, SVG plots, tables/*.csv)",
            html.display()
        );
    }
    Ok(())
}

/// Write summary.md (linking each sweep's report.md beside the `htmls`) and summary.json into
/// `dir` (created); returns the Markdown's path.
fn write_summary(summary: &Summary, htmls: &[PathBuf], dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Links relative to the summary, so that the folders can move together.
    let base = std::fs::canonicalize(dir)?;
    let links = htmls
        .iter()
        .map(|h| {
            let md = h.with_file_name("report.md");
            let abs =
                std::fs::canonicalize(&md).with_context(|| format!("finding {}", md.display()))?;
            Ok(relative(&abs, &base).display().to_string())
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    let md = dir.join("summary.md");
    let write = |p: &Path, text: &str| -> anyhow::Result<()> {
        write_atomic(p, |w| w.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", p.display()))
    };
    write(&md, &render::summary_markdown(summary, &links))?;
    write(
        &dir.join("summary.json"),
        &serde_json::to_string_pretty(summary)?,
    )?;
    Ok(md)
}

/// `path` relative to the folder `base` (both absolute): `../a/b` and the like.
fn relative(path: &Path, base: &Path) -> PathBuf {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

/// Build the report of the sweep named by `spec` (its spec or results folder) and write its
/// files into the folder's report/; returns it and the HTML path.
pub fn build_and_write(g: &GlobalArgs, spec: &Path) -> anyhow::Result<(Report, PathBuf)> {
    let (dir, expected) = results_dir(g, spec)?;
    let input = load(&dir)?;
    if let Some(name) = expected.filter(|n| !input.sweep.is_empty() && *n != input.sweep) {
        return Err(super::UsageError(format!(
            "{} holds the plan of sweep `{}`, not of `{name}` ({}): report that folder by its own spec, or use another --results folder",
            dir.display(),
            input.sweep,
            spec.display()
        ))
        .into());
    }
    let report = build(&input);
    let html = write_report(&report, &dir.join("report"))?;
    Ok((report, html))
}
