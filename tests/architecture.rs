//! The walls between the rooms of `src/`, as a test: it reads every `crate::…` and
//! `super::…` path of the library's non-test code, builds the graph of its top-level
//! modules, and fails on an import circle or on a crossing of the layering rules of
//! `../shared/STYLE.md` (see `RULES`). A new circle fails CI, not a review.
//!
//! The checker is plain text work (comments, strings and `#[cfg(test)]` items are blanked
//! first); its own unit tests below feed it small fixtures with a circle and with a
//! forbidden import and check that it says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One layering rule: modules matching `from` may not import any module in `forbidden`.
struct Rule {
    from: &'static [&'static str],
    forbidden: &'static [&'static str],
    why: &'static str,
}

/// The protocol modules: the packet and request edges (and the boot-script service they
/// share). They reach state through seams (`model`'s traits, IPAM, sinks), never a backend.
const PROTOCOL: &[&str] = &["dhcp", "tftp", "http", "pxe", "scripts"];

/// Everything but the two places that assemble the daemon (`app`) and the command line.
const BELOW_APP: &[&str] = &[
    "audit",
    "bmc",
    "boot",
    "config",
    "control",
    "dhcp",
    "diag",
    "discovery",
    "events",
    "ha",
    "handoff",
    "http",
    "identity",
    "inventory",
    "ipam",
    "jail",
    "model",
    "ops",
    "power",
    "pxe",
    "rack",
    "scripts",
    "secrets",
    "snapshot",
    "store",
    "tftp",
    "types",
    "views",
];

const RULES: &[Rule] = &[
    Rule {
        from: BELOW_APP,
        forbidden: &["app"],
        why: "app.rs builds each server's context; nothing below it imports it",
    },
    Rule {
        from: BELOW_APP,
        forbidden: &["cli"],
        why: "the core knows no CLI (a CLI edge lives under src/cli/)",
    },
    Rule {
        from: PROTOCOL,
        forbidden: &["store", "app", "ha", "rack", "cli"],
        why: "protocol modules reach state through seams (model traits, IPAM, sinks), never a store backend",
    },
    Rule {
        from: &["store", "model"],
        forbidden: &[
            "dhcp",
            "tftp",
            "http",
            "pxe",
            "scripts",
            "boot",
            "bmc",
            "power",
            "handoff",
            "audit",
            "rack",
            "ipam",
            "ha",
            "events",
            "discovery",
            "snapshot",
            "control",
            "ops",
            "config",
            "inventory",
        ],
        why: "the store knows no protocol and no room above it",
    },
    Rule {
        from: &["types", "diag", "jail", "secrets"],
        forbidden: BELOW_APP,
        why: "leaf helpers depend on nothing of the crate but each other",
    },
];

/// Files whose code is pure policy: no sockets, no store, no runtime.
const PURE_FILES: &[&str] = &[
    "dhcp/policy.rs",
    "dhcp/balance.rs",
    "ipam/address.rs",
    "pxe/mod.rs",
    "handoff/render.rs",
];
/// What pure code must not name.
const IMPURE: &[&str] = &[
    "tokio::",
    "socket2",
    "std::net::UdpSocket",
    "std::net::TcpStream",
    "sqlx",
    "rusqlite",
    "reqwest",
    "crate::store",
    "crate::events",
];

// ---- the checker ---------------------------------------------------------------------

