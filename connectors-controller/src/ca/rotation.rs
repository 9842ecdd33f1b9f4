//! Rotation of the root, run by the leader.
//!
//! A rotation never breaks a running workload:
//! 1. the new root is published at once beside the old one (every bundle holds both);
//! 2. the old root keeps signing for the propagation delay, so that the new root has reached
//!    every trust bundle before anything it signed is presented;
//! 3. the old root leaves the bundle only when nothing it signed can still be valid: what it
//!    signs during the delay is cut at `valid_until` (end of the delay + the intermediates'
//!    validity), and it is dropped a clock-skew margin after that.
//!
//! A rotation is due when a third of the root's validity is left, or when the Secret's
//! `connectors.io/rotate` annotation takes a new value. One asked for while a previous root is
//! still published waits until that root retires (dropping it sooner could break workloads).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::store::{CaState, CaStore};
use super::{ClusterCa, Previous, Root, now, rfc3339, secs};
use crate::metrics::Metrics;

/// How rotations are timed.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Validity of a new root.
    pub validity: Duration,
    /// How long the previous root keeps signing after a rotation.
    pub propagation_delay: Duration,
    /// The validity of intermediates. What the previous root signs during the delay (the HTTPS
    /// certificate too) is cut at the end of the delay plus this.
    pub longest_issued: Duration,
    /// Clock skew allowed: the previous root is dropped this long after `valid_until`.
    pub retire_margin: Duration,
}

/// Why a root is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// The rotation annotation has this new value.
    Requested(String),
    /// A third of its validity is left.
    Expiring,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Requested(v) => write!(f, "asked for (connectors.io/rotate: {v:?})"),
            Why::Expiring => f.write_str("a third of its validity is left"),
        }
    }
}

/// What the leader should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing until then (Unix seconds).
    Wait(i64),
    Rotate(Why),
    /// Drop the previous root: nothing it signed is valid any more.
    Retire,
    /// A rotation is due but waits for the previous root to retire at `until`.
    Deferred {
        why: Why,
        until: i64,
    },
}

/// When a root is due for rotation: when a third of its validity is left.
pub fn rotation_due(root: &Root) -> i64 {
    root.not_after - (root.not_after - root.not_before) / 3
}

pub fn plan(ca: &ClusterCa, policy: &Policy, now: i64) -> Step {
    let why = match &ca.rotate_requested {
        Some(v) if ca.rotate_requested != ca.rotate_handled => Some(Why::Requested(v.clone())),
        _ if now >= rotation_due(&ca.current) => Some(Why::Expiring),
        _ => None,
    };
    if let Some(p) = &ca.previous {
        let retire_at = p.valid_until.saturating_add(secs(policy.retire_margin));
        if now >= retire_at {
            return Step::Retire;
        }
        return match why {
            Some(why) => Step::Deferred {
                why,
                until: retire_at,
            },
            None => Step::Wait(retire_at),
        };
    }
    match why {
        Some(why) => Step::Rotate(why),
        None => Step::Wait(rotation_due(&ca.current)),
    }
}

/// The CA after a rotation to `new` at `now`.
pub fn rotated(
    ca: &ClusterCa,
    new: Root,
    policy: &Policy,
    now: i64,
) -> Result<ClusterCa, super::root::RootError> {
    let sign_until = now.saturating_add(secs(policy.propagation_delay));
    Ok(ClusterCa {
        previous: Some(Previous {
            root: ca.current.duplicate()?,
            sign_until,
            valid_until: sign_until.saturating_add(secs(policy.longest_issued)),
        }),
        current: new,
        rotate_handled: ca.rotate_requested.clone(),
        rotate_requested: ca.rotate_requested.clone(),
        resource_version: ca.resource_version.clone(),
    })
}

/// The CA without its previous root.
pub fn retired(ca: &ClusterCa) -> Result<ClusterCa, super::root::RootError> {
    Ok(ClusterCa {
        current: ca.current.duplicate()?,
        previous: None,
        rotate_handled: ca.rotate_handled.clone(),
        rotate_requested: ca.rotate_requested.clone(),
        resource_version: ca.resource_version.clone(),
    })
}

