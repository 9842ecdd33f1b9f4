//! Name resolution for upstream connections and the redirect's endpoint map: entries of an
//! optional hosts file first (like curl's `--resolve`), then the system resolver.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read hosts file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("hosts file {path}, line {line}: '{text}' is not an IP address")]
    BadLine {
        path: String,
        line: usize,
        text: String,
    },
}

/// Resolves host names: overrides first, then the system resolver.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl Resolver {
    /// Reads `/etc/hosts`-style lines: `IP name [name...]`, `#` comments.
    pub fn from_hosts_file(path: &Path) -> Result<Self, ResolveError> {
        let text = std::fs::read_to_string(path).map_err(|e| ResolveError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let Some(ip) = words.next() else { continue };
            let ip: IpAddr = ip.parse().map_err(|_| ResolveError::BadLine {
                path: path.display().to_string(),
                line: i + 1,
                text: ip.to_owned(),
            })?;
            for name in words {
                map.entry(name.to_ascii_lowercase()).or_default().push(ip);
            }
        }
        Ok(Self {
            overrides: Arc::new(map),
        })
    }

    /// All addresses of `host` (an IP literal resolves to itself).
    pub async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(ips) = self.overrides.get(&host.to_ascii_lowercase()) {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("'{host}' has no address"),
            ));
        }
        Ok(addrs)
    }
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // The HTTP connector sets the port afterwards.
            Ok(this.lookup(name.as_str(), 0).await?.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overrides_win_and_literals_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        std::fs::write(
            &p,
            "# test\n198.18.0.2 git.test Other.Test\nfd00::2 git.test\n",
        )
        .unwrap();
        let r = Resolver::from_hosts_file(&p).unwrap();
        let a = r.lookup("GIT.test", 443).await.unwrap();
        assert_eq!(
            a,
            vec![
                "198.18.0.2:443".parse().unwrap(),
                "[fd00::2]:443".parse().unwrap()
            ]
        );
        assert_eq!(
            r.lookup("other.test", 80).await.unwrap(),
            vec!["198.18.0.2:80".parse().unwrap()]
        );
        assert_eq!(
            r.lookup("[fd00::9]", 8080).await.unwrap(),
            vec!["[fd00::9]:8080".parse().unwrap()]
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        std::fs::write(&p, "1.2.3.4 a\nnope b\n").unwrap();
        let e = Resolver::from_hosts_file(&p).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
