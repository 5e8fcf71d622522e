//! `/filter` and `/prioritize`: request body in, response body out, around the pure
//! judge. The axum handlers are thin wrappers so that benchmarks drive exactly the code
//! the server runs.

use std::{
    borrow::Cow,
    sync::{
        Arc, RwLockReadGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Extension,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::wire::{ExtenderArgs, ExtenderFilterResult, HostPriority, NodeList, node_name};
use crate::{
    cluster::{ClusterState, records::key},
    decide::{
        inflight::{InFlight, Needs, Placement, Presume},
        judge::{FailKind, Judge, Judgement, Verdict},
        resolve::resolve,
    },
    model::{
        config::Config, fast_hash::FastSet, json_shape, podview::PodView, volume::pod_volumes,
    },
    server::{app::App, metrics::Metrics, pool::Ticket, reply::bad_request},
};

/// Set once nobody waits for a request's answer any more (its deadline fired, or its
/// client went away): the judging, which runs on a blocking thread that outlives the
/// request, stops at its next look and frees the body.
#[derive(Debug, Clone, Default)]
pub struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    /// Whether the request was abandoned.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Marks the request abandoned.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Nothing to start on when the request was abandoned while its task waited for a
/// blocking thread.
fn still_wanted(abandoned: &Abandoned) -> Result<(), ExtenderError> {
    if abandoned.is_set() {
        return Err(ExtenderError::Abandoned);
    }
    Ok(())
}

/// Candidates judged between two looks at [`Abandoned`].
const NODES_PER_LOOK: usize = 256;

/// Why a body got no judgement.
#[derive(Debug, thiserror::Error)]
pub enum ExtenderError {
    /// Not ExtenderArgs: HTTP 400 with this line.
    #[error("{0}")]
    BadArgs(String),
    /// The cluster state cannot be read yet: HTTP 503 (a failed prioritize is ignored).
    #[error("{0}")]
    NotReady(String),
    /// volguard failed to produce an answer: HTTP 500.
    #[error("{0}")]
    Internal(String),
    /// Nobody waits for the answer: judging stopped.
    #[error("request abandoned (deadline or client gone): judging stopped")]
    Abandoned,
}

/// Why candidates were not judged.
enum Unjudged {
    /// The state is not ready: this line says why.
    NotReady(String),
    /// The request was abandoned.
    Abandoned,
}

/// The candidates of one request, in the order the scheduler sent them.
struct Candidates<'a> {
    names: Vec<Cow<'a, str>>,
    /// The raw Node list when the scheduler sent objects rather than names.
    nodes: Option<NodeList<'a>>,
}

fn parse(body: &[u8]) -> Result<(Box<PodView>, Candidates<'_>), ExtenderError> {
    let bad = ExtenderError::BadArgs;
    if body.is_empty() {
        return Err(bad(
            "empty body: expected kube-scheduler ExtenderArgs".into()
        ));
    }
    if !json_shape::is_object(body) {
        return Err(bad("not ExtenderArgs: expected a JSON object".into()));
    }
    let args: ExtenderArgs =
        serde_json::from_slice(body).map_err(|e| bad(format!("not ExtenderArgs: {e}")))?;
    let pod = args
        .pod
        .ok_or_else(|| bad("ExtenderArgs has no Pod".into()))?;
    let mut candidates = match (args.node_names, args.nodes) {
        (Some(names), _) => Candidates {
            names: names.into_iter().map(|n| n.0).collect(),
            nodes: None,
        },
        (None, Some(list)) => Candidates {
            names: list
                .items
                .iter()
                .enumerate()
                .map(|(i, item)| node_name(item, i))
                .collect::<Result<_, _>>()
                .map_err(bad)?,
            nodes: Some(list),
        },
        (None, None) => {
            return Err(bad(
                "ExtenderArgs has neither NodeNames nor Nodes: no candidate nodes".into(),
            ));
        }
    };
    candidates.keep_first_of_each_name();
    Ok((pod, candidates))
}

impl Candidates<'_> {
    /// Drops repeated names, and their items, keeping the first: kube-scheduler maps the
    /// answered names back through a map of its candidates and adds scores up per host,
    /// so a name answered twice would be a duplicate feasible node and a doubled score.
    fn keep_first_of_each_name(&mut self) {
        let mut seen: FastSet<&str> =
            FastSet::with_capacity_and_hasher(self.names.len(), Default::default());
        let keep: Vec<bool> = self.names.iter().map(|n| seen.insert(n)).collect();
        if !keep.contains(&false) {
            return;
        }
        let mut flags = keep.iter();
        self.names.retain(|_| flags.next().copied().unwrap_or(true));
        if let Some(list) = &mut self.nodes {
            let mut flags = keep.iter();
            list.items.retain(|_| flags.next().copied().unwrap_or(true));
        }
    }
}

