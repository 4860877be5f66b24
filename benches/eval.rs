//! Scoring multiple-choice items (HellaSwag-like: a context and four continuations) with the
//! trainer's Llama: each log-likelihood request alone, as the evaluation did before, beside the
//! right-padded batches it uses now, in one run, on one thread count; with the largest
//! difference between the two's log-likelihoods. Then greedy generation (GSM8K-like: prompts of
//! varied length, 64 new tokens): each prompt alone beside the left-padded batches, with how many
//! texts came out the same; and HumanEval-like sampling (n samples of one prompt at 0.2, each
//! from its own seeded generator), one by one beside batched. Run by scripts/bench-eval; prints
//! three Markdown tables.
//! `cargo bench --bench eval -- [SHAPE...] [--items N]` (default tiny and small, 64 items).

use std::time::Instant;

use sweep::metrics::lm::{LlamaText, BATCH_TOKENS, DECODE_ROWS};
use sweep::metrics::{Completion, StopRule, TextModel};
use sweep::model::config::LlamaConfig;
use sweep::model::llama::{BuildOptions, Llama};
use sweep::model::tokenizer::Tokenizer;
use tch::Device;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let items: usize = args
        .iter()
        .position(|a| a == "--items")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(64);
    let mut shapes: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !a.starts_with("--") && args.get(i.wrapping_sub(1)).is_none_or(|p| p != "--items")
        })
        .map(|(_, a)| a.clone())
        .collect();
    if shapes.is_empty() {
        shapes = vec!["tiny".into(), "small".into()];
    }
    tch::manual_seed(0);
    // Contexts of 60 to 160 bytes and continuations of 10 to 40: the lengths of HellaSwag's.
    let texts: Vec<(String, Vec<String>)> = (0..items)
        .map(|i| {
            let context = format!(
                "A person {} the kitchen and then",
                "walks into ".repeat(4 + i % 10)
            );
            let choices = (0..4)
                .map(|c| {
                    format!(
                        " picks up the {} pan{}",
                        ["red", "blue", "old", "new"][c],
                        " again".repeat((i + c) % 5)
                    )
                })
                .collect();
            (context, choices)
        })
        .collect();
    let requests: Vec<(&str, &str)> = texts
        .iter()
        .flat_map(|(c, xs)| xs.iter().map(move |x| (c.as_str(), x.as_str())))
        .collect();
    println!(
        "| shape | requests | one by one (req/s) | batched, {BATCH_TOKENS} positions (req/s) | speedup | largest difference |"
    );
    println!("|---|---|---|---|---|---|");
    for shape in &shapes {
        let Some(cfg) = LlamaConfig::builtin(shape) else {
            eprintln!("eval: unknown shape {shape}");
            std::process::exit(2)
        };
        let model = Llama::new(&cfg, &BuildOptions::default(), Device::Cpu).unwrap();
        let time = |positions: usize| {
            let mut lm = LlamaText::new(&model, &Tokenizer::Byte, None).batched(positions);
            // One warm-up request, then the whole set.
            lm.loglikelihoods(&requests[..1]).unwrap();
            let t0 = Instant::now();
            let lls = lm.loglikelihoods(&requests).unwrap();
            (lls, t0.elapsed().as_secs_f64())
        };
        let (alone, t_alone) = time(1);
        let (batched, t_batched) = time(BATCH_TOKENS);
        let diff = alone
            .iter()
            .zip(&batched)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let n = requests.len() as f64;
        println!(
            "| {shape} | {} | {:.1} | {:.1} | {:.2}x | {diff:.1e} |",
            requests.len(),
            n / t_alone,
            n / t_batched,
            t_alone / t_batched
        );
    }
    generation(&shapes, items);
}

/// Greedy completions of `items` prompts, one by one and batched, per shape; then `items`
/// samples of one prompt.
fn generation(shapes: &[String], items: usize) {
    let prompts: Vec<String> = (0..items)
        .map(|i| {
            format!(
                "Question {i}: {}how many apples?",
                "Tom has 3 apples. ".repeat(2 + i % 6)
            )
        })
        .collect();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let greedy = Completion {
        max_new: 64,
        temperature: 0.0,
        stop: StopRule::Eos,
    };
    side_by_side(shapes, "prompts", prompts.len(), |lm, warm| {
        let p = if warm { &prompts[..1] } else { &prompts[..] };
        lm.completions(p, &greedy).unwrap()
    });
    // HumanEval's sampled pass@k: n samples of one prompt at 0.2, each from its own generator.
    let sampled = Completion {
        temperature: 0.2,
        ..greedy
    };
    let n = items.max(1);
    side_by_side(shapes, "samples of one prompt", n, |lm, warm| {
        let n = if warm { 1 } else { n };
        lm.samples(prompts[0], n, &sampled, 7).unwrap()
    });
}

/// One table: `decode(model, warm-up)` one by one and in batches of [`DECODE_ROWS`], per shape,
/// in tokens (bytes) per second, with how many of the `count` texts came out the same.
fn side_by_side(
    shapes: &[String],
    what: &str,
    count: usize,
    decode: impl Fn(&mut LlamaText, bool) -> Vec<String>,
) {
    println!();
    println!(
        "| shape | {what} | one by one (tokens/s) | batched, {DECODE_ROWS} rows (tokens/s) | speedup | same text |"
    );
    println!("|---|---|---|---|---|---|");
    for shape in shapes {
        let cfg = LlamaConfig::builtin(shape).expect("checked above");
        let model = Llama::new(&cfg, &BuildOptions::default(), Device::Cpu).unwrap();
        let time = |rows: usize| {
            let mut lm = LlamaText::new(&model, &Tokenizer::Byte, None).decoding_rows(rows);
            decode(&mut lm, true);
            let t0 = Instant::now();
            let texts = decode(&mut lm, false);
            (texts, t0.elapsed().as_secs_f64())
        };
        let (alone, t_alone) = time(1);
        let (batched, t_batched) = time(DECODE_ROWS);
        let same = alone.iter().zip(&batched).filter(|(a, b)| a == b).count();
        // Bytes: the byte tokenizer's tokens.
        let tokens: usize = alone.iter().map(String::len).sum();
        println!(
            "| {shape} | {count} | {:.1} | {:.1} | {:.2}x | {same}/{count} |",
            tokens as f64 / t_alone,
            tokens as f64 / t_batched,
            t_alone / t_batched,
        );
    }
}
