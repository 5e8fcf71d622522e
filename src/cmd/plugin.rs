//! `kubectl volguard ...`: installed on PATH as `kubectl-volguard` (a link to or copy of
//! the binary), volguard is a kubectl plugin and takes kubectl's way of naming things:
//! `kubectl volguard explain pod/NAME -n NS`, `kubectl volguard nodes`, with
//! `--kubeconfig` and `--context`. Only the spelling changes: the words are rewritten
//! into volguard's own flags, and the command runs as `volguard ...` would.

use std::{ffi::OsString, path::Path};

/// The program name kubectl runs for `kubectl volguard`.
pub const PLUGIN_NAME: &str = "kubectl-volguard";

/// Flags of volguard's that take the next word as their value.
const VALUED: [&str; 7] = [
    "--kubeconfig",
    "--context",
    "--config",
    "--output",
    "--snapshot",
    "--pod",
    "--log-format",
];

/// `argv` as volguard's parser takes it: unchanged unless the program is named
/// `kubectl-volguard`; then `-n`/`--namespace NS` and `explain`'s `pod/NAME` (or `NAME`)
/// become `--pod NS/NAME` (`--pod NAME`: the context's namespace), and `-o` becomes
/// `--output`.
pub fn rewrite(argv: Vec<OsString>) -> Vec<OsString> {
    let is_plugin = argv.first().is_some_and(|program| {
        Path::new(program)
            .file_stem()
            .is_some_and(|stem| stem == PLUGIN_NAME)
    });
    if !is_plugin {
        return argv;
    }
    let mut out = vec![OsString::from("volguard")];
    let mut namespace = None;
    let mut pod = None;
    let mut explain = false;
    let mut words = argv.into_iter().skip(1);
    while let Some(word) = words.next() {
        let Some(text) = word.to_str() else {
            out.push(word);
            continue;
        };
        match text {
            "-n" | "--namespace" => namespace = words.next(),
            "-o" => {
                out.push("--output".into());
                out.extend(words.next());
            }
            _ if text.starts_with("--namespace=") => {
                namespace = Some(text["--namespace=".len()..].into());
            }
            _ if VALUED.contains(&text) => {
                out.push(word);
                out.extend(words.next());
            }
            "explain" if out.len() == 1 => {
                explain = true;
                out.push(word);
            }
            _ if explain && pod.is_none() && !text.starts_with('-') => {
                let name = text
                    .strip_prefix("pod/")
                    .or_else(|| text.strip_prefix("pods/"))
                    .unwrap_or(text);
                pod = Some(name.to_owned());
            }
            _ => out.push(word),
        }
    }
    if let Some(name) = pod {
        out.push("--pod".into());
        out.push(match namespace {
            Some(ns) => {
                let mut qualified = ns;
                qualified.push("/");
                qualified.push(name);
                qualified
            }
            None => name.into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(words: &[&str]) -> Vec<String> {
        rewrite(words.iter().map(OsString::from).collect())
            .into_iter()
            .map(|w| w.into_string().unwrap())
            .collect()
    }

    #[test]
    fn volguard_itself_is_left_alone() {
        let argv = ["/usr/bin/volguard", "explain", "-n", "x"];
        assert_eq!(run(&argv), argv);
    }

    #[test]
    fn kubectl_words_become_volguard_flags() {
        assert_eq!(
            run(&[
                "/home/u/bin/kubectl-volguard",
                "explain",
                "pod/web-0",
                "-n",
                "shop",
                "--context",
                "prod",
                "-o",
                "json"
            ]),
            [
                "volguard",
                "explain",
                "--context",
                "prod",
                "--output",
                "json",
                "--pod",
                "shop/web-0"
            ]
        );
        assert_eq!(
            run(&["kubectl-volguard", "explain", "--namespace=shop", "web-0"]),
            ["volguard", "explain", "--pod", "shop/web-0"]
        );
        assert_eq!(
            run(&["kubectl-volguard", "explain", "pods/web-0"]),
            ["volguard", "explain", "--pod", "web-0"]
        );
        assert_eq!(
            run(&[
                "kubectl-volguard",
                "nodes",
                "--kubeconfig",
                "/k",
                "-o",
                "json"
            ]),
            [
                "volguard",
                "nodes",
                "--kubeconfig",
                "/k",
                "--output",
                "json"
            ]
        );
    }
}
