//! The Connector reconciler: class, spec and Secret (the crd crate's `assess`), then the class's
//! liveness and auth probes against the tool, then the status and, on a transition, an Event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use connectors_crd::assess::{self, Assessment, reasons};
use connectors_crd::condition::{Condition, Status, types};
use connectors_crd::connector::ApiStatus;
use connectors_crd::inject::Injector;
use connectors_crd::probe::{self, ProbeError, ProbeInput, ProbeKind, ProbeRequest, status_line};
use connectors_crd::validation::CheckedConnector;
use connectors_crd::{Connector, ConnectorClass, tls};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use rustls_pki_types::CertificateDer;
use tracing::Instrument as _;

use crate::context::Context;
use crate::events::EventType;
use crate::prober::{Answer, ProbeFailure, With};
use crate::status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot encode the status: {0}")]
    Encode(#[from] serde_json::Error),
}

/// `AuthReady` reason: the registry's token service is on no address of the Connector, so no
/// credentials were sent to it.
const TOKEN_REALM_NOT_ALLOWED: &str = "TokenRealmNotAllowed";

/// The status keys this controller owns (cleared when they no longer apply).
const OWNED_STATUS: &[&str] = &["observedGeneration", "conditions", "endpoints", "api"];

pub async fn reconcile(connector: Arc<Connector>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        connector = %connector.id(),
        generation = connector.metadata.generation.unwrap_or_default()
    );
    let result = reconcile_inner(&connector, &ctx).instrument(span).await;
    ctx.metrics
        .reconciled("connector", result.is_ok(), started.elapsed());
    result
}

pub fn error_policy(connector: Arc<Connector>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(connector = %connector.id(), %error, "reconcile failed; retrying");
    Action::requeue(ctx.settings.error_retry)
}

async fn reconcile_inner(connector: &Connector, ctx: &Context) -> Result<Action, Error> {
    if connector.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = connector.namespace().unwrap_or_default();
    let name = connector.name_any();
    let uid = connector.uid().unwrap_or_default();

    let classes: Api<ConnectorClass> = Api::all(ctx.client.clone());
    let class = classes
        .get_opt(&connector.spec.connector_class_name)
        .await?;
    let secrets = fetch_secrets(connector, ctx, &namespace).await?;
    let mut a = assess::assess(connector, class.as_ref(), |n| secrets.get(n));
    let roots = ca_roots(&mut a, &namespace, connector);

    let mut conditions = a.conditions.clone();
    if !conditions.iter().any(|c| c.type_ == types::SECRET_READY) {
        conditions.push(not_checked(
            types::SECRET_READY,
            "not checked until ConnectorClassReady is True",
        ));
    }
    let mut probed = Vec::new();
    let (liveness, auth) = match (&a.checked, &class) {
        (Some(checked), Some(class)) => {
            let input = ProbeInput {
                checked,
                address: &connector.spec.address,
                name: &name,
                namespace: &namespace,
                secret: a.secret.as_ref(),
                credential: None,
            };
            let liveness = liveness(class, &input, &roots, ctx).await;
            if liveness.1 {
                probed.push(types::LIVENESS_READY);
            }
            let auth = auth(class, checked, &a, &input, &liveness.0, &roots, ctx).await;
            if auth.1 {
                probed.push(types::AUTH_READY);
            }
            (liveness.0, auth.0)
        }
        _ => {
            let why = "not checked until ConnectorClassReady is True";
            (
                not_checked(types::LIVENESS_READY, why),
                not_checked(types::AUTH_READY, why),
            )
        }
    };
    conditions.push(liveness);
    conditions.push(auth);
    let ready = assess::ready_condition(&conditions);
    let is_ready = ready.is_true();
    conditions.push(ready);

    let previous = ctx
        .tracked
        .last_conditions(&uid)
        .or_else(|| connector.status.as_ref().map(|s| s.conditions.clone()))
        .unwrap_or_default();
    let now = Time(Timestamp::now());
    let conditions = status::date(
        conditions,
        &previous,
        &now,
        connector.metadata.generation,
        &probed,
    );

    let endpoints: Vec<String> = a
        .checked
        .as_ref()
        .map(|c| c.addresses().map(|a| a.authority()).collect())
        .unwrap_or_default();
    let mut fields = serde_json::Map::new();
    if let Some(g) = connector.metadata.generation {
        fields.insert("observedGeneration".into(), g.into());
    }
    fields.insert("conditions".into(), serde_json::to_value(&conditions)?);
    if !endpoints.is_empty() {
        fields.insert("endpoints".into(), serde_json::to_value(&endpoints)?);
    }
    // Published only when the unified REST API serves it (without, it is cleared: "api" is
    // owned).
    if ctx.settings.serve_api {
        fields.insert(
            "api".into(),
            serde_json::to_value(ApiStatus {
                path: format!("/connectors/v1alpha1/{namespace}/{name}/path"),
            })?,
        );
    }
    let patch = status::merge_patch(serde_json::Value::Object(fields), OWNED_STATUS);
    let api: Api<Connector> = Api::namespaced(ctx.client.clone(), &namespace);
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        // Deleted meanwhile: nothing to write, nothing to remember.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
        Err(e) => return Err(e.into()),
    }

    if let Some(ready) = status::ready_transition(&conditions, &previous) {
        tracing::info!(
            ready = %ready.status,
            reason = %ready.reason,
            message = %ready.message,
            "Ready changed"
        );
        let type_ = if ready.is_true() {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let regarding = connector.object_ref(&());
        match ctx
            .events
            .publish(&regarding, type_, &ready.reason, "Check", &ready.message)
            .await
        {
            Ok(()) => ctx.metrics.event_published(),
            Err(e) => tracing::warn!(error = %e, "cannot publish an Event"),
        }
    }
    ctx.tracked.remember(&uid, conditions);

    Ok(Action::requeue(if is_ready {
        ctx.settings.recheck
    } else {
        ctx.settings.retry
    }))
}

