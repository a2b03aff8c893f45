//! What the agent reports after one install attempt (pure): the Node annotation, the Node
//! condition [`CONDITION`] and the Event, each naming the published object and the field (data key,
//! line, column, enclosing BIRD block) BIRD refused. The I/O is in [`super::agent`].
//!
//! Where: the Node is the node's status object. Its `status.conditions` already carry what
//! node-level components report (kubelet, node-problem-detector, Calico's `NetworkUnavailable`);
//! the published ConfigMap/Secret is the operator's input to the node and has no status, and a
//! CalicoNodeStatus exists only when a user asked for one (its status has no conditions).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::bird::{Applied, BirdError};

/// Node condition type: `True` while the node's latest published config is refused (BIRD keeps
/// running the last good one), `False` once a config is accepted. Problem-style, like
/// node-problem-detector's conditions.
pub const CONDITION: &str = "BirdConfigRejected";
/// Event reasons.
pub const REASON_APPLIED: &str = "BirdConfigApplied";
pub const REASON_REJECTED: &str = "BirdConfigRejected";
pub const REASON_NOT_RELOADED: &str = "BirdNotReloaded";
pub const REASON_INSTALL_FAILED: &str = "BirdConfigNotInstalled";

/// The published object a config came from, as reports name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// `ConfigMap` or `Secret`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// What to report for one install attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Value of the Node annotation `bird-config-status`.
    pub status: String,
    /// `Some(true)`: a Warning Event; `Some(false)`: a Normal one; `None`: no Event.
    pub event: Option<(bool, &'static str, String)>,
    /// The Node condition [`CONDITION`] to write.
    pub condition: NodeCondition,
}

