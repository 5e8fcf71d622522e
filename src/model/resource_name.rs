//! Whether a rendered extended-resource name is one the API server accepts. Handles come
//! from PVs and inline volumes unchecked (many clouds use paths such as
//! `projects/p/disks/d`), and a pod whose limits name an invalid resource is refused
//! outright: volguard must never be the reason a pod cannot be created.

/// `Ok` when `name` is a valid extended resource name (a qualified name with a domain
/// prefix outside `kubernetes.io`, still valid behind the quota prefix `requests.`);
/// otherwise why not, in words.
pub fn check(name: &str) -> Result<(), String> {
    let Some((prefix, local)) = name.split_once('/') else {
        return Err("it has no domain prefix (domain/name)".into());
    };
    if local.contains('/') {
        return Err("it has more than one '/'".into());
    }
    if local.is_empty() || local.len() > 63 {
        return Err(format!(
            "the part after '/' must be 1 to 63 characters, not {}",
            local.len()
        ));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let inner_ok = local
        .chars()
        .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    if !inner_ok || !local.starts_with(alnum) || !local.ends_with(alnum) {
        return Err(format!(
            "{local:?} must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    // The API server also checks `requests.<name>`, for quotas.
    if prefix.len() + "requests.".len() > 253 {
        return Err("the domain is longer than 244 characters".into());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !prefix.split('.').all(label_ok) {
        return Err(format!("the domain {prefix:?} is not a lowercase DNS name"));
    }
    if prefix == "kubernetes.io" || prefix.ends_with(".kubernetes.io") {
        return Err("the kubernetes.io domain is reserved".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn valid_names_pass_and_invalid_ones_say_why() {
        for ok in [
            "volumes.brightbox.com/vol-qsk4v",
            "example.com/a",
            "example.com/A.b_c-9",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        let long = format!("example.com/{}", "x".repeat(64));
        let cases = [
            ("vol-qsk4v", "it has no domain prefix (domain/name)"),
            ("example.com/projects/p/disks/d", "it has more than one '/'"),
            (
                long.as_str(),
                "the part after '/' must be 1 to 63 characters, not 64",
            ),
            (
                "example.com/",
                "the part after '/' must be 1 to 63 characters, not 0",
            ),
            (
                "example.com/vol qsk",
                "\"vol qsk\" must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ),
            (
                "example.com/-x",
                "\"-x\" must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ),
            (
                "Example.com/x",
                "the domain \"Example.com\" is not a lowercase DNS name",
            ),
            (
                "example..com/x",
                "the domain \"example..com\" is not a lowercase DNS name",
            ),
            ("kubernetes.io/x", "the kubernetes.io domain is reserved"),
        ];
        for (name, why) in cases {
            assert_eq!(check(name), Err(why.to_owned()), "{name}");
        }
    }
}
