//! What several integration tests share: the small corpora they train on.

use std::path::Path;

/// code.txt (a target domain of Python-like lines) and english.txt (a source domain) in `dir`.
pub fn write_corpora(dir: &Path) {
    let code: String = (0..300)
        .map(|i| format!("def f{i}(x):\n    return x * {i} + {}\n\n", i % 7))
        .collect();
    let english: String = (0..300)
        .map(|i| format!("The {i}th knight rode to the castle and spoke of honour.\n"))
        .collect();
    std::fs::write(dir.join("code.txt"), code).unwrap();
    std::fs::write(dir.join("english.txt"), english).unwrap();
}
