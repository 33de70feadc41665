//! The import graphs of the library (`src/`) and the tools (`tools/src/`):
//! no module imports one that imports it back (directly or around a
//! circle), and the library's base modules import nothing above them. A module may use its parent's items and its
//! parent may declare and re-export it: those edges are not counted.
//!
//! Imports are read from the source text: `use` trees and inline
//! `crate::…`/`super::…`/`self::…` paths, outside comments and the unit
//! tests (`#[cfg(test)] mod tests`). Each path names the deepest module it
//! reaches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules everything else builds on: they may import only each other.
const BASE: &[&str] = &[
    "db",
    "ids",
    "metrics",
    "signal",
    "sql",
    "telemetry",
    "text",
    "tls",
];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every module of the library (`a::b`, `""` for the crate root) and its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path != src.join("bin") {
                    walk(&path, src, out);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// The source without comments, string and character literals, and unit
/// tests: what is left are the items and paths.
fn code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '"'
            || (c == 'r' && matches!(next, Some('"' | '#')) && !ident(chars.get(i.wrapping_sub(1))))
        {
            // A string: "…" with escapes, or r"…", r#"…"#.
            let mut hashes = 0;
            if c == 'r' {
                i += 1;
                while chars.get(i) == Some(&'#') {
                    hashes += 1;
                    i += 1;
                }
                if chars.get(i) != Some(&'"') {
                    continue;
                }
            }
            i += 1;
            while i < chars.len() {
                if c != 'r' && chars[i] == '\\' {
                    i += 2;
                    continue;
                }
                if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3; // 'x'
        } else if c == '\'' && next == Some('\\') {
            i += 2; // '\n', '\'', '\u{…}'
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    match out.find("#[cfg(test)]\nmod tests") {
        Some(at) => out[..at].to_owned(),
        None => out,
    }
}

fn ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// `a::{b, c::{d, e as f}}` as paths: `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let prefix: Vec<String> = segments(&tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut items = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&inner[start..]);
        items
            .into_iter()
            .filter(|i| !i.trim().is_empty())
            .flat_map(|item| {
                expand(item).into_iter().map(|rest| {
                    let mut path = prefix.clone();
                    path.extend(rest);
                    path
                })
            })
            .collect()
    } else {
        let tree = tree.split(" as ").next().unwrap_or(tree);
        vec![segments(tree)]
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The paths a module's code names: its `use` trees and inline paths
/// starting at `crate`, `super` or `self`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let word_start =
        |i: usize| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
    let mut i = 0;
    while let Some(at) = code[i..].find("use ") {
        let start = i + at;
        i = start + 4;
        if !word_start(start) {
            continue;
        }
        if let Some(end) = code[i..].find(';') {
            out.extend(expand(&code[i..i + end]));
            i += end;
        }
    }
    for head in ["crate::", "super::", "self::"] {
        let mut i = 0;
        while let Some(at) = code[i..].find(head) {
            let start = i + at;
            i = start + head.len();
            if !word_start(start) {
                continue;
            }
            let end = code[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| start + e);
            out.push(segments(&code[start..end]));
        }
    }
    out
}

/// Which modules each module imports (the deepest module each path reaches;
/// the module itself left out).
fn graph(src: &Path) -> Graph {
    let modules = modules(src);
    let mut graph = Graph::new();
    for (name, file) in &modules {
        let here: Vec<String> = segments(name);
        let text = code(&std::fs::read_to_string(file).unwrap());
        let edges = graph.entry(name.clone()).or_default();
        for path in paths(&text) {
            let (mut base, mut rest): (Vec<String>, &[String]) =
                match path.first().map(String::as_str) {
                    Some("crate") => (Vec::new(), &path[1..]),
                    Some("self") => (here.clone(), &path[1..]),
                    Some("super") => (here[..here.len().saturating_sub(1)].to_vec(), &path[1..]),
                    _ => continue,
                };
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            let mut target = base.join("::");
            for segment in rest {
                base.push(segment.clone());
                let candidate = base.join("::");
                if !modules.contains_key(&candidate) {
                    break;
                }
                target = candidate;
            }
            if target != *name && modules.contains_key(&target) {
                edges.insert(target);
            }
        }
    }
    graph
}

/// Whether one of `a`, `b` contains the other.
fn nested(a: &str, b: &str) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.starts_with(&format!("{b}::"))
        || b.starts_with(&format!("{a}::"))
}

