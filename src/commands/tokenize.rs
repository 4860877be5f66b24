//! `sweep tokenize SPEC.toml`: build the token caches a sweep's runs read (its target data in
//! the sweep's regime, its source data as text), with the model's tokenizer, on every core, so
//! that no run waits for them. The trainer builds a missing cache itself on first use; this does
//! it ahead of time, where the data is, into $SWEEP_CACHE (which cluster jobs must share).

use crate::cli::{GlobalArgs, TokenizeArgs};
use crate::spec::Regime;
use crate::train::data::resolve_source;

/// Run `sweep tokenize`.
pub fn run(g: &GlobalArgs, args: &TokenizeArgs) -> anyhow::Result<()> {
    let (_, plan) = super::load_plan(&args.spec, false)?;
    let first = plan.runs.first().ok_or_else(|| {
        super::UsageError(format!(
            "{} plans no runs: nothing to tokenize",
            args.spec.display()
        ))
    })?;
    let run = plan.run_file(first);
    let opts = crate::train::TrainOptions::from_env(None);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let tokenizer = crate::train::load_tokenizer(&run)?;
    let data = &run.shared.data;
    let mut out = Vec::new();
    for (role, source, regime) in [
        ("target", &data.target, data.regime),
        ("source", &data.source, Regime::Cpt),
    ] {
        let path = resolve_source(source, &opts.data_dir)?;
        let (cache, built) =
            crate::train::tokens_of(&path, regime, data, &tokenizer, &opts.cache_dir, threads)?;
        let m = cache.meta();
        let line = serde_json::json!({
            "role": role,
            "source": path.display().to_string(),
            "regime": regime,
            "tokenizer": m.tokenizer,
            "documents": m.docs,
            "tokens": m.tokens,
            "shards": m.shards.len(),
            "cache": cache.dir().display().to_string(),
            "built": built,
            "warnings": m.warnings,
        });
        if !g.json && !g.quiet {
            println!(
                "{role}: {} ({}): {} documents, {} tokens in {} shard(s), {} -> {}",
                path.display(),
                match regime {
                    Regime::Cpt => "text",
                    Regime::Ift => "prompt/response pairs",
                },
                m.docs,
                m.tokens,
                m.shards.len(),
                match &built {
                    Some(b) => format!(
                        "tokenized in {:.1} s ({:.1} MB/s per thread, {} threads)",
                        b.seconds,
                        b.mb_per_s_per_thread(),
                        b.threads
                    ),
                    None => "cached".into(),
                },
                cache.dir().display()
            );
            for w in &m.warnings {
                println!("  warning: {w}");
            }
        }
        out.push(line);
    }
    if g.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
