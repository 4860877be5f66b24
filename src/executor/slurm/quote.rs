//! Shell quoting for every argument sent to the remote shell: nothing a user writes (paths, names)
//! is ever interpreted there.

/// Quote `s` for a POSIX shell: unchanged when it holds only safe characters, else in single
/// quotes with each `'` written as `'\''`.
pub fn sh_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// A remote path as a shell word that works from any folder: absolute paths quoted, relative
/// ones (which mean: from the remote home) as `"$HOME"/'path'`.
pub fn from_home(p: &str) -> String {
    if p.starts_with('/') {
        sh_quote(p)
    } else {
        format!("\"$HOME\"/{}", sh_quote(p))
    }
}

/// Join a remote path: `dir/name`, with no doubled slash.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_words_stay_and_everything_else_is_single_quoted() {
        assert_eq!(sh_quote("runs/abc-s0/run.json"), "runs/abc-s0/run.json");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("$(touch pwned)"), "'$(touch pwned)'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("`x`;\n|&"), "'`x`;\n|&'");
    }

    #[test]
    fn quoted_text_round_trips_through_a_real_shell() {
        for s in [
            "a b",
            "it's \"q\"",
            "$(touch pwned) `x` $HOME",
            "\\n;|&<>*?~",
            "",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }

    #[test]
    fn relative_paths_are_from_home() {
        assert_eq!(from_home("/a b"), "'/a b'");
        assert_eq!(from_home("w/bin/x"), "\"$HOME\"/w/bin/x");
    }

    #[test]
    fn joins_paths() {
        assert_eq!(join("a", "b"), "a/b");
        assert_eq!(join("a/", "b"), "a/b");
        assert_eq!(join("", "b"), "b");
    }
}