/// The Secrets the Connector names, from its own namespace (a reference to another namespace
/// is a spec problem, reported by the checks, and never read).
async fn fetch_secrets(
    connector: &Connector,
    ctx: &Context,
    namespace: &str,
) -> Result<BTreeMap<String, Secret>, kube::Error> {
    let mut names = Vec::new();
    if let Some(r) = connector
        .spec
        .auth
        .as_ref()
        .and_then(|a| a.secret_ref.as_ref())
        && r.namespace.as_deref().is_none_or(|ns| ns == namespace)
    {
        names.push(r.name.clone());
    }
    if let Some(r) = &connector.spec.ca_cert_secret_ref {
        names.push(r.name.clone());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut found = BTreeMap::new();
    for name in names {
        if name.is_empty() || found.contains_key(&name) {
            continue;
        }
        if let Some(s) = api.get_opt(&name).await? {
            found.insert(name, s);
        }
    }
    Ok(found)
}

/// Parses the CA certificates `assess` found; a Secret whose PEM holds no usable certificate
/// turns `SecretReady` False.
fn ca_roots(
    a: &mut Assessment,
    namespace: &str,
    connector: &Connector,
) -> Vec<CertificateDer<'static>> {
    let Ok(pems) = &a.ca_pem else {
        return Vec::new();
    };
    let mut roots = Vec::new();
    for pem in pems {
        match tls::parse_pem_certs(pem) {
            Ok(certs) => roots.extend(certs),
            Err(e) => {
                let secret = connector
                    .spec
                    .ca_cert_secret_ref
                    .as_ref()
                    .map(|r| r.name.as_str())
                    .unwrap_or_default();
                assess::set_ca_problem(
                    &mut a.conditions,
                    format!("caCertSecretRef: Secret '{namespace}/{secret}': {e}"),
                );
                return Vec::new();
            }
        }
    }
    roots
}

/// Whether the class declares a parameter (in `spec.params` or an auth probe's `params`).
fn declares_param(class: &ConnectorClass, name: &str) -> bool {
    class.spec.params.iter().any(|p| p.name == name)
        || class
            .spec
            .auth_probes
            .iter()
            .any(|ap| ap.params.iter().any(|p| p.name == name))
}

/// What the liveness probe falls back to when it needs a parameter the Connector does not set:
/// any HTTP answer at the Connector's address shows the tool is reachable.
fn reachability_probe() -> connectors_crd::class::HttpProbe {
    connectors_crd::class::HttpProbe {
        path: "/".into(),
        success_codes: (100..=599).collect(),
        ..Default::default()
    }
}

fn not_checked(type_: &str, why: &str) -> Condition {
    Condition::new(type_, Status::Unknown, reasons::NOT_CHECKED, why)
}

