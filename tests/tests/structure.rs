//! Structure check: no two modules of the scheduler or the agent import each
//! other, directly or around a loop. The module graph is read from the source
//! files (a module is a file; `crate::`, `super::` and `self::` paths in code
//! are its edges) and checked at two granularities: the top-level modules of
//! each crate, and the files inside each directory module (items of the
//! directory's own `mod.rs` are its parent's, not edges). Test code
//! (`#[cfg(test)] mod … { … }` blocks, `tests.rs` files) does not count.
//! The control plane's files, all `impl Control`, are also checked for call
//! cycles (methods called on `self` across files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path inside its crate: `[]` is the crate root, `["control",
/// "deploy"]` is `control/deploy.rs`.
type ModPath = Vec<String>;

/// The edges of one level (a directory module, or the crate root): from
/// child, to child, and where the first such path was seen (`file:line`).
type Edges = BTreeMap<(String, String), String>;

#[test]
fn scheduler_modules_import_one_way() {
    check_crate("scheduler");
}

#[test]
fn agent_modules_import_one_way() {
    check_crate("agent");
}

/// The control plane's files are all `impl Control`, so they reach each
/// other by calling methods on `self`, which no import shows: a call from one
/// file to a method defined in another is an edge too, and the files must
/// still form layers.
#[test]
fn control_files_call_one_way() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scheduler/src/control");
    let mut files = Vec::new();
    read_sources(&dir, "", &mut files);
    let code: Vec<(String, String)> = files
        .iter()
        .filter(|(rel, _)| rel != "mod.rs" && !rel.contains('/'))
        .map(|(rel, src)| (rel.trim_end_matches(".rs").to_string(), code_of(src)))
        .collect();
    let edges = call_edges(&code);
    assert!(!edges.is_empty(), "no calls found in {}", dir.display());
    let found: Vec<String> = cycles(&edges).iter().map(|c| c.join(" -> ")).collect();
    assert!(
        found.is_empty(),
        "call cycles between the files of scheduler/src/control:\n{}\nhint: move what both \
         call into a lower file, or let the lower one return an outcome the caller acts on.",
        found.join("\n")
    );
}

/// Calls on `self`/`this` from one file to a method defined (once) in
/// another, and uses of the `machines()`/`links()` parts, as edges.
fn call_edges(files: &[(String, String)]) -> Edges {
    let mut defined: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (file, code) in files {
        let toks = tokens(code);
        for pair in toks.windows(2) {
            if pair[0].1 == "fn" {
                defined.entry(pair[1].1.clone()).or_default().push(file);
            }
        }
    }
    let mut edges = Edges::new();
    for (file, code) in files {
        let toks = tokens(code);
        for w in toks.windows(4) {
            let receiver = w[0].1 == "self" || w[0].1.starts_with("this");
            if !(receiver && w[1].1 == "." && w[3].1 == "(") {
                continue;
            }
            let target = match w[2].1.as_str() {
                part @ ("machines" | "links") => Some(part),
                method => match defined.get(method).map(Vec::as_slice) {
                    Some([one]) => Some(*one),
                    _ => None,
                },
            };
            if let Some(target) = target.filter(|t| *t != file) {
                edges
                    .entry((file.clone(), target.to_string()))
                    .or_insert_with(|| format!("control/{file}.rs:{}", w[0].0));
            }
        }
    }
    edges
}

fn check_crate(name: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src");
    let mut files = Vec::new();
    read_sources(&src, "", &mut files);
    assert!(!files.is_empty(), "no sources under {}", src.display());
    let found = cycles_of(&format!("{name}/src"), &files);
    assert!(
        found.is_empty(),
        "module cycles in {name}/src:\n{}\nhint: make each import point one way: move what both \
         sides need into the lower module (or a new one below both), or pass it in as a value.",
        found.join("\n")
    );
}

/// Every `.rs` file under `dir`, as (path relative to `src/`, contents).
fn read_sources(dir: &Path, rel: &str, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let rel = format!("{rel}{name}");
        if path.is_dir() {
            read_sources(&path, &format!("{rel}/"), out);
        } else if name.ends_with(".rs") {
            out.push((rel, std::fs::read_to_string(&path).expect("read source")));
        }
    }
}

