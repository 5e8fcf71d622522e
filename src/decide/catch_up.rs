//! kube-scheduler retries a pod the extender turned away on any cluster event it sees
//! (it cannot know which events matter to an extender). It often sees the event before
//! volguard's own watch does: a retry that finds volguard's state unchanged since the
//! last refusal may be a retry volguard cannot answer yet, and turning the pod away
//! again would park it until the next event, minutes away in a quiet cluster. These
//! records tell such a retry apart, so that `/filter` waits briefly for its watch.

use std::{collections::HashMap, time::Duration};

/// Pods remembered at most; past it the records start over (a pod forgotten is judged
/// as on its first attempt: answered at once).
const REMEMBERED: usize = 10_000;

/// How long a wait that saw nothing arrive stands for the retries after it at the same
/// change count: the pods kube-scheduler retried on one event come within this; a
/// later retry, on a later event volguard may not have seen yet, waits again.
pub const SETTLED_FOR: Duration = Duration::from_secs(2);

/// The pods `/filter` turned away from every candidate, with the state's
/// [`changes`](crate::cluster::ClusterState::changes) count at that answer.
#[derive(Debug, Default)]
pub struct TurnedAway {
    pods: HashMap<String, u64>,
    /// A `changes` count after which a wait saw nothing arrive, and when: volguard is as
    /// current as a wait can make it, and retries at that count within [`SETTLED_FOR`]
    /// are answered at once, so that a burst of pods retried together stalls the
    /// scheduler once, not once per pod.
    settled: Option<(u64, Duration)>,
}

impl TurnedAway {
    /// Whether `pod`'s `/filter` should wait for the watch before turning it away again,
    /// `now`: it was turned away at this same `changes` count, and no wait found this
    /// count settled within [`SETTLED_FOR`].
    pub fn should_wait(&self, pod: &str, changes: u64, now: Duration) -> bool {
        let settled = self
            .settled
            .is_some_and(|(at, when)| at == changes && now.saturating_sub(when) < SETTLED_FOR);
        self.pods.get(pod) == Some(&changes) && !settled
    }

    /// Records that a wait at `changes` ending `now` saw nothing arrive that let its pod
    /// in.
    pub fn settled_at(&mut self, changes: u64, now: Duration) {
        self.settled = Some((changes, now));
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

    const T0: Duration = Duration::from_secs(100);

    #[test]
    fn only_a_repeat_at_the_same_count_waits() {
        let mut t = TurnedAway::default();
        assert!(!t.should_wait("a", 7, T0), "first attempt");
        t.answered("a", 7, true);
        assert!(t.should_wait("a", 7, T0), "retried, nothing learned");
        assert!(!t.should_wait("a", 8, T0), "retried after a change");
        assert!(!t.should_wait("b", 7, T0), "another pod");
    }

    #[test]
    fn a_settled_count_waits_once_for_the_pods_retried_with_it() {
        let mut t = TurnedAway::default();
        t.answered("a", 7, true);
        t.answered("b", 7, true);
        t.settled_at(7, T0);
        let soon = T0 + SETTLED_FOR / 2;
        assert!(!t.should_wait("a", 7, soon));
        assert!(!t.should_wait("b", 7, soon));
        // A retry on a later event, which volguard may not have seen yet.
        assert!(t.should_wait("a", 7, T0 + SETTLED_FOR));
        t.answered("a", 9, true);
        assert!(t.should_wait("a", 9, soon), "a new count may lag again");
    }

    #[test]
    fn a_pod_passed_is_forgotten() {
        let mut t = TurnedAway::default();
        t.answered("a", 7, true);
        t.answered("a", 7, false);
        assert!(!t.should_wait("a", 7, T0));
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = TurnedAway::default();
        for i in 0..REMEMBERED + 5 {
            t.answered(&format!("ns/p{i}"), 1, true);
        }
        assert!(t.pods.len() <= REMEMBERED);
        assert!(t.should_wait(&format!("ns/p{}", REMEMBERED + 4), 1, T0));
    }
}