/// A pod none of whose volumes can belong to a managed driver, judged from its spec
/// alone: no lookups, and an answer even before the cluster state is synced.
fn has_no_managed_volumes(pod: &PodView, state: &ClusterState, config: &Config) -> bool {
    pod_volumes(pod, state.drivers(), config).volumes.is_empty()
}

/// The cluster state for judging `pod`, waiting for writers. Once a writer has panicked
/// (the lock is poisoned) only a pod with no managed volume is still judged, from its
/// spec alone; any other gets the line to answer instead.
fn read_state<'a>(
    pod: &PodView,
    app: &'a App,
) -> Result<RwLockReadGuard<'a, ClusterState>, String> {
    match app.cluster.read() {
        Ok(state) => Ok(state),
        Err(poisoned) if has_no_managed_volumes(pod, poisoned.get_ref(), &app.config) => {
            Ok(poisoned.into_inner())
        }
        Err(_) => Err("volguard's cluster state is unavailable".to_owned()),
    }
}

/// The state's readiness problem (not synced yet, or a watch failing beyond its grace
/// period), if any, as one line.
fn not_ready(state: &ClusterState) -> Option<String> {
    state
        .readiness()
        .problem()
        .map(|why| format!("volguard's {why}: retry later"))
}

/// The judge for a pod, or `None` when volguard has no opinion on it: a pod with no
/// managed volume passes everywhere with score 0, decided before the state's readiness
/// is even looked at.
fn judge_for<'s>(
    pod: &PodView,
    state: &'s ClusterState,
    config: &'s Config,
) -> Result<Option<Judge<'s>>, Unjudged> {
    if has_no_managed_volumes(pod, state, config) {
        return Ok(None);
    }
    if let Some(why) = not_ready(state) {
        return Err(Unjudged::NotReady(why));
    }
    let namespace = pod.namespace().unwrap_or("default");
    // kube-scheduler's own VolumeBinding plugin turns away pods whose claim does not
    // exist, so a claim or PV missing here is volguard's cache lagging behind: answer
    // Error, and the scheduler retries after its backoff instead of parking the pod.
    let resolution = resolve(pod, namespace, state, config).map_err(|missing| {
        Unjudged::NotReady(format!(
            "{missing} in volguard's cluster state (a cache that lags behind the API): retry later"
        ))
    })?;
    let judge = Judge::new(Ok(&resolution), state, config);
    Ok((!judge.is_indifferent()).then_some(judge))
}

