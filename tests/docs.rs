//! The docs stay true to the code: every metric the server registers is
//! documented in docs/OPERATIONS.md ("Metrics"), and every metric documented
//! there is one the code registers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Every `turnout_…` name in `text`, where `quote` opens and closes it.
fn names(text: &str, quote: char) -> BTreeSet<String> {
    let opener = format!("{quote}turnout_");
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(&opener) {
        let name: String = rest[start + 1..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let after = &rest[start + 1 + name.len()..];
        if after.starts_with(quote) {
            found.insert(name.clone());
        }
        rest = &rest[start + 1 + name.len()..];
    }
    found
}

/// Metric names in the production code: every string literal that starts
/// with `turnout_` names a metric (a macro's argument or a constant handed
/// to one). The test-support modules (`testing.rs`) name databases so.
fn registered() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("actors/src"), &mut files);
    files
        .iter()
        .filter(|f| !f.ends_with("testing.rs"))
        .flat_map(|f| names(&std::fs::read_to_string(f).unwrap(), '"'))
        .collect()
}

/// Metric names in the "Metrics" section of docs/OPERATIONS.md.
fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/OPERATIONS.md")).unwrap();
    let start = text.find("\n## Metrics\n").expect("a Metrics section");
    let section = &text[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    names(&section[..end], '`')
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    let (registered, documented) = (registered(), documented());
    assert!(registered.len() > 40, "found only {registered:?}");
    let missing: Vec<_> = registered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "registered but not in docs/OPERATIONS.md: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(
        stale.is_empty(),
        "in docs/OPERATIONS.md but not registered: {stale:?}"
    );
}

/// The targets of a Markdown text's links: `[text](target)`.
fn link_targets(text: &str) -> Vec<&str> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .collect()
}

#[test]
fn the_docs_link_only_to_files_in_the_repository() {
    let root = root().canonicalize().unwrap();
    let mut docs = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        for target in link_targets(&text) {
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let resolved = doc.parent().unwrap().join(file).canonicalize();
            assert!(
                resolved.as_ref().is_ok_and(|p| p.starts_with(&root)),
                "{} links to {target}, which is not a file in the repository",
                doc.display()
            );
        }
    }
}
