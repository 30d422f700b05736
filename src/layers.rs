//! The module graph's rule, checked over the source: each top-level module
//! sits in a layer and imports only from its own layer or the ones below,
//! and no two modules import each other, directly or through others.
//!
//! ```text
//! ops                                  probes and metrics
//! ws                                   real-time delivery
//! health  users  chats  messages  web  resources, and the web client's files
//! http  server  contract               shared filters, the HTTP server, the API documents
//! validate  password  auth  membership  presence  limits
//! db  events  message_json  metrics
//! config  error  support  logging  migrate
//! ```
//!
//! `lib.rs` and `main.rs` sit on top and may use anything.

/// Bottom first.
pub const LAYERS: &[&[&str]] = &[
    &["config", "error", "support", "logging", "migrate"],
    &["db", "events", "message_json", "metrics"],
    &[
        "validate",
        "password",
        "auth",
        "membership",
        "presence",
        "limits",
    ],
    &["http", "server", "contract"],
    &["health", "users", "chats", "messages", "web"],
    &["ws"],
    &["ops"],
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

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

    /// The top-level modules a source text names through `crate::`.
    fn crate_references(text: &str) -> BTreeSet<String> {
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let mut names = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                names.extend(group.split(',').map(|p| ident(p.trim())));
            } else {
                names.insert(ident(rest));
            }
        }
        names.retain(|n| !n.is_empty());
        names
    }

    /// Top-level module -> the top-level modules it references.
    fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files {
            let relative = file.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let module = top.to_string_lossy().trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" || module == "layers" {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let depth = relative.components().count();
            let is_root = depth == 1 || (depth == 2 && relative.ends_with("mod.rs"));
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            assert!(
                !(is_root && code.contains("super::")),
                "{}: a top-level module reaches the crate root through `super::`",
                relative.display()
            );
            let mut references = crate_references(&text);
            references.remove(&module);
            graph.entry(module).or_default().extend(references);
        }
        graph
    }

    #[test]
    fn every_module_has_a_layer() {
        for module in module_graph().keys() {
            assert!(
                layer_of(module).is_some(),
                "src/{module}: give it a layer in src/layers.rs"
            );
        }
    }

    #[test]
    fn modules_import_only_their_own_layer_or_below() {
        let mut upward = Vec::new();
        for (module, references) in module_graph() {
            let Some(own) = layer_of(&module) else {
                continue;
            };
            for reference in references {
                if layer_of(&reference).is_none_or(|layer| layer > own) {
                    upward.push(format!("{module} -> {reference}"));
                }
            }
        }
        assert!(upward.is_empty(), "imports that point up: {upward:?}");
    }

    #[test]
    fn modules_import_each_other_without_cycles() {
        let graph = module_graph();
        // Depth-first search; a module met again while on the stack closes a cycle.
        fn visit(
            module: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            stack: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) {
            if done.contains(module) {
                return;
            }
            if let Some(at) = stack.iter().position(|m| m == module) {
                panic!("import cycle: {} -> {module}", stack[at..].join(" -> "));
            }
            stack.push(module.to_string());
            for next in graph.get(module).into_iter().flatten() {
                visit(next, graph, stack, done);
            }
            stack.pop();
            done.insert(module.to_string());
        }
        let mut done = BTreeSet::new();
        for module in graph.keys() {
            visit(module, &graph, &mut Vec::new(), &mut done);
        }
    }

    #[test]
    fn references_are_read_from_paths_and_use_groups() {
        let text = "use crate::http::{a, b};\nuse crate::{db, error::ApiError};\nfn f() { crate::ws::x(); }";
        let found: Vec<String> = crate_references(text).into_iter().collect();
        assert_eq!(found, ["db", "error", "http", "ws"]);
    }
}
