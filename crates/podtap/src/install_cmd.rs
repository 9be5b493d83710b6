//! `podtap install`: the manifests that run podtap on a Kubernetes cluster. Every permission
//! is here for a reason given next to it, and in docs/install.md.

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

/// Flags of `podtap install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The namespace podtap runs in.
    #[arg(long, default_value = "podtap-system")]
    pub namespace: String,
    /// The container image (built from the repository's Dockerfile).
    #[arg(long, default_value = "ghcr.io/podtap/podtap:0.1.0")]
    pub image: String,
    /// Broker replicas.
    #[arg(long, default_value_t = 2)]
    pub brokers: u32,
    /// Controller replicas (one leads; the others stand by).
    #[arg(long, default_value_t = 2)]
    pub controllers: u32,
    /// Leave the fabric's TLS Secrets out (create them yourself, e.g. with cert-manager or
    /// `podtap certs`): see docs/install.md.
    #[arg(long)]
    pub no_certs: bool,
}

const CONTROLLER: &str = "podtap-controller";
const AGENT: &str = "podtap-agent";
const BROKER: &str = "podtap-broker";
const FABRIC_PORT: u16 = 9650;
const HEALTH_PORT: u16 = 9651;
const METRICS_PORT: u16 = 9464;

fn labels(component: &str) -> Value {
    json!({"app.kubernetes.io/name": "podtap", "app.kubernetes.io/component": component})
}

fn meta(name: &str, namespace: Option<&str>, component: &str) -> Value {
    let mut m = json!({"name": name, "labels": labels(component)});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

/// A container's security context: nothing but `add`, read-only root, no escalation.
fn security(add: &[&str], root: bool) -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": !root,
        "capabilities": {"drop": ["ALL"], "add": add},
        "seccompProfile": {"type": if root { "Unconfined" } else { "RuntimeDefault" }},
    })
}

fn env_from_field(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn tls_volume(role: &str) -> (Value, Value) {
    (
        json!({"name": "tls", "secret": {"secretName": format!("podtap-tls-{role}"), "defaultMode": 0o400}}),
        json!({"name": "tls", "mountPath": "/etc/podtap/tls", "readOnly": true}),
    )
}

/// The manifests, in apply order.
pub fn manifests(args: &InstallArgs) -> anyhow::Result<Vec<Value>> {
    let ns = args.namespace.as_str();
    let controller_url = format!("https://{CONTROLLER}.{ns}.svc:{FABRIC_PORT}");
    let resources = |cpu: &str, mem: &str, mem_limit: &str| json!({"requests": {"cpu": cpu, "memory": mem}, "limits": {"memory": mem_limit}});
    let crd: Value = serde_yaml_ng::from_str(&podtap_api::crd_yaml()).context("the CRD")?;
    let mut docs = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels("namespace")}}),
        crd,
    ];
    for (name, component) in [
        (CONTROLLER, "controller"),
        (AGENT, "agent"),
        (BROKER, "broker"),
    ] {
        docs.push(json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, Some(ns), component),
            // Only the controller talks to the Kubernetes API.
            "automountServiceAccountToken": name == CONTROLLER,
        }));
    }
    // The controller reads the cluster and writes TapPolicy status; nothing else.
    docs.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(CONTROLLER, None, "controller"),
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "nodes", "namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["podtap.io"], "resources": ["tappolicies"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["podtap.io"], "resources": ["tappolicies/status"], "verbs": ["get", "patch"]},
        ],
    }));
    docs.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": meta(CONTROLLER, None, "controller"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROLLER},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": ns}],
    }));
    // Leader election: its own Lease, in its own namespace.
    docs.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(CONTROLLER, Some(ns), "controller"),
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]}],
    }));
    docs.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta(CONTROLLER, Some(ns), "controller"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROLLER},
        "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": ns}],
    }));

    if !args.no_certs {
        let names = [
            format!("{CONTROLLER}.{ns}.svc"),
            format!("{CONTROLLER}.{ns}.svc.cluster.local"),
        ];
        let bundle = podtap_controller::tls::generate(&names)?;
        for (role, cert, key) in &bundle.leaves {
            docs.push(json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": meta(&format!("podtap-tls-{role}"), Some(ns), role),
                "stringData": {"ca.crt": bundle.ca_cert, format!("{role}.crt"): cert, format!("{role}.key"): key},
            }));
        }
    }

    let (vol, mount) = tls_volume("controller");
    docs.push(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(CONTROLLER, Some(ns), "controller"),
        "spec": {
            "replicas": args.controllers,
            "selector": {"matchLabels": labels("controller")},
            "template": {
                "metadata": {"labels": labels("controller")},
                "spec": {
                    "serviceAccountName": CONTROLLER,
                    "containers": [{
                        "name": "controller", "image": args.image,
                        "args": ["controller", "--listen", format!("0.0.0.0:{FABRIC_PORT}"), "--health", format!("0.0.0.0:{HEALTH_PORT}")],
                        "env": [env_from_field("POD_NAME", "metadata.name"), env_from_field("POD_NAMESPACE", "metadata.namespace")],
                        "ports": [
                            {"name": "fabric", "containerPort": FABRIC_PORT, "protocol": "TCP"},
                            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
                        ],
                        // Ready only while leading: the Service sends members to the leader.
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 2},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10},
                        "resources": resources("50m", "64Mi", "256Mi"),
                        "securityContext": security(&[], false),
                        "volumeMounts": [mount],
                    }],
                    "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
                    "volumes": [vol],
                },
            },
        },
    }));
    docs.push(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta(CONTROLLER, Some(ns), "controller"),
        "spec": {
            "selector": labels("controller"),
            "ports": [{"name": "fabric", "port": FABRIC_PORT, "targetPort": "fabric", "protocol": "TCP"}],
        },
    }));

    let (vol, mount) = tls_volume("agent");
    docs.push(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta(AGENT, Some(ns), "agent"),
        "spec": {
            "selector": {"matchLabels": labels("agent")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels("agent")},
                "spec": {
                    "serviceAccountName": AGENT,
                    "automountServiceAccountToken": false,
                    // The pods' host-side veths live in the node's network namespace.
                    "hostNetwork": true,
                    // The TLS view reads pod processes' /proc entries to find OpenSSL.
                    "hostPID": true,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": "agent", "image": args.image,
                        "args": ["agent", "--controller", controller_url, "--node", "$(NODE_NAME)",
                                 "--metrics", format!("0.0.0.0:{METRICS_PORT}")],
                        "env": [env_from_field("NODE_NAME", "spec.nodeName")],
                        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
                        "resources": resources("100m", "128Mi", "512Mi"),
                        // BPF: load the tap and TLS programs and their maps. NET_ADMIN: attach
                        // them to veths (TCX / clsact). PERFMON:
                        // attach uprobes and read user memory for the TLS view. SYS_PTRACE: read
                        // /proc/PID/{root,exe,maps} of pod processes. NET_RAW: send L2GRE.
                        "securityContext": security(&["BPF", "NET_ADMIN", "PERFMON", "SYS_PTRACE", "NET_RAW"], true),
                        "volumeMounts": [mount],
                    }],
                    "volumes": [vol],
                },
            },
        },
    }));

    let (vol, mount) = tls_volume("broker");
    docs.push(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(BROKER, Some(ns), "broker"),
        "spec": {
            "replicas": args.brokers,
            "selector": {"matchLabels": labels("broker")},
            "template": {
                "metadata": {"labels": labels("broker")},
                "spec": {
                    "serviceAccountName": BROKER,
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "broker", "image": args.image,
                        "args": ["broker", "--controller", controller_url, "--name", "$(POD_NAME)",
                                 "--endpoint", "vxlan://$(POD_IP)", "--metrics", format!("0.0.0.0:{METRICS_PORT}"),
                                 "--data", "/var/lib/podtap"],
                        "env": [env_from_field("POD_NAME", "metadata.name"), env_from_field("POD_IP", "status.podIP")],
                        "ports": [
                            {"name": "vxlan", "containerPort": 4789, "protocol": "UDP"},
                            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 5},
                        "resources": resources("200m", "256Mi", "1Gi"),
                        // NET_RAW: receive L2GRE (a raw IP socket). VXLAN needs nothing.
                        "securityContext": security(&["NET_RAW"], false),
                        "volumeMounts": [mount, {"name": "data", "mountPath": "/var/lib/podtap"}],
                    }],
                    "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
                    // pcapng files and call stores; use a PersistentVolumeClaim to keep them.
                    "volumes": [vol, {"name": "data", "emptyDir": {"sizeLimit": "10Gi"}}],
                },
            },
        },
    }));
    Ok(docs)
}

