//! The branches and tags of a Git repository, over the smart HTTP protocol with the Connector's
//! credentials: `GET {repo}/info/refs?service=git-upload-pack` asking for protocol v2; a v2
//! server is then asked `ls-refs` (with `peel` and the ref prefixes) by `POST
//! {repo}/git-upload-pack`, a v0 server's advertisement is read as it is. Items are
//! `{name: "refs/heads/main", commitID}`; an annotated tag's `commitID` is the commit it points
//! to (peeled). `HEAD` and refs outside the prefixes (pull requests...) are left out.

use std::collections::BTreeMap;

use bytes::Bytes;
use connectors_crd::api::GitRefsList;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use serde_json::Value;

use crate::call::{call, success};
use crate::error::ApiError;
use crate::listing::Item;
use crate::pktline::{self, Pkt, Reader};
use crate::tool::{Target, Tool};
use crate::upstream::Upstream;

const ADVERTISEMENT: &str = "application/x-git-upload-pack-advertisement";
const DEFAULT_PREFIXES: [&str; 2] = ["refs/heads/", "refs/tags/"];
/// The fields of a ref item.
pub const FIELDS: [&str; 2] = ["name", "commitID"];

/// One ref as the server gave it.
#[derive(Debug, PartialEq, Eq)]
struct Ref {
    name: String,
    oid: String,
    /// The commit an annotated tag points to.
    peeled: Option<String>,
}

/// What the first answer said.
#[derive(Debug, PartialEq, Eq)]
enum Advertisement {
    /// Protocol v2: the capabilities (`ls-refs`, `object-format=sha1`...).
    V2(Vec<String>),
    /// Protocol v0: the refs themselves.
    V0(Vec<Ref>),
}

/// The refs of the repository the caller names.
pub async fn collect(
    upstream: &Upstream,
    tool: &Tool,
    spec: &GitRefsList,
    query: &BTreeMap<String, String>,
) -> Result<Vec<Item>, ApiError> {
    let param = spec.repository_param.as_deref().unwrap_or("repositoryUrl");
    let url = query.get(param).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "parameter {param} is required: the repository's clone URL, under the Connector's address ({}), e.g. {}/team/app.git",
            tool.checked.address, tool.checked.address
        ))
    })?;
    if url.contains(['?', '#']) {
        return Err(ApiError::BadRequest(format!(
            "{param} must be a clone URL without a query or fragment"
        )));
    }
    let (_, repo) = tool.locate(url)?;
    let repo_path = repo.path_and_query.trim_end_matches('/').to_owned();
    let (_, info) = tool.locate(&format!(
        "{}{repo_path}/info/refs?service=git-upload-pack",
        repo.base
    ))?;
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(ADVERTISEMENT));
    headers.insert(git_protocol(), HeaderValue::from_static("version=2"));
    let answer = call(upstream, tool, Method::GET, &info, headers, Bytes::new()).await?;
    let answer = success(tool, &info, answer)?;
    let content_type = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with(ADVERTISEMENT) {
        return Err(ApiError::BadGateway {
            connector: tool.id.clone(),
            what: format!(
                "{} is not a smart-HTTP Git repository (Content-Type '{}', not {ADVERTISEMENT})",
                repo.shown(),
                crate::route::shorten(content_type)
            ),
        });
    }
    let unreadable = |e: String| ApiError::BadGateway {
        connector: tool.id.clone(),
        what: format!(
            "the Git server's answer to GET {} cannot be read: {e}",
            info.shown()
        ),
    };
    let prefixes: Vec<&str> = if spec.ref_prefixes.is_empty() {
        DEFAULT_PREFIXES.to_vec()
    } else {
        spec.ref_prefixes.iter().map(String::as_str).collect()
    };
    let refs = match advertisement(&answer.body).map_err(unreadable)? {
        Advertisement::V0(refs) => refs,
        Advertisement::V2(caps) => {
            let target = Target {
                base: repo.base.clone(),
                path_and_query: format!("{repo_path}/git-upload-pack"),
            };
            let (_, target) = tool.locate(&format!("{}{}", target.base, target.path_and_query))?;
            ls_refs(upstream, tool, &target, &caps, &prefixes).await?
        }
    };
    Ok(refs
        .into_iter()
        .filter(|r| prefixes.iter().any(|p| r.name.starts_with(p)))
        .map(|r| {
            let mut item = Item::new();
            item.insert("name".into(), Value::String(r.name));
            item.insert("commitID".into(), Value::String(r.peeled.unwrap_or(r.oid)));
            item
        })
        .collect())
}

