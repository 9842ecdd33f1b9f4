//! The ConnectorClass reconciler: validates a class on its own and reports it in the class's
//! status (`Ready`, with every problem named by its field).

use std::sync::Arc;
use std::time::Instant;

use connectors_crd::ConnectorClass;
use connectors_crd::assess::reasons;
use connectors_crd::condition::{Condition, Status, types};
use connectors_crd::validation;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::Instrument as _;

use crate::connector::Error;
use crate::context::Context;
use crate::events::EventType;
use crate::status;

pub async fn reconcile(class: Arc<ConnectorClass>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        class = %class.name_any(),
        generation = class.metadata.generation.unwrap_or_default()
    );
    let result = reconcile_inner(&class, &ctx).instrument(span).await;
    ctx.metrics
        .reconciled("connectorclass", result.is_ok(), started.elapsed());
    result
}

pub fn error_policy(class: Arc<ConnectorClass>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(class = %class.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(ctx.settings.error_retry)
}

/// The class's `Ready` condition.
pub fn ready(class: &ConnectorClass) -> Condition {
    let errors = validation::validate_class(&class.spec);
    if errors.is_empty() {
        Condition::new(
            types::READY,
            Status::True,
            reasons::CLASS_VALID,
            "the class is valid",
        )
    } else {
        Condition::new(
            types::READY,
            Status::False,
            reasons::CLASS_SPEC_INVALID,
            format!(
                "the class is invalid: {}; its Connectors are not checked further until it is fixed",
                validation::describe(&errors)
            ),
        )
    }
}

async fn reconcile_inner(class: &ConnectorClass, ctx: &Context) -> Result<Action, Error> {
    if class.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = class.name_any();
    let previous = class
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let observed = class.status.as_ref().and_then(|s| s.observed_generation);
    let new = vec![ready(class)];
    if observed == class.metadata.generation && status::same_conditions(&new, &previous) {
        return Ok(Action::await_change());
    }
    let now = Time(Timestamp::now());
    let conditions = status::date(new, &previous, &now, class.metadata.generation, &[]);
    let mut fields = serde_json::Map::new();
    if let Some(g) = class.metadata.generation {
        fields.insert("observedGeneration".into(), g.into());
    }
    fields.insert("conditions".into(), serde_json::to_value(&conditions)?);
    let patch = status::merge_patch(
        serde_json::Value::Object(fields),
        &["observedGeneration", "conditions"],
    );
    let api: Api<ConnectorClass> = Api::all(ctx.client.clone());
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
        Err(e) => return Err(e.into()),
    }
    if let Some(ready) = status::ready_transition(&conditions, &previous) {
        tracing::info!(ready = %ready.status, reason = %ready.reason, message = %ready.message, "class Ready changed");
        let type_ = if ready.is_true() {
            EventType::Normal
        } else {
            EventType::Warning
        };
        match ctx
            .events
            .publish(
                &class.object_ref(&()),
                type_,
                &ready.reason,
                "Validate",
                &ready.message,
            )
            .await
        {
            Ok(()) => ctx.metrics.event_published(),
            Err(e) => tracing::warn!(error = %e, "cannot publish an Event"),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_classes_are_valid() {
        for yaml in [
            include_str!("../../deploy/classes/git.yaml"),
            include_str!("../../deploy/classes/oci.yaml"),
            include_str!("../../deploy/classes/k8s.yaml"),
        ] {
            let class: ConnectorClass = serde_yaml_ng::from_str(yaml).unwrap();
            let c = ready(&class);
            assert!(c.is_true(), "{}: {}", class.name_any(), c.message);
        }
    }

    #[test]
    fn problems_are_named() {
        let mut class: ConnectorClass =
            serde_yaml_ng::from_str(include_str!("../../deploy/classes/git.yaml")).unwrap();
        class.spec.auth_probes[0].auth_name = "nope".into();
        let c = ready(&class);
        assert_eq!(c.reason, reasons::CLASS_SPEC_INVALID);
        assert!(
            c.message
                .contains("spec.authProbes[0].authName: no auth type named 'nope'"),
            "{}",
            c.message
        );
    }
}