/// The circles of `graph`: its strongly connected components of more than
/// one module (Tarjan).
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

/// The import graph of the crate whose sources are in `src` (relative to
/// the workspace root), edges between nested modules left out.
fn crate_graph(src: &str) -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
    let mut graph = graph(&src);
    for (from, to) in graph.iter_mut() {
        to.retain(|t| !nested(from, t));
    }
    graph
}

fn top(name: &str) -> &str {
    name.split("::").next().unwrap_or(name)
}

/// The library and the tools crate: no circle between files, nor between
/// top-level modules.
#[test]
fn no_module_imports_one_that_imports_it_back() {
    for (src, least) in [("src", 50), ("tools/src", 15)] {
        let graph = crate_graph(src);
        assert!(
            graph.len() > least,
            "the modules of {src} were not found: {graph:?}"
        );
        assert_eq!(
            circles(&graph),
            Vec::<Vec<String>>::new(),
            "import circles in {src}"
        );
        let mut tops = Graph::new();
        for (from, to) in &graph {
            for t in to {
                if top(from) != top(t) {
                    tops.entry(top(from).to_owned())
                        .or_default()
                        .insert(top(t).to_owned());
                }
            }
        }
        assert_eq!(
            circles(&tops),
            Vec::<Vec<String>>::new(),
            "import circles between the top-level modules of {src}"
        );
    }
}

#[test]
fn base_modules_import_nothing_above_them() {
    let graph = crate_graph("src");
    let mut upward = Vec::new();
    for (from, to) in &graph {
        if !BASE.contains(&top(from)) {
            continue;
        }
        for t in to {
            if !BASE.contains(&top(t)) {
                upward.push(format!("{from} -> {t}"));
            }
        }
    }
    assert_eq!(
        upward,
        Vec::<String>::new(),
        "base modules importing upwards"
    );
}

#[test]
fn the_reader_finds_use_trees_and_inline_paths() {
    let code = code(
        "use crate::queue::{self, gauges::GaugesConfig, Outcome as O};\n\
         use super::{completer::Done, Shared};\n\
         fn f() { crate::metrics::metrics(); } // crate::not::this\n\
         /* crate::nor::this */ const S: &str = \"use crate::api; {\";\n\
         const R: &str = r#\"crate::chat \"quoted\"\"#; const C: char = '\"';\n\
         #[cfg(test)]\nmod tests { use crate::api; }\n",
    );
    let found: BTreeSet<String> = paths(&code).iter().map(|p| p.join("::")).collect();
    let expected: BTreeSet<String> = [
        "crate::queue::self",
        "crate::queue::gauges::GaugesConfig",
        "crate::queue::Outcome",
        "super::completer::Done",
        "super::Shared",
        "super",
        "crate::metrics::metrics",
        "crate::queue",
        "crate::queue::gauges::GaugesConfig",
        "crate::queue::Outcome",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, expected);

    // A circle of three and a self-standing pair are found; nesting is not
    // a circle.
    let mut g = Graph::new();
    for (a, b) in [
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("d", "e"),
        ("e", "d"),
        ("f", "f::g"),
    ] {
        g.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(
        circles(&g),
        vec![
            vec!["a".to_owned(), "b".into(), "c".into()],
            vec!["d".to_owned(), "e".into()]
        ]
    );
    assert!(nested("f", "f::g") && !nested("f", "fg"));
}
