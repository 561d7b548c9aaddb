//! ARCHITECTURE.md's invariants as checks over the source tree (rust-analyzer's `tidy`): which
//! modules may name a framework or read the environment, and that every file opens with a `//!`
//! paragraph saying what it owns. A rule broken by a new line fails here with the file and line.

use std::path::{Path, PathBuf};

use regex::Regex;

/// A crate or API that only some modules may name.
struct Rule {
    what: &'static str,
    /// Matched against code lines (comments are skipped).
    pattern: &'static str,
    /// Paths under the crate root where it is allowed: a directory (ending in `/`) or a file.
    allowed: &'static [&'static str],
}

/// The invariants, as ARCHITECTURE.md states them.
const RULES: &[Rule] = &[
    Rule { what: "rusqlite (SQL)", pattern: r"\brusqlite(_migration)?::|\buse rusqlite", allowed: &["src/store/"] },
    Rule { what: "actix", pattern: r"\bactix_(web|multipart|http|rt)::|\buse actix_", allowed: &["src/web/"] },
    Rule { what: "askama", pattern: r"\baskama::|\buse askama|#\[template\(", allowed: &["src/web/"] },
    Rule {
        what: "candle",
        pattern: r"\bcandle_(core|nn)::|\buse candle_",
        allowed: &["src/model/", "src/train/", "src/export/", "src/serve/"],
    },
    Rule { what: "mistral.rs", pattern: r"\bmistralrs::|\buse mistralrs", allowed: &["src/serve/mistral.rs"] },
    Rule {
        what: "anyhow",
        pattern: r"\banyhow\b",
        allowed: &[
            "src/main.rs",
            "src/cli/",
            "src/capture/bench.rs",
            "src/dataset/bench.rs",
            "src/model/",
            "src/train/",
            "src/export/",
            "src/serve/",
        ],
    },
    Rule {
        what: "std::env",
        pattern: r"\bstd::env\b|\benv::var",
        allowed: &["src/main.rs", "src/cli/", "src/config.rs"],
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every broken rule under `root` (a crate root with `src/`), as `file:line: what`.
fn violations(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let rules: Vec<(&Rule, Regex)> = RULES.iter().map(|rule| (rule, Regex::new(rule.pattern).unwrap())).collect();
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        if !text.starts_with("//!") {
            found.push(format!("{relative}:1: no //! paragraph saying what the file owns"));
        }
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for (rule, pattern) in &rules {
                let allowed =
                    rule.allowed.iter().any(|a| relative == *a || (a.ends_with('/') && relative.starts_with(a)));
                if !allowed && pattern.is_match(code) {
                    found.push(format!("{relative}:{}: names {} outside {:?}", number + 1, rule.what, rule.allowed));
                }
            }
        }
    }
    found
}

#[test]
fn the_tree_keeps_the_architecture_invariants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = violations(root);
    assert!(found.is_empty(), "ARCHITECTURE.md invariants broken:\n{}", found.join("\n"));
    let mut tests = Vec::new();
    rust_files(&root.join("tests/it"), &mut tests);
    let headless: Vec<_> = tests.iter().filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!")).collect();
    assert!(headless.is_empty(), "test files without a //! header: {headless:?}");
}

/// The web modules each web module names through `super::` (its imports and paths), by module.
fn web_imports(web: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let modules: Vec<String> = std::fs::read_dir(web)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let stem = p.file_stem()?.to_string_lossy().into_owned();
            (stem != "mod" && (p.is_dir() || p.extension().is_some_and(|e| e == "rs"))).then_some(stem)
        })
        .collect();
    // In a top-level file (or a folder's mod.rs) `super::` is web; in the folder's other files
    // it is `super::super::`.
    let top = Regex::new(r"(?:^|[^:])super::(?:\{([^}]*)\}|([a-z_]+))").unwrap();
    let nested = Regex::new(r"super::super::(?:\{([^}]*)\}|([a-z_]+))").unwrap();
    let mut graph = std::collections::BTreeMap::new();
    for module in &modules {
        let mut files = Vec::new();
        let dir = web.join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(web.join(format!("{module}.rs")));
        }
        let mut names = std::collections::BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let at_top = file.parent() == Some(web) || file.file_name().is_some_and(|n| n == "mod.rs");
            let reference = if at_top { &top } else { &nested };
            for found in reference.captures_iter(&text) {
                let listed = found.get(1).or(found.get(2)).unwrap().as_str();
                for name in listed.split(',').map(|n| n.trim().split("::").next().unwrap_or("").trim()) {
                    if modules.iter().any(|m| m == name) && name != module {
                        names.insert(name.to_string());
                    }
                }
            }
        }
        graph.insert(module.clone(), names);
    }
    graph
}

/// A cycle in the graph, if there is one.
fn find_cycle(graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn web_modules_import_each_other_without_cycles() {
    let graph = web_imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web"));
    assert!(graph.len() >= 10, "{graph:?}");
    assert!(graph["traces"].contains("shared"), "the import scan sees `use super::shared`: {graph:?}");
    assert_eq!(find_cycle(&graph), None, "web modules import each other in a cycle");

    let mut with_cycle = graph.clone();
    with_cycle.get_mut("shared").unwrap().insert("traces".into());
    assert!(find_cycle(&with_cycle).is_some(), "a cycle is detected");
}

#[test]
fn tidy_catches_a_forbidden_crate_in_a_module() {
    let tree = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = tree.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("src/store/mod.rs", "//! The store.\nuse rusqlite::Connection;\n");
    write("src/traces/mod.rs", "//! Traces.\n// rusqlite:: in a comment is fine\nfn f() {}\n");
    write("src/web/mod.rs", "//! Web.\nuse askama::Template;\n");
    assert!(violations(tree.path()).is_empty(), "{:?}", violations(tree.path()));

    write("src/traces/mod.rs", "//! Traces.\nfn f(c: &rusqlite::Connection) {}\n");
    write("src/jobs/mod.rs", "//! Jobs.\nfn f() -> anyhow::Result<()> { Ok(()) }\n");
    write("src/cli/train.rs", "//! Train.\nfn f() { let _ = candle_core::Device::Cpu; }\n");
    write("src/dataset/mod.rs", "fn no_header() { let _ = std::env::var(\"X\"); }\n");
    let found = violations(tree.path());
    for expected in [
        "src/traces/mod.rs:2: names rusqlite",
        "src/jobs/mod.rs:2: names anyhow",
        "src/cli/train.rs:2: names candle",
        "src/dataset/mod.rs:1: no //! paragraph",
        "src/dataset/mod.rs:1: names std::env",
    ] {
        assert!(found.iter().any(|f| f.starts_with(expected)), "{expected} not reported in {found:?}");
    }
}