/// The liveness probe's condition, and whether a probe was sent.
async fn liveness(
    class: &ConnectorClass,
    input: &ProbeInput<'_>,
    roots: &[CertificateDer<'static>],
    ctx: &Context,
) -> (Condition, bool) {
    let class_name = class.name_any();
    let Some(p) = &class.spec.liveness_probe else {
        return (
            Condition::new(
                types::LIVENESS_READY,
                Status::True,
                reasons::NO_LIVENESS_PROBE,
                format!("class '{class_name}' defines no liveness probe"),
            ),
            false,
        );
    };
    let mut fallback_for = None;
    let built = match probe::build(ProbeKind::Liveness, &p.http, "spec.livenessProbe", input) {
        // A parameter the class declares but the Connector does not set: a reachability check
        // of its address instead. (An undeclared one is the class's mistake: reported below.)
        Err(ProbeError::MissingParam { param, .. }) if declares_param(class, &param) => {
            fallback_for = Some(param);
            probe::build(
                ProbeKind::Liveness,
                &reachability_probe(),
                "spec.livenessProbe",
                input,
            )
        }
        other => other,
    };
    let req = match built {
        Ok(r) => r,
        Err(e) => {
            let why = match &e {
                ProbeError::MissingParam { field, param } => format!(
                    "{field}: uses parameter '{param}', which the class declares nowhere (spec.params or spec.authProbes[].params)"
                ),
                e => e.to_string(),
            };
            return (
                Condition::new(
                    types::LIVENESS_READY,
                    Status::False,
                    reasons::PROBE_INVALID,
                    format!("the liveness probe of class '{class_name}' cannot be sent: {why}"),
                ),
                false,
            );
        }
    };
    let outcome = send(&req, roots, With::default(), ctx).await;
    let c = match outcome {
        Ok(answer) if req.succeeded(answer.status) => Condition::new(
            types::LIVENESS_READY,
            Status::True,
            reasons::REACHABLE,
            match &fallback_for {
                None => format!(
                    "{} {} answered {}",
                    req.method,
                    req.display,
                    describe(&answer)
                ),
                Some(param) => format!(
                    "reachable: {} {} answered {} (the class's liveness probe needs parameter '{param}', not set in spec.auth.params, so only reachability was checked)",
                    req.method,
                    req.display,
                    describe(&answer)
                ),
            },
        ),
        Ok(answer) => Condition::new(
            types::LIVENESS_READY,
            Status::False,
            reasons::UNEXPECTED_RESPONSE,
            format!(
                "{} {} answered {}, expected {}: check spec.address and the parameters the probe uses",
                req.method,
                req.display,
                describe(&answer),
                req.expected()
            ),
        ),
        Err(failure) => failed(types::LIVENESS_READY, &req, &failure, ctx),
    };
    (c, true)
}

/// The auth probe's condition, and whether a probe was sent.
async fn auth(
    class: &ConnectorClass,
    checked: &CheckedConnector,
    a: &Assessment,
    input: &ProbeInput<'_>,
    liveness: &Condition,
    roots: &[CertificateDer<'static>],
    ctx: &Context,
) -> (Condition, bool) {
    let class_name = class.name_any();
    let Some(auth_type) = &checked.auth_type else {
        return (
            Condition::new(
                types::AUTH_READY,
                Status::True,
                reasons::NO_AUTH,
                format!("class '{class_name}' has no auth types; nothing to check"),
            ),
            false,
        );
    };
    let Some((index, p)) = class
        .spec
        .auth_probes
        .iter()
        .enumerate()
        .find(|(_, p)| p.auth_name == auth_type.name)
    else {
        return (
            Condition::new(
                types::AUTH_READY,
                Status::True,
                reasons::NO_AUTH_PROBE,
                format!(
                    "class '{class_name}' defines no auth probe for auth type '{}'",
                    auth_type.name
                ),
            ),
            false,
        );
    };
    let secret_ready = assess_condition(a, types::SECRET_READY).is_some_and(Condition::is_true);
    if !secret_ready {
        return (
            not_checked(types::AUTH_READY, "not checked until SecretReady is True"),
            false,
        );
    }
    if !liveness.is_true() {
        return (
            not_checked(
                types::AUTH_READY,
                "not checked while the tool does not pass its liveness probe (see LivenessReady)",
            ),
            false,
        );
    }
    let injector = match &a.injector {
        Ok(i) => i.as_ref(),
        Err(_) => None,
    };
    let input = ProbeInput {
        credential: injector.and_then(Injector::static_credential),
        ..*input
    };
    let field = format!("spec.authProbes[{index}].probe");
    let req = match probe::build(ProbeKind::Auth, &p.probe.http, &field, &input) {
        Ok(mut r) => {
            // A token exchanged or a certificate presented carries credentials too.
            r.with_credentials |= match injector {
                Some(Injector::RegistryToken(_)) => checked.secret_name.is_some(),
                Some(Injector::ClientCertificate(_)) => true,
                _ => false,
            };
            r
        }
        // The proxy serves the Connector all the same; the credentials are just not tried.
        Err(ProbeError::MissingParam { param, .. }) => {
            return (
                Condition::new(
                    types::AUTH_READY,
                    Status::True,
                    reasons::NOT_PROBED,
                    format!(
                        "the Secret fits auth type '{}', but the credentials are not tried against the tool: the class's auth probe needs parameter '{param}' (set it in spec.auth.params to check them)",
                        auth_type.name
                    ),
                ),
                false,
            );
        }
        Err(e) => {
            return (
                Condition::new(
                    types::AUTH_READY,
                    Status::False,
                    reasons::PROBE_INVALID,
                    format!("the auth probe of class '{class_name}' cannot be sent: {e}"),
                ),
                false,
            );
        }
    };
    let whose = match &checked.secret_name {
        Some(s) if req.with_credentials => {
            format!("with the credentials of Secret '{}/{s}'", input.namespace)
        }
        _ => format!(
            "without credentials (auth type '{}' is optional and no Secret is set)",
            auth_type.name
        ),
    };
    let with = With {
        identity: injector.and_then(Injector::client_identity),
        injector,
    };
    let outcome = send(&req, roots, with, ctx).await;
    let c = match outcome {
        Ok(answer) if req.succeeded(answer.status) => Condition::new(
            types::AUTH_READY,
            Status::True,
            if req.with_credentials {
                reasons::AUTHENTICATED
            } else {
                reasons::ANONYMOUS_ACCESS
            },
            format!(
                "{} {} {whose} answered {}",
                req.method,
                req.display,
                describe(&answer)
            ),
        ),
        Ok(answer) => {
            let denied = matches!(answer.status.as_u16(), 401 | 403);
            let hint = match (denied, req.with_credentials) {
                (true, true) => "check the credentials in the Secret",
                (true, false) => "the tool wants credentials: set spec.auth.secretRef",
                (false, _) => {
                    "check spec.auth.params (e.g. the repository) and that the credentials can read it"
                }
            };
            Condition::new(
                types::AUTH_READY,
                Status::False,
                if denied {
                    reasons::AUTH_FAILED
                } else {
                    reasons::UNEXPECTED_RESPONSE
                },
                format!(
                    "{} {} {whose} answered {}, expected {}: {hint}",
                    req.method,
                    req.display,
                    describe(&answer),
                    req.expected()
                ),
            )
        }
        Err(failure) => failed(types::AUTH_READY, &req, &failure, ctx),
    };
    (c, true)
}

fn assess_condition<'a>(a: &'a Assessment, type_: &str) -> Option<&'a Condition> {
    a.conditions.iter().find(|c| c.type_ == type_)
}