/// Judges every candidate, in order, until `abandoned` is set. With `passing`, collects
/// the state's own copies of the names of the nodes that pass, taken while each node's
/// record is at hand (a second lookup per node later would miss the cache again).
fn judge_each(
    judge: &Judge<'_>,
    names: &[Cow<'_, str>],
    abandoned: &Abandoned,
    mut passing: Option<&mut Vec<Arc<str>>>,
) -> Result<Vec<Judgement>, Unjudged> {
    let mut judged = Vec::with_capacity(names.len());
    for chunk in names.chunks(NODES_PER_LOOK) {
        if abandoned.is_set() {
            return Err(Unjudged::Abandoned);
        }
        judged.extend(chunk.iter().map(|n| {
            let (judgement, shared) = judge.judge_named(n);
            if let (Some(passing), Some(shared)) = (passing.as_deref_mut(), shared)
                && judgement.passes()
            {
                passing.push(shared.clone());
            }
            judgement
        }));
    }
    Ok(judged)
}

/// `namespace/name` of the pod, as placements in flight are keyed.
fn pod_key(pod: &PodView) -> String {
    key(pod.namespace().unwrap_or("default"), pod.name())
}

/// How long a `/filter` waits for pods in flight to show bound when they alone turn
/// nodes away, before it answers as if each may be on any node it was passed for.
/// kube-scheduler waits with it: its scheduling cycle is serial.
pub const BURST_WAIT: Duration = Duration::from_millis(500);

/// How often a waiting `/filter` looks at the state again.
const BURST_POLL: Duration = Duration::from_millis(2);

/// What one look at the state gave a `/filter`.
enum Look {
    /// The verdicts to answer with.
    Answer(Vec<Judgement>),
    /// Nodes fail only because pods in flight may be on them, and those pods may show
    /// bound any moment: look again shortly.
    Contended,
    /// On an async worker: the placements in flight are held by another call, or
    /// judging against them would take too long. Look on a blocking thread instead.
    NotNow,
}

/// How a call may take the placements in flight: waiting for them (a blocking
/// thread), or only if they are free at once (an async worker).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    Wait,
    IfFree,
}

/// The placements in flight, or `None` when `take` is [`Take::IfFree`] and another call
/// holds them.
fn in_flight(app: &App, take: Take) -> Option<std::sync::MutexGuard<'_, InFlight>> {
    match take {
        Take::Wait => Some(app.in_flight.lock().unwrap_or_else(|e| e.into_inner())),
        Take::IfFree => match app.in_flight.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        },
    }
}

/// On an async worker, judging is kept to this many (candidate, pod in flight) pairs:
/// beyond it (thousands of names while tens of pods are in flight) it goes to a
/// blocking thread.
const INLINE_PAIRS: usize = 64 << 10;