fn git_protocol() -> HeaderName {
    HeaderName::from_static("git-protocol")
}

/// Protocol v2's `ls-refs`.
async fn ls_refs(
    upstream: &Upstream,
    tool: &Tool,
    target: &Target,
    caps: &[String],
    prefixes: &[&str],
) -> Result<Vec<Ref>, ApiError> {
    if !caps
        .iter()
        .any(|c| c == "ls-refs" || c.starts_with("ls-refs="))
    {
        return Err(ApiError::BadGateway {
            connector: tool.id.clone(),
            what: format!(
                "the Git server at {} speaks protocol v2 without ls-refs",
                target.shown()
            ),
        });
    }
    let mut body = Vec::new();
    pktline::write_data(&mut body, "command=ls-refs\n");
    if let Some(format) = caps.iter().find(|c| c.starts_with("object-format=")) {
        pktline::write_data(&mut body, &format!("{format}\n"));
    }
    pktline::write_delim(&mut body);
    pktline::write_data(&mut body, "peel\n");
    for p in prefixes {
        pktline::write_data(&mut body, &format!("ref-prefix {p}\n"));
    }
    pktline::write_flush(&mut body);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-git-upload-pack-request"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/x-git-upload-pack-result"),
    );
    headers.insert(git_protocol(), HeaderValue::from_static("version=2"));
    let answer = call(
        upstream,
        tool,
        Method::POST,
        target,
        headers,
        Bytes::from(body),
    )
    .await?;
    let answer = success(tool, target, answer)?;
    ls_refs_answer(&answer.body).map_err(|e| ApiError::BadGateway {
        connector: tool.id.clone(),
        what: format!(
            "the Git server's ls-refs answer (POST {}) cannot be read: {e}",
            target.shown()
        ),
    })
}

fn text(line: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(line).map_err(|_| "a line is not UTF-8".to_owned())
}

/// Reads the answer to `info/refs`.
fn advertisement(body: &[u8]) -> Result<Advertisement, String> {
    let mut r = Reader::new(body);
    let mut first = r
        .next_pkt()
        .ok_or("the answer is empty")?
        .map_err(|e| e.to_string())?;
    // Smart HTTP puts a service line and a flush before the protocol's own answer.
    if let Pkt::Data(l) = first
        && l.starts_with(b"# service=")
    {
        match r.next_pkt() {
            Some(Ok(Pkt::Flush)) => {}
            _ => return Err("no flush after the service line".into()),
        }
        first = match r.next_pkt() {
            Some(p) => p.map_err(|e| e.to_string())?,
            // An empty repository's v0 advertisement may have nothing more.
            None => return Ok(Advertisement::V0(Vec::new())),
        };
    }
    match first {
        Pkt::Data(b"version 2") => {
            let mut caps = Vec::new();
            while let Some(p) = r.next_pkt() {
                match p.map_err(|e| e.to_string())? {
                    Pkt::Data(l) => caps.push(text(l)?.to_owned()),
                    _ => break,
                }
            }
            Ok(Advertisement::V2(caps))
        }
        Pkt::Flush => Ok(Advertisement::V0(Vec::new())),
        Pkt::Data(l) => {
            // v0 (or v1, which adds a "version 1" line): the first ref carries the
            // capabilities after a NUL.
            let mut refs = Vec::new();
            let mut line = l;
            if line == b"version 1" {
                line = match r.next_pkt() {
                    Some(Ok(Pkt::Data(l))) => l,
                    _ => return Ok(Advertisement::V0(refs)),
                };
            }
            let first_ref = line.split(|b| *b == 0).next().unwrap_or_default();
            add_v0(&mut refs, text(first_ref)?)?;
            while let Some(p) = r.next_pkt() {
                match p.map_err(|e| e.to_string())? {
                    Pkt::Data(l) => add_v0(&mut refs, text(l)?)?,
                    _ => break,
                }
            }
            Ok(Advertisement::V0(refs))
        }
        Pkt::Delim | Pkt::ResponseEnd => Err("unexpected delimiter".into()),
    }
}

