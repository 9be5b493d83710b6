//! **Where the cluster comes in**: the controller's view of nodes, namespaces, pods and
//! policies, from the Kubernetes API ([`kube::KubeSource`]) or from the lab's inventory file
//! and a policy directory ([`files::FileSource`]). Both feed the same reconcile loop.

pub mod files;
pub mod kube;

use std::collections::BTreeMap;

use podtap_api::TapPolicyStatus;

use crate::plan::View;

/// Where the controller reads the cluster and writes statuses.
pub enum Source {
    Kube(kube::KubeSource),
    Files(files::FileSource),
}

impl Source {
    /// The cluster now.
    pub fn view(&self) -> View {
        match self {
            Source::Kube(k) => k.view(),
            Source::Files(f) => f.view(),
        }
    }

    /// Policies that exist but could not be read, with why (files only: the API server
    /// refuses what does not fit the CRD).
    pub fn unreadable(&self) -> Vec<(String, String)> {
        match self {
            Source::Kube(_) => Vec::new(),
            Source::Files(f) => f
                .unreadable()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The statuses as the source holds them now.
    pub fn statuses(&self) -> BTreeMap<String, TapPolicyStatus> {
        match self {
            Source::Kube(k) => k.statuses(),
            Source::Files(f) => f.statuses(),
        }
    }

    /// Writes a policy's status.
    pub async fn write_status(
        &mut self,
        name: &str,
        status: &TapPolicyStatus,
    ) -> anyhow::Result<()> {
        match self {
            Source::Kube(k) => k.write_status(name, status).await,
            Source::Files(f) => f.write_status(name, status),
        }
    }

    /// Waits until something changed.
    pub async fn changed(&mut self) {
        match self {
            Source::Kube(k) => k.changed().await,
            Source::Files(f) => f.changed().await,
        }
    }
}