/// Judges the candidates counting every pod in flight on every node it may land on,
/// and remembers this pod as in flight on the nodes it passes. When pods in flight
/// alone turn nodes away and `may_wait`, asks to look again instead.
fn look(
    pod: &PodView,
    names: &[Cow<'_, str>],
    state: &ClusterState,
    app: &App,
    abandoned: &Abandoned,
    may_wait: bool,
    take: Take,
) -> Result<Look, Unjudged> {
    let Some(judge) = judge_for(pod, state, &app.config)? else {
        return Ok(Look::Answer(vec![Judgement::indifferent(); names.len()]));
    };
    let needs = judge.needs();
    let me = pod_key(pod);
    // Held from reading the placements to recording this one: two /filter calls at
    // once (two schedulers) cannot both take the last slot.
    let Some(mut flight) = in_flight(app, take) else {
        return Ok(Look::NotNow);
    };
    flight.settle(state, app.now());
    app.metrics.pods_in_flight(flight.len());
    if !needs.is_empty() && flight.is_full_for(&me) {
        return Err(Unjudged::NotReady(format!(
            "{} pods passed by volguard are not seen bound yet (their bindings are slow, or volguard's watch lags): retry later",
            flight.len()
        )));
    }
    let others = flight.touching(&me, &needs);
    if take == Take::IfFree && others.len().saturating_mul(names.len()) > INLINE_PAIRS {
        return Ok(Look::NotNow);
    }
    let judge = judge.with_in_flight(&others, Presume::Anywhere);
    let mut passing = Vec::new();
    let collect = (!needs.is_empty()).then_some(&mut passing);
    let judged = judge_each(&judge, names, abandoned, collect)?;
    // Wait only when pods in flight turn away every node that would pass without them
    // (nodes passing anyway are a safe answer now), and only for pods not waited for
    // in vain already that may be what turns them away.
    if !others.is_empty() && !judged.iter().any(Judgement::passes) {
        let fresh: Vec<&Arc<Placement>> = others
            .iter()
            .filter(|p| !p.waited_out() && could_hinder(p, &needs, names))
            .collect();
        let hindered =
            !fresh.is_empty() && names.iter().any(|n| judge.judge_unhindered(n).passes());
        if hindered {
            if may_wait {
                return Ok(Look::Contended);
            }
            flight.waited_out(fresh);
            app.metrics.burst_wait("timed_out");
        }
    }
    if !needs.is_empty() {
        if passing.is_empty() {
            flight.forget(&me);
        } else {
            let uid = pod.uid().map(str::to_owned);
            let placement = Placement::new(me, uid, app.now(), state, passing, needs);
            flight.record(placement, state);
        }
    }
    app.metrics.pods_in_flight(flight.len());
    Ok(Look::Answer(judged))
}

/// A placement in flight that may turn one of `names` away for a pod of `needs`: it
/// shares an exclusive volume with the pod, or may land on one of the nodes.
fn could_hinder(p: &Placement, needs: &Needs, names: &[Cow<'_, str>]) -> bool {
    p.needs
        .exclusive
        .iter()
        .any(|v| needs.exclusive.contains(v))
        || names.iter().any(|n| p.may_be_on(n, Presume::Anywhere))
}

/// Sorts judged candidates into the filter answer, in the mode they were sent in, and
/// counts the failures by kind.
fn sort_out<'a>(
    candidates: &'a Candidates<'a>,
    judgements: &'a [Judgement],
    metrics: &Metrics,
) -> ExtenderFilterResult<'a> {
    let mut result = ExtenderFilterResult::default();
    let mut passing = Vec::with_capacity(candidates.names.len());
    let mut failures: Vec<(FailKind, u64)> = Vec::new();
    let per_node_log = tracing::enabled!(tracing::Level::DEBUG);
    for (i, (name, j)) in candidates.names.iter().zip(judgements).enumerate() {
        let Verdict::Fail { kind, reason, .. } = &j.verdict else {
            passing.push(i);
            continue;
        };
        let kind = *kind;
        if per_node_log {
            tracing::debug!(node = %name, "filtered out: {}", j.describe().unwrap_or_default());
        }
        match failures.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => failures.push((kind, 1)),
        }
        let map = if kind.resolvable() {
            &mut result.failed_nodes
        } else {
            &mut result.failed_and_unresolvable_nodes
        };
        map.insert(name, reason);
    }
    for (kind, n) in failures {
        metrics.nodes_failed_by(kind.as_str(), n);
    }
    match &candidates.nodes {
        Some(list) => {
            result.nodes = Some(NodeList {
                items: passing.iter().map(|&i| list.items[i]).collect(),
                ..list.clone()
            })
        }
        None => {
            result.node_names = Some(
                passing
                    .iter()
                    .map(|&i| candidates.names[i].as_ref())
                    .collect(),
            )
        }
    }
    result
}

