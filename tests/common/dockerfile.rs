//! What the `Dockerfile` makes, read from it, so that the image the real-node tests run
//! (`tests/control_plane/images.rs`) is the one `docker build` makes: the build stage's
//! `cargo build` command and its environment, where the binary goes, the final stage's
//! base, `USER`, `ENTRYPOINT` and `CMD`. Anything else that would change the image or
//! the binary (an `ENV` in the build stage, a `STOPSIGNAL` or a second `COPY` in the
//! final stage, ...) is refused by name, so the Dockerfile cannot drift away from the
//! test image unnoticed.

use std::collections::BTreeMap;

/// The parts of the Dockerfile the test image reproduces.
#[derive(Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// The variables the build's `RUN` sets for `cargo build`, build args expanded.
    pub build_env: Vec<(String, String)>,
    /// The `cargo build ...` command, as words.
    pub build: Vec<String>,
    /// The built binary inside the target folder (`release/volguard`).
    pub built: String,
    /// The final stage's base image.
    pub base: String,
    /// Where the final stage puts the binary.
    pub binary: String,
    /// The final stage's `USER`.
    pub user: String,
    /// The final stage's `ENTRYPOINT` (exec form).
    pub entrypoint: Vec<String>,
    /// The final stage's `CMD` (exec form).
    pub cmd: Vec<String>,
}

/// Instructions the build stage may hold (anything else could change the binary).
const BUILD_STAGE: &[&str] = &["FROM", "ARG", "WORKDIR", "COPY", "RUN"];
/// Instructions the final stage may hold (anything else would change the image).
const FINAL_STAGE: &[&str] = &[
    "FROM",
    "ARG",
    "LABEL",
    "COPY",
    "USER",
    "EXPOSE",
    "ENTRYPOINT",
    "CMD",
];

/// One stage: its name (`AS`), base, and instructions after `FROM`.
struct Stage {
    name: Option<String>,
    base: String,
    instructions: Vec<(String, String)>,
}

/// The instructions, continuation lines joined, comments and parser directives left out.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((word.to_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

fn stages(text: &str) -> Result<Vec<Stage>, String> {
    let mut stages: Vec<Stage> = Vec::new();
    for (word, args) in instructions(text) {
        if word == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let (base, name) = match words.as_slice() {
                [base] => (*base, None),
                [base, kw, name] if kw.eq_ignore_ascii_case("as") => (*base, Some(*name)),
                _ => return Err(format!("FROM {args}: expected `FROM image [AS name]`")),
            };
            stages.push(Stage {
                name: name.map(str::to_owned),
                base: base.to_owned(),
                instructions: Vec::new(),
            });
            continue;
        }
        let stage = stages
            .last_mut()
            .ok_or_else(|| format!("{word} before the first FROM"))?;
        stage.instructions.push((word, args));
    }
    Ok(stages)
}

