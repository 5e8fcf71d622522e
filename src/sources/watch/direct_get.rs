//! One direct GET for what the webhook's cache lacks: a StatefulSet creates a pod's
//! claim a moment before the pod, so the watch may not have delivered it yet. Any
//! caller that reaches `/mutate` chooses the names looked up, so the GETs are bounded:
//! a few at once, a steady rate, and a name just found missing is not asked again for
//! a moment.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::{Api, Client};
use tokio::{sync::Semaphore, time::Instant};

use super::kinds::Watched;
use crate::cluster::{Fetched, Missing, SharedState};

/// How long the webhook waits for direct GETs of one pod, in total: well inside the
/// webhook's own timeout, so a slow API costs a warning, not a failed admission.
pub const DIRECT_GET_TIMEOUT: Duration = Duration::from_secs(2);

/// Direct GETs in flight at once; more wait a moment for one to end.
const MAX_CONCURRENT: usize = 4;
/// How long a GET waits for a free slot: when four GETs take longer, the API server is
/// slow, and more GETs would only queue behind them.
const SLOT_WAIT: Duration = Duration::from_millis(500);
/// Direct GETs started per second, on average ...
const RATE: f64 = 20.0;
/// ... and at most this many in a burst: a StatefulSet scaled up by dozens of replicas
/// at once while the claims' watch lags still gets every pod's claim.
const BURST: f64 = 50.0;
/// How long a name the API server did not have is answered from memory.
const NOT_FOUND_FOR: Duration = Duration::from_secs(2);
/// Names remembered as not found at most; past it, the oldest half is forgotten.
const NOT_FOUND_NAMES: usize = 4096;

/// How one bounded lookup went, for the webhook's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fetched and applied to the state.
    Fetched,
    /// The API server has no such object.
    NotFound,
    /// Found missing by a GET less than two seconds ago, while GETs run short: not
    /// asked again.
    RecentlyNotFound,
    /// Over the rate, or no slot freed in time: not asked.
    Limited,
    /// The GET failed or timed out, or the object was deleted meanwhile.
    Failed,
}

impl Outcome {
    /// The outcome's label in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Fetched => "fetched",
            Outcome::NotFound => "not_found",
            Outcome::RecentlyNotFound => "recently_not_found",
            Outcome::Limited => "limited",
            Outcome::Failed => "failed",
        }
    }
}

/// The bounds shared by every direct GET of one process.
#[derive(Debug)]
pub struct DirectGets {
    slots: Semaphore,
    /// Tokens left and when they were last counted.
    bucket: Mutex<(f64, Instant)>,
    not_found: Mutex<HashMap<Missing, Instant>>,
}

impl Default for DirectGets {
    fn default() -> Self {
        DirectGets {
            slots: Semaphore::new(MAX_CONCURRENT),
            bucket: Mutex::new((BURST, Instant::now())),
            not_found: Mutex::new(HashMap::new()),
        }
    }
}

impl DirectGets {
    /// [`fetch_missing`] within the bounds; the outcome, and for any but `Fetched` why
    /// not, in words fit for a webhook warning.
    pub async fn fetch(
        &self,
        client: &Client,
        miss: &Missing,
        state: &SharedState,
        deadline: Instant,
    ) -> (Outcome, Result<(), String>) {
        // A name just found missing is answered from memory only under pressure: a claim
        // created right after its GET (a StatefulSet's next replica) is looked up again.
        if self.tokens() < BURST / 2.0 && self.recently_not_found(miss) {
            return (
                Outcome::RecentlyNotFound,
                Err(format!(
                    "not found either by a direct GET less than {} s ago",
                    NOT_FOUND_FOR.as_secs()
                )),
            );
        }
        if !self.take_token() {
            return (
                Outcome::Limited,
                Err(format!(
                    "not fetched: direct GETs are over their rate of {RATE} per second"
                )),
            );
        }
        let wait_until = deadline.min(Instant::now() + SLOT_WAIT);
        let Ok(Ok(_slot)) = tokio::time::timeout_at(wait_until, self.slots.acquire()).await else {
            self.refund_token();
            return (
                Outcome::Limited,
                Err(format!(
                    "not fetched: {MAX_CONCURRENT} direct GETs were in flight for {} ms",
                    SLOT_WAIT.as_millis()
                )),
            );
        };
        match fetch_missing(client, miss, state, deadline).await {
            Ok(()) => (Outcome::Fetched, Ok(())),
            Err(Fetch::NotFound) => {
                self.remember_not_found(miss);
                (Outcome::NotFound, Err("not found either".into()))
            }
            Err(Fetch::Failed(why)) => (Outcome::Failed, Err(why)),
        }
    }