/// The module a file is, or `None` for files that are not counted: the
/// binary's `main.rs` (a crate of its own, using the library by name) and
/// `tests.rs` files.
fn module_of(rel: &str) -> Option<ModPath> {
    let stem = rel.strip_suffix(".rs")?;
    let mut path: ModPath = stem.split('/').map(String::from).collect();
    match path.last().map(String::as_str) {
        Some("tests") => return None,
        Some("main") if path.len() == 1 => return None,
        Some("lib") if path.len() == 1 => path.clear(),
        Some("mod") => {
            path.pop();
        }
        _ => {}
    }
    Some(path)
}

/// Every cycle among the modules of `files`, one line each (`a -> b -> a`,
/// prefixed with its level and followed by where each edge is).
fn cycles_of(label: &str, files: &[(String, String)]) -> Vec<String> {
    let mut lines = Vec::new();
    for (dir, edges) in levels(files) {
        let level = if dir.is_empty() {
            format!("{label} (top-level modules)")
        } else {
            format!("{label}/{}", dir.join("/"))
        };
        for cycle in cycles(&edges) {
            lines.push(format!("{level}: {}", cycle.join(" -> ")));
            for pair in cycle.windows(2) {
                let site = &edges[&(pair[0].clone(), pair[1].clone())];
                lines.push(format!("    {} -> {}: {site}", pair[0], pair[1]));
            }
        }
    }
    lines
}

/// The edges of every level. A path from module `m` to module `t` is an edge
/// at the level of their longest common prefix, between the children of that
/// level that contain them; none when one contains the other (a parent's own
/// items, or a child's).
fn levels(files: &[(String, String)]) -> BTreeMap<ModPath, Edges> {
    let modules: Vec<(ModPath, &str, &str)> = files
        .iter()
        .filter_map(|(rel, src)| Some((module_of(rel)?, rel.as_str(), src.as_str())))
        .collect();
    let known: BTreeSet<&ModPath> = modules.iter().map(|(m, _, _)| m).collect();
    let mut levels: BTreeMap<ModPath, Edges> = BTreeMap::new();
    for (module, rel, src) in &modules {
        for (line, path) in paths(&code_of(src)) {
            let resolved = resolve(module, &path);
            let Some(target) = (0..=resolved.len())
                .rev()
                .map(|n| resolved[..n].to_vec())
                .find(|p| known.contains(p))
            else {
                continue;
            };
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b);
            let k = common.count();
            if k < module.len() && k < target.len() {
                let edge = (module[k].clone(), target[k].clone());
                let edges = levels.entry(module[..k].to_vec()).or_default();
                edges.entry(edge).or_insert_with(|| format!("{rel}:{line}"));
            }
        }
    }
    levels
}

/// `src` without comments and without `#[cfg(test)] mod … { … }` blocks;
/// newlines are kept, so line numbers still hold.
fn code_of(src: &str) -> String {
    let mut code = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(c) = rest.chars().next() {
        let skip = if rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if rest.starts_with("/*") {
            rest.find("*/").map_or(rest.len(), |end| end + 2)
        } else if rest.starts_with("#[cfg(test)]") {
            test_module_len(rest)
        } else {
            0
        };
        if skip > 0 {
            code.extend(rest[..skip].chars().filter(|&c| c == '\n'));
            rest = &rest[skip..];
        } else {
            code.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    code
}

/// The length of the inline test module `at` starts with (its `#[cfg(test)]`,
/// further attributes, `pub(…) mod name { … }`), or 0 when it is not one.
fn test_module_len(at: &str) -> usize {
    let Some(open) = at.find('{') else {
        return 0;
    };
    let head = &at["#[cfg(test)]".len()..open];
    let is_mod = head.split_whitespace().any(|w| w == "mod") && !head.contains(';');
    if !is_mod {
        return 0;
    }
    let mut depth = 0;
    for (j, c) in at[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => continue,
        }
        if depth == 0 {
            return open + j + 1;
        }
    }
    at.len()
}

/// Every path in `code` that starts at `crate`, `super` or `self`, with its
/// line; `use` groups are expanded (`crate::{a, b::c}` is `crate::a` and
/// `crate::b::c`).
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let tokens = tokens(code);
    let mut out = Vec::new();
    for (i, (line, token)) in tokens.iter().enumerate() {
        let starts = matches!(token.as_str(), "crate" | "super" | "self")
            && (i == 0 || tokens[i - 1].1 != "::")
            && tokens.get(i + 1).is_some_and(|(_, t)| t == "::");
        if starts {
            let mut expanded = Vec::new();
            tree(&tokens, i, Vec::new(), &mut expanded);
            out.extend(expanded.into_iter().map(|p| (*line, p)));
        }
    }
    out
}

