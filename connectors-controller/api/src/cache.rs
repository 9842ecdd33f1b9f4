//! A short-lived cache of tool answers, keyed by Connector (and the version of it and its
//! class), resource and query. It is read only after the caller has been authenticated and
//! authorized for that Connector: it saves calls to tools, never a check. Bounded in bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use connectors_crd::ConnectorId;

use crate::listing::Item;
use crate::upstream::Answer;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub connector: ConnectorId,
    pub version: String,
    /// What was asked: the resource (or relayed path) and the query that shapes the tool's
    /// answer, canonical.
    pub request: String,
}

#[derive(Clone, Debug)]
pub enum Cached {
    /// Every item of a list resource (search and paging are applied per request).
    List(Arc<Vec<Item>>),
    /// A relayed answer.
    Answer(Arc<Answer>),
}

#[derive(Clone)]
struct Entry {
    at: Instant,
    weight: u64,
    value: Cached,
}

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<Key, Entry> for ByWeight {
    fn weight(&self, key: &Key, entry: &Entry) -> u64 {
        entry.weight + key.request.len() as u64 + 64
    }
}

pub struct AnswerCache {
    ttl: Duration,
    inner: quick_cache::sync::Cache<Key, Entry, ByWeight>,
}

impl AnswerCache {
    /// A cache keeping answers `ttl` (zero: none) within `bytes`.
    pub fn new(ttl: Duration, bytes: u64) -> Self {
        Self {
            ttl,
            inner: quick_cache::sync::Cache::with_weighter(1024, bytes.max(1), ByWeight),
        }
    }

    pub fn get(&self, key: &Key) -> Option<Cached> {
        if self.ttl.is_zero() {
            return None;
        }
        let e = self.inner.get(key)?;
        if e.at.elapsed() < self.ttl {
            Some(e.value)
        } else {
            self.inner.remove(key);
            None
        }
    }

    pub fn put(&self, key: Key, value: Cached) {
        if self.ttl.is_zero() {
            return;
        }
        let weight = match &value {
            Cached::List(items) => items
                .iter()
                .map(|i| {
                    i.iter()
                        .map(|(k, v)| k.len() + v.as_str().map_or(16, str::len) + 48)
                        .sum::<usize>()
                })
                .sum::<usize>() as u64,
            Cached::Answer(a) => {
                (a.body.len()
                    + a.headers
                        .iter()
                        .map(|(k, v)| k.as_str().len() + v.len())
                        .sum::<usize>()) as u64
            }
        };
        self.inner.insert(
            key,
            Entry {
                at: Instant::now(),
                weight,
                value,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(r: &str) -> Key {
        Key {
            connector: ConnectorId::new("a", "git"),
            version: "1".into(),
            request: r.into(),
        }
    }

    #[test]
    fn answers_expire_and_zero_disables() {
        let c = AnswerCache::new(Duration::from_millis(50), 1 << 20);
        c.put(key("x"), Cached::List(Arc::new(Vec::new())));
        assert!(c.get(&key("x")).is_some());
        assert!(c.get(&key("y")).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get(&key("x")).is_none());
        let off = AnswerCache::new(Duration::ZERO, 1 << 20);
        off.put(key("x"), Cached::List(Arc::new(Vec::new())));
        assert!(off.get(&key("x")).is_none());
    }
}
