//! kube-scheduler retries a pod the extender turned away on any cluster event it sees
//! (it cannot know which events matter to an extender). It often sees the event before
//! volguard's own watch does: a retry that finds volguard's state unchanged since the
//! last refusal may be a retry volguard cannot answer yet, and turning the pod away
//! again would park it until the next event, minutes away in a quiet cluster. These
//! records tell such a retry apart, so that `/filter` waits briefly for its watch.

use std::collections::HashMap;

/// Pods remembered at most; past it the records start over (a pod forgotten is judged
/// as on its first attempt: answered at once).
const REMEMBERED: usize = 10_000;

/// The pods `/filter` turned away from every candidate, with the state's
/// [`changes`](crate::cluster::ClusterState::changes) count at that answer.
#[derive(Debug, Default)]
pub struct TurnedAway {
    pods: HashMap<String, u64>,
    /// A `changes` count after which a wait saw nothing arrive: volguard is as current
    /// as a wait can make it, and the next retries at that count are answered at once,
    /// so that a burst of pods retried together stalls the scheduler once, not per pod.
    settled: Option<u64>,
}

impl TurnedAway {
    /// Whether `pod`'s `/filter` should wait for the watch before turning it away again:
    /// it was turned away at this same `changes` count, and no wait has found this
    /// count settled yet.
    pub fn should_wait(&self, pod: &str, changes: u64) -> bool {
        self.pods.get(pod) == Some(&changes) && self.settled != Some(changes)
    }

    /// Records that a wait at `changes` saw no change arrive.
    pub fn settled_at(&mut self, changes: u64) {
        self.settled = Some(changes);
    }

    /// Records the answer for `pod` at `changes`: turned away from every candidate, or
    /// passed somewhere (then it is forgotten).
    pub fn answered(&mut self, pod: &str, changes: u64, turned_away: bool) {
        if !turned_away {
            self.pods.remove(pod);
            return;
        }
        if self.pods.len() >= REMEMBERED && !self.pods.contains_key(pod) {
            self.pods.clear();
        }
        self.pods.insert(pod.to_owned(), changes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_repeat_at_the_same_count_waits() {
        let mut t = TurnedAway::default();
        assert!(!t.should_wait("shop/a", 7), "first attempt");
        t.answered("shop/a", 7, true);
        assert!(t.should_wait("shop/a", 7), "retried, nothing learned");
        assert!(!t.should_wait("shop/a", 8), "retried after a change");
        assert!(!t.should_wait("shop/b", 7), "another pod");
    }

    #[test]
    fn a_settled_count_waits_once_for_every_pod() {
        let mut t = TurnedAway::default();
        t.answered("shop/a", 7, true);
        t.answered("shop/b", 7, true);
        t.settled_at(7);
        assert!(!t.should_wait("shop/a", 7));
        assert!(!t.should_wait("shop/b", 7));
        t.answered("shop/a", 9, true);
        assert!(t.should_wait("shop/a", 9), "a new count may lag again");
    }

    #[test]
    fn a_pod_passed_is_forgotten() {
        let mut t = TurnedAway::default();
        t.answered("shop/a", 7, true);
        t.answered("shop/a", 7, false);
        assert!(!t.should_wait("shop/a", 7));
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = TurnedAway::default();
        for i in 0..REMEMBERED + 5 {
            t.answered(&format!("ns/p{i}"), 1, true);
        }
        assert!(t.pods.len() <= REMEMBERED);
        assert!(t.should_wait(&format!("ns/p{}", REMEMBERED + 4), 1));
    }
}
