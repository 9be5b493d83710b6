//! The Kubernetes API as the controller's source: reflectors (list, then watch) on pods,
//! nodes, namespaces and TapPolicies, turned into a [`View`]; statuses written back with
//! server-side apply.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use podtap_api::{TapPolicy, TapPolicyStatus};
use tokio::sync::Notify;

use crate::plan::{PolicyInput, View};

/// The field manager of the controller's status writes.
pub const FIELD_MANAGER: &str = "podtap-controller";

/// Reflectors over the resources the controller reads.
pub struct KubeSource {
    client: Client,
    pods: Store<Pod>,
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    policies: Store<TapPolicy>,
    changed: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!("watching {}: {e}", K::plural(&())),
            }
        }
    });
    (reader, task)
}

impl KubeSource {
    /// Starts the reflectors and waits until each has listed once.
    pub async fn start(client: Client) -> anyhow::Result<KubeSource> {
        let changed = Arc::new(Notify::new());
        let (pods, t1) = reflect(Api::<Pod>::all(client.clone()), changed.clone());
        let (nodes, t2) = reflect(Api::<Node>::all(client.clone()), changed.clone());
        let (namespaces, t3) = reflect(Api::<Namespace>::all(client.clone()), changed.clone());
        let (policies, t4) = reflect(Api::<TapPolicy>::all(client.clone()), changed.clone());
        let source = KubeSource {
            client,
            pods,
            nodes,
            namespaces,
            policies,
            changed,
            tasks: vec![t1, t2, t3, t4],
        };
        source
            .pods
            .wait_until_ready()
            .await
            .context("listing pods")?;
        source
            .nodes
            .wait_until_ready()
            .await
            .context("listing nodes")?;
        source
            .namespaces
            .wait_until_ready()
            .await
            .context("listing namespaces")?;
        source.policies.wait_until_ready().await.context(
            "listing tappolicies (is the CRD installed? `podtap crd | kubectl apply -f -`)",
        )?;
        Ok(source)
    }

    /// Waits until a watched resource changes.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// The cluster now.
    pub fn view(&self) -> View {
        let mut view = View::default();
        for node in self.nodes.state() {
            view.nodes
                .insert(node.metadata.name.clone().unwrap_or_default());
        }
        for ns in self.namespaces.state() {
            view.inventory.namespaces.push(podtap_cluster::Namespace {
                name: ns.metadata.name.clone().unwrap_or_default(),
                labels: ns.metadata.labels.clone().unwrap_or_default(),
            });
        }
        // The store holds one object per namespace/name.
        view.inventory.pods = self
            .pods
            .state()
            .iter()
            .filter_map(|p| inventory_pod(p))
            .collect();
        view.inventory
            .pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for tp in self.policies.state() {
            view.policies.push(PolicyInput {
                name: tp.metadata.name.clone().unwrap_or_default(),
                generation: tp.metadata.generation,
                spec: tp.spec.clone(),
                vni: tp.status.as_ref().and_then(|s| s.vni),
            });
        }
        view
    }

    /// The statuses the API server holds now, by policy.
    pub fn statuses(&self) -> BTreeMap<String, TapPolicyStatus> {
        self.policies
            .state()
            .iter()
            .filter_map(|tp| Some((tp.metadata.name.clone()?, tp.status.clone()?)))
            .collect()
    }

    /// Writes a policy's status (server-side apply, as [`FIELD_MANAGER`]).
    pub async fn write_status(&self, name: &str, status: &TapPolicyStatus) -> anyhow::Result<()> {
        let api = Api::<TapPolicy>::all(self.client.clone());
        let patch = serde_json::json!({
            "apiVersion": "podtap.io/v1alpha1",
            "kind": "TapPolicy",
            "status": status,
        });
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .with_context(|| format!("writing the status of tappolicy {name}"))?;
        Ok(())
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A pod as the planner sees it; None for pods that have no traffic to tap (not scheduled,
/// no IP yet, finished, or being deleted).
fn inventory_pod(pod: &Pod) -> Option<podtap_cluster::Pod> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    Some(podtap_cluster::Pod {
        namespace: pod.metadata.namespace.clone()?,
        name: pod.metadata.name.clone()?,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        node: spec.node_name.clone()?,
        ip: status.pod_ip.clone().filter(|ip| !ip.is_empty())?,
        host_veth: String::new(),
        host_network: spec.host_network.unwrap_or(false),
        netns: None,
        tap_id: None,
    })
}
