//! Architecture invariants, one test each, checked on the real dependency graph (Cargo.lock,
//! transitively) and on the sources:
//! - the engine never depends on tonic, prost or tokio (nor mentions them);
//! - the coordinator, the results and the schema never depend on candle;
//! - the schema depends on none of candle, tonic, tokio or SQLite;
//! - every Rust file of every crate starts with a `//!` module doc.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// package name → its dependencies' names, from Cargo.lock.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
    let mut graph = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let name = block.lines().find_map(|l| l.strip_prefix("name = \"")).map(|s| s.trim_end_matches('"').to_string()).expect("a package name");
        let mut deps = Vec::new();
        if let Some(start) = block.find("dependencies = [") {
            for line in block[start..].lines().skip(1) {
                let line = line.trim();
                if line.starts_with(']') {
                    break;
                }
                // "name", or "name version" when several versions are locked.
                let dep = line.trim_matches(|c| c == '"' || c == ',').split(' ').next().unwrap_or_default();
                deps.push(dep.to_string());
            }
        }
        graph.insert(name, deps);
    }
    graph
}

/// Every package `name` depends on, transitively (normal, build and dev dependencies alike:
/// Cargo.lock does not tell them apart, so this is the strict reading).
fn closure(graph: &BTreeMap<String, Vec<String>>, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![name.to_string()];
    while let Some(p) = stack.pop() {
        for d in graph.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen
}

fn assert_free_of(krate: &str, forbidden: &[&str]) {
    let graph = lock_graph();
    assert!(graph.contains_key(krate), "{krate} is not in Cargo.lock");
    let deps = closure(&graph, krate);
    let bad: Vec<&&str> = forbidden.iter().filter(|f| deps.contains(**f)).collect();
    assert!(bad.is_empty(), "{krate} depends (transitively) on {bad:?}");
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
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
fn engine_never_depends_on_grpc_or_async() {
    assert_free_of("engine", &["tonic", "prost", "tokio", "sweep-proto"]);
    for file in rust_files(&root().join("engine")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for word in ["tonic::", "tokio::", "prost::", "sweep_proto"] {
            assert!(!text.contains(word), "{} mentions {word}", file.display());
        }
    }
}

#[test]
fn coordinator_never_depends_on_candle() {
    assert_free_of("coordinator", &["candle-core", "candle-nn", "engine", "gemm"]);
}

#[test]
fn results_never_depends_on_candle() {
    assert_free_of("results", &["candle-core", "candle-nn", "engine", "gemm"]);
}

#[test]
fn schema_depends_on_no_framework() {
    assert_free_of("schema", &["candle-core", "tonic", "tokio", "rusqlite", "polars"]);
}

#[test]
fn the_checker_sees_real_dependencies() {
    // Guards the guard: the graph must show the dependencies that do exist.
    let graph = lock_graph();
    assert!(closure(&graph, "engine").contains("candle-core"));
    assert!(closure(&graph, "worker").contains("tonic"));
    assert!(closure(&graph, "coordinator").contains("rusqlite"));
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    for krate in ["schema", "proto", "engine", "worker", "coordinator", "results", "tests"] {
        for file in rust_files(&root().join(krate)) {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.starts_with("//! "), "{} lacks a `//!` header", file.display());
        }
    }
}
