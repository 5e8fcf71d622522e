//! A scripted Kubernetes API server on a loopback port, speaking plain HTTP to the real
//! kube client: lists with resourceVersion and continue tokens, watches that stream
//! newline-delimited ADDED/MODIFIED/DELETED/BOOKMARK events from any resourceVersion,
//! 410 Gone for a compacted resourceVersion, GETs of single objects (answered at once or
//! held back), watches failing after their response head, and a switch that drops every
//! connection as a lost network would.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::body::Body;
use futures::StreamExt;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use volguard::{cluster::Kind, sources::watch::collection_path};

/// One request the fake API answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `list`, `watch` or `get`, as RBAC names the verb.
    pub verb: &'static str,
    /// The kind's collection (`/api/v1/pods`) for list and watch, the object's path for get.
    pub path: String,
    /// The kind the request was about.
    pub kind: Kind,
}

/// The fake API server.
pub struct FakeApi {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    epoch: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    resource_version: u64,
    collections: BTreeMap<Kind, Collection>,
    offline: bool,
    compacted: u64,
    stall_gets: bool,
    forbidden: std::collections::BTreeSet<Kind>,
    failing_watches: std::collections::BTreeSet<Kind>,
    held_gets: Option<watch::Receiver<bool>>,
    seen: Vec<Seen>,
}

#[derive(Default)]
struct Collection {
    items: BTreeMap<String, Value>,
    history: Vec<(u64, Value)>,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

impl FakeApi {
    /// Starts serving `objects` (Kubernetes JSON) on 127.0.0.1.
    pub async fn start(objects: impl IntoIterator<Item = Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve(listener, objects)
    }

    /// Starts serving `objects` on a listener the caller made (e.g. on a port that
    /// refused connections until now).
    pub fn serve(
        listener: tokio::net::TcpListener,
        objects: impl IntoIterator<Item = Value>,
    ) -> Self {
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (epoch, _) = watch::channel(0u64);
        let api = FakeApi {
            addr,
            inner: inner.clone(),
            epoch: epoch.clone(),
        };
        for o in objects {
            api.store(o, false);
        }
        tokio::spawn(accept(listener, inner, epoch));
        api
    }

    /// A kube config pointing at this server over plain HTTP.
    pub fn kube_config(&self) -> kube::Config {
        let url = format!("http://{}", self.addr).parse().expect("url");
        kube::Config::new(url)
    }

    /// Creates or replaces an object; open watches get ADDED or MODIFIED.
    pub fn put(&self, object: Value) {
        self.store(object, true);
    }

    /// Creates or replaces an object that lists and GETs see at once but whose watch
    /// event has not gone out yet (a watch lagging behind).
    pub fn put_unannounced(&self, object: Value) {
        self.store(object, false);
    }

    /// Deletes an object by kind and `namespace/name` (or name); open watches get DELETED.
    pub fn delete(&self, kind: Kind, key: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.resource_version += 1;
        let rv = inner.resource_version;
        let collection = inner.collections.entry(kind).or_default();
        let mut object = collection
            .items
            .remove(key)
            .unwrap_or_else(|| panic!("fake API has no {kind:?} {key}"));
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        collection.announce(rv, json!({"type": "DELETED", "object": object}));
    }

