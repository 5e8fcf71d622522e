//! `.krew.yaml`, the krew plugin manifest template: rendered as krew-release-bot
//! renders it, it is a Plugin krew accepts, for the archives a release publishes, whose
//! binary krew links as `kubectl-volguard` (the name under which volguard answers with
//! kubectl's spelling).

mod common;

use common::{render::documents, repo};
use serde_json::Value;

/// The template with `{{ .TagName }}` and `{{ addURIAndSha URL .TagName }}` filled in as
/// krew-release-bot fills them (the sha256 is the archive's; a stand-in here).
fn rendered(tag: &str) -> Value {
    let text = std::fs::read_to_string(repo(".krew.yaml")).expect(".krew.yaml");
    let mut out = String::new();
    for line in text.lines() {
        let line = line.replace("{{ .TagName }}", tag);
        match line.trim_start().strip_prefix("{{ addURIAndSha \"") {
            Some(rest) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                let (uri, tail) = rest.split_once('"').expect("a quoted URI");
                assert_eq!(tail.trim(), ".TagName }}", "{line}");
                out.push_str(&format!(
                    "{indent}uri: {uri}\n{indent}sha256: {}\n",
                    "ab".repeat(32)
                ));
            }
            None => {
                assert!(
                    !line.contains("{{"),
                    "a template action krew-release-bot lacks: {line}"
                );
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    documents(&out, ".krew.yaml").remove(0)
}

#[test]
fn the_krew_manifest_renders_a_plugin_for_each_release_archive() {
    let tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    let plugin = rendered(&tag);
    assert_eq!(
        plugin["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(plugin["kind"], "Plugin");
    // krew links the binary as kubectl-<name>: the name volguard answers to.
    assert_eq!(plugin["metadata"]["name"], "volguard");
    assert_eq!(plugin["spec"]["version"], tag.as_str());
    assert!(plugin["spec"]["shortDescription"].as_str().unwrap().len() <= 60);
    let platforms = plugin["spec"]["platforms"].as_array().expect("platforms");
    let mut arches = Vec::new();
    for p in platforms {
        let labels = &p["selector"]["matchLabels"];
        let (os, arch) = (
            labels["os"].as_str().unwrap(),
            labels["arch"].as_str().unwrap(),
        );
        arches.push(format!("{os}/{arch}"));
        assert_eq!(
            p["uri"],
            format!(
                "https://github.com/volguard/volguard/releases/download/{tag}/volguard-{tag}-{os}-{arch}.tar.gz"
            )
        );
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
        let bin = p["bin"].as_str().unwrap();
        let copied: Vec<&str> = p["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["from"].as_str().unwrap())
            .collect();
        assert!(copied.contains(&bin), "{bin} is installed: {copied:?}");
        assert!(copied.contains(&"LICENSE"));
    }
    assert_eq!(arches, ["linux/amd64", "linux/arm64"]);
}