/// Identifiers (with `$crate` as one), `::`, and single other characters,
/// each with its line.
fn tokens(code: &str) -> Vec<(usize, String)> {
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        let mut token = c.to_string();
        if c.is_alphanumeric() || c == '_' || c == '$' {
            while let Some(&n) = chars.peek().filter(|n| n.is_alphanumeric() || **n == '_') {
                token.push(n);
                chars.next();
            }
        } else if c == ':' && chars.peek() == Some(&':') {
            token.push(chars.next().unwrap());
        } else if c == '\n' {
            line += 1;
            continue;
        } else if c.is_whitespace() {
            continue;
        }
        tokens.push((line, token));
    }
    tokens
}

/// The path (or group of paths) at `tokens[i..]` under `prefix`, into `out`.
/// Returns the index after it.
fn tree(
    tokens: &[(usize, String)],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let ident = |t: &str| t.starts_with(|c: char| c.is_alphanumeric() || c == '_');
    while let Some((_, t)) = tokens.get(i).filter(|(_, t)| ident(t)) {
        prefix.push(t.clone());
        if tokens.get(i + 1).is_none_or(|(_, t)| t != "::") {
            let renamed = tokens.get(i + 1).is_some_and(|(_, t)| t == "as");
            i += if renamed { 3 } else { 1 };
            break;
        }
        i += 2;
        if tokens.get(i).is_some_and(|(_, t)| t == "{") {
            i += 1;
            while tokens.get(i).is_some_and(|(_, t)| t != "}") {
                let after = tree(tokens, i, prefix.clone(), out);
                i = after.max(i + 1);
                i += usize::from(tokens.get(i).is_some_and(|(_, t)| t == ","));
            }
            return i + 1;
        }
    }
    out.push(prefix);
    i
}

/// `path` (starting at `crate`, `super` or `self`) as seen from `module`.
fn resolve(module: &ModPath, path: &[String]) -> ModPath {
    let mut resolved = if path[0] == "crate" {
        Vec::new()
    } else {
        module.clone()
    };
    let mut leading = true;
    for segment in path.iter().skip(usize::from(path[0] == "crate")) {
        match segment.as_str() {
            "super" if leading => {
                resolved.pop();
            }
            "self" => {}
            _ => {
                leading = false;
                resolved.push(segment.clone());
            }
        }
    }
    resolved
}

/// Every elementary cycle of `edges`, each as its nodes with the first one
/// repeated at the end, starting at its smallest node. Tarjan's strongly
/// connected components first; the cycles are looked for inside each.
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
        next.entry(to).or_default();
    }
    let mut found = Vec::new();
    for component in Tarjan::components(&next) {
        for &start in &component {
            let mut path = vec![start];
            walk(&next, &component, &mut path, &mut found);
        }
    }
    found
}

/// Extends `path` (from its first node) by nodes of `component` greater than
/// the first, recording each way back to the first as a cycle.
fn walk<'a>(
    next: &BTreeMap<&'a str, Vec<&'a str>>,
    component: &BTreeSet<&'a str>,
    path: &mut Vec<&'a str>,
    found: &mut Vec<Vec<String>>,
) {
    let (start, last) = (path[0], path[path.len() - 1]);
    for &n in &next[last] {
        if n == start {
            found.push(path.iter().chain([&start]).map(|s| s.to_string()).collect());
        } else if n > start && component.contains(n) && !path.contains(&n) {
            path.push(n);
            walk(next, component, path, found);
            path.pop();
        }
    }
}

