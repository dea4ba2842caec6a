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

/// The engine's top-level modules (`engine/src/X.rs` or `engine/src/X/`) → the top-level
/// modules their code names as `crate::Y` (comment lines skipped).
fn engine_module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("engine/src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || !(path.is_dir() || path.extension().is_some_and(|e| e == "rs")) {
            continue;
        }
        let files = if path.is_dir() { rust_files(&path) } else { vec![path.clone()] };
        let mut refs = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    // `crate::a::…` or `crate::{a, b::c, …}`.
                    let names: Vec<&str> = match rest.strip_prefix('{') {
                        Some(group) => group.split('}').next().unwrap_or_default().split(',').collect(),
                        None => vec![rest],
                    };
                    for n in names {
                        let n = n.trim();
                        let end = n.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(n.len());
                        if end > 0 && n[..end] != name {
                            refs.insert(n[..end].to_string());
                        }
                    }
                }
            }
        }
        graph.insert(name, refs);
    }
    graph
}

/// The cycles of a module graph, each as its modules in sorted order (one entry per strongly
/// connected component of more than one module).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|m| (m, reach(m))).collect();
    let mut out = BTreeSet::new();
    for (m, r) in &reaches {
        let component: Vec<String> = reaches.iter().filter(|(n, rn)| n != &m && r.contains(n.as_str()) && rn.contains(m.as_str())).map(|(n, _)| n.to_string()).collect();
        if !component.is_empty() {
            let mut c = component;
            c.push(m.to_string());
            c.sort();
            out.insert(c);
        }
    }
    out
}

#[test]
fn the_cycle_checker_sees_a_cycle() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert!(cycles(&g(&[("a", "b"), ("b", "c")])).is_empty());
    let want: BTreeSet<Vec<String>> = [vec!["a".to_string(), "b".into(), "c".into()]].into();
    assert_eq!(cycles(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])), want);
    // And on the real sources: the runner names the image trials, the outcome types, the samplers.
    let engine = engine_module_graph();
    for (m, dep) in [("trial", "images"), ("trial", "outcome"), ("images", "outcome"), ("trial", "samplers")] {
        assert!(engine[m].contains(dep), "engine::{m} should name crate::{dep}: {:?}", engine[m]);
    }
}

/// No two of the engine's top-level modules import each other, directly or through others
/// (`trial` ↔ `images::run` was one: the outcome types now live in `outcome`). One edge that
/// closes a cycle is listed as known: `train` → `images` (the plain-buffer U-Net in
/// `train/fast/unet.rs` uses `images::Precond` and the U-Net's constants, while `images` and
/// `samplers` use the fast steps), to go with one U-Net definition. Without the known edges the
/// graph must be acyclic, and each known edge must still exist, so that the list stays true.
#[test]
fn engine_modules_import_no_cycle() {
    let known = [("train", "images")];
    let mut graph = engine_module_graph();
    for (from, to) in known {
        assert!(graph.get_mut(from).is_some_and(|deps| deps.remove(to)), "engine::{from} no longer names crate::{to}: remove it from the known edges");
    }
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles between engine modules: {found:?}");
}