/// `source` with comments, string and char literals replaced by spaces (newlines kept), so
/// what remains is code.
fn blank_non_code(source: &str) -> String {
    let b = source.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in out.iter_mut().take(to).skip(from) {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                let start = i;
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
                blank(&mut out, start, i);
            }
            b'r' if (b.get(i + 1) == Some(&b'#') || b.get(i + 1) == Some(&b'"'))
                && (i == 0 || !is_ident(b[i - 1])) =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let body = i + 2 + hashes;
                let end = b[body..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| body + p + close.len());
                blank(&mut out, i, end);
                i = end;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                blank(&mut out, start, i.min(b.len()));
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
                let end = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map(|p| i + 2 + p)
                } else if b.get(i + 2) == Some(&b'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match end {
                    Some(e) => {
                        blank(&mut out, i, e + 1);
                        i = e + 1;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The end (exclusive) of the item starting at `from`: its `;`, or its `{…}` block.
fn item_end(code: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < code.len() && code[i] != b';' && code[i] != b'{' {
        i += 1;
    }
    if i >= code.len() || code[i] == b';' {
        return (i + 1).min(code.len());
    }
    let mut depth = 0;
    while i < code.len() {
        match code[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    code.len()
}

/// Code with every `#[cfg(test)]` item blanked, and the names of out-of-line test modules
/// (`#[cfg(test)] mod tests;`) it declares.
fn strip_tests(code: &str) -> (String, Vec<String>) {
    let b = code.as_bytes();
    let mut out = b.to_vec();
    let mut test_mods = Vec::new();
    let mut from = 0;
    while let Some(p) = code[from..].find("#[cfg(test)]") {
        let start = from + p;
        let end = item_end(b, start + "#[cfg(test)]".len());
        let item = code[start + "#[cfg(test)]".len()..end].trim();
        if let Some(name) = item.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            test_mods.push(name.trim().to_string());
        }
        for c in out.iter_mut().take(end).skip(start) {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = end;
    }
    (String::from_utf8(out).unwrap_or_default(), test_mods)
}

/// The first segments a path group `{a, b::c, d::{e, f}}` names (after its `{`), and where
/// it ends.
fn group_heads(code: &[u8], open: usize) -> (Vec<String>, usize) {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut i = open;
    let mut expect_head = true;
    while i < code.len() {
        match code[i] {
            b'{' => {
                depth += 1;
                expect_head = depth == 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return (heads, i + 1);
                }
            }
            b',' if depth == 1 => expect_head = true,
            c if is_ident(c) && expect_head && depth == 1 => {
                let end = code[i..]
                    .iter()
                    .position(|&c| !is_ident(c))
                    .map_or(code.len(), |p| i + p);
                heads.push(String::from_utf8_lossy(&code[i..end]).into_owned());
                expect_head = false;
                i = end;
                continue;
            }
            c if !c.is_ascii_whitespace() && depth == 1 => expect_head = false,
            _ => {}
        }
        i += 1;
    }
    (heads, code.len())
}

/// The top-level modules that `code` (of a file whose module path is `module`) names
/// through `crate::X` or `super::…::X`.
fn named_modules(code: &str, module: &[String]) -> BTreeSet<String> {
    let b = code.as_bytes();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b':') {
            i += 1;
            continue;
        }
        let (mut base, mut j): (Vec<String>, usize) = if code[i..].starts_with("crate::") {
            (Vec::new(), i + "crate::".len())
        } else if code[i..].starts_with("super::") {
            let mut path = module.to_vec();
            let mut j = i;
            while code[j..].starts_with("super::") {
                path.pop();
                j += "super::".len();
            }
            (path, j)
        } else {
            i += 1;
            continue;
        };
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if base.is_empty() {
            if b.get(j) == Some(&b'{') {
                let (heads, end) = group_heads(b, j);
                found.extend(heads);
                i = end;
                continue;
            }
            let end = b[j..]
                .iter()
                .position(|&c| !is_ident(c))
                .map_or(b.len(), |p| j + p);
            found.insert(code[j..end].to_string());
            i = end;
        } else {
            // Inside one top-level module: `super::` stays in it.
            found.insert(base.remove(0));
            i = j;
        }
    }
    found
}

/// A crate's sources: relative path (`dhcp/server.rs`) → text.
type Sources = BTreeMap<String, String>;

/// The module path of a source file: `dhcp/server.rs` → [dhcp, server]; `dhcp/mod.rs` and
/// `dhcp.rs` → [dhcp]; `lib.rs` → [].
fn module_path(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// The top-level module graph of non-test code: module → the modules it names.
fn graph(sources: &Sources) -> BTreeMap<String, BTreeSet<String>> {
    let mut test_files = BTreeSet::new();
    let mut stripped = BTreeMap::new();
    for (file, text) in sources {
        let (code, test_mods) = strip_tests(&blank_non_code(text));
        let dir = match file.rsplit_once('/') {
            Some((d, "mod.rs")) => format!("{d}/"),
            Some((d, f)) => format!("{d}/{}/", f.trim_end_matches(".rs")),
            None if file == "lib.rs" || file == "main.rs" => String::new(),
            None => format!("{}/", file.trim_end_matches(".rs")),
        };
        for m in test_mods {
            test_files.insert(format!("{dir}{m}.rs"));
            test_files.insert(format!("{dir}{m}/mod.rs"));
        }
        stripped.insert(file.clone(), code);
    }
    let tops: BTreeSet<String> = sources
        .keys()
        .filter_map(|f| module_path(f).first().cloned())
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in &stripped {
        let module = module_path(file);
        let Some(top) = module.first() else { continue };
        if test_files.contains(file) {
            continue;
        }
        let deps = g.entry(top.clone()).or_default();
        for m in named_modules(code, &module) {
            if m != *top && tops.contains(&m) {
                deps.insert(m);
            }
        }
    }
    g
}

/// Every import circle of the graph, each as `a -> b -> … -> a` (one per strongly
/// connected component of more than one module).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in g.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for m in g.keys() {
        if reported.contains(m) || !reach(m).contains(m) {
            continue;
        }
        // A shortest way back to `m`, for a readable message.
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([m.clone()]);
        'bfs: while let Some(x) = queue.pop_front() {
            for d in g.get(&x).into_iter().flatten() {
                if d == m {
                    prev.insert(format!("{m}#end"), x.clone());
                    break 'bfs;
                }
                if !prev.contains_key(d) {
                    prev.insert(d.clone(), x.clone());
                    queue.push_back(d.clone());
                }
            }
        }
        // Walk back from the edge that closes the circle, then read it forwards.
        let mut back = Vec::new();
        let mut at = prev.get(&format!("{m}#end")).cloned();
        while let Some(x) = at.filter(|x| x != m) {
            at = prev.get(&x).cloned();
            back.push(x);
        }
        back.reverse();
        let path: Vec<String> = std::iter::once(m.clone())
            .chain(back)
            .chain(std::iter::once(m.clone()))
            .collect();
        let component: BTreeSet<String> = reach(m)
            .into_iter()
            .filter(|x| reach(x).contains(m))
            .collect();
        reported.extend(component.iter().cloned());
        out.push(format!(
            "{} (circle among: {})",
            path.join(" -> "),
            component.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

/// Every import that crosses a layering rule, and every impure name in a pure file.
fn violations(sources: &Sources, g: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for rule in RULES {
        for from in rule.from {
            for to in g.get(*from).into_iter().flatten() {
                // Modules a rule names on both sides may use each other (the leaf helpers).
                if rule.forbidden.contains(&to.as_str()) && !rule.from.contains(&to.as_str()) {
                    out.push(format!("{from} imports {to}: {}", rule.why));
                }
            }
        }
    }
    for file in PURE_FILES {
        let Some(text) = sources.get(*file) else {
            continue;
        };
        let (code, _) = strip_tests(&blank_non_code(text));
        for name in IMPURE {
            if code.contains(name) {
                out.push(format!(
                    "{file} names {name}: pure policy touches no socket, store or runtime"
                ));
            }
        }
    }
    out
}

fn read_sources(root: &Path) -> Sources {
    let mut out = Sources::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = e.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(root).expect("under src/");
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                out.insert(rel.to_string_lossy().into_owned(), text);
            }
        }
    }
    out
}

