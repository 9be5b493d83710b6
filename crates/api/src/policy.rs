//! The `TapPolicy` resource: spec, status and validation.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use podtap_broker::PolicyConfig;
use podtap_broker::output::OutputConfig;
use podtap_broker::pipeline::StageConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which pods' traffic to copy, how, and what the broker does with it.
// The repeated `printcolumn(...)` keys are one column each, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "podtap.io",
    version = "v1alpha1",
    kind = "TapPolicy",
    plural = "tappolicies",
    shortname = "tp",
    category = "podtap",
    status = "TapPolicyStatus",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.matchedPods"),
    printcolumn(name = "Decrypt", type_ = "boolean", json_path = ".spec.decrypt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TapPolicySpec {
    /// The pods whose traffic is copied. `{}` selects every pod of the selected namespaces.
    pub pod_selector: LabelSelector,
    /// The namespaces whose pods may be selected (matched against namespace labels, including
    /// `kubernetes.io/metadata.name`). Absent: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Which packets of a selected pod are copied.
    #[serde(default)]
    pub direction: Direction,
    /// In-kernel prefilter, the agent's `--prefilter` syntax (e.g. `proto tcp and port 8080`): copies
    /// of other packets are never made. Absent: every packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefilter: Option<String>,
    /// Also capture the selected pods' TLS plaintext (uprobes on OpenSSL).
    #[serde(default)]
    pub decrypt: bool,
    /// The broker pipeline: `stages` (optional) and `outputs`, exactly as in a broker
    /// configuration's policy (docs/configuration.md).
    #[schemars(schema_with = "pipeline_schema")]
    pub pipeline: serde_json::Value,
}

/// The pipeline's schema: an object the API server keeps as given; the controller checks it
/// with the broker's own types (the stage and output enums are tagged by `type`, which a
/// structural schema cannot express).
fn pipeline_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "The broker pipeline: `stages` and `outputs`, as in a broker configuration's policy.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Which packets of a selected pod are copied.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Direction {
    /// What the pod sends and what it receives.
    #[default]
    Both,
    /// What the pod sends.
    FromPod,
    /// What the pod receives.
    ToPod,
}

/// What the controller reports on a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TapPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid), `Ready` (every matched pod is tapped and its broker
    /// connected), `Degraded` (some pods cannot be tapped or copies are dropped), each with a
    /// reason.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Every problem with the spec (empty when accepted); nothing of an invalid policy is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Pods the selectors match now.
    #[serde(default)]
    pub matched_pods: u32,
    /// The VXLAN VNI and L2GRE key the policy's copies carry (assigned by the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The broker replicas the policy's traffic is spread over (by flow hash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<String>,
    /// Per node: what its agent taps for this policy and what it counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeTapState>,
}

/// One node's share of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeTapState {
    /// The node.
    pub node: String,
    /// The node's agent, as the controller sees it.
    pub agent: AgentState,
    /// Matched pods on the node that are tapped.
    pub tapped: u32,
    /// Matched pods on the node that cannot be tapped, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untappable: Vec<UntappablePod>,
    /// Copies sent from this node for the policy.
    #[serde(default)]
    pub copied_packets: u64,
    /// Copies dropped on this node (ring full, tunnel send failures).
    #[serde(default)]
    pub dropped_packets: u64,
}

/// A matched pod that is not tapped.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UntappablePod {
    /// `namespace/name`.
    pub pod: String,
    /// Why (`HostNetwork`, `VethNotFound`, `AttachFailed`).
    pub reason: String,
    /// Details from the agent (what its route lookup found, the kernel's error).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// An agent's connection to the controller.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AgentState {
    /// Heartbeats arrive.
    Connected,
    /// Heartbeats are late.
    #[default]
    Pending,
    /// Heartbeats stopped: its taps are unknown.
    Disconnected,
}

/// The pipeline part of a spec, in the broker's types.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineSpec {
    #[serde(default)]
    stages: Vec<StageConfig>,
    outputs: Vec<OutputConfig>,
}

/// The broker's configuration of the policy `name` with the controller's `vni`, from the
/// pipeline as the fabric carries it (JSON). The GRE policy key is the VNI too (the
/// controller keeps VNIs within 16 bits). `Err` lists every problem.
pub fn broker_policy(
    name: &str,
    vni: u32,
    pipeline_json: &str,
) -> Result<PolicyConfig, Vec<String>> {
    let pipeline: PipelineSpec =
        serde_json::from_str(pipeline_json).map_err(|e| vec![format!("pipeline: {e}")])?;
    let policy = PolicyConfig {
        name: name.to_string(),
        vni: Some(vni),
        gre_key: u16::try_from(vni).ok(),
        stages: pipeline.stages,
        outputs: pipeline.outputs,
    };
    let problems = policy.problems();
    if problems.is_empty() {
        Ok(policy)
    } else {
        Err(problems)
    }
}

