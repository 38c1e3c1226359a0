//! Following a topic's presence: the members this node last heard of, and
//! who joined and left since, as events.
//!
//! The hub keeps the member list fresh (on every announcement, and every
//! second for members of nodes that died without one). A watch compares
//! each new list with the last one it saw: the events are the difference,
//! so a watcher that looks rarely gets fewer events, never a wrong list.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tokio::sync::watch;

use super::HubHandle;
use crate::store::Member;

/// Someone joined or left a topic (see [`Topic::watch_presence`](super::Topic::watch_presence)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceEvent {
    /// A member joined (or changed its info: then it comes after the
    /// `Leave` of its old info).
    Join(Member),
    /// A member left: unsubscribed, its session ended, or its node died.
    Leave(Member),
}

/// A topic's presence as this node sees it; [`next`](Self::next) waits
/// for changes.
pub struct PresenceWatch {
    members: watch::Receiver<Arc<[Member]>>,
    /// The list the last events were computed against.
    seen: Arc<[Member]>,
    pending: VecDeque<PresenceEvent>,
    /// Keeps the topic's hub running.
    _hub: Arc<HubHandle>,
}

impl std::fmt::Debug for PresenceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceWatch")
            .field("members", &self.seen.len())
            .finish()
    }
}

impl PresenceWatch {
    pub(crate) fn new(mut members: watch::Receiver<Arc<[Member]>>, hub: Arc<HubHandle>) -> Self {
        let seen = members.borrow_and_update().clone();
        Self {
            members,
            seen,
            pending: VecDeque::new(),
            _hub: hub,
        }
    }

    /// The members as of the last event [`next`](Self::next) returned
    /// (or when the watch started), sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.seen
    }

    /// The next join or leave. `None` once the topic stopped.
    pub async fn next(&mut self) -> Option<PresenceEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            self.members.changed().await.ok()?;
            let now = self.members.borrow_and_update().clone();
            self.pending = diff(&self.seen, &now);
            self.seen = now;
        }
    }
}

/// Leaves, then joins, from `before` to `after`.
fn diff(before: &[Member], after: &[Member]) -> VecDeque<PresenceEvent> {
    let old: BTreeMap<&str, &Member> = before.iter().map(|m| (m.id.as_str(), m)).collect();
    let new: BTreeMap<&str, &Member> = after.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut events = VecDeque::new();
    for (id, member) in &old {
        if new.get(id) != Some(member) {
            events.push_back(PresenceEvent::Leave((*member).clone()));
        }
    }
    for (id, member) in &new {
        if old.get(id) != Some(member) {
            events.push_back(PresenceEvent::Join((*member).clone()));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, info: &str) -> Member {
        Member {
            id: id.into(),
            info: info.into(),
        }
    }

    #[test]
    fn events_are_the_difference_leaves_first() {
        let before = [member("a", "Ada"), member("b", "Bob")];
        let after = [member("b", "Bobby"), member("c", "Cy")];
        let events: Vec<_> = diff(&before, &after).into_iter().collect();
        assert_eq!(
            events,
            [
                PresenceEvent::Leave(member("a", "Ada")),
                PresenceEvent::Leave(member("b", "Bob")),
                PresenceEvent::Join(member("b", "Bobby")),
                PresenceEvent::Join(member("c", "Cy")),
            ]
        );
        assert!(diff(&after, &after).is_empty());
    }
}