// ---- the test of src/ ---------------------------------------------------------------

#[test]
fn src_has_no_import_circles_and_keeps_its_layers() {
    let sources = read_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let g = graph(&sources);
    assert!(
        g.contains_key("dhcp") && g.contains_key("app"),
        "the checker found src/"
    );
    for m in g.keys() {
        assert!(
            BELOW_APP.contains(&m.as_str()) || ["app", "cli"].contains(&m.as_str()),
            "new top-level module {m}: place it in tests/architecture.rs's layers"
        );
    }
    let mut problems = cycles(&g);
    problems.extend(violations(&sources, &g));
    assert!(
        problems.is_empty(),
        "architecture rules broken:\n  {}\n(graph: {g:#?})",
        problems.join("\n  ")
    );
}

// ---- the checker's own tests, on small fixtures ------------------------------------------

fn fixture(files: &[(&str, &str)]) -> Sources {
    files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect()
}

#[test]
fn a_circle_between_two_modules_is_found() {
    let src = fixture(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        ("a.rs", "use crate::b::Thing;\npub struct Other;"),
        ("b/mod.rs", "pub mod inner;\npub struct Thing;"),
        ("b/inner.rs", "use crate::{a::Other, b};\nfn f() {}"),
    ]);
    let g = graph(&src);
    let c = cycles(&g);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].starts_with("a -> b -> a"), "{c:?}");
}

