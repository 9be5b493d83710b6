//! `podtap install`'s manifests: valid against the official Kubernetes schemas
//! (kubernetes-validate, strict, offline), least privilege, every capability documented, and
//! `deploy/install.yaml` current.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn podtap(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_podtap"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_manifests_pass_kubernetes_validate_strict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("install.yaml");
    std::fs::write(&path, podtap(&["install"])).unwrap();
    let (ok, text) = podtap_testkit::kubernetes_validate(&path);
    assert!(ok, "{text}");
    for resource in [
        "namespace/podtap-system",
        "customresourcedefinition/tappolicies.podtap.io",
        "clusterrole/podtap-controller",
        "role/podtap-controller",
        "secret/podtap-tls-agent",
        "deployment/podtap-controller",
        "service/podtap-controller",
        "daemonset/podtap-agent",
        "deployment/podtap-broker",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource} ")),
            "{resource}: {text}"
        );
    }
    assert!(!text.contains("WARN"), "{text}");
}

#[test]
fn permissions_are_least_privilege() {
    let d = docs(&podtap(&["install", "--no-certs"]));
    // The controller only reads, except its policies' status and its own Lease.
    let rules = find(&d, "ClusterRole", "podtap-controller")["rules"]
        .as_array()
        .unwrap();
    for rule in rules {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let resources = rule["resources"].to_string();
        if resources.contains("tappolicies/status") {
            assert_eq!(verbs, ["get", "patch"]);
        } else {
            assert_eq!(verbs, ["get", "list", "watch"], "{resources}");
        }
        assert!(!resources.contains("secrets"), "no Secret access");
        assert!(!rule.to_string().contains('*'), "no wildcards: {rule}");
    }
    let lease = &find(&d, "Role", "podtap-controller")["rules"][0];
    assert_eq!(lease["resources"], serde_json::json!(["leases"]));
    assert_eq!(
        lease["verbs"],
        serde_json::json!(["get", "create", "patch"])
    );
    assert!(
        d.iter().all(|x| x["kind"] != "Secret"),
        "--no-certs leaves Secrets out"
    );
    // Agents and brokers never talk to the API server.
    for sa in ["podtap-agent", "podtap-broker"] {
        assert_eq!(
            find(&d, "ServiceAccount", sa)["automountServiceAccountToken"],
            false
        );
    }
    // Every container drops all capabilities, adds only what docs/install.md explains, and
    // runs with a read-only root file system.
    let install_doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/install.md"),
    )
    .unwrap();
    for (kind, name) in [
        ("Deployment", "podtap-controller"),
        ("DaemonSet", "podtap-agent"),
        ("Deployment", "podtap-broker"),
    ] {
        let c = &find(&d, kind, name)["spec"]["template"]["spec"]["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert!(
            c["resources"]["requests"].is_object(),
            "{name} has requests"
        );
        for cap in sc["capabilities"]["add"].as_array().unwrap() {
            let cap = cap.as_str().unwrap();
            assert!(
                install_doc.contains(&format!("`{cap}`")),
                "docs/install.md does not explain {name}'s {cap}"
            );
        }
    }
    let controller = &find(&d, "Deployment", "podtap-controller")["spec"]["template"]["spec"];
    assert_eq!(
        controller["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
}

#[test]
fn deploy_install_yaml_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/install.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == podtap(&["install", "--no-certs"]),
        "{} is stale: cargo run -p podtap -- install --no-certs > deploy/install.yaml",
        path.display()
    );
}

#[test]
fn certs_are_fresh_per_install_and_fit_the_roles() {
    let a = docs(&podtap(&["install"]));
    let b = docs(&podtap(&["install"]));
    let key = |d: &[Value]| {
        find(d, "Secret", "podtap-tls-controller")["stringData"]["controller.key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(key(&a), key(&b), "every install gets its own CA and keys");
    let agent = &find(&a, "Secret", "podtap-tls-agent")["stringData"];
    assert!(agent["agent.key"].as_str().unwrap().contains("PRIVATE KEY"));
    assert!(
        agent.get("controller.key").is_none(),
        "an agent gets only its own key"
    );
    let keys: Vec<&String> = agent.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["agent.crt", "agent.key", "ca.crt"], "and no CA key");
}
