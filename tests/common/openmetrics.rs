//! A strict-enough OpenMetrics text parser for tests: families with their TYPE, every
//! sample with its labels, and the `# EOF` terminator, so scrapes are checked for their
//! structure and values rather than for substrings.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample name (family name plus suffix such as `_total` or `_bucket`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name -> declared type.
    pub types: BTreeMap<String, String>,
    /// Family name -> declared unit, when any.
    pub units: BTreeMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose label set is exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like `value`, but 0 when the series does not exist yet (counters start absent).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Every sample of `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Parses OpenMetrics text; every sample must belong to a declared family.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.pop() != Some("# EOF") {
        return Err("the exposition does not end with # EOF".into());
    }
    let mut out = Exposition::default();
    for line in lines {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (keyword, family, rest) = (parts.next(), parts.next(), parts.next());
            let (Some(keyword), Some(family)) = (keyword, family) else {
                return Err(format!("bad metadata line {line:?}"));
            };
            match keyword {
                "TYPE" => {
                    let kind = rest.ok_or_else(|| format!("TYPE without a type: {line:?}"))?;
                    out.types.insert(family.to_owned(), kind.to_owned());
                }
                "UNIT" => {
                    out.units
                        .insert(family.to_owned(), rest.unwrap_or_default().to_owned());
                }
                "HELP" => {}
                _ => return Err(format!("unknown metadata {line:?}")),
            }
            continue;
        }
        let sample = parse_sample(line)?;
        let declared = out.types.iter().any(|(family, kind)| {
            suffixes(kind)
                .iter()
                .any(|suffix| sample.name == format!("{family}{suffix}"))
        });
        if !declared {
            return Err(format!("sample of no declared family: {line:?}"));
        }
        out.samples.push(sample);
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let bad = |why: &str| format!("{why}: {line:?}");
    let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(bad("bad metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut inside) = rest.strip_prefix('{') {
        loop {
            inside = inside.strip_prefix(',').unwrap_or(inside);
            if let Some(after) = inside.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inside
                .split_once("=\"")
                .ok_or_else(|| bad("label without =\""))?;
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad("bad label name"));
            }
            let mut value = String::new();
            let mut chars = after.chars();
            loop {
                match chars
                    .next()
                    .ok_or_else(|| bad("unterminated label value"))?
                {
                    '"' => break,
                    '\\' => match chars.next().ok_or_else(|| bad("dangling escape"))? {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key.to_owned(), value);
            inside = chars.as_str();
        }
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or_else(|| bad("no space before the value"))?
        .split(' ');
    let value = fields.next().ok_or_else(|| bad("no value"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| bad("value is not a number"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}