#[test]
fn comments_strings_and_test_code_are_not_imports() {
    let src = fixture(&[
        ("lib.rs", "pub mod a; pub mod b;"),
        (
            "a.rs",
            "//! see crate::b\nfn f() { let s = \"crate::b::X\"; let c = '{'; }\n\
             #[cfg(test)]\nmod tests { use crate::b::Thing; }\n#[cfg(test)]\nmod more;",
        ),
        ("a/more.rs", "use crate::b::Thing;"),
        ("b.rs", "use crate::a;"),
    ]);
    let g = graph(&src);
    assert!(g["a"].is_empty(), "{g:?}");
    assert!(cycles(&g).is_empty());
}

#[test]
fn a_protocol_module_importing_the_store_is_refused() {
    let src = fixture(&[
        ("lib.rs", "pub mod dhcp; pub mod store; pub mod model;"),
        ("dhcp/mod.rs", "pub mod server;"),
        (
            "dhcp/server.rs",
            "use super::super::store::sqlite::SqliteStore;",
        ),
        ("store/mod.rs", "pub use crate::model::*;"),
        ("model.rs", "pub struct Lease;"),
    ]);
    let g = graph(&src);
    let v = violations(&src, &g);
    assert!(
        v.iter().any(|m| m.starts_with("dhcp imports store")),
        "{v:?}"
    );
    assert!(cycles(&g).is_empty());
}

#[test]
fn the_core_importing_the_cli_or_app_is_refused_and_pure_files_stay_pure() {
    let src = fixture(&[
        (
            "lib.rs",
            "pub mod audit; pub mod cli; pub mod app; pub mod dhcp;",
        ),
        (
            "audit/mod.rs",
            "use crate::cli::Output;\nfn f(a: &crate::app::App) {}",
        ),
        ("cli/mod.rs", "use crate::audit;"),
        ("app.rs", ""),
        ("dhcp/mod.rs", "pub mod policy;"),
        ("dhcp/policy.rs", "fn f() { tokio::spawn(async {}); }"),
    ]);
    let g = graph(&src);
    let v = violations(&src, &g);
    assert!(
        v.iter().any(|m| m.starts_with("audit imports cli")),
        "{v:?}"
    );
    assert!(
        v.iter().any(|m| m.starts_with("audit imports app")),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|m| m.starts_with("dhcp/policy.rs names tokio::")),
        "{v:?}"
    );
    assert_eq!(cycles(&g).len(), 1, "audit <-> cli");
}