/// The leader's loop: rotates and retires roots when due, until `stop`.
pub async fn lead(
    store: Arc<CaStore>,
    policy: Policy,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut rx = store.subscribe();
    let mut deferred_logged: Option<Why> = None;
    loop {
        let state: Option<Arc<CaState>> = rx.borrow_and_update().clone();
        let t = now();
        // Look again at least every minute (clocks move; a write may have failed).
        let mut wake = t + 60;
        if let Some(state) = state {
            match plan(&state.ca, &policy, t) {
                Step::Wait(at) => wake = wake.min(at),
                Step::Deferred { why, until } => {
                    if deferred_logged.as_ref() != Some(&why) {
                        tracing::info!(
                            reason = %why,
                            retires_at = %rfc3339(until),
                            "root rotation due; it waits until the previous root retires (nothing it signed is valid after then)"
                        );
                        deferred_logged = Some(why);
                    }
                    wake = wake.min(until);
                }
                Step::Rotate(why) => {
                    deferred_logged = None;
                    match store.rotate(&state, &policy, t).await {
                        Ok(new) => {
                            metrics.ca_rotated(match why {
                                Why::Requested(_) => "requested",
                                Why::Expiring => "expiring",
                            });
                            tracing::info!(
                                reason = %why,
                                new_root = %new.ca.current.name,
                                new_fingerprint = %new.ca.current.fingerprint,
                                previous_signs_until = %rfc3339(t + secs(policy.propagation_delay)),
                                "rotated the cluster CA: the new root is published beside the old one, which keeps signing until the bundles have it"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot rotate the cluster CA; retrying");
                            wake = t + 5;
                        }
                    }
                }
                Step::Retire => match store.retire(&state).await {
                    Ok(_) => tracing::info!(
                        "retired the previous root: nothing it signed is valid any more; the bundles now hold the current root only"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot retire the previous root; retrying");
                        wake = t + 5;
                    }
                },
            }
        }
        let sleep = Duration::from_secs(u64::try_from((wake - now()).max(1)).unwrap_or(60));
        tokio::select! {
            () = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::tests::root;

    const DAY: i64 = 86_400;

    fn policy() -> Policy {
        Policy {
            validity: Duration::from_secs(365 * 86_400),
            propagation_delay: Duration::from_secs(120),
            longest_issued: Duration::from_secs(7 * 86_400),
            retire_margin: Duration::from_secs(300),
        }
    }

    #[test]
    fn a_root_is_rotated_when_a_third_is_left() {
        let t0 = 1_700_000_000;
        let ca = ClusterCa::new(root(t0));
        let due = rotation_due(&ca.current);
        assert!((due - (t0 + 243 * DAY)).abs() < DAY, "{due}");
        assert_eq!(plan(&ca, &policy(), t0), Step::Wait(due));
        assert_eq!(plan(&ca, &policy(), due), Step::Rotate(Why::Expiring));
    }

    #[test]
    fn an_annotation_change_rotates_once() {
        let t0 = 1_700_000_000;
        let mut ca = ClusterCa::new(root(t0));
        ca.rotate_requested = Some("1".into());
        assert_eq!(
            plan(&ca, &policy(), t0),
            Step::Rotate(Why::Requested("1".into()))
        );
        let old_fp = ca.current.fingerprint.clone();
        let new = rotated(&ca, root(t0), &policy(), t0).unwrap();
        assert_eq!(new.rotate_handled.as_deref(), Some("1"));
        let p = new.previous.as_ref().unwrap();
        assert_eq!(p.root.fingerprint, old_fp);
        assert_eq!(p.sign_until, t0 + 120);
        assert_eq!(p.valid_until, t0 + 120 + 7 * DAY);
        // Handled: no second rotation; the previous root retires after its certificates.
        let retire_at = t0 + 120 + 7 * DAY + 300;
        assert_eq!(plan(&new, &policy(), t0 + 1), Step::Wait(retire_at));
        assert_eq!(plan(&new, &policy(), retire_at - 1), Step::Wait(retire_at));
        assert_eq!(plan(&new, &policy(), retire_at), Step::Retire);
        let single = retired(&new).unwrap();
        assert!(single.previous.is_none());
        assert_eq!(single.current.fingerprint, new.current.fingerprint);
    }

    #[test]
    fn a_rotation_asked_during_one_waits_for_the_previous_root_to_retire() {
        let t0 = 1_700_000_000;
        let ca = ClusterCa::new(root(t0));
        let mut new = rotated(&ca, root(t0), &policy(), t0).unwrap();
        new.rotate_requested = Some("again".into());
        let retire_at = t0 + 120 + 7 * DAY + 300;
        assert_eq!(
            plan(&new, &policy(), t0 + 10),
            Step::Deferred {
                why: Why::Requested("again".into()),
                until: retire_at
            }
        );
        assert_eq!(plan(&new, &policy(), retire_at), Step::Retire);
        let single = retired(&new).unwrap();
        assert_eq!(
            plan(&single, &policy(), retire_at),
            Step::Rotate(Why::Requested("again".into()))
        );
    }
}