/// Tarjan's strongly connected components algorithm, keeping the components
/// of more than one node (an edge never joins a module to itself).
#[derive(Default)]
struct Tarjan<'a> {
    index: BTreeMap<&'a str, usize>,
    low: BTreeMap<&'a str, usize>,
    stack: Vec<&'a str>,
    components: Vec<BTreeSet<&'a str>>,
}

impl<'a> Tarjan<'a> {
    fn components(next: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<BTreeSet<&'a str>> {
        let mut t = Tarjan::default();
        for &n in next.keys() {
            if !t.index.contains_key(n) {
                t.visit(next, n);
            }
        }
        t.components.sort();
        t.components
    }

    fn visit(&mut self, next: &BTreeMap<&'a str, Vec<&'a str>>, n: &'a str) {
        let i = self.index.len();
        self.index.insert(n, i);
        self.low.insert(n, i);
        self.stack.push(n);
        for &m in &next[n] {
            if !self.index.contains_key(m) {
                self.visit(next, m);
                self.low.insert(n, self.low[n].min(self.low[m]));
            } else if self.stack.contains(&m) {
                self.low.insert(n, self.low[n].min(self.index[m]));
            }
        }
        if self.low[n] == i {
            let at = self.stack.iter().rposition(|&m| m == n).unwrap();
            let component: BTreeSet<_> = self.stack.drain(at..).collect();
            if component.len() > 1 {
                self.components.push(component);
            }
        }
    }
}

/// Self-checks of the scanner and the cycle search on tiny module sets.
fn synthetic(files: &[(&str, &str)]) -> Vec<String> {
    let files: Vec<_> = files
        .iter()
        .map(|(rel, src)| (rel.to_string(), src.to_string()))
        .collect();
    cycles_of("x/src", &files)
        .into_iter()
        .filter(|line| !line.starts_with(' '))
        .collect()
}

#[test]
fn a_cycle_is_found_directly_and_around_a_loop() {
    let found = synthetic(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d;"),
        ("a.rs", "use crate::{b::{X as Z, *}, c, self};"),
        ("b.rs", "fn f() { crate::a::g() }"),
        ("c/mod.rs", "mod inner;"),
        ("c/inner.rs", "use super::super::d::Z;"),
        ("d.rs", "use crate::c::inner::W;"),
    ]);
    assert_eq!(
        found,
        [
            "x/src (top-level modules): a -> b -> a",
            "x/src (top-level modules): c -> d -> c",
        ]
    );
}

#[test]
fn a_clean_graph_passes() {
    let found = synthetic(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("a.rs", "use crate::b; use self::local::Q; mod local {}"),
        (
            "b.rs",
            "use crate::{c as a, c::X};\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}",
        ),
        (
            "c.rs",
            "// use crate::a::X;\n/* crate::b::Y */ pub(crate) fn g() {}",
        ),
        ("c/tests.rs", "use crate::a::X;"),
        ("main.rs", "use crate::a; mod cli;"),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn items_of_mod_rs_are_not_edges_but_siblings_are() {
    let parent = "mod deploy; mod launch; pub struct Control; fn new_id() {}";
    let clean = synthetic(&[
        ("lib.rs", "pub mod control;"),
        ("control/mod.rs", parent),
        ("control/deploy.rs", "use super::{new_id, Control};"),
        (
            "control/launch.rs",
            "use super::Control; use crate::control::new_id;",
        ),
    ]);
    assert!(clean.is_empty(), "{clean:?}");
    let found = synthetic(&[
        ("lib.rs", "pub mod control;"),
        ("control/mod.rs", parent),
        ("control/deploy.rs", "use super::{launch::Launch, Control};"),
        (
            "control/launch.rs",
            "fn f() { crate::control::deploy::g() }",
        ),
    ]);
    assert_eq!(found, ["x/src/control: deploy -> launch -> deploy"]);
}
