//! `sweep report SPEC|DIR`: tables in the terminal, and report.md, report.html, SVG plots, CSV
//! tables and report.json in results/NAME/report/.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{load_plan, sweep_dir};
use crate::cli::{GlobalArgs, SweepArg};
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
pub fn run(g: &GlobalArgs, args: &SweepArg) -> anyhow::Result<()> {
    let (report, html) = build_and_write(g, &args.spec)?;
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
