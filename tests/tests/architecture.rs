//! The structure stays one-way: no import cycle between the modules of any crate (each file is
//! a node; an edge is a path it names: `use crate::x`, `super::y`, `child::z`), crates depend
//! only on crates in a lower layer, and no source file outside the tests grows past
//! `MAX_LINES` without a reason written at its top. Reads the sources; needs no root.
//!
//! Run it alone with `cargo test -p tests --test architecture -- --nocapture` to see the
//! module graph it checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest source file without a written reason.
const MAX_LINES: usize = 500;
/// The phrase a longer file's first lines must hold, followed by its reason.
const SIZE_REASON: &str = "over 500 lines because";

/// The workspace's crates, bottom layer first: a crate may depend only on crates in a lower
/// layer (xtask drives cargo and depends on none of them).
const LAYERS: &[&[&str]] = &[
    &["lb-common", "xtask"],
    &["lb-ebpf", "lb-objects", "lb-host"],
    &["lb-decap"],
    &["lb-userspace"],
    &["lb-lab", "lb-testkit"],
    &["lb-bench", "tests"],
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Source with comments, string and char literals blanked out (a `{` in a format string or a
/// path in a doc comment is not code).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == b'r'
            && matches!(b.get(i + 1), Some(b'#') | Some(b'"'))
            && !ident_before(b, i)
        {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former is
            // skipped.
            let close = if b.get(i + 1) == Some(&b'\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == b'\'')
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                // Multi-byte UTF-8 char literal.
                (i + 2..b.len().min(i + 6)).find(|&j| b[j] == b'\'' && b[i + 1] >= 0x80)
            };
            match close {
                Some(j) => {
                    out.push_str("' '");
                    i = j + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            // Copy one whole UTF-8 character.
            let len = utf8_len(c);
            out.push_str(&src[i..i + len]);
            i += len;
        }
    }
    out
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(code: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // r#ident
            out.push(Tok::Ident(word));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Tok::PathSep);
            i += 2;
        } else if c.is_whitespace() || c.is_ascii_digit() {
            i += 1;
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// One module file of a crate target: its path from the target root (`agent::actor`).
struct ModuleFile {
    path: Vec<String>,
    /// Every path the file names that starts at `crate`, `super`, `self` or a child module,
    /// resolved to absolute segments.
    refs: Vec<Vec<String>>,
}

/// Parses a use tree after `::` at `toks[i]`: returns the paths it names and the index after.
fn use_tree(toks: &[Tok], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(i) {
            Some(Tok::Ident(w)) => {
                path.push(w.clone());
                i += 1;
                if toks.get(i) == Some(&Tok::PathSep) {
                    i += 1;
                    continue;
                }
                out.push(path);
                return i;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        None => return i,
                        _ => {
                            let next = use_tree(toks, i, &path, out);
                            // `self` inside a group names the group's own path.
                            i = if next == i { i + 1 } else { next };
                        }
                    }
                }
            }
            Some(Tok::Punct('*')) => {
                out.push(path);
                return i + 1;
            }
            _ => {
                out.push(path);
                return i;
            }
        }
    }
}

fn scan_module(file: &Path, path: Vec<String>) -> ModuleFile {
    let src = std::fs::read_to_string(file).unwrap();
    let toks = tokens(&code_only(&src));
    let mut children = BTreeSet::new();
    for w in toks.windows(3) {
        if let [Tok::Ident(m), Tok::Ident(name), Tok::Punct(';' | '{')] = w
            && m == "mod"
        {
            children.insert(name.clone());
        }
    }
    let mut refs = Vec::new();
    // Inline modules open at each brace depth: `super` inside `mod tests { .. }` is this file.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('{') => {
                if i >= 2
                    && matches!(&toks[i - 2], Tok::Ident(m) if m == "mod")
                    && let Tok::Ident(name) = &toks[i - 1]
                {
                    inline.push((name.clone(), depth));
                }
                depth += 1;
            }
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(first)
                if toks.get(i + 1) == Some(&Tok::PathSep)
                    && !(i > 0 && toks[i - 1] == Tok::PathSep) =>
            {
                let here: Vec<String> = path
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(n, _)| n.clone()))
                    .collect();
                let base: Option<Vec<String>> = match first.as_str() {
                    "crate" => Some(Vec::new()),
                    "self" => Some(here.clone()),
                    "super" => {
                        let mut p = here.clone();
                        let mut j = i;
                        while matches!(&toks.get(j), Some(Tok::Ident(w)) if w == "super")
                            && toks.get(j + 1) == Some(&Tok::PathSep)
                        {
                            p.pop();
                            j += 2;
                        }
                        let mut found = Vec::new();
                        let end = use_tree(&toks, j, &p, &mut found);
                        refs.extend(found);
                        i = end;
                        continue;
                    }
                    child if inline.is_empty() && children.contains(child) => {
                        let mut p = path.clone();
                        p.push(child.to_string());
                        let mut found = Vec::new();
                        let end = use_tree(&toks, i + 2, &p, &mut found);
                        refs.extend(found);
                        i = end;
                        continue;
                    }
                    _ => None,
                };
                if let Some(base) = base {
                    let mut found = Vec::new();
                    i = use_tree(&toks, i + 2, &base, &mut found);
                    refs.extend(found);
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    ModuleFile { path, refs }
}

