//! Service labels: Kubernetes-style `key=value` pairs a person attaches to
//! a service (`tier=gold`, `app.example.com/owner=billing`) and rollouts
//! select by (every pair of the selector must match, like `matchLabels`).

use std::collections::BTreeMap;

/// A service's labels, in key order (deterministic JSON and digests).
pub type Labels = BTreeMap<String, String>;

/// Longest key or value: a Kubernetes label value's limit (63), so labels
/// copied from Kubernetes fit as they are.
pub const MAX_LABEL_LEN: usize = 63;

/// Labels one service may carry: enough for any real scheme, small enough
/// that a service record stays small in a fleet of millions.
pub const MAX_LABELS: usize = 32;

/// Checks one key or value: 1 to 63 characters of `[A-Za-z0-9._-/]`.
fn check(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_LABEL_LEN {
        return Err(format!("label {what} {text:?} must be 1 to {MAX_LABEL_LEN} characters"));
    }
    if let Some(bad) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))) {
        return Err(format!(
            "label {what} {text:?} holds {bad:?}: only letters, digits, '.', '_', '-' and '/' are allowed"
        ));
    }
    Ok(())
}

/// Checks a whole set of labels; returns what is wrong.
pub fn validate_labels(labels: &Labels) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels per service, got {}", labels.len()));
    }
    for (k, v) in labels {
        check("key", k)?;
        check("value", v)?;
    }
    Ok(())
}

/// Parses `key=value` (the CLI's `--label` and the selector's `label`).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("label {text:?} must be written key=value"))?;
    check("key", k)?;
    check("value", v)?;
    Ok((k.to_string(), v.to_string()))
}

/// Whether `labels` holds every pair of `wanted` (an empty `wanted` matches all).
pub fn labels_match(labels: Option<&Labels>, wanted: &Labels) -> bool {
    wanted.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_and_values_are_checked() {
        assert!(validate_labels(&labels(&[("tier", "gold"), ("app.example.com/owner", "billing_2-x")])).is_ok());
        assert!(validate_labels(&labels(&[("", "x")])).is_err());
        assert!(validate_labels(&labels(&[("k", "")])).is_err());
        assert!(validate_labels(&labels(&[("k", &"v".repeat(64))])).is_err());
        assert!(validate_labels(&labels(&[(&"k".repeat(64), "v")])).is_err());
        assert!(validate_labels(&labels(&[("k y", "v")])).is_err());
        assert!(validate_labels(&labels(&[("k", "é")])).is_err());
        let many: Labels = (0..=MAX_LABELS).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(validate_labels(&many).is_err());
        assert_eq!(parse_label("tier=gold").unwrap(), ("tier".into(), "gold".into()));
        assert!(parse_label("tier").is_err() && parse_label("=gold").is_err() && parse_label("tier=").is_err());
    }

    #[test]
    fn every_wanted_pair_must_match() {
        let have = labels(&[("tier", "gold"), ("region", "eu")]);
        assert!(labels_match(Some(&have), &labels(&[])));
        assert!(labels_match(Some(&have), &labels(&[("tier", "gold")])));
        assert!(labels_match(Some(&have), &labels(&[("tier", "gold"), ("region", "eu")])));
        assert!(!labels_match(Some(&have), &labels(&[("tier", "gold"), ("region", "us")])));
        assert!(!labels_match(None, &labels(&[("tier", "gold")])));
        assert!(labels_match(None, &labels(&[])));
    }
}
