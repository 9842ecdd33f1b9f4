//! What the controller remembers per object, and the filter on its watch streams.
//!
//! A Connector is reconciled when its spec changes (a new `metadata.generation`), not when its
//! status does: the controller's own status writes must not trigger another round of probes.
//! The same filter sees deletions, and forgets the object at once, so a deleted Connector leaves
//! no entry behind; a re-list (after a watch gap) prunes what disappeared meanwhile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use connectors_crd::condition::Condition;
use kube::Resource;
use kube::runtime::watcher;

use crate::metrics::Metrics;

#[derive(Debug, Default)]
struct Entry {
    /// The last generation let through.
    generation: Option<i64>,
    /// The conditions last written, newer than the watch cache right after a write.
    conditions: Option<Vec<Condition>>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<String, Entry>,
    /// UIDs seen during a re-list, while one runs.
    relist: Option<HashSet<String>>,
}

/// Per-object state keyed by UID.
pub struct Tracked {
    table: Mutex<Table>,
    metrics: Option<Arc<Metrics>>,
}

impl Tracked {
    /// `metrics`, when given, follows the number of entries.
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a table that is still consistent.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, table: &Table) {
        if let Some(m) = &self.metrics {
            m.set_tracked(table.entries.len());
        }
    }

    /// Filters a watch stream: an object passes when it is new or its generation changed;
    /// deletions and re-lists update the table and pass nothing.
    pub fn filter<K>(
        &self,
        event: Result<watcher::Event<K>, watcher::Error>,
    ) -> Option<Result<K, watcher::Error>>
    where
        K: Resource,
    {
        let event = match event {
            Ok(e) => e,
            Err(e) => return Some(Err(e)),
        };
        let mut t = self.lock();
        let out = match event {
            watcher::Event::Init => {
                t.relist = Some(HashSet::new());
                None
            }
            watcher::Event::InitApply(obj) => {
                if let (Some(uid), Some(seen)) = (obj.meta().uid.clone(), t.relist.as_mut()) {
                    seen.insert(uid);
                }
                pass_if_changed(&mut t, obj)
            }
            watcher::Event::InitDone => {
                if let Some(seen) = t.relist.take() {
                    t.entries.retain(|uid, _| seen.contains(uid));
                }
                None
            }
            watcher::Event::Apply(obj) => pass_if_changed(&mut t, obj),
            watcher::Event::Delete(obj) => {
                if let Some(uid) = &obj.meta().uid {
                    t.entries.remove(uid);
                }
                None
            }
        };
        self.publish(&t);
        out.map(Ok)
    }

    /// Like [`Tracked::filter`], but deletions pass too (for streams that map an object to
    /// others, which must hear that it is gone).
    pub fn filter_with_deletions<K>(
        &self,
        event: Result<watcher::Event<K>, watcher::Error>,
    ) -> Option<Result<K, watcher::Error>>
    where
        K: Resource,
    {
        match event {
            Ok(watcher::Event::Delete(obj)) => {
                let mut t = self.lock();
                if let Some(uid) = &obj.meta().uid {
                    t.entries.remove(uid);
                }
                self.publish(&t);
                Some(Ok(obj))
            }
            other => self.filter(other),
        }
    }

    /// The conditions last written for `uid`, if it is tracked and was written.
    pub fn last_conditions(&self, uid: &str) -> Option<Vec<Condition>> {
        self.lock()
            .entries
            .get(uid)
            .and_then(|e| e.conditions.clone())
    }

    /// Remembers what was written, only for a tracked (not deleted) object.
    pub fn remember(&self, uid: &str, conditions: Vec<Condition>) {
        if let Some(e) = self.lock().entries.get_mut(uid) {
            e.conditions = Some(conditions);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn pass_if_changed<K: Resource>(t: &mut Table, obj: K) -> Option<K> {
    let Some(uid) = obj.meta().uid.clone() else {
        return Some(obj);
    };
    let generation = obj.meta().generation;
    let entry = t.entries.entry(uid).or_default();
    if entry.generation.is_some() && entry.generation == generation {
        return None;
    }
    entry.generation = generation;
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectors_crd::{Connector, ConnectorSpec};
    use watcher::Event;

    fn connector(uid: &str, generation: i64) -> Connector {
        let mut c = Connector::new("c", ConnectorSpec::default());
        c.metadata.uid = Some(uid.into());
        c.metadata.generation = Some(generation);
        c
    }

    fn passes(t: &Tracked, e: Event<Connector>) -> bool {
        matches!(t.filter(Ok(e)), Some(Ok(_)))
    }

    #[test]
    fn passes_new_generations_only() {
        let t = Tracked::new(None);
        assert!(passes(&t, Event::Apply(connector("a", 1))));
        // A status write: same generation.
        assert!(!passes(&t, Event::Apply(connector("a", 1))));
        assert!(passes(&t, Event::Apply(connector("a", 2))));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn deletion_forgets_and_late_writes_do_not_resurrect() {
        let t = Tracked::new(None);
        assert!(passes(&t, Event::Apply(connector("a", 1))));
        t.remember("a", vec![]);
        assert!(t.last_conditions("a").is_some());
        assert!(!passes(&t, Event::Delete(connector("a", 1))));
        assert!(t.is_empty());
        // A reconcile that was running when the object went away.
        t.remember("a", vec![]);
        assert!(t.is_empty());
        // Re-created with the same name: a new UID, reconciled again.
        assert!(passes(&t, Event::Apply(connector("b", 1))));
    }

    #[test]
    fn relist_prunes_what_disappeared() {
        let t = Tracked::new(None);
        assert!(passes(&t, Event::Apply(connector("a", 1))));
        assert!(passes(&t, Event::Apply(connector("b", 1))));
        assert!(!passes(&t, Event::Init));
        assert!(!passes(&t, Event::InitApply(connector("a", 1))));
        assert!(!passes(&t, Event::InitDone));
        assert_eq!(t.len(), 1);
        assert!(t.last_conditions("b").is_none());
    }

    #[test]
    fn deletions_can_pass() {
        let t = Tracked::new(None);
        assert!(t.filter(Ok(Event::Apply(connector("a", 1)))).is_some());
        assert!(
            t.filter_with_deletions(Ok(Event::Delete(connector("a", 1))))
                .is_some()
        );
        assert!(t.is_empty());
    }
}