/// `"x"` or `'x'` without its quotes.
fn unquoted(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

/// `value` with `${NAME}` and `$NAME` replaced from `args`; an unknown name is an error.
fn expand(value: &str, args: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {value}"))?;
                (&braced[..end], &braced[end + 1..])
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        let known = args
            .get(name)
            .ok_or_else(|| format!("{value} uses ${name}, which is not a build ARG"))?;
        out.push_str(known);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a Dockerfile; `build_args` are the `--build-arg`s `docker build` would get.
/// The error names what the test image could not reproduce.
pub fn parse(text: &str, build_args: &[(&str, &str)]) -> Result<Dockerfile, String> {
    let stages = stages(text)?;
    let build_index = stages
        .iter()
        .position(|s| {
            s.instructions
                .iter()
                .any(|(w, a)| w == "RUN" && a.contains("cargo build"))
        })
        .ok_or("no stage RUNs `cargo build`")?;
    let build = &stages[build_index];
    let last = stages.last().expect("a stage");
    if build_index == stages.len() - 1 {
        return Err(
            "`cargo build` runs in the final stage: the image would hold the toolchain".into(),
        );
    }
    for (stage, allowed, what) in [(build, BUILD_STAGE, "build"), (last, FINAL_STAGE, "final")] {
        if let Some((word, args)) = stage
            .instructions
            .iter()
            .find(|(w, _)| !allowed.contains(&w.as_str()))
        {
            return Err(format!(
                "the {what} stage has `{word} {args}`, which the test image does not reproduce: \
                 teach tests/common/dockerfile.rs and tests/control_plane/images.rs what it does"
            ));
        }
    }

    // Build args: the stage's ARG defaults, then what docker build is given.
    let mut args = BTreeMap::new();
    for (word, decl) in &build.instructions {
        if word == "ARG" {
            if decl.split_whitespace().count() != 1 || decl.contains('$') {
                return Err(format!(
                    "`ARG {decl}`: one plain ARG per line, please; the test image reads no more"
                ));
            }
            let (name, default) = decl.split_once('=').unwrap_or((decl, ""));
            args.insert(name.trim().to_owned(), unquoted(default.trim()).to_owned());
        }
    }
    for (name, value) in build_args {
        if let Some(known) = args.get_mut(*name) {
            *known = (*value).to_owned();
        }
    }

    let (runs, others): (Vec<_>, Vec<_>) = build
        .instructions
        .iter()
        .filter(|(w, _)| w == "RUN")
        .partition(|(_, a)| a.contains("cargo build"));
    let run = runs.first().map(|(_, a)| a.as_str()).expect("found above");
    if let Some((_, other)) = others.first().or(runs.get(1)) {
        return Err(format!(
            "the build stage has a second RUN (`{other}`): the test image reproduces one, \
             the `cargo build` and the copy of its binary"
        ));
    }
    let mut build_env = Vec::new();
    let mut command = Vec::new();
    let mut installed = None;
    for (i, part) in run.split("&&").enumerate() {
        let mut words: Vec<&str> = part.split_whitespace().collect();
        if i == 0 {
            let flags = words.iter().take_while(|w| w.starts_with("--")).count();
            if let Some(flag) = words[..flags].iter().find(|w| !w.starts_with("--mount=")) {
                return Err(format!(
                    "RUN {flag}: the test image reproduces only --mount="
                ));
            }
            words.drain(..flags);
        }
        if let Some(cargo) = words.iter().position(|w| *w == "cargo") {
            for assignment in &words[..cargo] {
                let (name, value) = assignment.split_once('=').ok_or_else(|| {
                    format!("`{assignment}` before cargo build is not NAME=value")
                })?;
                build_env.push((name.to_owned(), unquoted(&expand(value, &args)?).to_owned()));
            }
            command = words[cargo..].iter().map(|w| (*w).to_owned()).collect();
        } else if let (Some(&"install"), Some(at)) = (
            words.first(),
            words.iter().position(|w| w.starts_with("target/")),
        ) {
            let dest = words
                .get(at + 1)
                .ok_or("the built binary is installed nowhere")?;
            installed = Some((words[at]["target/".len()..].to_owned(), (*dest).to_owned()));
        } else {
            return Err(format!(
                "`{}` in the build's RUN: the test image reproduces only `cargo build` and \
                 `install target/<profile>/volguard <dest>`",
                part.trim()
            ));
        }
    }
    if command.get(..2) != Some(&["cargo".to_owned(), "build".to_owned()][..]) {
        return Err(format!("`{run}`: expected `cargo build ...`"));
    }
    let (built, installed) =
        installed.ok_or("no command copies target/<profile>/volguard out of the build stage")?;

    let mut copies = last.instructions.iter().filter(|(w, _)| w == "COPY");
    let copy = copies
        .next()
        .map(|(_, a)| a.as_str())
        .ok_or("the final stage copies nothing")?;
    if copies.next().is_some() {
        return Err(
            "the final stage has more than one COPY: the test image holds only the binary".into(),
        );
    }
    let binary = match copy.split_whitespace().collect::<Vec<_>>().as_slice() {
        [from, src, dest]
            if Some(from.trim_start_matches("--from=")) == build.name.as_deref()
                && *src == installed
                && !dest.ends_with('/') =>
        {
            (*dest).to_owned()
        }
        _ => {
            return Err(format!(
                "COPY {copy}: expected `COPY --from=<build stage> {installed} /path/to/binary`"
            ));
        }
    };
    let one = |word: &str| {
        last.instructions
            .iter()
            .rev()
            .find(|(w, _)| w == word)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| format!("the final stage has no {word}"))
    };
    let exec_form = |word: &str| -> Result<Vec<String>, String> {
        let args = one(word)?;
        serde_json::from_str(&args).map_err(|e| format!("{word} {args} is not in exec form: {e}"))
    };
    Ok(Dockerfile {
        build_env,
        build: command,
        built,
        base: last.base.clone(),
        binary,
        user: one("USER")?,
        entrypoint: exec_form("ENTRYPOINT")?,
        cmd: exec_form("CMD")?,
    })
}
