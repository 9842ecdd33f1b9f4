//! Registry tokens and what each registry asked for, kept across requests (and configuration
//! generations): a token is fetched once per (Connector and login, realm, service, scopes) and
//! reused until shortly before it expires. Concurrent requests needing the same token wait for
//! the one fetch. Both tables are bounded.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::lock::Mutex as AsyncMutex;
use http::HeaderValue;

use super::InjectError;

/// Entries kept at most in each table.
const CAPACITY: usize = 4096;
/// A token this young that the registry turns down was not granted what it was asked for
/// (rather than having expired or been revoked).
const FRESH: Duration = Duration::from_secs(5);

/// What a registry answered without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Learned {
    Basic,
    Bearer { realm: String, service: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    /// The Connector and its login ([`super::registry::RegistryToken`]'s fingerprint).
    pub login: u64,
    pub realm: String,
    pub service: String,
    pub scopes: Vec<String>,
}

/// A token, as the `Authorization` value to send.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: HeaderValue,
    pub usable_until: Instant,
    pub fetched: Instant,
}

type Slot = Arc<AsyncMutex<Option<Token>>>;

/// The tokens and challenges of every registry Connector of a process.
#[derive(Default)]
pub struct TokenCache {
    learned: Mutex<HashMap<u64, Learned>>,
    tokens: Mutex<HashMap<TokenKey, Slot>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache(***)")
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the registry of this login asked for last.
    pub(crate) fn learned(&self, login: u64) -> Option<Learned> {
        self.learned.lock().ok()?.get(&login).cloned()
    }

    pub(crate) fn learn(&self, login: u64, what: Learned) {
        if let Ok(mut m) = self.learned.lock() {
            if m.len() >= CAPACITY && !m.contains_key(&login) {
                m.clear();
            }
            m.insert(login, what);
        }
    }

    /// The token for `key`: cached, or fetched by `fetch` (once, whoever else waits for it).
    /// Returns the token and whether it is fresh (fetched moments ago).
    pub(crate) async fn get<F, Fut>(
        &self,
        key: TokenKey,
        fetch: F,
    ) -> Result<(Token, bool), InjectError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(HeaderValue, Duration), InjectError>>,
    {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        let now = Instant::now();
        if let Some(t) = guard.as_ref()
            && t.usable_until > now
        {
            return Ok((t.clone(), now.duration_since(t.fetched) < FRESH));
        }
        let (value, usable_for) = fetch().await?;
        let fetched = Instant::now();
        let token = Token {
            value,
            usable_until: fetched + usable_for,
            fetched,
        };
        *guard = Some(token.clone());
        Ok((token, true))
    }

    /// Forgets `key`'s token if it is still `value` (a newer one stays).
    pub(crate) async fn invalidate(&self, key: TokenKey, value: &HeaderValue) {
        let slot = match self.tokens.lock() {
            Ok(m) => m.get(&key).cloned(),
            Err(_) => None,
        };
        if let Some(slot) = slot {
            let mut guard = slot.lock().await;
            if guard.as_ref().is_some_and(|t| t.value == *value) {
                *guard = None;
            }
        }
    }

    /// Tokens held (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.tokens.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: TokenKey) -> Slot {
        let Ok(mut m) = self.tokens.lock() else {
            // A poisoned table: serve without caching rather than fail.
            return Arc::new(AsyncMutex::new(None));
        };
        if let Some(s) = m.get(&key) {
            return s.clone();
        }
        if m.len() >= CAPACITY {
            sweep(&mut m);
        }
        let s: Slot = Arc::new(AsyncMutex::new(None));
        m.insert(key, s.clone());
        s
    }
}

/// Drops expired and empty slots no request holds; if the table is still full, the ones that
/// expire soonest.
fn sweep(m: &mut HashMap<TokenKey, Slot>) {
    let now = Instant::now();
    m.retain(|_, slot| {
        Arc::strong_count(slot) > 1
            || slot
                .try_lock()
                .is_none_or(|t| t.as_ref().is_some_and(|t| t.usable_until > now))
    });
    if m.len() >= CAPACITY {
        let mut by_expiry: Vec<(TokenKey, Instant)> = m
            .iter()
            .filter(|(_, s)| Arc::strong_count(s) == 1)
            .filter_map(|(k, s)| Some((k.clone(), s.try_lock()?.as_ref()?.usable_until)))
            .collect();
        by_expiry.sort_by_key(|(_, t)| *t);
        for (k, _) in by_expiry.into_iter().take(CAPACITY / 4) {
            m.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(scope: &str) -> TokenKey {
        TokenKey {
            login: 1,
            realm: "https://auth.test/token".into(),
            service: "registry.test".into(),
            scopes: vec![scope.into()],
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        futures_util::FutureExt::now_or_never(f).expect("ready")
    }

    #[test]
    fn a_token_is_fetched_once_until_it_expires() {
        let cache = TokenCache::new();
        let fetches = AtomicUsize::new(0);
        let fetch = |life: u64| {
            fetches.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok((
                    HeaderValue::from_static("Bearer t"),
                    Duration::from_millis(life),
                ))
            }
        };
        let (t, fresh) = block_on(cache.get(key("a"), || fetch(60_000))).expect("token");
        assert!(fresh);
        assert_eq!(t.value, "Bearer t");
        let (_, _) = block_on(cache.get(key("a"), || fetch(60_000))).expect("token");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        block_on(cache.get(key("b"), || fetch(0))).expect("token");
        block_on(cache.get(key("b"), || fetch(0))).expect("token");
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            3,
            "an expired token is fetched again"
        );
        block_on(cache.invalidate(key("a"), &HeaderValue::from_static("Bearer t")));
        block_on(cache.get(key("a"), || fetch(60_000))).expect("token");
        assert_eq!(fetches.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_failed_fetch_is_not_cached() {
        let cache = TokenCache::new();
        let r = block_on(cache.get(key("a"), || async {
            Err(InjectError::RealmFailed {
                realm: "r".into(),
                cause: "down".into(),
            })
        }));
        assert!(r.is_err());
        let r = block_on(cache.get(key("a"), || async {
            Ok((HeaderValue::from_static("Bearer u"), Duration::from_secs(9)))
        }));
        assert!(r.is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let cache = TokenCache::new();
        for i in 0..(CAPACITY + 100) {
            block_on(cache.get(key(&i.to_string()), || async {
                Ok((HeaderValue::from_static("Bearer x"), Duration::ZERO))
            }))
            .expect("token");
        }
        assert!(cache.len() <= CAPACITY, "{}", cache.len());
    }
}