async fn send(
    req: &ProbeRequest,
    roots: &[CertificateDer<'static>],
    with: With<'_>,
    ctx: &Context,
) -> Result<Answer, ProbeFailure> {
    let (outcome, took) = ctx.prober.send(req, roots, with).await;
    let result = match &outcome {
        Ok(a) if req.succeeded(a.status) => "success",
        Ok(_) => "failure",
        Err(_) => "error",
    };
    tracing::debug!(
        probe = req.kind.as_str(),
        url = %req.display,
        result,
        took_ms = took.as_millis(),
        "probe"
    );
    ctx.metrics.probed(req.kind.as_str(), result, took);
    outcome
}

/// `HTTP 401 Unauthorized (WWW-Authenticate: Basic realm="git")`
fn describe(answer: &Answer) -> String {
    match &answer.challenge {
        Some(c) => format!("{} (WWW-Authenticate: {c})", status_line(answer.status)),
        None => status_line(answer.status),
    }
}

fn failed(type_: &str, req: &ProbeRequest, failure: &ProbeFailure, ctx: &Context) -> Condition {
    let (reason, hint) = match failure {
        ProbeFailure::Timeout(_) => (
            reasons::PROBE_TIMEOUT,
            "check spec.address and that the tool is up",
        ),
        ProbeFailure::Connect(_) => (
            reasons::CONNECTION_FAILED,
            "check spec.address and that the tool is up",
        ),
        ProbeFailure::Tls(_) => (
            reasons::TLS_FAILED,
            "if the tool's certificate comes from a private CA, set spec.caCertSecretRef",
        ),
        ProbeFailure::Http(_) | ProbeFailure::Setup(_) => (
            reasons::CONNECTION_FAILED,
            "check spec.address and that it serves HTTP(S)",
        ),
        // The injector's message says what to check.
        ProbeFailure::Token(t) if t.refused => (reasons::AUTH_FAILED, ""),
        ProbeFailure::Token(t) if t.realm_not_allowed => (TOKEN_REALM_NOT_ALLOWED, ""),
        ProbeFailure::Token(_) => (reasons::CONNECTION_FAILED, ""),
    };
    let failure = match failure {
        ProbeFailure::Timeout(_) => format!("no answer within {:?}", ctx.prober.timeout()),
        other => other.to_string(),
    };
    let message = if hint.is_empty() {
        format!("{} {}: {failure}", req.method, req.display)
    } else {
        format!("{} {}: {failure}; {hint}", req.method, req.display)
    };
    Condition::new(type_, Status::False, reason, message)
}