    /// Drops every open connection and refuses new ones until [`FakeApi::go_online`].
    pub fn go_offline(&self) {
        self.inner.lock().unwrap().offline = true;
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Accepts connections again; watches resuming from before now get 410 Gone, as
    /// after an etcd compaction, so the client must relist.
    pub fn go_online_compacted(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.offline = false;
        inner.compacted = inner.resource_version;
    }

    /// Lists and watches of `kind` are answered 403 Forbidden with the Status the API
    /// server sends when RBAC lacks the verb, until [`FakeApi::allow`].
    pub fn forbid(&self, kind: Kind) {
        self.inner.lock().unwrap().forbidden.insert(kind);
    }

    /// Undoes [`FakeApi::forbid`].
    pub fn allow(&self, kind: Kind) {
        self.inner.lock().unwrap().forbidden.remove(&kind);
    }

    /// Watches of `kind` are answered 200 with one ERROR event (a 500 from etcd) and
    /// closed, until [`FakeApi::mend`]: each rewatch gets a response head, then fails.
    pub fn fail_watches(&self, kind: Kind) {
        self.inner.lock().unwrap().failing_watches.insert(kind);
    }

    /// Undoes [`FakeApi::fail_watches`].
    pub fn mend(&self, kind: Kind) {
        self.inner.lock().unwrap().failing_watches.remove(&kind);
    }

    /// Ends the open watches of `kind` cleanly, as the API server does when a watch's
    /// timeout runs out: the client watches again from where it was.
    pub fn end_watches(&self, kind: Kind) {
        let mut inner = self.inner.lock().unwrap();
        inner.collections.entry(kind).or_default().watchers.clear();
    }

    /// GETs of single objects read the object when they arrive but answer only when
    /// the returned sender is set to `true` (or dropped).
    pub fn hold_gets(&self) -> watch::Sender<bool> {
        let (release, held) = watch::channel(false);
        self.inner.lock().unwrap().held_gets = Some(held);
        release
    }

    /// GETs of single objects are accepted but never answered.
    pub fn stall_gets(&self) {
        self.inner.lock().unwrap().stall_gets = true;
    }

    /// Every request answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    fn store(&self, mut object: Value, announce: bool) {
        let kind = kind_of(&object);
        let mut inner = self.inner.lock().unwrap();
        inner.resource_version += 1;
        let rv = inner.resource_version;
        object["metadata"]["resourceVersion"] = rv.to_string().into();
        let key = key_of(&object);
        let collection = inner.collections.entry(kind).or_default();
        let existed = collection.items.insert(key, object.clone()).is_some();
        if announce {
            let kind = if existed { "MODIFIED" } else { "ADDED" };
            collection.announce(rv, json!({"type": kind, "object": object}));
        }
    }
}

impl Collection {
    fn announce(&mut self, rv: u64, event: Value) {
        let line = line(&event);
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
        self.history.push((rv, event));
    }
}

/// Every object of the example cluster of a kind volguard reads, as the API server would
/// serve it: the snapshot files' documents, with `kind: List` files flattened (the
/// files' other kinds, such as CSIDriver, are not asked for).
pub fn example_documents() -> Vec<Value> {
    let dir = crate::common::repo("examples/cluster");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/cluster")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for doc in volguard::sources::snapshot::parse_documents(&text, false).expect("parses") {
            match doc["items"].as_array() {
                Some(items) if doc["kind"] == "List" => out.extend(items.iter().cloned()),
                _ => out.push(doc),
            }
        }
    }
    out.retain(|o| Kind::parse(o["kind"].as_str().unwrap_or_default()).is_some());
    out
}

fn kind_of(object: &Value) -> Kind {
    let kind = object["kind"].as_str().unwrap_or_default();
    Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .unwrap_or_else(|| panic!("fake API does not serve kind {kind:?}"))
}

fn key_of(object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().expect("name");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

fn line(event: &Value) -> Bytes {
    let mut text = event.to_string();
    text.push('\n');
    Bytes::from(text)
}

async fn accept(
    listener: tokio::net::TcpListener,
    inner: Arc<Mutex<Inner>>,
    epoch: watch::Sender<u64>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if inner.lock().unwrap().offline {
            drop(stream);
            continue;
        }
        let inner = inner.clone();
        let mut dropped = epoch.subscribe();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(answer(&inner, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = dropped.changed() => {}
            }
        });
    }
}

fn answer<B>(inner: &Mutex<Inner>, req: Request<B>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut inner = inner.lock().unwrap();
    if let Some(kind) = Kind::ALL.into_iter().find(|k| collection_path(*k) == path) {
        let watching = query.get("watch").is_some_and(|v| v == "true" || v == "1");
        let verb = if watching { "watch" } else { "list" };
        inner.seen.push(Seen { verb, path, kind });
        if inner.forbidden.contains(&kind) {
            return forbidden(kind, verb);
        }
        if watching && inner.failing_watches.contains(&kind) {
            return watch_error();
        }
        return if watching {
            watch_events(&mut inner, kind, &query)
        } else {
            list(&mut inner, kind, &query)
        };
    }
    let Some((kind, key)) = object_of(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route {path}"),
        );
    };
    inner.seen.push(Seen {
        verb: "get",
        path,
        kind,
    });
    if inner.stall_gets {
        return Response::new(Body::from_stream(futures::stream::pending::<
            Result<Bytes, Infallible>,
        >()));
    }
    match inner.collections.get(&kind).and_then(|c| c.items.get(&key)) {
        Some(object) => match inner.held_gets.clone() {
            Some(held) => held_response(object, held),
            None => json_response(StatusCode::OK, object),
        },
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} \"{key}\" not found", kind.as_str()),
        ),
    }
}

