//! The manifests under `deploy/` against the official Kubernetes schemas (kubernetes-validate,
//! installed by scripts/install-deps.sh) and the example policies against the generated CRD's
//! schema and podtap's own validation.

use std::path::{Path, PathBuf};
use std::process::Command;

use podtap_api::TapPolicy;

const TOOLS_PYTHON: &str = "/opt/podtap-tools/bin/python";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn the_crd_passes_kubernetes_validate() {
    let (ok, text) = podtap_testkit::kubernetes_validate(&deploy().join("crd.yaml"));
    assert!(ok, "{text}");
    assert!(
        text.contains("passed for resource customresourcedefinition/tappolicies.podtap.io"),
        "{text}"
    );
}

#[test]
fn the_examples_fit_the_crd_schema_and_are_valid_policies() {
    for path in examples() {
        let text = std::fs::read_to_string(&path).unwrap();
        let policy: TapPolicy =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = policy.metadata.name.clone().unwrap();
        assert_eq!(
            policy.spec.problems(&name),
            Vec::<String>::new(),
            "{}",
            path.display()
        );
        // The CRD's own OpenAPI schema accepts it (what the API server checks on create).
        let check = r#"
import sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
doc = yaml.safe_load(open(sys.argv[2]))
for k in ("apiVersion", "kind", "metadata"):
    doc.pop(k)
jsonschema.validate(doc, schema)
"#;
        let out = Command::new(TOOLS_PYTHON)
            .args(["-c", check])
            .arg(deploy().join("crd.yaml"))
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("{TOOLS_PYTHON}: {e} (run scripts/install-deps.sh)"));
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A policy the CRD schema accepts but podtap refuses is refused with every problem: the
/// schema alone is not the validation.
#[test]
fn a_schema_valid_but_wrong_policy_lists_its_problems() {
    let text = std::fs::read_to_string(deploy().join("examples/shop-tappolicy.yaml")).unwrap();
    let mut policy: TapPolicy = serde_yaml_ng::from_str(&text).unwrap();
    policy.spec.prefilter = Some("port 70000".into());
    policy.spec.pipeline["outputs"][0]["type"] = "pcapng".into();
    let problems = policy.spec.problems("shop-cart");
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].starts_with("spec.prefilter: "), "{problems:#?}");
    assert!(
        problems[1].starts_with("spec.pipeline: ") && problems[1].contains("pcapng"),
        "{problems:#?}"
    );
}
