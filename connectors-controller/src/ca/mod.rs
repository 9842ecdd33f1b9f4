//! The cluster CA: the roots workloads trust, and the certificates the controller signs with
//! them (agents' intermediates, the controller's own HTTPS certificate).
//!
//! The CA lives in one Secret in the controller's namespace ([`secret`]); every replica follows
//! it ([`store`]) and signs with it, the leader rotates it ([`rotation`]). During a rotation two
//! roots are published: the new one (`current`) and the one it replaces (`previous`), which
//! keeps signing until `sign_until` (the propagation delay: the new root reaches every trust
//! bundle first) and stays in the bundle until no intermediate it signed can still be valid.

pub mod issue;
pub mod root;
pub mod rotation;
pub mod secret;
pub mod store;

pub use issue::{IssueError, Issued, ServingCert};
pub use root::Root;

/// The roots and where a rotation stands.
#[derive(Debug)]
pub struct ClusterCa {
    /// The newest root: it signs once the previous root (if any) has stopped signing.
    pub current: Root,
    /// The root being replaced, while it is still published.
    pub previous: Option<Previous>,
    /// The last value of the rotation annotation the leader acted on.
    pub rotate_handled: Option<String>,
    /// The value of the rotation annotation (an admin changes it to ask for a rotation).
    pub rotate_requested: Option<String>,
    /// The Secret's resourceVersion this state was read from (none: not yet written).
    pub resource_version: Option<String>,
}

/// The root a rotation replaces.
#[derive(Debug)]
pub struct Previous {
    pub root: Root,
    /// It signs until then (Unix seconds); the current root signs from then on.
    pub sign_until: i64,
    /// No certificate it signed is valid after then (Unix seconds): what it signs is cut there.
    pub valid_until: i64,
}

impl ClusterCa {
    /// A CA with a single root.
    pub fn new(current: Root) -> Self {
        Self {
            current,
            previous: None,
            rotate_handled: None,
            rotate_requested: None,
            resource_version: None,
        }
    }

    /// The root that signs at `now`, and the time its certificates must end by (the previous
    /// root's `valid_until`, if it is the one).
    pub fn signer(&self, now: i64) -> (&Root, Option<i64>) {
        match &self.previous {
            Some(p) if now < p.sign_until => (&p.root, Some(p.valid_until)),
            _ => (&self.current, None),
        }
    }

    /// Names the signing root: it changes exactly when the signing root does, so an agent
    /// holding an intermediate of another generation renews it at once.
    pub fn generation(&self, now: i64) -> String {
        self.signer(now).0.fingerprint.clone()
    }

    /// Every published root, newest first: what workloads trust. The order only changes with a
    /// rotation, so the bundles written from it change only then.
    pub fn bundle_pem(&self) -> String {
        let mut out = self.current.cert_pem.clone();
        if let Some(p) = &self.previous {
            out.push_str(&p.root.cert_pem);
        }
        out
    }

    /// Every published root, the signing one first (what an agent is told).
    pub fn roots_signing_first(&self, now: i64) -> String {
        let (signer, _) = self.signer(now);
        let mut out = signer.cert_pem.clone();
        for r in self.roots() {
            if r.fingerprint != signer.fingerprint {
                out.push_str(&r.cert_pem);
            }
        }
        out
    }

    /// The published roots.
    pub fn roots(&self) -> impl Iterator<Item = &Root> {
        std::iter::once(&self.current).chain(self.previous.as_ref().map(|p| &p.root))
    }

    /// When the signing root changes next (the end of the propagation delay), if it will.
    pub fn next_signer_change(&self, now: i64) -> Option<i64> {
        self.previous
            .as_ref()
            .map(|p| p.sign_until)
            .filter(|t| *t > now)
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whole seconds of a duration, as a Unix-time offset.
pub fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(t: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn root(now: i64) -> Root {
        Root::generate(std::time::Duration::from_secs(365 * 86_400), now).unwrap()
    }

    #[test]
    fn the_previous_root_signs_during_the_delay_then_the_new_one() {
        let t = 1_000_000;
        let old = root(t);
        let new = root(t);
        let (old_fp, new_fp) = (old.fingerprint.clone(), new.fingerprint.clone());
        let mut ca = ClusterCa::new(new);
        ca.previous = Some(Previous {
            root: old,
            sign_until: t + 120,
            valid_until: t + 120 + 86_400,
        });
        assert_eq!(ca.generation(t), old_fp);
        assert_eq!(ca.signer(t).1, Some(t + 120 + 86_400));
        assert_eq!(ca.next_signer_change(t), Some(t + 120));
        assert_eq!(ca.generation(t + 120), new_fp);
        assert_eq!(ca.signer(t + 120).1, None);
        assert_eq!(ca.next_signer_change(t + 120), None);
        // The bundle holds both, newest first, whoever signs.
        assert!(ca.bundle_pem().starts_with(&ca.current.cert_pem));
        assert_eq!(ca.bundle_pem().matches("BEGIN CERTIFICATE").count(), 2);
        let previous_pem = &ca.previous.as_ref().unwrap().root.cert_pem;
        assert!(ca.roots_signing_first(t).starts_with(previous_pem.as_str()));
        assert!(
            ca.roots_signing_first(t + 500)
                .starts_with(&ca.current.cert_pem)
        );
        assert_eq!(
            ca.roots_signing_first(t)
                .matches("BEGIN CERTIFICATE")
                .count(),
            2
        );
    }
}