/// `/api/v1/namespaces/NS/PLURAL/NAME` or `COLLECTION/NAME` -> kind and key.
fn object_of(path: &str) -> Option<(Kind, String)> {
    Kind::ALL.into_iter().find_map(|kind| {
        let collection = collection_path(kind);
        let (prefix, plural) = collection.rsplit_once('/')?;
        if let Some(name) = path
            .strip_prefix(collection.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|n| !n.contains('/'))
        {
            return Some((kind, name.to_owned()));
        }
        let rest = path.strip_prefix(prefix)?.strip_prefix("/namespaces/")?;
        let (ns, rest) = rest.split_once('/')?;
        let name = rest.strip_prefix(plural)?.strip_prefix('/')?;
        Some((kind, format!("{ns}/{name}")))
    })
}

fn list(inner: &mut Inner, kind: Kind, query: &BTreeMap<String, String>) -> Response<Body> {
    let rv = inner.resource_version;
    let collection = inner.collections.entry(kind).or_default();
    let start: usize = query
        .get("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let items: Vec<Value> = collection
        .items
        .values()
        .skip(start)
        .take(limit)
        .cloned()
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if start + items.len() < collection.items.len() {
        metadata["continue"] = (start + items.len()).to_string().into();
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", kind.as_str()),
            "apiVersion": api_version(kind),
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn watch_events(inner: &mut Inner, kind: Kind, query: &BTreeMap<String, String>) -> Response<Body> {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if from < inner.compacted {
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({})", inner.compacted),
            "reason": "Expired", "code": 410,
        }});
        tx.send(line(&gone)).expect("open channel");
    } else {
        let rv = inner.resource_version;
        let collection = inner.collections.entry(kind).or_default();
        for (_, event) in collection.history.iter().filter(|(v, _)| *v > from) {
            tx.send(line(event)).expect("open channel");
        }
        if query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true")
        {
            let bookmark = json!({"type": "BOOKMARK", "object": {
                "kind": kind.as_str(),
                "apiVersion": api_version(kind),
                "metadata": {"resourceVersion": rv.to_string()},
            }});
            tx.send(line(&bookmark)).expect("open channel");
        }
        collection.watchers.push(tx);
    }
    let body = tokio_stream(rx).map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("header value"),
    );
    response
}

/// A watch answered 200 whose only event is an ERROR, then closed.
fn watch_error() -> Response<Body> {
    let error = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500,
    }});
    let mut response = Response::new(Body::from(line(&error)));
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("header value"),
    );
    response
}

/// `object` as it is now, sent once `held` turns true or its sender is dropped.
fn held_response(object: &Value, mut held: watch::Receiver<bool>) -> Response<Body> {
    let body = Bytes::from(object.to_string());
    let later = async move {
        let _ = held.wait_for(|released| *released).await;
        Ok::<_, Infallible>(body)
    };
    let mut response = Response::new(Body::from_stream(futures::stream::once(later)));
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("header value"),
    );
    response
}

fn tokio_stream(
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// `v1` for `/api/v1/...`, `storage.k8s.io/v1` for `/apis/storage.k8s.io/v1/...`.
fn api_version(kind: Kind) -> String {
    let path = collection_path(kind);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", version, ..] => (*version).to_owned(),
        [_, group, version, ..] => format!("{group}/{version}"),
        _ => panic!("unexpected collection path {path}"),
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("header value"),
    );
    response
}

/// The API server's answer to a service account whose role lacks `verb` on `kind`.
fn forbidden(kind: Kind, verb: &str) -> Response<Body> {
    let path = collection_path(kind);
    let (prefix, plural) = path.rsplit_once('/').expect("a collection path");
    let group = prefix
        .strip_prefix("/apis/")
        .and_then(|g| g.split('/').next())
        .unwrap_or_default();
    let resource = if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    };
    let message = format!(
        "{resource} is forbidden: User \"{FORBIDDEN_USER}\" cannot {verb} resource \"{plural}\" \
         in API group \"{group}\" at the cluster scope"
    );
    json_response(
        StatusCode::FORBIDDEN,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": "Forbidden", "details": {"kind": plural},
                "code": 403}),
    )
}

/// The identity named in 403 answers: volguard's service account.
pub const FORBIDDEN_USER: &str = "system:serviceaccount:volguard-system:volguard";

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}