fn add_v0(refs: &mut Vec<Ref>, line: &str) -> Result<(), String> {
    let (oid, name) = line
        .split_once(' ')
        .ok_or_else(|| "a ref line has no name".to_owned())?;
    if name == "capabilities^{}" {
        return Ok(());
    }
    if let Some(tag) = name.strip_suffix("^{}") {
        if let Some(r) = refs.iter_mut().rev().find(|r| r.name == tag) {
            r.peeled = Some(oid.to_owned());
        }
        return Ok(());
    }
    refs.push(Ref {
        name: name.to_owned(),
        oid: oid.to_owned(),
        peeled: None,
    });
    Ok(())
}

/// Reads protocol v2's `ls-refs` answer: `<oid> <name>[ symref-target:x][ peeled:<oid>]`.
fn ls_refs_answer(body: &[u8]) -> Result<Vec<Ref>, String> {
    let mut r = Reader::new(body);
    let mut refs = Vec::new();
    while let Some(p) = r.next_pkt() {
        match p.map_err(|e| e.to_string())? {
            Pkt::Data(l) => {
                let line = text(l)?;
                let mut words = line.split(' ');
                let (Some(oid), Some(name)) = (words.next(), words.next()) else {
                    return Err("a ref line has no name".into());
                };
                let peeled = words
                    .find_map(|w| w.strip_prefix("peeled:"))
                    .map(str::to_owned);
                refs.push(Ref {
                    name: name.to_owned(),
                    oid: oid.to_owned(),
                    peeled,
                });
            }
            Pkt::Flush | Pkt::ResponseEnd => break,
            Pkt::Delim => return Err("unexpected delimiter".into()),
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";

    fn pkts(lines: &[Option<&str>]) -> Vec<u8> {
        let mut b = Vec::new();
        for l in lines {
            match l {
                Some(l) => pktline::write_data(&mut b, l),
                None => pktline::write_flush(&mut b),
            }
        }
        b
    }

    #[test]
    fn v0_advertisement_with_peeled_tags() {
        let head = format!("{A} HEAD\0multi_ack side-band-64k symref=HEAD:refs/heads/main\n");
        let main = format!("{A} refs/heads/main\n");
        let tag = format!("{B} refs/tags/v1\n");
        let peeled = format!("{A} refs/tags/v1^{{}}\n");
        let light = format!("{C} refs/tags/v2\n");
        let body = pkts(&[
            Some("# service=git-upload-pack\n"),
            None,
            Some(&head),
            Some(&main),
            Some(&tag),
            Some(&peeled),
            Some(&light),
            None,
        ]);
        let Advertisement::V0(refs) = advertisement(&body).unwrap() else {
            panic!("not v0")
        };
        assert_eq!(refs.len(), 4);
        assert_eq!(refs[2].name, "refs/tags/v1");
        assert_eq!(refs[2].peeled.as_deref(), Some(A));
        assert_eq!(refs[3].peeled, None);
    }

    #[test]
    fn empty_repositories_and_v2() {
        let empty = format!("{} capabilities^{{}}\0agent=git/2\n", "0".repeat(40));
        let body = pkts(&[
            Some("# service=git-upload-pack\n"),
            None,
            Some(&empty),
            None,
        ]);
        assert_eq!(advertisement(&body).unwrap(), Advertisement::V0(Vec::new()));
        let body = pkts(&[
            Some("# service=git-upload-pack\n"),
            None,
            Some("version 2\n"),
            Some("agent=git/2.39\n"),
            Some("ls-refs=unborn\n"),
            Some("object-format=sha1\n"),
            None,
        ]);
        let Advertisement::V2(caps) = advertisement(&body).unwrap() else {
            panic!("not v2")
        };
        assert!(caps.contains(&"ls-refs=unborn".to_owned()));
        let main = format!("{A} refs/heads/main\n");
        let tag = format!("{B} refs/tags/v1 peeled:{A}\n");
        let refs = ls_refs_answer(&pkts(&[Some(&main), Some(&tag), None])).unwrap();
        assert_eq!(refs[1].peeled.as_deref(), Some(A));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(advertisement(b"").is_err());
        assert!(advertisement(b"<html>").is_err());
        assert!(ls_refs_answer(b"0009abc").is_err());
    }
}
