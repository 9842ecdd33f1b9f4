//! Kubernetes Events (`events.k8s.io/v1`), published on transitions only.
//!
//! Each Event is created once and never updated: nothing is cached per object, so a deleted
//! Connector leaves no state here (its Events expire with the API server's event TTL).

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};

/// The `reportingController` of every Event.
pub const REPORTING_CONTROLLER: &str = "connectors.io/controller";
/// Longest `note` the API accepts.
const MAX_NOTE: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

#[derive(Clone)]
pub struct Events {
    client: Client,
    instance: String,
}

impl Events {
    pub fn new(client: Client, instance: String) -> Self {
        Self { client, instance }
    }

    /// Publishes one Event about `regarding` (in its namespace, `default` for cluster objects).
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        // Events about cluster-scoped objects live in `default`, and the API server wants the
        // reference to say so.
        let mut regarding = regarding.clone();
        let namespace = regarding
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        regarding.namespace = Some(namespace.clone());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("connectors"),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(action.to_owned()),
            reason: Some(truncate(reason, 128).to_owned()),
            note: Some(truncate(note, MAX_NOTE).to_owned()),
            regarding: Some(regarding),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(truncate(&self.instance, 128).to_owned()),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        api.create(&PostParams::default(), &event).await.map(|_| ())
    }
}

/// The longest prefix of `s` within `max` bytes, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
    }
}