impl TapPolicySpec {
    /// Every problem of the policy named `name`, each prefixed with its field
    /// (`spec.podSelector.matchLabels[app]: ...`). Empty: valid.
    pub fn problems(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        selector_problems(&self.pod_selector, "spec.podSelector", &mut problems);
        if let Some(ns) = &self.namespace_selector {
            selector_problems(ns, "spec.namespaceSelector", &mut problems);
        }
        if let Some(p) = &self.prefilter
            && let Err(e) = podtap_agent::prefilter::Prefilter::parse(p)
        {
            for m in e.problems {
                problems.push(format!("spec.prefilter: {m}"));
            }
        }
        match serde_json::from_value::<PipelineSpec>(self.pipeline.clone()) {
            Err(e) => problems.push(format!("spec.pipeline: {e}")),
            Ok(pipeline) => {
                // The broker's own checks; the VNI is the controller's to assign, so any valid
                // one stands in for it here.
                let policy = PolicyConfig {
                    name: name.to_string(),
                    vni: Some(1),
                    gre_key: None,
                    stages: pipeline.stages,
                    outputs: pipeline.outputs,
                };
                for m in policy.problems() {
                    if m.starts_with("name ") {
                        problems.push(format!("metadata.name: {m}"));
                    } else {
                        problems.push(format!("spec.pipeline: {m}"));
                    }
                }
            }
        }
        problems
    }

    /// The pod selector in podtap's form (None when invalid: see [`TapPolicySpec::problems`]).
    pub fn pod_selector(&self) -> Option<podtap_cluster::selector::LabelSelector> {
        to_selector(&self.pod_selector).ok()
    }

    /// The namespace selector in podtap's form (everything when absent; None when invalid).
    pub fn namespace_selector(&self) -> Option<podtap_cluster::selector::LabelSelector> {
        match &self.namespace_selector {
            None => Some(podtap_cluster::selector::LabelSelector::everything()),
            Some(s) => to_selector(s).ok(),
        }
    }
}

fn to_selector(s: &LabelSelector) -> Result<podtap_cluster::selector::LabelSelector, Vec<String>> {
    let labels = s.match_labels.iter().flatten();
    let expressions = s.match_expressions.iter().flatten();
    podtap_cluster::selector::LabelSelector::from_api(
        labels.map(|(k, v)| (k.as_str(), v.as_str())),
        expressions.map(|e| {
            (
                e.key.as_str(),
                e.operator.as_str(),
                e.values.as_deref().unwrap_or(&[]),
            )
        }),
    )
}

fn selector_problems(s: &LabelSelector, at: &str, out: &mut Vec<String>) {
    if let Err(problems) = to_selector(s) {
        out.extend(problems.into_iter().map(|p| format!("{at}.{p}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> TapPolicySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn a_valid_policy_has_no_problems_and_selects_like_the_agent() {
        let s = spec(
            r#"
podSelector:
  matchLabels: {app: cart}
  matchExpressions:
    - {key: tier, operator: In, values: [web, api]}
namespaceSelector:
  matchLabels: {team: shop}
direction: FromPod
prefilter: "proto tcp and port 8080"
decrypt: true
pipeline:
  stages:
    - {type: dedupe, window_ms: 50}
  outputs:
    - {type: pcap, directory: /var/lib/podtap/shop}
"#,
        );
        assert_eq!(s.problems("shop"), Vec::<String>::new());
        assert_eq!(
            s.pod_selector().unwrap().to_string(),
            "app=cart,tier in (api,web)"
        );
        assert_eq!(s.namespace_selector().unwrap().to_string(), "team=shop");
        assert_eq!(s.direction, Direction::FromPod);
    }

    #[test]
    fn every_problem_is_listed_with_its_field() {
        let s = spec(
            r#"
podSelector:
  matchLabels: {"bad key!": x}
  matchExpressions:
    - {key: tier, operator: Gt, values: ["1"]}
namespaceSelector:
  matchExpressions:
    - {key: team, operator: In}
prefilter: "port 99999"
pipeline:
  stages:
    - {type: slice, length: 0}
  outputs: []
"#,
        );
        let problems = s.problems("Shop.Policy");
        let starts = |prefix: &str| problems.iter().filter(|p| p.starts_with(prefix)).count();
        assert_eq!(
            starts("spec.podSelector.matchLabels[bad key!]"),
            1,
            "{problems:#?}"
        );
        assert_eq!(
            starts("spec.podSelector.matchExpressions[0]"),
            1,
            "{problems:#?}"
        );
        assert_eq!(
            starts("spec.namespaceSelector.matchExpressions[0]"),
            1,
            "{problems:#?}"
        );
        assert_eq!(starts("spec.prefilter"), 1, "{problems:#?}");
        assert_eq!(starts("metadata.name"), 1, "{problems:#?}");
        assert!(starts("spec.pipeline") >= 2, "{problems:#?}");
        assert!(
            problems.iter().any(|p| p.contains("at least one output")),
            "{problems:#?}"
        );
    }

    #[test]
    fn an_unknown_pipeline_field_is_a_problem_not_ignored() {
        let s = spec(
            r#"
podSelector: {}
pipeline:
  outputs: [{type: pcap, directory: /tmp/x}]
  stagess: []
"#,
        );
        let problems = s.problems("p");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].contains("stagess"), "{problems:#?}");
    }

    #[test]
    fn the_crd_is_cluster_scoped_with_status_and_columns() {
        let crd: serde_json::Value =
            serde_yaml_ng::from_str(&crate::crd_yaml()).expect("the CRD is YAML");
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["spec"]["names"]["kind"], "TapPolicy");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "tp");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Accepted", "Ready", "Pods", "Decrypt", "Age"]);
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["pipeline"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        assert_eq!(
            spec["required"],
            serde_json::json!(["pipeline", "podSelector"])
        );
    }

    /// `deploy/crd.yaml` is what the types generate (regenerate with
    /// `cargo run -p podtap -- crd > deploy/crd.yaml`).
    #[test]
    fn deploy_crd_yaml_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crd.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == crate::crd_yaml(),
            "{path} is stale: cargo run -p podtap -- crd > deploy/crd.yaml"
        );
    }
}