/// Where in the published object BIRD's parse error points: `data[<key>] line L column C (in
/// <block>)`. `message` is BIRD's own (`bird: <path>:<line>:<col> <what>`), `files` the object's data.
/// Never quotes the offending line: a Secret's files hold passwords.
pub fn locate(message: &str, files: &BTreeMap<String, Vec<u8>>) -> Option<(String, String)> {
    // "bird: /etc/bird/.tortie-stage-7/bird_ipam.cfg:3:8 syntax error"
    let rest = message.split_once(": ").map_or(message, |(_, r)| r);
    let (place, what) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut parts = place.rsplitn(3, ':');
    let col: u32 = parts.next()?.parse().ok()?;
    let line: u32 = parts.next()?.parse().ok()?;
    let path = parts.next()?;
    let key = path.rsplit('/').next()?.to_string();
    let body = files.get(&key)?;
    let text = String::from_utf8_lossy(body);
    let block = text
        .lines()
        .take(line as usize)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(str::trim_start)
        .find(|l| {
            ["protocol ", "template ", "filter ", "function "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split('{').next().unwrap_or(l).trim().to_string());
    let mut field = format!("data[{key}] line {line} column {col}");
    if let Some(b) = block {
        field.push_str(&format!(" (in `{b}`)"));
    }
    Some((field, what.trim().to_string()))
}

/// The report for `result` (one [`super::bird::apply`] of `files` from `source`), given the
/// condition already on the Node (its transition time is kept while the status stays).
pub fn decide(
    result: &Result<Applied, BirdError>,
    source: &Source,
    files: &BTreeMap<String, Vec<u8>>,
    hash: &str,
    previous: Option<&NodeCondition>,
    now: jiff::Timestamp,
) -> Outcome {
    let object = format!("{} {}/{}", source.kind, source.namespace, source.name);
    let (rejected, reason, status, event) = match result {
        Ok(Applied::Reloaded) => (
            false,
            REASON_APPLIED,
            "Applied".to_string(),
            Some((
                false,
                REASON_APPLIED,
                format!("BIRD reloaded with config {hash} from {object}"),
            )),
        ),
        Ok(Applied::Unchanged) => (false, REASON_APPLIED, "Applied".to_string(), None),
        Err(e) => {
            let (rejected, reason, note) = match e {
                BirdError::Rejected { program, message, .. } => {
                    let note = match locate(message, files) {
                        Some((field, what)) => format!(
                            "{program} rejected {object} field {field}: {what}; BIRD keeps the last good config"
                        ),
                        None => {
                            format!("{program} rejected {object}: {message}; BIRD keeps the last good config")
                        }
                    };
                    (true, REASON_REJECTED, note)
                }
                BirdError::BadName(n) => (
                    true,
                    REASON_REJECTED,
                    format!(
                        "{object} field data[{n}]: not a BIRD file name the agent writes; BIRD keeps the last good config"
                    ),
                ),
                e if e.installed_not_reloaded() => (
                    false,
                    REASON_NOT_RELOADED,
                    format!("config from {object} installed but BIRD not reloaded (retrying): {e}"),
                ),
                e => (
                    false,
                    REASON_INSTALL_FAILED,
                    format!("config from {object} not installed (retrying): {e}"),
                ),
            };
            let note: String = note.chars().take(1000).collect();
            (
                rejected,
                reason,
                format!("Error: {note}"),
                Some((true, reason, note)),
            )
        }
    };
    let cond_status = if rejected { "True" } else { "False" };
    let message = match &event {
        Some((_, _, note)) if rejected => note.clone(),
        _ if rejected => String::new(),
        _ => match result {
            Ok(_) => format!("BIRD runs config {hash} from {object}"),
            Err(_) => "no config rejected".to_string(),
        },
    };
    let transition = previous
        .filter(|p| p.status == cond_status)
        .and_then(|p| p.last_transition_time.clone())
        .unwrap_or(Time(now));
    Outcome {
        status: status.chars().take(1000).collect(),
        event,
        condition: NodeCondition {
            type_: CONDITION.into(),
            status: cond_status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(transition),
            last_heartbeat_time: Some(Time(now)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BTreeMap<String, Vec<u8>> {
        [
            (
                "bird.cfg".to_string(),
                b"router id 10.0.0.1;\ninclude \"bird_ipam.cfg\";\nprotocol bgp Node_10_0_0_2 from bgp_template {\n  neighbor 10.0.0.2 as 64512;\n  password \"hunter2\"; bogus;\n}\n".to_vec(),
            ),
            ("bird_ipam.cfg".to_string(), b"filter calico_export_to_bgp_peers {\n  reject;\n}\n".to_vec()),
        ]
        .into_iter()
        .collect()
    }

    fn src() -> Source {
        Source {
            kind: "Secret".into(),
            namespace: "tortie-system".into(),
            name: "tortie-bird-node-1".into(),
        }
    }

    fn rejected(message: &str) -> Result<Applied, BirdError> {
        Err(BirdError::Rejected {
            program: "bird".into(),
            file: "/etc/bird/.tortie-stage-9/bird.cfg".into(),
            message: message.into(),
        })
    }

    #[test]
    fn a_rejection_names_the_object_the_key_the_line_and_the_block_but_no_secret() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let o = decide(
            &rejected("bird: /etc/bird/.tortie-stage-9/bird.cfg:5:23 syntax error"),
            &src(),
            &files(),
            "abc",
            None,
            now,
        );
        let (warning, reason, note) = o.event.clone().unwrap();
        assert!(warning);
        assert_eq!(reason, REASON_REJECTED);
        assert_eq!(
            note,
            "bird rejected Secret tortie-system/tortie-bird-node-1 field data[bird.cfg] line 5 column 23 \
             (in `protocol bgp Node_10_0_0_2 from bgp_template`): syntax error; BIRD keeps the last good config"
        );
        assert!(!note.contains("hunter2") && !o.status.contains("hunter2"));
        assert_eq!(o.condition.type_, CONDITION);
        assert_eq!(o.condition.status, "True");
        assert_eq!(o.condition.message.as_deref(), Some(note.as_str()));
        assert_eq!(o.condition.last_transition_time, Some(Time(now)));
        assert!(o.status.starts_with("Error: bird rejected Secret"));

        // An included file: its own key, its own block.
        let (field, what) = locate(
            "bird: /x/.tortie-stage-1/bird_ipam.cfg:2:3 Unknown filter",
            &files(),
        )
        .unwrap();
        assert_eq!(
            field,
            "data[bird_ipam.cfg] line 2 column 3 (in `filter calico_export_to_bgp_peers`)"
        );
        assert_eq!(what, "Unknown filter");
        // Unparseable or unknown files: BIRD's message as is, still naming the object.
        assert_eq!(locate("bird: cannot open", &files()), None);
        assert_eq!(locate("bird: /x/other.cfg:1:1 x", &files()), None);
        let o = decide(&rejected("bird: weird"), &src(), &files(), "abc", None, now);
        assert!(
            o.event
                .unwrap()
                .2
                .contains("Secret tortie-system/tortie-bird-node-1: bird: weird")
        );
    }

    #[test]
    fn the_condition_keeps_its_transition_time_while_the_status_stays() {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let t1 = jiff::Timestamp::from_second(1_800_000_100).unwrap();
        let bad = rejected("bird: /s/bird.cfg:5:23 syntax error");
        let first = decide(&bad, &src(), &files(), "h1", None, t0).condition;
        let again = decide(&bad, &src(), &files(), "h1", Some(&first), t1).condition;
        assert_eq!(again.last_transition_time, Some(Time(t0)));
        assert_eq!(again.last_heartbeat_time, Some(Time(t1)));
        let fixed = decide(&Ok(Applied::Reloaded), &src(), &files(), "h2", Some(&again), t1);
        assert_eq!(fixed.condition.status, "False");
        assert_eq!(fixed.condition.reason.as_deref(), Some(REASON_APPLIED));
        assert_eq!(fixed.condition.last_transition_time, Some(Time(t1)));
        assert_eq!(fixed.status, "Applied");
        assert!(!fixed.event.unwrap().0, "a Normal event");
        assert_eq!(
            decide(&Ok(Applied::Unchanged), &src(), &files(), "h2", None, t1).event,
            None
        );
    }

    #[test]
    fn bird_not_running_is_not_a_rejection() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let e = Err(BirdError::Reload {
            program: "bird".into(),
            socket: "/run/bird/bird.ctl".into(),
            message: "BIRD control socket /run/bird/bird.ctl: No such file or directory".into(),
        });
        let o = decide(&e, &src(), &files(), "h", None, now);
        assert_eq!(o.condition.status, "False");
        assert_eq!(o.event.unwrap().1, REASON_NOT_RELOADED);
        let bad_name = decide(
            &Err(BirdError::BadName("x.cfg".into())),
            &src(),
            &files(),
            "h",
            None,
            now,
        );
        assert_eq!(bad_name.condition.status, "True");
        assert!(bad_name.event.unwrap().2.contains("field data[x.cfg]"));
    }
}