/// Judges the candidates, looking again while [`look`] finds pods in flight alone in
/// the way, until `burst_deadline`. Gives the state's
/// [`changes`](ClusterState::changes) count the answer was judged at too.
fn judge_settled(
    pod: &PodView,
    names: &[Cow<'_, str>],
    app: &App,
    abandoned: &Abandoned,
    burst_deadline: Instant,
) -> Result<(Vec<Judgement>, u64), Unjudged> {
    let mut waited = false;
    loop {
        let may_wait = Instant::now() < burst_deadline;
        let state = read_state(pod, app).map_err(Unjudged::NotReady)?;
        match look(pod, names, &state, app, abandoned, may_wait, Take::Wait)? {
            Look::Contended => {
                drop(state);
                waited = true;
                if abandoned.is_set() {
                    return Err(Unjudged::Abandoned);
                }
                std::thread::sleep(BURST_POLL);
            }
            // Only an async worker's look gives up.
            Look::NotNow => {
                return Err(Unjudged::NotReady(
                    "volguard could not take the pods in flight".to_owned(),
                ));
            }
            Look::Answer(judged) => {
                if waited && may_wait {
                    app.metrics.burst_wait("settled");
                }
                return Ok((judged, state.changes()));
            }
        }
    }
}

/// How long a `/filter` about to turn a retried pod away again, with nothing learned
/// since it last did, waits for its watch to deliver what made kube-scheduler retry.
/// The scheduler waits with it, at most once per change count in a short while (see
/// [`TurnedAway`]).
///
/// [`TurnedAway`]: crate::decide::catch_up::TurnedAway
pub const CATCH_UP_WAIT: Duration = Duration::from_millis(250);

/// How often a catch-up wait looks at the state's change count.
const CATCH_UP_POLL: Duration = Duration::from_millis(10);

/// Waits until the state's change count moves past `changes`, up to `deadline`:
/// whether it moved.
fn wait_for_change(
    app: &App,
    changes: u64,
    deadline: Instant,
    abandoned: &Abandoned,
) -> Result<bool, Unjudged> {
    while Instant::now() < deadline {
        if abandoned.is_set() {
            return Err(Unjudged::Abandoned);
        }
        std::thread::sleep(CATCH_UP_POLL);
        // A poisoned state moved too: judging again reports it.
        if app.cluster.read().map_or(true, |s| s.changes() != changes) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Who a pod is to [`TurnedAway`](crate::decide::catch_up::TurnedAway): its uid, so
/// that a pod recreated under the same name is a new pod; its name without one.
fn pod_identity(pod: &PodView) -> String {
    pod.uid().map_or_else(|| pod_key(pod), str::to_owned)
}

/// Judges the candidates; when every one fails for a pod that failed everywhere
/// before at the same change count, waits up to [`CATCH_UP_WAIT`] for the watch to
/// deliver something that lets the pod in, judging again at each change. A snapshot
/// has no watch to wait for: its retries are answered at once.
fn judge_caught_up(
    pod: &PodView,
    names: &[Cow<'_, str>],
    app: &App,
    abandoned: &Abandoned,
) -> Result<Vec<Judgement>, Unjudged> {
    let turns_all_away = |j: &[Judgement]| !j.is_empty() && !j.iter().any(Judgement::passes);
    let me = pod_identity(pod);
    let records = || app.turned_away.lock().unwrap_or_else(|e| e.into_inner());
    let burst_deadline = Instant::now() + BURST_WAIT;
    let (mut judged, mut changes) = judge_settled(pod, names, app, abandoned, burst_deadline)?;
    if turns_all_away(&judged)
        && app.follows_api()
        && records().should_wait(&me, changes, app.now())
    {
        let deadline = Instant::now() + CATCH_UP_WAIT;
        loop {
            if !wait_for_change(app, changes, deadline, abandoned)? {
                app.metrics.catch_up_wait("settled");
                records().settled_at(changes, app.now());
                break;
            }
            (judged, changes) = judge_settled(pod, names, app, abandoned, burst_deadline)?;
            if !turns_all_away(&judged) {
                app.metrics.catch_up_wait("caught_up");
                break;
            }
        }
    }
    records().answered(&me, changes, turns_all_away(&judged));
    Ok(judged)
}

/// [`filter`] at once, on the async worker, when it needs no waiting: the cluster state
/// is free (no writer holds it), the pod is judged ready, and some node passes without
/// waiting for pods in flight. `None`: take the blocking path, which may wait (see
/// [`judge_caught_up`]) and judges again.
fn filter_now(body: &[u8], app: &App) -> Option<Result<Vec<u8>, ExtenderError>> {
    let (pod, candidates) = match parse(body) {
        Ok(parsed) => parsed,
        Err(e) => return Some(Err(e)),
    };
    let state = app.cluster.try_read().ok()?;
    let never = Abandoned::default();
    let looked = look(
        &pod,
        &candidates.names,
        &state,
        app,
        &never,
        true,
        Take::IfFree,
    );
    let Ok(Look::Answer(judged)) = looked else {
        return None;
    };
    if !judged.is_empty() && !judged.iter().any(Judgement::passes) {
        return None;
    }
    let changes = state.changes();
    drop(state);
    app.turned_away
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .answered(&pod_identity(&pod), changes, false);
    Some(serde_json::to_vec(&sort_out(&candidates, &judged, &app.metrics)).map_err(encode_failed))
}

/// Answers a `/filter` body with an `ExtenderFilterResult` body. When the state is not
/// ready, the answer carries `Error` (the scheduler retries), never a guessed verdict.
/// Stops early, answering nothing, once `abandoned` is set.
pub fn filter(body: &[u8], app: &App, abandoned: &Abandoned) -> Result<Vec<u8>, ExtenderError> {
    still_wanted(abandoned)?;
    let (pod, candidates) = parse(body)?;
    match judge_caught_up(&pod, &candidates.names, app, abandoned) {
        Err(Unjudged::Abandoned) => Err(ExtenderError::Abandoned),
        Err(Unjudged::NotReady(why)) => {
            tracing::warn!(pod = pod.name(), "extender filter not answered: {why}");
            serde_json::to_vec(&ExtenderFilterResult::error(why)).map_err(encode_failed)
        }
        Ok(judgements) => serde_json::to_vec(&sort_out(&candidates, &judgements, &app.metrics))
            .map_err(encode_failed),
    }
}

/// Answers a `/prioritize` body with a `HostPriorityList` body: one entry per candidate.
/// Pods in flight count on the node they were scored highest for, so that a burst is
/// spread; the node this pod scores highest on is noted for the pods after it.
/// Stops early, answering nothing, once `abandoned` is set.
pub fn prioritize(body: &[u8], app: &App, abandoned: &Abandoned) -> Result<Vec<u8>, ExtenderError> {
    still_wanted(abandoned)?;
    let (pod, candidates) = parse(body)?;
    let state = read_state(&pod, app).map_err(ExtenderError::NotReady)?;
    prioritize_with(&pod, &candidates, state, app, abandoned, Take::Wait).unwrap_or_else(|| {
        Err(ExtenderError::Internal(
            "the placements in flight could not be taken".into(),
        ))
    })
}

/// [`prioritize`] at once, on the async worker, when the cluster state is free (no
/// writer holds it): it never waits. `None`: take the blocking path.
fn prioritize_now(body: &[u8], app: &App) -> Option<Result<Vec<u8>, ExtenderError>> {
    let (pod, candidates) = match parse(body) {
        Ok(parsed) => parsed,
        Err(e) => return Some(Err(e)),
    };
    let state = app.cluster.try_read().ok()?;
    prioritize_with(
        &pod,
        &candidates,
        state,
        app,
        &Abandoned::default(),
        Take::IfFree,
    )
}

/// The `/prioritize` answer for a parsed request, judged on `state`; `None` when `take`
/// is [`Take::IfFree`] and the placements in flight are held, or judging against them
/// would take too long.
fn prioritize_with(
    pod: &PodView,
    candidates: &Candidates<'_>,
    state: RwLockReadGuard<'_, ClusterState>,
    app: &App,
    abandoned: &Abandoned,
    take: Take,
) -> Option<Result<Vec<u8>, ExtenderError>> {
    let unjudged = |e| match e {
        Unjudged::NotReady(why) => ExtenderError::NotReady(why),
        Unjudged::Abandoned => ExtenderError::Abandoned,
    };
    let judge = match judge_for(pod, &state, &app.config) {
        Ok(judge) => judge,
        Err(e) => return Some(Err(unjudged(e))),
    };
    let scores: Vec<u8> = match judge {
        None => vec![0; candidates.names.len()],
        Some(judge) => {
            let me = pod_key(pod);
            let needs = judge.needs();
            let others = {
                let mut flight = in_flight(app, take)?;
                flight.settle(&state, app.now());
                app.metrics.pods_in_flight(flight.len());
                flight.touching(&me, &needs)
            };
            let pairs = others.len().saturating_mul(candidates.names.len());
            if take == Take::IfFree && pairs > INLINE_PAIRS {
                return None;
            }
            let judge = judge.with_in_flight(&others, Presume::AtGuess);
            let scores: Vec<u8> = match judge_each(&judge, &candidates.names, abandoned, None) {
                Ok(judged) => judged.into_iter().map(|j| j.score).collect(),
                Err(e) => return Some(Err(unjudged(e))),
            };
            let best = scores
                .iter()
                .enumerate()
                .filter(|(_, s)| **s > 0)
                .max_by_key(|(i, s)| (**s, std::cmp::Reverse(*i)))
                .and_then(|(i, _)| state.shared_name(&candidates.names[i]).cloned());
            if let Some(best) = best {
                in_flight(app, take)?.guess(&me, best);
            }
            scores
        }
    };
    drop(state);
    let list: Vec<HostPriority> = candidates
        .names
        .iter()
        .zip(scores)
        .map(|(name, score)| HostPriority { host: name, score })
        .collect();
    Some(serde_json::to_vec(&list).map_err(encode_failed))
}

fn encode_failed(e: serde_json::Error) -> ExtenderError {
    ExtenderError::Internal(format!("cannot encode the answer: {e}"))
}

fn reply(outcome: Result<Vec<u8>, ExtenderError>) -> Response {
    match outcome {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(ExtenderError::BadArgs(why)) => bad_request(why),
        Err(ExtenderError::NotReady(why)) => {
            tracing::warn!("extender prioritize not answered: {why}");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
        }
        Err(ExtenderError::Internal(why)) => {
            tracing::error!("extender: {why}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")).into_response()
        }
        Err(e @ ExtenderError::Abandoned) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
    }
}

/// [`filter`] or [`prioritize`].
type BodyHandler = fn(&[u8], &App, &Abandoned) -> Result<Vec<u8>, ExtenderError>;

/// [`filter_now`] or [`prioritize_now`].
type InlineHandler = fn(&[u8], &App) -> Option<Result<Vec<u8>, ExtenderError>>;

/// Bodies up to this size (about 3,000 node names) are judged on the async worker when
/// that needs no waiting: under load, the hand-off to the blocking pool and back
/// (two thread wake-ups on busy cores) cost more than judging them, a fraction of a
/// millisecond. Larger ones, and any that would wait, go to the blocking pool.
const INLINE_BODY_LIMIT: usize = 64 << 10;

/// Marks the request abandoned when dropped: the handler's future is dropped when the
/// deadline fires or the client goes away (and harmlessly after the answer).
struct AbandonOnDrop(Abandoned);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// Runs a body handler off the async workers (a large `Nodes` body takes a while to
/// parse, and a `/filter` may wait), unless `now` answers a small body at once without
/// waiting for any lock (a panic there resets the stream instead of answering 500).
/// The blocking task owns the body and its ticket (its request slot and share of the
/// body budget), so both are freed when it stops, which it does early once the request is abandoned.
async fn off_runtime(
    app: App,
    body: Bytes,
    ticket: Option<Extension<Ticket>>,
    (now, handle): (InlineHandler, BodyHandler),
) -> Response {
    if body.len() <= INLINE_BODY_LIMIT
        && let Some(outcome) = now(&body, &app)
    {
        return reply(outcome);
    }
    let abandoned = Abandoned::default();
    let _guard = AbandonOnDrop(abandoned.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        let outcome = handle(&body, &app, &abandoned);
        drop((body, ticket));
        if matches!(outcome, Err(ExtenderError::Abandoned)) {
            app.metrics.request_abandoned();
            tracing::info!("extender request abandoned (deadline or client gone): judging stopped");
        }
        outcome
    })
    .await
    .unwrap_or_else(|e| {
        Err(ExtenderError::Internal(format!(
            "extender task failed: {e}"
        )))
    });
    reply(outcome)
}

/// `POST /filter`.
pub async fn filter_handler(
    State(app): State<App>,
    ticket: Option<Extension<Ticket>>,
    body: Bytes,
) -> Response {
    off_runtime(app, body, ticket, (filter_now, filter)).await
}

/// `POST /prioritize`.
pub async fn prioritize_handler(
    State(app): State<App>,
    ticket: Option<Extension<Ticket>>,
    body: Bytes,
) -> Response {
    off_runtime(app, body, ticket, (prioritize_now, prioritize)).await
}
