//! `sweep`'s forward pass against Hugging Face transformers' on the tiny random checkpoints that
//! scripts/make-parity-fixtures writes (tests/fixtures/parity/): the same logits within 1e-5 for
//! every config layout the model code reads, and a refusal naming the field for one it does not;
//! and GGUFs of five of them (written by the gguf package as llama.cpp's converter writes them)
//! to the same logits.
#![cfg(feature = "torch")]

use std::path::PathBuf;

use sweep::model::gguf::{load_llama, GgufFile};
use sweep::model::llama::{BuildOptions, Llama};
use tch::{Device, Tensor};

/// A fixture's token sequence (a batch of one) and transformers' logits for it.
fn reference(dir: &std::path::Path) -> (Tensor, Tensor) {
    let mut r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let tokens = r["tokens"].to_kind(tch::Kind::Int64).unsqueeze(0);
    (tokens, r.remove("logits").unwrap())
}

#[test]
fn logits_match_transformers_or_the_config_is_refused() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures/parity: run scripts/make-parity-fixtures")
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 14, "{dirs:?}");
    let mut ggufs = 0;
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let expect: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expect.json")).unwrap())
                .unwrap();
        let loaded = Llama::from_hf_dir(&dir, &BuildOptions::default(), Device::Cpu);
        let field = expect["field"].as_str().unwrap_or("");
        if expect["refused"] == true && expect["refused_when"] != "run" {
            let e = loaded.expect_err(&name).to_string();
            assert!(e.contains(field) && e.contains("refused"), "{name}: {e}");
            continue;
        }
        let model = loaded.unwrap_or_else(|e| panic!("{name}: {e}"));
        let (tokens, want) = reference(&dir);
        let want = &want;
        let logits = {
            let _g = tch::no_grad_guard();
            model.forward(&tokens, false)
        };
        if expect["refused"] == true {
            // Loads, but a sequence it would compute otherwise than transformers is refused.
            let e = logits.expect_err(&name).to_string();
            assert!(e.contains(field), "{name}: {e}");
            continue;
        }
        let logits = logits.unwrap().squeeze_dim(0);
        assert_eq!(logits.size(), want.size(), "{name}");
        let diff = (&logits - want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        assert!(scale > 0.1, "{name}: logits of a real model");
        assert!(
            diff < 1e-5,
            "{name}: max |sweep - transformers| = {diff} (logits up to {scale})"
        );
        // The same model as llama.cpp's converter writes its GGUF, where the fixture has one.
        let gguf = dir.join("model.gguf");
        if gguf.exists() {
            let file = GgufFile::open(&gguf).unwrap();
            let model = load_llama(&file, &BuildOptions::default(), Device::Cpu)
                .unwrap_or_else(|e| panic!("{name}/model.gguf: {e}"));
            let logits = {
                let _g = tch::no_grad_guard();
                model.forward(&tokens, false).unwrap().squeeze_dim(0)
            };
            let diff = (&logits - want).abs().max().double_value(&[]);
            assert!(
                diff < 1e-5,
                "{name}/model.gguf: max |sweep - transformers| = {diff}"
            );
            ggufs += 1;
        }
    }
    assert!(ggufs >= 5, "the GGUFs were compared ({ggufs})");
}

/// Each family's tokenizer folder (tests/fixtures/tokenizers, written by
/// scripts/make-parity-fixtures in the layout its hub folders have) encodes every text as its
/// tokenizer.json's own pipeline does, BOS included; as transformers 5 does for every family but
/// Llama 2's transformers-4 layout, where the file (and `sweep`) is sentencepiece's Llama 2
/// (a dummy prefix before a leading space) and transformers 5 rebuilds it without one; EOS is
/// config.json's first, and transformers' end of turn stops generation; each conversation renders
/// through the folder's chat template to transformers' text and tokens.
#[test]
fn tokenizers_match_transformers_and_their_files() {
    use sweep::model::chat::ChatTemplate;
    use sweep::model::tokenizer::Tokenizer;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let mut families = Vec::new();
    for family in ["llama2", "llama3", "mistral", "qwen2", "smollm2"] {
        let dir = root.join(family);
        let expect: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let tok = Tokenizer::from_hf_dir(&dir).unwrap();
        let specials = tok.specials();
        let mut sp_checked = 0;
        for case in expect["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let mut got: Vec<i64> = specials.bos.into_iter().collect();
            got.extend(tok.encode(text).unwrap());
            assert_eq!(
                got,
                ids(&case["file"]),
                "{family}: {text:?} (the file's pipeline)"
            );
            if family != "llama2" {
                assert_eq!(got, ids(&case["transformers"]), "{family}: {text:?}");
            }
            if let Some(sp) = case.get("sentencepiece").filter(|_| family == "llama2") {
                assert_eq!(got, ids(sp), "{family}: {text:?} (sentencepiece)");
                sp_checked += 1;
            }
        }
        assert!(
            family != "llama2" || sp_checked >= 8,
            "{family}: {sp_checked}"
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let first_eos = config["eos_token_id"]
            .as_i64()
            .or_else(|| config["eos_token_id"][0].as_i64())
            .unwrap();
        assert_eq!(specials.eos, first_eos, "{family}: EOS");
        let hf_eos = expect["eos"].as_i64().unwrap();
        assert!(
            tok.is_end(hf_eos),
            "{family}: transformers' EOS {hf_eos} ends a turn"
        );
        assert!(!tok.is_end(ids(&expect["cases"][0]["file"])[1]), "{family}");
        let own = tok.special_texts();
        let template = ChatTemplate::from_hf_dir(&dir, (&own.0, &own.1)).unwrap();
        for chat in expect["chats"].as_array().unwrap() {
            let messages: Vec<(&str, &str)> = chat["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let text = template
                .render(&messages, chat["add_generation_prompt"].as_bool().unwrap())
                .unwrap();
            assert_eq!(text, chat["text"].as_str().unwrap(), "{family}");
            assert_eq!(
                tok.encode(&text).unwrap(),
                ids(&chat["ids"]),
                "{family}: {text:?}"
            );
        }
        families.push(family);
    }
    assert_eq!(families.len(), 5);
}

/// A Llama GGUF with each matrix in another quantization (tests/fixtures/gguf-quantized: the
/// K-quants, Q4_1, Q5_0, Q5_1 and Q8_0, written by the gguf package) computes transformers'
/// logits for the gguf package's dequantization of its tensors, within 1e-5.
#[test]
fn a_quantized_gguf_computes_the_logits_of_its_dequantized_weights() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf-quantized");
    let file = GgufFile::open(&dir.join("model.gguf")).unwrap();
    let types: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("types.json")).unwrap()).unwrap();
    for (name, ty) in &types {
        assert_eq!(&file.tensor(name).unwrap().ty.name(), ty, "{name}");
    }
    let mut distinct: Vec<&String> = types.values().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 9, "{distinct:?}");
    let model = load_llama(&file, &BuildOptions::default(), Device::Cpu).unwrap();
    let (tokens, want) = reference(&dir);
    let logits = {
        let _g = tch::no_grad_guard();
        model.forward(&tokens, false).unwrap().squeeze_dim(0)
    };
    let diff = (&logits - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    assert!(scale > 0.1, "logits of a real model: {scale}");
    assert!(
        diff < 1e-5,
        "max |sweep - transformers| = {diff} (logits up to {scale})"
    );
}
