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

/// The value of a flag spelled `name VALUE` (`Some(None)`: the value is the next
/// word), `name=VALUE`, or for a one-letter flag `-nVALUE`; `None` for another word.
fn flag_value<'a>(word: &'a str, names: &[&str]) -> Option<Option<&'a str>> {
    names.iter().find_map(|name| {
        let rest = word.strip_prefix(name)?;
        match rest.strip_prefix('=') {
            _ if rest.is_empty() => Some(None),
            Some(value) => Some(Some(value)),
            None if name.len() == 2 => Some(Some(rest)),
            None => None,
        }
    })
}

/// `argv` as volguard's parser takes it: unchanged unless the program is named
/// `kubectl-volguard`; then, wherever kubectl's flags stand, the command comes first,
/// `-n`/`--namespace NS` and `explain`'s `pod/NAME` (or `NAME`) become `--pod NS/NAME`
/// (`--pod NAME`: the context's namespace), and `-o` becomes `--output`. A resource
/// other than a pod (`deploy/web`) is passed on as is, for the parser to refuse.
pub fn rewrite(argv: Vec<OsString>) -> Vec<OsString> {
    let is_plugin = argv.first().is_some_and(|program| {
        Path::new(program)
            .file_stem()
            .is_some_and(|stem| stem == PLUGIN_NAME)
    });
    if !is_plugin {
        return argv;
    }
    let mut command: Option<OsString> = None;
    let mut flags = Vec::new();
    let mut rest = Vec::new();
    let mut namespace = None;
    let mut pod = None;
    let mut words = argv.into_iter().skip(1);
    while let Some(word) = words.next() {
        let Some(text) = word.to_str() else {
            rest.push(word);
            continue;
        };
        if let Some(value) = flag_value(text, &["-n", "--namespace"]) {
            namespace = value.map(OsString::from).or_else(|| words.next());
        } else if let Some(value) = flag_value(text, &["-o"]) {
            flags.push("--output".into());
            flags.extend(value.map(OsString::from).or_else(|| words.next()));
        } else if VALUED.contains(&text) {
            flags.push(word);
            flags.extend(words.next());
        } else if text.starts_with('-') {
            flags.push(word);
        } else if command.is_none() {
            command = Some(word);
        } else if command.as_deref() == Some("explain".as_ref()) && pod.is_none() {
            match text
                .strip_prefix("pod/")
                .or_else(|| text.strip_prefix("pods/"))
            {
                Some(name) => pod = Some(name.to_owned()),
                None if !text.contains('/') => pod = Some(text.to_owned()),
                None => rest.push(word),
            }
        } else {
            rest.push(word);
        }
    }
    let mut out = vec![OsString::from("volguard")];
    out.extend(command);
    out.extend(flags);
    out.extend(rest);
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

    #[test]
    fn kubectl_flags_may_stand_anywhere_and_in_any_spelling() {
        assert_eq!(
            run(&[
                "kubectl-volguard",
                "--context",
                "prod",
                "explain",
                "pod/web-0",
                "-nshop"
            ]),
            [
                "volguard",
                "explain",
                "--context",
                "prod",
                "--pod",
                "shop/web-0"
            ]
        );
        assert_eq!(
            run(&["kubectl-volguard", "-o", "json", "nodes"]),
            ["volguard", "nodes", "--output", "json"]
        );
        assert_eq!(
            run(&["kubectl-volguard", "explain", "-n=shop", "-ojson", "web-0"]),
            [
                "volguard",
                "explain",
                "--output",
                "json",
                "--pod",
                "shop/web-0"
            ]
        );
        // Not a pod: left for the parser to refuse, never taken for a pod's name.
        assert_eq!(
            run(&["kubectl-volguard", "explain", "deploy/web", "-n", "shop"]),
            ["volguard", "explain", "deploy/web"]
        );
    }
}
