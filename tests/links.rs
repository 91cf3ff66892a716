//! Every relative link in the project's Markdown resolves inside the repository (to a file, and
//! to a heading where it names one), and nothing points outside it: a user who clones the
//! repository has nothing beside it.

use std::collections::HashSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files git would ship, approximately: everything but build output and VCS data.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

/// `](target)` links of a Markdown text, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        seen.insert(slug);
    }
    seen
}

#[test]
fn every_markdown_link_resolves_inside_the_repository() {
    let root = root();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in all
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
    {
        let text = fs::read_to_string(file).unwrap();
        for link in links(&text) {
            let link = link.split_whitespace().next().unwrap_or("").to_string();
            if link.is_empty() || link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let normal = normalize(&target);
            checked += 1;
            let here = file.strip_prefix(&root).unwrap().display().to_string();
            if !normal.starts_with(&root) {
                broken.push(format!("{here}: {link} points outside the repository"));
            } else if !normal.exists() {
                broken.push(format!("{here}: {link} does not exist"));
            } else if let Some(anchor) = anchor.filter(|_| normal.is_file()) {
                let is_md = normal.extension().is_some_and(|e| e == "md");
                if is_md && !anchors(&fs::read_to_string(&normal).unwrap()).contains(anchor) {
                    broken.push(format!("{here}: {link} names no heading there"));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "found only {checked} links; is the scan broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn nothing_refers_to_the_folder_beside_the_repository() {
    // Spelled in two halves so that this file does not find itself.
    let needle = format!("../{}", "shared");
    let root = root();
    let mut all = Vec::new();
    files(&root, &mut all);
    let offenders: Vec<_> = all
        .iter()
        .filter(|p| {
            fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).contains(&needle))
                .unwrap_or(false)
        })
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(offenders.is_empty(), "{needle} is named in {offenders:?}");
}
