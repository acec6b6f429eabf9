//! The layers of `src/lib.rs`'s `# Layout`, checked against the sources.
//!
//! The numbered list in that doc is the order of the layers, lowest first.
//! A module may name (in code, tests included, comments aside) only its own
//! layer and the layers before it. And no files may name each other in a
//! circle; a file naming its own parent module's items (`super::Trait`) is
//! how a module reaches the traits it implements, not a circle, so a name of
//! an ancestor does not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, in the order the `# Layout` list gives them.
fn layers(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| {
            let item = line.strip_prefix("//!")?.trim_start();
            let (number, rest) = item.split_once(". [`")?;
            number.parse::<u32>().ok()?;
            Some(rest.split_once("`]")?.0.to_owned())
        })
        .collect()
}

/// Every `.rs` file under `dir`, with its module path (`storage::pg::batch`).
fn module_files(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut files = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            files.insert(parts.join("::"), path);
        }
    }
    files
}

/// The code of a file without its comments (line comments and doc
/// comments; a `//` inside a string such as a URL follows a `:` and stays).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut cut = line.len();
            let bytes = line.as_bytes();
            for i in 0..bytes.len().saturating_sub(1) {
                if bytes[i] == b'/' && bytes[i + 1] == b'/' && (i == 0 || bytes[i - 1] != b':') {
                    cut = i;
                    break;
                }
            }
            &line[..cut]
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file names: `crate::a::b` (and `crate::{a, b::c}`),
/// and `super::` paths resolved from the file's own module path.
fn named_paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let own: Vec<&str> = module.split("::").collect();
    let mut out = Vec::new();
    let idents = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| {
                p.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|p| !p.is_empty())
            .collect()
    };
    let mut rest = code;
    while let Some(at) = [rest.find("crate::"), rest.find("super::")]
        .into_iter()
        .flatten()
        .min()
    {
        let before_ok = at == 0 || {
            let c = rest.as_bytes()[at - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let is_crate = rest[at..].starts_with("crate::");
        let mut tail = &rest[at..];
        let mut base: Vec<String> = Vec::new();
        if is_crate {
            tail = &tail["crate::".len()..];
        } else {
            // A file's own module is its last path segment: `super` is the
            // module that declares it.
            let mut depth = own.len();
            while let Some(t) = tail.strip_prefix("super::") {
                depth = depth.saturating_sub(1);
                tail = t;
            }
            base = own[..depth].iter().map(|s| s.to_string()).collect();
        }
        if before_ok {
            if let Some(group) = tail.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let mut path = base.clone();
                    path.extend(idents(item.trim()));
                    out.push(path);
                }
            } else {
                let mut path = base.clone();
                path.extend(idents(tail));
                out.push(path);
            }
        }
        rest = &rest[at + 6..];
    }
    out
}

/// The longest prefix of `path` that is a module of the crate.
fn module_of(path: &[String], modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

fn is_ancestor(ancestor: &str, of: &str) -> bool {
    of.starts_with(ancestor) && of[ancestor.len()..].starts_with("::")
}

struct Sources {
    order: Vec<String>,
    modules: BTreeMap<String, PathBuf>,
    /// Module → the modules it names (itself and its ancestors left out).
    names: BTreeMap<String, BTreeSet<String>>,
}

fn read_sources() -> Sources {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    let order = layers(&lib);
    let modules = module_files(&root.join("src"));
    let mut names = BTreeMap::new();
    for (module, path) in &modules {
        let text = std::fs::read_to_string(path).expect("a source file");
        let named: BTreeSet<String> = named_paths(module, &code(&text))
            .iter()
            .filter_map(|p| module_of(p, &modules))
            .filter(|m| m != module && !is_ancestor(m, module))
            .collect();
        names.insert(module.clone(), named);
    }
    Sources {
        order,
        modules,
        names,
    }
}

fn layer(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn the_layout_lists_every_top_level_module_once() {
    let sources = read_sources();
    let listed: BTreeSet<&str> = sources.order.iter().map(String::as_str).collect();
    assert_eq!(listed.len(), sources.order.len(), "a layer is listed twice");
    let present: BTreeSet<&str> = sources.modules.keys().map(|m| layer(m)).collect();
    assert_eq!(
        listed, present,
        "the layers of src/lib.rs's # Layout and the modules in src/ differ"
    );
}

#[test]
fn no_module_names_a_layer_above_its_own() {
    let sources = read_sources();
    let rank = |m: &str| sources.order.iter().position(|l| l == layer(m));
    let mut wrong = Vec::new();
    for (module, named) in &sources.names {
        for other in named {
            if rank(other) > rank(module) {
                wrong.push(format!("{module} names {other}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layer order of src/lib.rs:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_files_name_each_other_in_a_circle() {
    let sources = read_sources();
    // Depth-first search for a back edge; a circle is reported with its path.
    fn visit<'a>(
        node: &'a str,
        names: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut circle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in names.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, names, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for module in sources.names.keys() {
        let mut path = Vec::new();
        if let Some(circle) = visit(module, &sources.names, &mut path, &mut done) {
            panic!("files name each other in a circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_checks_see_what_they_check() {
    // The parser itself: a wrong-way import and a circle are found.
    let lib = "//! 1. [`low`]: x\n//! 2. [`high`]: y\n";
    assert_eq!(layers(lib), ["low", "high"]);
    let named = named_paths(
        "low::a",
        &code(
            "use crate::{high::b, low::c};\nuse super::d; // crate::ignored\nlet u = \"http://x\";",
        ),
    );
    assert_eq!(
        named,
        [
            vec!["high".to_owned(), "b".to_owned()],
            vec!["low".to_owned(), "c".to_owned()],
            vec!["low".to_owned(), "d".to_owned()],
        ]
    );
    assert!(is_ancestor("storage", "storage::pg"));
    assert!(!is_ancestor("storage", "storage_x"));
    let sources = read_sources();
    assert!(
        sources.names["sync::job"].contains("storage"),
        "the job names the storage traits: the scan must see it"
    );
}
