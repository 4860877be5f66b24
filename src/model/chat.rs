//! Chat templates: the Jinja of a tokenizer_config.json's `chat_template`, a GGUF's
//! `tokenizer.chat_template`, or a file, rendered as transformers' `apply_chat_template` renders
//! it (blocks trimmed and left-stripped, `raise_exception`, Python's string methods), so that
//! instruction pairs are framed the way the model was tuned to see them.

use std::fmt;

use minijinja::{context, Environment, Error, ErrorKind};

/// A compiled chat template with the BOS and EOS strings it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The template's text (its identity in token caches).
    pub source: String,
    bos: String,
    eos: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChatTemplate({} bytes)", self.source.len())
    }
}

/// The `bos_token` and `eos_token` strings of a tokenizer_config.json (`v`), else `fallback`'s.
fn special_texts(v: &serde_json::Value, fallback: (&str, &str)) -> (String, String) {
    let token = |key: &str, default: &str| match v.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) => String::new(),
        Some(o) => o["content"].as_str().unwrap_or_default().to_string(),
        None => default.to_string(),
    };
    (
        token("bos_token", fallback.0),
        token("eos_token", fallback.1),
    )
}

impl ChatTemplate {
    /// Compile `source`; Err says where it does not parse.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// The chat template of a Hugging Face folder, as transformers reads it: tokenizer_config.json's
    /// `chat_template` (or the one named `default` of a list), with the `bos_token` and
    /// `eos_token` strings that file gives (a null one renders as nothing), else the ones of
    /// `fallback` (the text of the tokenizer's BOS and EOS: [`super::tokenizer::Tokenizer::special_texts`]).
    pub fn from_hf_dir(
        dir: &std::path::Path,
        fallback: (&str, &str),
    ) -> Result<ChatTemplate, String> {
        let file = dir.join("tokenizer_config.json");
        let v: serde_json::Value = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| format!("{}: missing or not JSON", file.display()))?;
        let t = &v["chat_template"];
        let named_default = t.as_array().and_then(|list| {
            list.iter()
                .find(|e| e["name"] == "default")
                .and_then(|e| e["template"].as_str())
        });
        let source = t.as_str().or(named_default).ok_or_else(|| {
            format!(
                "{} has no chat_template; give a Jinja file instead",
                file.display()
            )
        })?;
        let (bos, eos) = special_texts(&v, fallback);
        ChatTemplate::new(source, &bos, &eos)
    }

    /// The BOS and EOS strings a template of a Hugging Face folder renders with:
    /// tokenizer_config.json's `bos_token` and `eos_token`, as transformers passes them (a null
    /// one renders as nothing), else the text of `fallback` (the text of the tokenizer's BOS and EOS: [`super::tokenizer::Tokenizer::special_texts`]).
    pub fn hf_special_texts(dir: &std::path::Path, fallback: (&str, &str)) -> (String, String) {
        let v: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        special_texts(&v, fallback)
    }

    /// The text of a conversation of (role, content) messages; with `add_generation_prompt`,
    /// followed by what opens the assistant's turn.
    pub fn render(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let messages: Vec<_> = messages
            .iter()
            .map(|&(role, content)| context! { role => role, content => content })
            .collect();
        self.env
            .get_template("chat")
            .and_then(|t| {
                t.render(context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => &self.bos,
                    eos_token => &self.eos,
                })
            })
            .map_err(|e| format!("the chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The renderings of a template that uses what real ones use (a default system turn,
    /// loop.first, `.strip()`, raise_exception, bos_token, add_generation_prompt) are the ones
    /// transformers gives (tests/fixtures/chat, written by scripts/make-parity-fixtures).
    #[test]
    fn templates_render_as_transformers_renders_them() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/chat/expected.json"
        );
        let f: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let t = ChatTemplate::new(
            f["template"].as_str().unwrap(),
            f["bos"].as_str().unwrap(),
            f["eos"].as_str().unwrap(),
        )
        .unwrap();
        let cases = f["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 3);
        for case in cases {
            let messages: Vec<(&str, &str)> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            assert_eq!(
                t.render(&messages, gen).unwrap(),
                case["text"].as_str().unwrap()
            );
        }
        let e = t.render(&[("tool", "x")], false).unwrap_err();
        assert!(e.contains("unknown role tool"), "{e}");
        let e = ChatTemplate::new("{% for %}", "", "").unwrap_err();
        assert!(e.contains("does not parse"), "{e}");
    }
}