    fn recently_not_found(&self, miss: &Missing) -> bool {
        let not_found = self.not_found.lock().unwrap_or_else(|e| e.into_inner());
        not_found
            .get(miss)
            .is_some_and(|at| at.elapsed() < NOT_FOUND_FOR)
    }

    fn remember_not_found(&self, miss: &Missing) {
        let mut not_found = self.not_found.lock().unwrap_or_else(|e| e.into_inner());
        if not_found.len() >= NOT_FOUND_NAMES {
            not_found.retain(|_, at| at.elapsed() < NOT_FOUND_FOR);
            if not_found.len() >= NOT_FOUND_NAMES {
                let mut ages: Vec<Instant> = not_found.values().copied().collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                not_found.retain(|_, at| *at > cut);
            }
        }
        not_found.insert(miss.clone(), Instant::now());
    }

    /// Takes one token from the bucket, refilled at `RATE` per second up to `BURST`.
    fn take_token(&self) -> bool {
        self.with_tokens(|tokens| {
            if *tokens < 1.0 {
                return false;
            }
            *tokens -= 1.0;
            true
        })
    }

    /// Gives back a token taken for a GET that was not made.
    fn refund_token(&self) {
        self.with_tokens(|tokens| *tokens = (*tokens + 1.0).min(BURST));
    }

    /// The tokens in the bucket now.
    fn tokens(&self) -> f64 {
        self.with_tokens(|tokens| *tokens)
    }

    /// Runs `f` on the bucket's tokens, refilled up to now.
    fn with_tokens<T>(&self, f: impl FnOnce(&mut f64) -> T) -> T {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, counted) = *bucket;
        let mut tokens = (tokens + (now - counted).as_secs_f64() * RATE).min(BURST);
        let answer = f(&mut tokens);
        *bucket = (tokens, now);
        answer
    }
}

/// Why a direct GET brought nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fetch {
    /// The API server has no such object.
    NotFound,
    /// Anything else, in words fit for a webhook warning.
    Failed(String),
}

/// GETs the one object `miss` names (the claim, or the PV bound to it) and applies it
/// to the state, unless the watch delivered it meanwhile or reported its deletion
/// after the GET read it; the error says why not, in words fit for a webhook warning
/// (a failed request's whole cause is logged).
async fn fetch_missing(
    client: &Client,
    miss: &Missing,
    state: &SharedState,
    deadline: Instant,
) -> Result<(), Fetch> {
    let object = match miss {
        Missing::Claim { namespace, name } => {
            let api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
            get(&api, name, deadline).await?.into_object()
        }
        Missing::Volume { pv, .. } => {
            let api = Api::<PersistentVolume>::all(client.clone());
            get(&api, pv, deadline).await?.into_object()
        }
    };
    let mut state = state
        .write()
        .map_err(|_| Fetch::Failed("cluster state is unavailable".to_owned()))?;
    match state.apply_fetched(&object) {
        Fetched::Applied | Fetched::Cached => Ok(()),
        Fetched::DeletedMeanwhile => {
            Err(Fetch::Failed("deleted while the GET was in flight".into()))
        }
    }
}

async fn get<K: Watched>(api: &Api<K>, name: &str, deadline: Instant) -> Result<K, Fetch> {
    match tokio::time::timeout_at(deadline, api.get_opt(name)).await {
        Err(_) => Err(Fetch::Failed(format!(
            "no answer within {}s",
            DIRECT_GET_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => {
            tracing::warn!(
                kind = K::KIND.as_str(),
                name,
                "direct GET failed: {}",
                super::cause::chain(&e)
            );
            Err(Fetch::Failed(super::cause::brief(&e)))
        }
        Ok(Ok(None)) => Err(Fetch::NotFound),
        Ok(Ok(Some(object))) => Ok(object),
    }
}
