//! Kubernetes status conditions: build a list and keep `lastTransitionTime` stable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition without timestamps; [`merge`] turns it into a `Condition`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Cond {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The desired conditions with `lastTransitionTime` taken from `old` when the status did not flip,
/// so that rewriting an unchanged status is a no-op and `kubectl describe` shows when it changed.
pub fn merge(old: &[Condition], new: &[Cond], generation: Option<i64>, now: Time) -> Vec<Condition> {
    new.iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" }.to_string();
            let since = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == status)
                .map(|o| o.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: c.type_.to_string(),
                status,
                reason: c.reason.clone(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// True when `conds` has `type_` with status True.
pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// True when `conds` has `type_` with status False.
pub fn is_false(conds: &[Condition], type_: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == "False")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn transition_time_kept_while_status_holds() {
        let first = merge(
            &[],
            &[Cond::new("Ready", true, "Valid", "ok")],
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        let again = merge(
            &first,
            &[Cond::new("Ready", true, "Valid", "still ok")],
            Some(2),
            t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(again[0].last_transition_time, t("2026-01-01T00:00:00Z"));
        assert_eq!(again[0].observed_generation, Some(2));
        assert_eq!(again[0].message, "still ok");
        let flipped = merge(
            &again,
            &[Cond::new("Ready", false, "Invalid", "bad")],
            Some(3),
            t("2026-01-03T00:00:00Z"),
        );
        assert_eq!(flipped[0].last_transition_time, t("2026-01-03T00:00:00Z"));
        assert!(is_false(&flipped, "Ready"));
        assert!(!is_true(&flipped, "Ready"));
    }
}