/// The manifests as one multi-document YAML stream.
pub fn yaml(args: &InstallArgs) -> anyhow::Result<String> {
    let mut out = String::from(
        "# podtap: generated by `podtap install`; apply with `kubectl apply --server-side -f -`.\n",
    );
    for doc in manifests(args)? {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&doc)?);
    }
    Ok(out)
}

/// Runs `podtap install`.
pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    print!("{}", yaml(&args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The manifests run podtap with command lines this podtap accepts (the variables the
    /// kubelet expands replaced by sample values).
    #[test]
    fn every_container_runs_a_command_line_podtap_accepts() {
        let crate::Command::Install(args) = crate::Cli::try_parse_from(["podtap", "install"])
            .unwrap()
            .command
        else {
            unreachable!()
        };
        let mut checked = Vec::new();
        for m in manifests(&args).unwrap() {
            let containers = m
                .pointer("/spec/template/spec/containers")
                .and_then(Value::as_array);
            for c in containers.into_iter().flatten() {
                let argv: Vec<String> = c["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        a.as_str()
                            .unwrap()
                            .replace("$(NODE_NAME)", "node-1")
                            .replace("$(POD_NAME)", "podtap-broker-0")
                            .replace("$(POD_IP)", "10.0.0.7")
                    })
                    .collect();
                assert!(!argv.iter().any(|a| a.contains("$(")), "{argv:?}");
                let parsed = crate::Cli::try_parse_from(
                    std::iter::once("podtap".into()).chain(argv.clone()),
                );
                if let Err(e) = parsed {
                    panic!("{}: podtap {}: {e}", c["name"], argv.join(" "));
                }
                let name = c["name"].as_str().unwrap().to_string();
                if name != "controller" {
                    // Agents and brokers take everything from the controller.
                    let at = argv.iter().position(|a| a == "--controller").unwrap();
                    assert!(argv[at + 1].starts_with("https://"), "{argv:?}");
                }
                checked.push(name);
            }
        }
        checked.sort();
        assert_eq!(checked, ["agent", "broker", "controller"]);
    }
}