/// Every module file reachable from a target's root through `mod name;` declarations.
fn target_modules(root: &Path) -> Vec<ModuleFile> {
    let mut out = Vec::new();
    let mut todo = vec![(root.to_path_buf(), Vec::<String>::new(), true)];
    while let Some((file, path, owns_dir)) = todo.pop() {
        let m = scan_module(&file, path.clone());
        // A root or mod.rs declares children beside it; `x.rs` declares them in `x/`.
        let dir = if owns_dir {
            file.parent().unwrap().to_path_buf()
        } else {
            file.with_extension("")
        };
        let src = code_only(&std::fs::read_to_string(&file).unwrap());
        let toks = tokens(&src);
        for w in toks.windows(3) {
            if let [Tok::Ident(m), Tok::Ident(name), Tok::Punct(';')] = w
                && m == "mod"
            {
                let mut child = path.clone();
                child.push(name.clone());
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(name).join("mod.rs");
                if flat.exists() {
                    todo.push((flat, child, false));
                } else if nested.exists() {
                    todo.push((nested, child, true));
                }
            }
        }
        out.push(m);
    }
    out
}

fn show(path: &[String]) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        path.join("::")
    }
}

/// The module import graph of one target: module -> modules it names (other than itself).
fn import_graph(modules: &[ModuleFile]) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let mut graph = BTreeMap::new();
    for m in modules {
        let mut edges = BTreeSet::new();
        for r in &m.refs {
            // The deepest module file the path names.
            let target = (0..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|p| known.contains(p))
                .unwrap_or_default();
            // A file's own items and its inline modules are not imports.
            if target != m.path {
                edges.insert(show(&target));
            }
        }
        graph.insert(show(&m.path), edges);
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.graph.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

struct Package {
    name: String,
    dir: PathBuf,
    /// Target name and root file (lib, bins, build script).
    targets: Vec<(String, PathBuf)>,
    deps: BTreeSet<String>,
}

fn packages() -> Vec<Package> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut list = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        if !members.contains(p["id"].as_str().unwrap()) {
            continue;
        }
        let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
        let targets = p["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                let kinds = t["kind"].as_array().unwrap();
                !kinds
                    .iter()
                    .any(|k| k == "test" || k == "bench" || k == "example")
            })
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    PathBuf::from(t["src_path"].as_str().unwrap()),
                )
            })
            .collect();
        let deps = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["path"].is_string())
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        list.push(Package {
            name: p["name"].as_str().unwrap().to_string(),
            dir: manifest.parent().unwrap().to_path_buf(),
            targets,
            deps,
        });
    }
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

#[test]
fn no_module_imports_in_a_cycle() {
    let mut found = Vec::new();
    for pkg in packages() {
        for (target, root) in &pkg.targets {
            let modules = target_modules(root);
            let graph = import_graph(&modules);
            println!("{} ({target}):", pkg.name);
            for (m, edges) in &graph {
                if !edges.is_empty() {
                    let list: Vec<&str> = edges.iter().map(String::as_str).collect();
                    println!("  {m} -> {}", list.join(", "));
                }
            }
            for scc in cycles(&graph) {
                let edges: Vec<String> = scc
                    .iter()
                    .flat_map(|m| {
                        graph[m]
                            .iter()
                            .filter(|t| scc.contains(t))
                            .map(move |t| format!("{m} -> {t}"))
                    })
                    .collect();
                found.push(format!(
                    "{} ({target}): {{{}}} via {}",
                    pkg.name,
                    scc.join(", "),
                    edges.join("; ")
                ));
            }
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn crates_depend_only_on_lower_layers() {
    let layer_of = |name: &str| LAYERS.iter().position(|l| l.contains(&name));
    let mut bad = Vec::new();
    for pkg in packages() {
        let Some(own) = layer_of(&pkg.name) else {
            bad.push(format!("{} is in no layer of LAYERS", pkg.name));
            continue;
        };
        for dep in &pkg.deps {
            match layer_of(dep) {
                Some(l) if l < own => {}
                _ => bad.push(format!("{} (layer {own}) depends on {dep}", pkg.name)),
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn no_source_file_outside_the_tests_is_long_without_a_reason() {
    let mut long = Vec::new();
    for pkg in packages() {
        if pkg.name == "tests" {
            continue;
        }
        let mut files = Vec::new();
        collect_rs(&pkg.dir.join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let lines = text.lines().count();
            let head: String = text.lines().take(20).collect::<Vec<_>>().join("\n");
            if lines > MAX_LINES && !head.to_lowercase().contains(SIZE_REASON) {
                long.push(format!("{} ({lines} lines)", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines without '{SIZE_REASON} ...' at their top:\n{}",
        long.join("\n")
    );
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The checker itself: a cycle through `use crate::`, `super::` and a child's path is found,
/// comments and strings are not read as code, and a parent naming its child is no cycle.
#[test]
fn the_cycle_check_sees_cycles_and_ignores_comments() {
    let dir = std::env::temp_dir().join(format!("lb-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("b")).unwrap();
    let write = |p: &str, s: &str| std::fs::write(dir.join(p), s).unwrap();
    write("lib.rs", "mod a;\nmod b;\nmod c;\n");
    write(
        "a.rs",
        "use crate::b::{x::Y, self};\n// crate::c in a comment\n",
    );
    write("b/mod.rs", "pub mod x;\nuse x::Z;\n");
    write(
        "b/x.rs",
        "fn f() { let s = \"crate::c\"; super::super::a::g(); }\n#[cfg(test)]\nmod tests { use super::*; }\n",
    );
    write("c.rs", "fn f() { let c = '{'; }\n");
    let modules = target_modules(&dir.join("lib.rs"));
    let graph = import_graph(&modules);
    let _ = std::fs::remove_dir_all(&dir);
    let edges = |m: &str| graph[m].iter().cloned().collect::<Vec<_>>();
    assert_eq!(edges("a"), ["b", "b::x"]);
    assert_eq!(edges("b"), ["b::x"]);
    assert_eq!(edges("b::x"), ["a"]);
    assert!(edges("c").is_empty());
    assert_eq!(cycles(&graph), [vec!["a", "b", "b::x"]]);
}
