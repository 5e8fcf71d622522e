//! Every relative link in the Markdown files (README.md, docs/, manifests/, charts/, and any
//! other `.md` outside `target/` and hidden folders) points at a file or folder that
//! exists, and every `#fragment` at a heading of its target, as GitHub forms heading
//! anchors. Links to other sites are not followed.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The Markdown files under `root`, sorted, without `target/` and hidden folders.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') || (dir == root && name == "target") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".md") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The text with inline code spans blanked out, so that a link written inside one (an
/// example, not a link) is not taken for one.
fn without_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        // The closing run of exactly as many backticks.
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let n = chars[j..].iter().take_while(|c| **c == '`').count();
                if n == run {
                    close = Some(j);
                    break;
                }
                j += n;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                out.push(' ');
                i = j + run;
            }
            None => {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// Whether a line opens or closes a fenced code block (also indented, in a list item).
fn is_fence(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("```") || t.starts_with("~~~")
}

/// Link targets of a Markdown text, with their line numbers: inline links and images
/// `[text](target "title")` and reference definitions `[name]: target`, outside code.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_code = false;
    for (n, line) in text.lines().enumerate() {
        if is_fence(line) {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let line = without_code_spans(line);
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some(end) = trimmed.find("]:")
            && trimmed.find(']') == Some(end)
        {
            if let Some(target) = trimmed[end + 2..].split_whitespace().next() {
                found.push((n + 1, target.trim_matches(['<', '>']).to_owned()));
            }
            continue;
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            // The target ends at the `)` that balances the opening one.
            let mut depth = 0;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = i;
                        break;
                    }
                    ')' => depth -= 1,
                    _ => {}
                }
            }
            let target = after[..end].trim();
            let target = match target.strip_prefix('<') {
                Some(t) => t.split('>').next().unwrap_or_default(),
                None => target.split_whitespace().next().unwrap_or_default(),
            };
            found.push((n + 1, target.to_owned()));
            rest = &after[end.min(after.len())..];
        }
    }
    found
}

/// The anchor GitHub gives a heading: its text as rendered (code spans and links reduced
/// to their text), lower-cased, without characters other than letters, digits, spaces,
/// `-` and `_`, spaces turned into `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // [text](url) -> text
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](") {
            Some(mid) => {
                let close = rest[open + mid..].find(')').map(|c| open + mid + c);
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + mid]);
                rest = close.map_or("", |c| &rest[c + 1..]);
            }
            None => {
                text.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown text defines: one per heading (a repeated one gets `-1`,
/// `-2`, ... as on GitHub), and explicit `id="..."` / `name="..."` attributes.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if is_fence(line) {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = slug(line[hashes..].trim().trim_end_matches('#').trim());
            let mut anchor = base.clone();
            let mut n = 0;
            while found.contains(&anchor) {
                n += 1;
                anchor = format!("{base}-{n}");
            }
            found.insert(anchor);
        }
        for attr in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(attr) {
                let value = &rest[at + attr.len()..];
                if let Some(end) = value.find('"') {
                    found.insert(value[..end].to_owned());
                }
                rest = &rest[at + attr.len()..];
            }
        }
    }
    found
}

/// The broken relative links of the Markdown files under `root`, one line each
/// (`file:line: target: what is wrong`).
fn check(root: &Path) -> Vec<String> {
    let mut broken = Vec::new();
    for file in markdown_files(root) {
        let rel = file.strip_prefix(root).unwrap().display().to_string();
        let text = fs::read_to_string(&file).unwrap();
        for (line, target) in links(&text) {
            if target.is_empty() {
                broken.push(format!("{rel}:{line}: empty link target"));
                continue;
            }
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else if let Some(from_root) = path.strip_prefix('/') {
                root.join(from_root)
            } else {
                file.parent().unwrap().join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{rel}:{line}: {target}: no such file"));
                continue;
            }
            let Some(fragment) = fragment else { continue };
            if !resolved.is_file() || resolved.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let target_text = fs::read_to_string(&resolved).unwrap();
            if !anchors(&target_text).contains(fragment) {
                broken.push(format!(
                    "{rel}:{line}: {target}: no heading with the anchor #{fragment}"
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = common::repo("");
    let files = markdown_files(&root);
    for must in [
        "README.md",
        "docs/install.md",
        "manifests/README.md",
        "charts/volguard/README.md",
    ] {
        assert!(files.contains(&root.join(must)), "{must} is checked");
    }
    let broken = check(&root);
    assert!(
        broken.is_empty(),
        "{} broken links:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_checker_reports_missing_files_and_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("docs")).unwrap();
    fs::write(
        root.join("docs/guide.md"),
        "# Guide\n\n## Bursts: placements in flight\n\n## Setup\n\n## Setup\n\nBack to [the top](../README.md#volguard).\n",
    )
    .unwrap();
    fs::write(
        root.join("README.md"),
        "# volguard\n\n\
         [fine](docs/guide.md#bursts-placements-in-flight) and [twice](docs/guide.md#setup-1)\n\
         [gone](docs/missing.md) and [no such heading](docs/guide.md#bursts)\n\
         [here](#volguard) [not here](#nowhere) [web](https://example.com/x.md)\n\
         `[in code](docs/also-missing.md)`\n\
         ```\n[in a block](docs/also-missing.md)\n```\n\
         [later]: docs/later.md\n\
         [folder](docs/)\n",
    )
    .unwrap();
    let broken = check(root);
    assert_eq!(
        broken,
        [
            "README.md:4: docs/missing.md: no such file",
            "README.md:4: docs/guide.md#bursts: no heading with the anchor #bursts",
            "README.md:5: #nowhere: no heading with the anchor #nowhere",
            "README.md:10: docs/later.md: no such file",
        ]
    );
}

#[test]
fn anchors_are_formed_as_github_forms_them() {
    for (heading, anchor) in [
        (
            "Bursts: placements in flight",
            "bursts-placements-in-flight",
        ),
        (
            "Tests: what is proven by what",
            "tests-what-is-proven-by-what",
        ),
        (
            "`volguard explain` and `nodes`",
            "volguard-explain-and-nodes",
        ),
        ("Install with [Helm](https://helm.sh)", "install-with-helm"),
        (
            "Upgrade, config change, uninstall",
            "upgrade-config-change-uninstall",
        ),
        ("x509: unknown authority", "x509-unknown-authority"),
        (
            "Extender 403 / `Insufficient volguard.io/volumes`",
            "extender-403--insufficient-volguardiovolumes",
        ),
        ("max_bytes in-flight", "max_bytes-in-flight"),
    ] {
        assert_eq!(slug(heading), anchor, "{heading}");
    }
    let text = "# A\n## Setup\n```\n# not a heading\n```\n### Setup\n<a id=\"custom\"></a>\n";
    assert_eq!(
        anchors(text),
        ["a", "custom", "setup", "setup-1"]
            .map(str::to_owned)
            .into_iter()
            .collect()
    );
}

/// The README is the page a newcomer reads first: short, and opening with the two
/// commands (run volguard on the embedded default; run the tests).
#[test]
fn the_readme_is_short_and_opens_with_the_two_commands() {
    let text = fs::read_to_string(common::repo("README.md")).unwrap();
    let lines = text.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; keep it to 300");
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        block
            .first()
            .is_some_and(|l| l.contains("cargo run -- serve --self-signed --snapshot")),
        "{block:?}"
    );
    assert!(block.iter().any(|l| l.trim() == "cargo test"), "{block:?}");
}
