//! The agent's client of the controller's API for agents (`connectors_crd::node_api`): an
//! intermediate CA certificate, and the credentials of the Connectors its node's pods may use.
//!
//! The controller is found through its Service's Endpoints (every ready replica; no cluster DNS
//! or kube-proxy needed) or at `--controller-url`. Its certificate is checked against the cluster
//! CA (`--controller-ca`, the `ca.crt` of the `connectors-ca-bundle` ConfigMap mounted into the
//! agent's pod) for the Service's DNS name. The agent authenticates with its ServiceAccount token
//! projected with the agent audience (`--token-file`), read anew for every call since the kubelet
//! rotates it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Endpoints;
use kube::{Api, Client};
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long one call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (a credentials answer holds a few Secrets).
const MAX_ANSWER: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot read the agent's token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the cluster CA {path}: {problem}")]
    Ca { path: PathBuf, problem: String },
    #[error("no ready endpoint of Service {namespace}/{service}: {problem}")]
    NoEndpoint {
        namespace: String,
        service: String,
        problem: String,
    },
    #[error("the controller at {addr}: {problem}")]
    Call { addr: String, problem: String },
    #[error("the controller refused ({status}): {message}")]
    Refused { status: u16, message: String },
}

/// Where the controller is and how to reach it.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// `https://host:port`; when unset, the Service's endpoints.
    pub url: Option<http::Uri>,
    pub namespace: String,
    pub service: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

/// The client.
#[derive(Clone)]
pub struct ControllerClient {
    settings: ControllerSettings,
    kube: Client,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ControllerClient {
    pub fn new(
        settings: ControllerSettings,
        kube: Client,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Self {
        Self {
            settings,
            kube,
            provider,
        }
    }

    /// The DNS name the controller's certificate is checked for.
    fn server_name(&self) -> String {
        match &self.settings.url {
            Some(u) => u.host().unwrap_or_default().to_owned(),
            None => format!("{}.{}.svc", self.settings.service, self.settings.namespace),
        }
    }

    /// `POST path` with a JSON body; the JSON answer.
    pub async fn post<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
    ) -> Result<A, ControllerError> {
        let token = std::fs::read_to_string(&self.settings.token_file).map_err(|source| {
            ControllerError::Token {
                path: self.settings.token_file.clone(),
                source,
            }
        })?;
        let config = self.tls_config()?;
        let addrs = self.addresses().await?;
        let body = serde_json::to_vec(body).map_err(|e| ControllerError::Call {
            addr: String::new(),
            problem: format!("cannot encode the request: {e}"),
        })?;
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(
                CALL_TIMEOUT,
                self.call(addr, config.clone(), path, token.trim(), body.clone()),
            )
            .await
            {
                Ok(Ok((status, bytes))) if status.is_success() => {
                    return serde_json::from_slice(&bytes).map_err(|e| ControllerError::Call {
                        addr: addr.to_string(),
                        problem: format!("the answer is not what the agent expects: {e}"),
                    });
                }
                Ok(Ok((status, bytes))) => {
                    let message =
                        serde_json::from_slice::<connectors_crd::node_api::ErrorBody>(&bytes)
                            .map(|b| b.message)
                            .unwrap_or_else(|_| {
                                String::from_utf8_lossy(&bytes).chars().take(300).collect()
                            });
                    // A refusal is the controller's answer, not a replica's trouble.
                    if status.is_client_error() {
                        return Err(ControllerError::Refused {
                            status: status.as_u16(),
                            message,
                        });
                    }
                    last = Some(ControllerError::Refused {
                        status: status.as_u16(),
                        message,
                    });
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(ControllerError::Call {
                        addr: addr.to_string(),
                        problem: format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| ControllerError::NoEndpoint {
            namespace: self.settings.namespace.clone(),
            service: self.settings.service.clone(),
            problem: "no address".into(),
        }))
    }

    async fn call(
        &self,
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        path: &str,
        token: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ControllerError> {
        let failed = |problem: String| ControllerError::Call {
            addr: addr.to_string(),
            problem,
        };
        let name = self.server_name();
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| failed(format!("'{name}' is not a server name: {e}")))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| failed(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut auth = http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| failed("the agent's token is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(http::header::HOST, name.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, auth)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failed(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| failed(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, ControllerError> {
        let path = &self.settings.ca_file;
        let pem = std::fs::read(path).map_err(|e| ControllerError::Ca {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        let certs = crate::tls::parse_pem_certs(&pem).map_err(|e| ControllerError::Ca {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certs {
            roots.add(c).map_err(|e| ControllerError::Ca {
                path: path.clone(),
                problem: e.to_string(),
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ControllerError::Ca {
                path: path.clone(),
                problem: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The addresses to try: the URL's, or the Service's ready endpoints (port `https`, else the
    /// first).
    async fn addresses(&self) -> Result<Vec<SocketAddr>, ControllerError> {
        let none = |problem: String| ControllerError::NoEndpoint {
            namespace: self.settings.namespace.clone(),
            service: self.settings.service.clone(),
            problem,
        };
        if let Some(u) = &self.settings.url {
            let host = u.host().unwrap_or_default();
            let port = u.port_u16().unwrap_or(443);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| none(format!("{u}: {e}")))?
                .collect();
            return Ok(addrs);
        }
        let api: Api<Endpoints> = Api::namespaced(self.kube.clone(), &self.settings.namespace);
        let ep = api
            .get_opt(&self.settings.service)
            .await
            .map_err(|e| none(e.to_string()))?
            .ok_or_else(|| none("the Endpoints object does not exist".into()))?;
        let mut out = Vec::new();
        for subset in ep.subsets.unwrap_or_default() {
            let ports = subset.ports.unwrap_or_default();
            let Some(port) = ports
                .iter()
                .find(|p| p.name.as_deref() == Some("https"))
                .or(ports.first())
                .map(|p| p.port)
            else {
                continue;
            };
            for a in subset.addresses.unwrap_or_default() {
                if let (Ok(ip), Ok(port)) = (a.ip.parse(), u16::try_from(port)) {
                    out.push(SocketAddr::new(ip, port));
                }
            }
        }
        if out.is_empty() {
            return Err(none("no ready address".into()));
        }
        Ok(out)
    }
}
