//! Host-chosen metric labels (`SessionStart.labels`) with bounded cardinality.
//!
//! The first `max` distinct values of each label key (process-wide) are exported as they are; any
//! further value is exported as [`OTHER`] and counted in `voice_label_values_overflowed_total`. The
//! number of distinct keys is bounded too ([`MAX_KEYS`]); a key past it is left out of metrics.
//! Memory is bounded by `MAX_KEYS × max` values of at most 64 bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

/// The value reported for a label past its key's maximum.
pub const OTHER: &str = "other";
/// Distinct label keys exported at most (process-wide).
pub const MAX_KEYS: usize = 32;

fn seen() -> &'static Mutex<HashMap<String, HashSet<String>>> {
    static SEEN: OnceLock<Mutex<HashMap<String, HashSet<String>>>> = OnceLock::new();
    SEEN.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The labels as metrics export them: values past their key's `max` distinct ones become `other`.
pub fn bounded(labels: BTreeMap<String, String>, max: usize) -> BTreeMap<String, String> {
    let Ok(mut seen) = seen().lock() else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (k, v) in labels {
        if !seen.contains_key(&k) && seen.len() >= MAX_KEYS {
            metrics::counter!(voice_telemetry::LABELS_OVERFLOWED).increment(1);
            continue;
        }
        let values = seen.entry(k.clone()).or_default();
        if values.contains(&v) || values.len() < max {
            values.insert(v.clone());
            out.insert(k, v);
        } else {
            metrics::counter!(voice_telemetry::LABELS_OVERFLOWED).increment(1);
            out.insert(k, OTHER.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_maximum_are_reported_as_other() {
        let one = |v: &str| BTreeMap::from([("tenant_lbl_test".to_string(), v.to_string())]);
        let got: Vec<String> = (0..300)
            .map(|i| bounded(one(&format!("t{i}")), 3)["tenant_lbl_test"].clone())
            .collect();
        assert_eq!(&got[..3], ["t0", "t1", "t2"]);
        assert!(got[3..].iter().all(|v| v == OTHER));
        // A value already admitted stays itself.
        assert_eq!(bounded(one("t1"), 3)["tenant_lbl_test"], "t1");
    }
}
