//! A stand-in Kubernetes API server for tests: no kube-apiserver can run on these machines, so
//! the controller's real kube-rs client talks to this over HTTP on loopback.
//!
//! It speaks the real REST wire format for what podtap uses: list (`?&limit=500`, one page)
//! and watch (`?&watch=true&resourceVersion=N`, newline-delimited JSON events in a chunked 200
//! response, replayed from N) for pods, nodes, namespaces, TapPolicies and Leases; status
//! patches (server-side apply of `.status`); Lease get/create/apply/strategic-merge with
//! field-manager conflicts on `spec.holderIdentity`, which is what makes leader election
//! mutually exclusive. Every object gets a `resourceVersion` from one counter; `generation`
//! moves only when `spec` changes. Errors are `Status` objects with their `code`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The resources the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    Node,
    Namespace,
    TapPolicy,
    Lease,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Pod,
        Kind::Node,
        Kind::Namespace,
        Kind::TapPolicy,
        Kind::Lease,
    ];

    fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Node | Kind::Namespace => "v1",
            Kind::TapPolicy => "podtap.io/v1alpha1",
            Kind::Lease => "coordination.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::TapPolicy => "TapPolicy",
            Kind::Lease => "Lease",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::TapPolicy => "tappolicies",
            Kind::Lease => "leases",
        }
    }

    fn group_prefix(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Node | Kind::Namespace => "/api/v1",
            Kind::TapPolicy => "/apis/podtap.io/v1alpha1",
            Kind::Lease => "/apis/coordination.k8s.io/v1",
        }
    }
}

type Key = (String, String); // (namespace or "", name)

