//! Architecture invariants, one test each, checked on the real dependency graph (Cargo.lock,
//! transitively) and on the sources:
//! - the engine never depends on tonic, prost or tokio (nor mentions them);
//! - the coordinator, the results and the schema never depend on candle;
//! - the schema depends on none of candle, tonic, tokio or SQLite;
//! - every Rust file of every crate starts with a `//!` module doc;
//! - the schema's modules import one another without a cycle.

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

/// A crate's modules, named by their path from `src` (`trial`, `images::run`; `lib.rs` and
/// `main.rs` are the root, ""), each with the modules its code mentions as `crate::a::b…`
/// (`use` lines, grouped `use crate::{a, b::c}` and paths in expressions alike; comments are
/// skipped: a doc link is no dependency). A mention resolves to the longest module path it
/// starts with; mentions of the root (its re-exports) and of the module itself are left out.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let name_of = |file: &Path| -> String {
        let rel = file.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            parts.pop();
        }
        parts.join("::")
    };
    let files = rust_files(src);
    let modules: BTreeSet<String> = files.iter().map(|f| name_of(f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let me = name_of(file);
        let text = std::fs::read_to_string(file).unwrap();
        let mut deps = BTreeSet::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for path in crate_paths(line) {
                let segs: Vec<&str> = path.split("::").collect();
                let target = (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|m| modules.contains(m));
                if let Some(t) = target.filter(|t| *t != me) {
                    deps.insert(t);
                }
            }
        }
        graph.insert(me, deps);
    }
    graph
}

/// The paths after each `crate::` in one line of code, braces expanded:
/// `use crate::{a::{b, c}, d};` gives `a::b`, `a::c` and `d`.
fn crate_paths(line: &str) -> Vec<String> {
    /// One path (with its `{…}` groups) at the start of `s`, appended to `prefix`.
    fn parse(s: &str, prefix: &str, out: &mut Vec<String>) -> usize {
        let mut i = 0;
        let b = s.as_bytes();
        let mut path = prefix.to_string();
        loop {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let seg = &s[start..i];
            if !seg.is_empty() && seg != "self" {
                if !path.is_empty() {
                    path.push_str("::");
                }
                path.push_str(seg);
            }
            if s[i..].starts_with("::{") {
                i += 3;
                loop {
                    while i < b.len() && (b[i] == b' ' || b[i] == b',') {
                        i += 1;
                    }
                    if i >= b.len() || b[i] == b'}' {
                        return i + 1;
                    }
                    let used = parse(&s[i..], &path, out);
                    if used == 0 {
                        return i;
                    }
                    i += used;
                    // Skip `as name` and anything else up to the next item.
                    while i < b.len() && b[i] != b',' && b[i] != b'}' {
                        i += 1;
                    }
                }
            } else if s[i..].starts_with("::") && seg.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_') {
                i += 2;
            } else {
                if !path.is_empty() {
                    out.push(path);
                }
                return i;
            }
        }
    }
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            if let Some(body) = after.strip_prefix('{') {
                let mut wrapped = String::from("x::{");
                wrapped.push_str(body);
                let mut found = Vec::new();
                parse(&wrapped, "", &mut found);
                out.extend(found.into_iter().filter_map(|p| p.strip_prefix("x::").map(str::to_string)));
            } else {
                parse(after, "", &mut out);
            }
        }
        rest = after;
    }
    out
}

/// The import cycles among the modules of the crate whose sources are in `src`, each as its
/// modules in order, the first repeated at the end (`["trial", "image", "trial"]`).
fn module_cycles(src: &Path) -> Vec<Vec<String>> {
    fn visit(m: &str, graph: &BTreeMap<String, BTreeSet<String>>, stack: &mut Vec<String>, done: &mut BTreeSet<String>, cycles: &mut Vec<Vec<String>>) {
        stack.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(at) = stack.iter().position(|s| s == d) {
                let mut cycle = stack[at..].to_vec();
                cycle.push(d.clone());
                cycles.push(cycle);
            } else if !done.contains(d) {
                visit(d, graph, stack, done, cycles);
            }
        }
        stack.pop();
        done.insert(m.to_string());
    }
    let graph = module_graph(src);
    let (mut stack, mut done, mut cycles) = (Vec::new(), BTreeSet::new(), Vec::new());
    for m in graph.keys() {
        if !done.contains(m) {
            visit(m, &graph, &mut stack, &mut done, &mut cycles);
        }
    }
    cycles
}

fn assert_no_module_cycles(src: &Path) {
    let cycles = module_cycles(src);
    let shown: Vec<String> = cycles.iter().map(|c| c.join(" → ")).collect();
    assert!(cycles.is_empty(), "import cycles among the modules of {}:\n{}", src.display(), shown.join("\n"));
}

#[test]
fn schema_modules_import_one_another_without_a_cycle() {
    let src = root().join("schema/src");
    assert!(module_graph(&src)["trial"].contains("image"), "the checker must see schema's real imports");
    assert_no_module_cycles(&src);
}

#[test]
fn the_cycle_checker_finds_cycles() {
    // Guards the guard on a made-up crate: a → b → c → a through a grouped `use`, a path in
    // an expression and a nested module; d only mentions the root and a comment.
    let dir = std::env::temp_dir().join(format!("tidy-cycles-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("c")).unwrap();
    let files = [
        ("lib.rs", "//! root\npub mod a; pub mod b; pub mod c; pub mod d;\npub use a::A;\n"),
        ("a.rs", "//! a\nuse crate::{d, b::{B, self as bee}};\npub struct A;\n"),
        ("b.rs", "//! b\npub struct B;\nfn f() { crate::c::inner::g(); }\n"),
        ("c/mod.rs", "//! c\npub mod inner;\n"),
        ("c/inner.rs", "//! c::inner\npub fn g() -> crate::a::A { crate::a::A }\n"),
        ("d.rs", "//! d\nuse crate::A;\n// see crate::b::B\n"),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let graph = module_graph(&dir);
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string(), "d".to_string()]));
    assert!(graph["d"].is_empty(), "{graph:?}");
    let cycles = module_cycles(&dir);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(cycles, vec![vec!["a", "b", "c::inner", "a"]]);
}

/// No import cycle among the engine's modules either (`trial` ↔ `images::run` was one: the
/// outcome types now live in `outcome`).
#[test]
fn engine_modules_import_one_another_without_a_cycle() {
    let src = root().join("engine/src");
    let graph = module_graph(&src);
    for (m, dep) in [("trial", "outcome"), ("images::run", "outcome"), ("trial", "samplers")] {
        assert!(graph[m].contains(dep), "the checker must see the engine's real imports: {m} → {dep} in {:?}", graph[m]);
    }
    assert_no_module_cycles(&src);
}
