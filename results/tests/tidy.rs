//! Tidy checks on the crate's own sources: every file says what it is for, and nothing here
//! pulls in candle (Architecture Invariant: results knows nothing of candle).

use std::path::Path;

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn every_file_starts_with_a_module_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["src", "tests"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.starts_with("//! "), "{} lacks a `//!` header", file.display());
        }
    }
}

#[test]
fn no_candle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let deps = manifest.lines().filter(|l| l.trim_start().starts_with("candle"));
    assert_eq!(deps.count(), 0, "results/Cargo.toml must not depend on candle");
    for file in rust_files(&root.join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("candle_"), "{} mentions a candle crate", file.display());
    }
}
