//! Whether the names volguard writes into pods are ones kube-apiserver accepts, checked
//! as it checks them (`IsDNS1123Subdomain`, `IsQualifiedName`, `IsExtendedResourceName`).
//! A pod carrying one invalid name is refused outright (422), so the config's names are
//! checked once at load, and names rendered from volume handles, which come from PVs and
//! inline volumes unchecked (many clouds use paths such as `projects/p/disks/d`), are
//! checked before each injection: volguard must never be the reason a pod cannot be
//! created.

/// The longest DNS subdomain Kubernetes accepts.
const SUBDOMAIN_MAX: usize = 253;

/// The quota prefix the API server also checks every extended resource name behind.
const QUOTA_PREFIX: &str = "requests.";

/// `Ok` when `s` is a lower-case RFC 1123 subdomain of at most 253 characters: dot-
/// separated labels of `a-z`, `0-9` and `-`, each starting and ending with a letter
/// or digit.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.len() > SUBDOMAIN_MAX || !s.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a lower-case DNS subdomain (a-z, 0-9, '-' and '.', at most {SUBDOMAIN_MAX} characters)"
        ));
    }
    Ok(())
}

/// `Ok` when `name` is the part of a qualified name after its prefix: 1 to 63 letters,
/// digits, `-`, `_` or `.`, starting and ending with a letter or digit.
fn name_part(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "the part after '/' must be 1 to 63 characters, not {}",
            name.len()
        ));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let inner_ok = name
        .chars()
        .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    if !inner_ok || !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err(format!(
            "{name:?} must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// `Ok` when `key` is a qualified name with a domain prefix (`prefix/name`), as label
/// and annotation keys are; otherwise why not, in words.
pub fn qualified_name(key: &str) -> Result<(), String> {
    let Some((prefix, name)) = key.split_once('/') else {
        return Err("it has no domain prefix (domain/name)".into());
    };
    if name.contains('/') {
        return Err("it has more than one '/'".into());
    }
    dns_subdomain(prefix).map_err(|why| format!("its prefix {why}"))?;
    name_part(name)
}

/// `Ok` when `name` is a valid extended resource name: a qualified name with a domain
/// prefix, outside the `kubernetes.io/` names, not starting with the quota prefix
/// `requests.` and still valid behind it; otherwise why not, in words.
pub fn extended_resource(name: &str) -> Result<(), String> {
    let Some((prefix, _)) = name.split_once('/') else {
        return Err("it has no domain prefix (domain/name)".into());
    };
    if prefix.len() + QUOTA_PREFIX.len() > SUBDOMAIN_MAX {
        return Err(format!(
            "the domain is longer than {} characters",
            SUBDOMAIN_MAX - QUOTA_PREFIX.len()
        ));
    }
    qualified_name(name)?;
    if name.contains("kubernetes.io/") {
        return Err("the kubernetes.io domain is reserved".into());
    }
    if name.starts_with(QUOTA_PREFIX) {
        return Err(format!(
            "names starting with {QUOTA_PREFIX:?} are reserved for quotas"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_resource_names_pass_and_invalid_ones_say_why() {
        for ok in [
            "volumes.brightbox.com/vol-qsk4v",
            "example.com/a",
            "example.com/A.b_c-9",
        ] {
            assert_eq!(extended_resource(ok), Ok(()), "{ok}");
        }
        let long = format!("example.com/{}", "x".repeat(64));
        let long_domain = format!("{}.com/x", "d".repeat(241));
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
                "volguard.io/Volumes_",
                "\"Volumes_\" must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            ),
            (
                "Example.com/x",
                "its prefix \"Example.com\" is not a lower-case DNS subdomain (a-z, 0-9, '-' and '.', at most 253 characters)",
            ),
            (
                "example..com/x",
                "its prefix \"example..com\" is not a lower-case DNS subdomain (a-z, 0-9, '-' and '.', at most 253 characters)",
            ),
            (
                long_domain.as_str(),
                "the domain is longer than 244 characters",
            ),
            ("kubernetes.io/x", "the kubernetes.io domain is reserved"),
            (
                "disks.kubernetes.io/x",
                "the kubernetes.io domain is reserved",
            ),
            (
                "requests.example.com/x",
                "names starting with \"requests.\" are reserved for quotas",
            ),
        ];
        for (name, why) in cases {
            assert_eq!(extended_resource(name), Err(why.to_owned()), "{name}");
        }
    }

    #[test]
    fn subdomains_and_qualified_names_follow_kubernetes() {
        for ok in ["volguard.io", "a", "x-1.example.com", &"a".repeat(253)] {
            assert_eq!(dns_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Volguard.io",
            "volguard_io",
            "-a",
            "a.",
            "a..b",
            &"a".repeat(254),
        ] {
            assert!(dns_subdomain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(qualified_name("volguard.io/attach-limit"), Ok(()));
        assert_eq!(
            qualified_name("volguard.io/attach limit"),
            Err("\"attach limit\" must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into())
        );
    }
}