#[derive(Default)]
struct Data {
    rv: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
    /// Every change, in order: (kind, resourceVersion, event type, object).
    events: Vec<(Kind, u64, &'static str, Value)>,
    /// Per lease: the field manager that set `spec.holderIdentity`.
    holder_managers: BTreeMap<Key, String>,
    /// `METHOD path?query [content-type]` of every request.
    requests: Vec<String>,
    /// When set, every request fails with this code (an API outage).
    failing: Option<u16>,
}

struct Shared {
    data: Mutex<Data>,
    events: broadcast::Sender<(Kind, u64, &'static str, Value)>,
}

/// A running stand-in API server.
#[derive(Clone)]
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

fn status_body(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `a` with `b` merged in (RFC 7386: null deletes).
fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

impl ApiServer {
    /// Starts on an ephemeral loopback port (inside the current tokio runtime).
    pub async fn start() -> ApiServer {
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            data: Mutex::new(Data::default()),
            events,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding loopback");
        let addr = listener.local_addr().expect("local address");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ApiServer { shared, addr }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.shared.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or replaces an object (`metadata.namespace` for pods and leases); emits ADDED or
    /// MODIFIED. `generation` goes up when `spec` changed; a given `status` is kept.
    pub fn apply(&self, kind: Kind, mut obj: Value) -> Value {
        let mut d = self.data();
        let key = key_of(&obj);
        let old = d.objects.get(&kind).and_then(|m| m.get(&key)).cloned();
        d.rv += 1;
        let rv = d.rv;
        let generation = match &old {
            Some(o) if o["spec"] == obj["spec"] => {
                o["metadata"]["generation"].as_i64().unwrap_or(1)
            }
            Some(o) => o["metadata"]["generation"].as_i64().unwrap_or(1) + 1,
            None => 1,
        };
        let uid = old
            .as_ref()
            .and_then(|o| o["metadata"]["uid"].as_str().map(String::from))
            .unwrap_or_else(|| format!("uid-{rv}"));
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("objects have metadata");
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("uid".into(), json!(uid));
        meta.insert("generation".into(), json!(generation));
        meta.entry("creationTimestamp")
            .or_insert(json!("2026-01-01T00:00:00Z"));
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind());
        if obj.get("status").is_none()
            && let Some(s) = old.as_ref().and_then(|o| o.get("status"))
        {
            obj["status"] = s.clone();
        }
        let ty = if old.is_some() { "MODIFIED" } else { "ADDED" };
        d.objects.entry(kind).or_default().insert(key, obj.clone());
        d.events.push((kind, rv, ty, obj.clone()));
        let _ = self.shared.events.send((kind, rv, ty, obj.clone()));
        obj
    }

    /// Deletes an object; emits DELETED. False if it did not exist.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut d = self.data();
        let key = (namespace.to_string(), name.to_string());
        let Some(mut obj) = d.objects.get_mut(&kind).and_then(|m| m.remove(&key)) else {
            return false;
        };
        d.rv += 1;
        let rv = d.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        d.events.push((kind, rv, "DELETED", obj.clone()));
        let _ = self.shared.events.send((kind, rv, "DELETED", obj));
        true
    }

    /// An object as stored now.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let d = self.data();
        d.objects
            .get(&kind)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every request so far, as `METHOD path?query [content-type]`.
    pub fn requests(&self) -> Vec<String> {
        self.data().requests.clone()
    }

    /// Makes every request fail with `code` (Some), or work again (None).
    pub fn set_failing(&self, code: Option<u16>) {
        self.data().failing = code;
    }
}

fn key_of(obj: &Value) -> Key {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_string(),
        m["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// What a request path names.
struct Target {
    kind: Kind,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    for kind in Kind::ALL {
        let Some(rest) = path.strip_prefix(kind.group_prefix()) else {
            continue;
        };
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let (namespace, parts) = match parts.as_slice() {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest.to_vec()),
            _ => (String::new(), parts),
        };
        if parts.first() != Some(&kind.plural()) {
            continue;
        }
        return Some(Target {
            kind,
            namespace,
            name: parts.get(1).map(|s| s.to_string()),
            subresource: parts.get(2).map(|s| s.to_string()),
        });
    }
    None
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let server = ApiServer {
        shared: shared.clone(),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    {
        let mut d = server.data();
        d.requests.push(format!(
            "{method} {}{} {content_type}",
            uri.path(),
            uri.query().map(|q| format!("?{q}")).unwrap_or_default()
        ));
        if let Some(code) = d.failing {
            return status_body(code, "InternalError", "the stand-in is failing on purpose");
        }
    }
    let Some(t) = parse_path(uri.path()) else {
        return status_body(404, "NotFound", &format!("no resource at {}", uri.path()));
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return status_body(400, "BadRequest", &format!("body is not JSON: {e}")),
        }
    };
    match (method.as_str(), &t.name) {
        ("GET", None) if query.get("watch").map(String::as_str) == Some("true") => {
            watch(&server, t.kind, &query)
        }
        ("GET", None) => list(&server, t.kind),
        ("GET", Some(name)) => match server.get(t.kind, &t.namespace, name) {
            Some(o) => json_response(&o),
            None => not_found(t.kind, name),
        },
        ("POST", None) => {
            let mut obj = body;
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if server.get(t.kind, &t.namespace, &name).is_some() {
                return status_body(
                    409,
                    "AlreadyExists",
                    &format!(
                        "{}.{} \"{name}\" already exists",
                        t.kind.plural(),
                        group(t.kind)
                    ),
                );
            }
            if !t.namespace.is_empty() {
                obj["metadata"]["namespace"] = json!(t.namespace);
            }
            (
                StatusCode::CREATED,
                json_response(&server.apply(t.kind, obj)),
            )
                .into_response()
        }
        ("PATCH", Some(name)) => {
            let manager = query.get("fieldManager").cloned().unwrap_or_default();
            let force = query.get("force").map(String::as_str) == Some("true");
            patch(&server, &t, name, &content_type, &manager, force, &body)
        }
        ("DELETE", Some(name)) => {
            if server.delete(t.kind, &t.namespace, name) {
                json_response(
                    &json!({"kind":"Status","apiVersion":"v1","status":"Success","code":200}),
                )
            } else {
                not_found(t.kind, name)
            }
        }
        _ => status_body(405, "MethodNotAllowed", &format!("{method} {}", uri.path())),
    }
}

fn group(kind: Kind) -> &'static str {
    match kind {
        Kind::TapPolicy => "podtap.io",
        Kind::Lease => "coordination.k8s.io",
        _ => "",
    }
}

fn not_found(kind: Kind, name: &str) -> Response {
    status_body(
        404,
        "NotFound",
        &format!("{}.{} \"{name}\" not found", kind.plural(), group(kind)),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn list(server: &ApiServer, kind: Kind) -> Response {
    let d = server.data();
    let items: Vec<Value> = d
        .objects
        .get(&kind)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    json_response(&json!({
        "kind": format!("{}List", kind.kind()),
        "apiVersion": kind.api_version(),
        "metadata": {"resourceVersion": d.rv.to_string(), "continue": ""},
        "items": items,
    }))
}

fn watch(server: &ApiServer, kind: Kind, query: &BTreeMap<String, String>) -> Response {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290u64);
    // Subscribe before reading the history, so nothing falls between.
    let mut live = server.shared.events.subscribe();
    let backlog: Vec<(u64, &'static str, Value)> = server
        .data()
        .events
        .iter()
        .filter(|(k, rv, _, _)| *k == kind && *rv > from)
        .map(|(_, rv, ty, o)| (*rv, *ty, o.clone()))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let line =
            |ty: &str, o: &Value| Bytes::from(format!("{}\n", json!({"type": ty, "object": o})));
        let mut last = from;
        for (rv, ty, o) in backlog {
            last = rv;
            if tx.send(Ok(line(ty, &o))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                ev = live.recv() => match ev {
                    Ok((k, rv, ty, o)) if k == kind && rv > last => {
                        last = rv;
                        if tx.send(Ok(line(ty, &o))).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    // Fell behind: the client relists after a 410, as with a real server.
                    Err(_) => {
                        let gone = json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                            "message":"too old resource version","reason":"Expired","code":410});
                        let _ = tx.send(Ok(line("ERROR", &gone))).await;
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

fn patch(
    server: &ApiServer,
    t: &Target,
    name: &str,
    content_type: &str,
    manager: &str,
    force: bool,
    body: &Value,
) -> Response {
    let Some(mut obj) = server.get(t.kind, &t.namespace, name) else {
        return not_found(t.kind, name);
    };
    let key = (t.namespace.clone(), name.to_string());
    match (t.kind, t.subresource.as_deref()) {
        // Status: the controller is its only manager, so its apply replaces it.
        (_, Some("status")) => {
            if !content_type.starts_with("application/apply-patch") {
                return status_body(
                    415,
                    "UnsupportedMediaType",
                    "status takes server-side apply",
                );
            }
            if body["apiVersion"] != json!(t.kind.api_version())
                || body["kind"] != json!(t.kind.kind())
            {
                return status_body(400, "BadRequest", "apply needs apiVersion and kind");
            }
            obj["status"] = body["status"].clone();
        }
        (Kind::Lease, None) => {
            let new_holder = body["spec"].get("holderIdentity");
            let mut d = server.data();
            let cur_holder = obj["spec"]["holderIdentity"].clone();
            let owner = d.holder_managers.get(&key).cloned();
            if content_type.starts_with("application/apply-patch") {
                if let (Some(h), Some(owner)) = (new_holder, &owner)
                    && !h.is_null()
                    && !cur_holder.is_null()
                    && *h != cur_holder
                    && owner != manager
                    && !force
                {
                    drop(d);
                    return status_body(
                        409,
                        "Conflict",
                        &format!(
                            "Apply failed with 1 conflict: conflict with \"{owner}\": .spec.holderIdentity"
                        ),
                    );
                }
            } else if !content_type.starts_with("application/strategic-merge-patch")
                && !content_type.starts_with("application/merge-patch")
            {
                drop(d);
                return status_body(415, "UnsupportedMediaType", content_type);
            }
            if let Some(h) = new_holder {
                if h.is_null() {
                    d.holder_managers.remove(&key);
                } else if !manager.is_empty() {
                    d.holder_managers.insert(key.clone(), manager.to_string());
                }
            }
            drop(d);
            if obj.get("spec").is_none() {
                obj["spec"] = json!({});
            }
            merge(&mut obj["spec"], &body["spec"]);
        }
        _ => {
            return status_body(
                405,
                "MethodNotAllowed",
                "only status and leases are patched here",
            );
        }
    }
    json_response(&server.apply(t.kind, obj))
}
