//! Writes the version line `volguard --version` prints: the crate version, the git commit
//! it was built from (from `VOLGUARD_GIT_COMMIT`, as the Dockerfile passes it, or from
//! the checkout), and the Kubernetes version the tests run against (the
//! `k8s.io/kubernetes` requirement of `e2e/control-plane/go.mod`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=VOLGUARD_GIT_COMMIT");
    println!("cargo:rerun-if-changed=e2e/control-plane/go.mod");
    for git in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(git).exists() {
            println!("cargo:rerun-if-changed={git}");
        }
    }
    if std::env::var_os("CARGO_FEATURE_SKIP_E2E").is_some() {
        println!(
            "cargo:warning=skip-e2e: the tests against the real control plane (tests/e2e_*.rs) and those that need helm (tests/helm.rs) are marked ignored: they will NOT run"
        );
    }
    let commit = std::env::var("VOLGUARD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let kubernetes = std::fs::read_to_string("e2e/control-plane/go.mod")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next()? == "k8s.io/kubernetes").then(|| words.next().map(str::to_owned))?
            })
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!(
        "cargo:rustc-env=VOLGUARD_VERSION_LINE={} (commit {commit}, tested against Kubernetes {kubernetes})",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default()
    );
}
