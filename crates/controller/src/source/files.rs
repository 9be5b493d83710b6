//! The lab as the controller's source: its inventory file (nodes, namespaces, pods, veths) and
//! a directory of `TapPolicy` YAML files, both re-read when they change. Statuses go to
//! `STATUS_DIR/NAME.yaml`, the same document `kubectl get tp NAME -o yaml` would show under
//! `status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use podtap_api::{TapPolicy, TapPolicyStatus};
use podtap_cluster::Inventory;

use crate::plan::{PolicyInput, View};

/// An inventory file and a policy directory.
pub struct FileSource {
    inventory: PathBuf,
    policies: PathBuf,
    status_dir: PathBuf,
    /// Modification times seen at the last read.
    stamp: Vec<(PathBuf, Option<SystemTime>)>,
    view: View,
    /// Policy files that could not be read, with why (shown as the policy's problems).
    unreadable: BTreeMap<String, String>,
    statuses: BTreeMap<String, TapPolicyStatus>,
}

impl FileSource {
    /// Reads both now; `status_dir` is created.
    pub fn open(
        inventory: &Path,
        policies: &Path,
        status_dir: &Path,
    ) -> anyhow::Result<FileSource> {
        std::fs::create_dir_all(status_dir)
            .with_context(|| format!("creating {}", status_dir.display()))?;
        let mut s = FileSource {
            inventory: inventory.to_path_buf(),
            policies: policies.to_path_buf(),
            status_dir: status_dir.to_path_buf(),
            stamp: Vec::new(),
            view: View::default(),
            unreadable: BTreeMap::new(),
            statuses: BTreeMap::new(),
        };
        s.reload()?;
        Ok(s)
    }

    fn stamps(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        let mut files = vec![self.inventory.clone(), self.policies.clone()];
        if let Ok(dir) = std::fs::read_dir(&self.policies) {
            let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
            more.sort();
            files.extend(more);
        }
        files
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
                (p, m)
            })
            .collect()
    }

    fn reload(&mut self) -> anyhow::Result<()> {
        self.stamp = self.stamps();
        let inventory = Inventory::load(&self.inventory)?;
        let mut view = View {
            nodes: inventory.nodes.iter().map(|n| n.name.clone()).collect(),
            inventory,
            policies: Vec::new(),
        };
        self.unreadable.clear();
        let dir = std::fs::read_dir(&self.policies)
            .with_context(|| format!("reading the policy directory {}", self.policies.display()))?;
        let mut paths: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        paths.sort();
        for path in paths {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.unreadable
                        .insert(stem, format!("{}: {e}", path.display()));
                    continue;
                }
            };
            match serde_yaml_ng::from_str::<TapPolicy>(&text) {
                Ok(tp) => {
                    let name = tp.metadata.name.clone().unwrap_or(stem);
                    let vni = self.statuses.get(&name).and_then(|s| s.vni);
                    view.policies.push(PolicyInput {
                        name,
                        generation: None,
                        spec: tp.spec,
                        vni,
                    });
                }
                Err(e) => {
                    self.unreadable
                        .insert(stem, format!("{}: {e}", path.display()));
                }
            }
        }
        self.view = view;
        Ok(())
    }

    /// Re-reads what changed since the last look; true if anything did. A file that cannot
    /// be read keeps the last good view (and says so).
    pub fn poll(&mut self) -> bool {
        if self.stamps() == self.stamp {
            return false;
        }
        if let Err(e) = self.reload() {
            tracing::warn!("{e:#}");
        }
        true
    }

    /// Waits until a file changed: looks at once, then twice a second (the loop may drop this
    /// future for another event at any time, so the look comes first).
    pub async fn changed(&mut self) {
        loop {
            if self.poll() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The cluster and policies as last read.
    pub fn view(&self) -> View {
        self.view.clone()
    }

    /// Policy files that are not TapPolicy documents, with why.
    pub fn unreadable(&self) -> &BTreeMap<String, String> {
        &self.unreadable
    }

    /// The statuses written so far.
    pub fn statuses(&self) -> BTreeMap<String, TapPolicyStatus> {
        self.statuses.clone()
    }

    /// Writes a policy's status to `STATUS_DIR/NAME.yaml` (atomically).
    pub fn write_status(&mut self, name: &str, status: &TapPolicyStatus) -> anyhow::Result<()> {
        let path = self.status_dir.join(format!("{name}.yaml"));
        let tmp = self.status_dir.join(format!(".{name}.yaml.tmp"));
        let text = serde_yaml_ng::to_string(status)?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        self.statuses.insert(name.to_string(), status.clone());
        Ok(())
    }
}
