//! Conditions over time, and the status patch.

use connectors_crd::condition::{Condition, types};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use crate::events::truncate;

/// Longest condition message the CRD schema accepts.
const MAX_MESSAGE: usize = 32_768;

/// Dates new conditions: `lastTransitionTime` stays from the previous condition of the same type
/// while its status stays; `lastProbeTime` is set on the conditions a probe decided.
pub fn date(
    new: Vec<Condition>,
    previous: &[Condition],
    now: &Time,
    generation: Option<i64>,
    probed: &[&str],
) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            let before = previous.iter().find(|p| p.type_ == c.type_);
            c.last_transition_time = match before {
                Some(p) if p.status == c.status => {
                    p.last_transition_time.clone().or_else(|| Some(now.clone()))
                }
                _ => Some(now.clone()),
            };
            c.last_probe_time = probed.contains(&c.type_.as_str()).then(|| now.clone());
            c.observed_generation = generation;
            if c.message.len() > MAX_MESSAGE {
                c.message = truncate(&c.message, MAX_MESSAGE).to_owned();
            }
            c
        })
        .collect()
}

/// Whether `Ready` changed status or reason: what deserves an Event.
pub fn ready_transition<'a>(new: &'a [Condition], previous: &[Condition]) -> Option<&'a Condition> {
    let now = new.iter().find(|c| c.type_ == types::READY)?;
    match previous.iter().find(|c| c.type_ == types::READY) {
        Some(p) if p.status == now.status && p.reason == now.reason => None,
        _ => Some(now),
    }
}

/// Whether two condition lists read the same (times aside).
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_state(y))
}

/// A JSON merge patch that sets `status` to exactly `fields`: the keys in `owned` missing from
/// `fields` are removed (a merge patch only removes what is set to null).
pub fn merge_patch(mut fields: Value, owned: &[&str]) -> Value {
    if let Some(map) = fields.as_object_mut() {
        for key in owned {
            map.entry((*key).to_owned()).or_insert(Value::Null);
        }
    }
    json!({ "status": fields })
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectors_crd::condition::Status;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let before = date(
            vec![
                Condition::new(types::SECRET_READY, Status::True, "SecretReady", "ok"),
                Condition::new(types::AUTH_READY, Status::True, "Authenticated", "ok"),
            ],
            &[],
            &t(100),
            Some(1),
            &[types::AUTH_READY],
        );
        let after = date(
            vec![
                Condition::new(types::SECRET_READY, Status::True, "SecretReady", "ok"),
                Condition::new(
                    types::AUTH_READY,
                    Status::False,
                    "AuthenticationFailed",
                    "no",
                ),
            ],
            &before,
            &t(200),
            Some(2),
            &[types::AUTH_READY],
        );
        assert_eq!(after[0].last_transition_time, Some(t(100)));
        assert_eq!(after[0].last_probe_time, None);
        assert_eq!(after[1].last_transition_time, Some(t(200)));
        assert_eq!(after[1].last_probe_time, Some(t(200)));
        assert_eq!(after[1].observed_generation, Some(2));
    }

    #[test]
    fn ready_transitions() {
        let ok = vec![Condition::new(types::READY, Status::True, "Ready", "ok")];
        let bad = vec![Condition::new(
            types::READY,
            Status::False,
            "SecretNotFound",
            "x",
        )];
        let worse = vec![Condition::new(
            types::READY,
            Status::False,
            "AuthenticationFailed",
            "x",
        )];
        assert!(ready_transition(&ok, &[]).is_some());
        assert!(ready_transition(&ok, &ok).is_none());
        assert!(ready_transition(&bad, &ok).is_some());
        assert!(ready_transition(&worse, &bad).is_some());
    }

    #[test]
    fn patch_nulls_what_is_gone() {
        let p = merge_patch(json!({"conditions": []}), &["conditions", "endpoints"]);
        assert_eq!(p, json!({"status": {"conditions": [], "endpoints": null}}));
    }
}
