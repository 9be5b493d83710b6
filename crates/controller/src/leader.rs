//! Which controller replica leads: the holder of a `coordination.k8s.io` Lease
//! (kube-lease-manager). Only the leader serves fabric sessions and writes statuses; the
//! others report not ready, so the controller Service routes members to the leader.
//!
//! A leader that fails to renew steps down at once (kube-lease-manager would otherwise keep
//! its last answer while it backs off), so two replicas never both act for longer than the
//! lease's grace period.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

/// Where the lease is and how long it lasts.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    /// Seconds a lease lasts without renewal.
    pub duration: u64,
    /// Seconds before expiry the holder renews.
    pub grace: u64,
}

/// Starts campaigning; the receiver says whether this replica leads now.
pub async fn campaign(client: Client, cfg: LeaseConfig) -> anyhow::Result<watch::Receiver<bool>> {
    anyhow::ensure!(
        cfg.grace < cfg.duration,
        "the lease grace ({} s) must be shorter than its duration ({} s)",
        cfg.grace,
        cfg.duration
    );
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        // A fresh manager after every error: its idea of leading then starts from "no", so the
        // next answer it gives is the lease's real state.
        loop {
            let built = LeaseManagerBuilder::new(client.clone(), &cfg.name)
                .with_namespace(&cfg.namespace)
                .with_identity(&cfg.identity)
                .with_duration(cfg.duration)
                .with_grace(cfg.grace)
                .build()
                .await;
            let error = match built {
                Err(e) => e,
                Ok(manager) => loop {
                    tokio::select! {
                        _ = tx.closed() => {
                            let _ = manager.release().await;
                            return;
                        }
                        r = manager.changed() => match r {
                            Ok(leading) => {
                                backoff = Duration::from_millis(200);
                                tracing::info!(
                                    "{} (lease {}/{})",
                                    if leading { "leading" } else { "not leading" },
                                    cfg.namespace,
                                    cfg.name
                                );
                                tx.send_replace(leading);
                            }
                            Err(e) => break e,
                        }
                    }
                },
            };
            if tx.send_replace(false) {
                tracing::warn!("cannot renew lease {}: {error}; stepping down", cfg.name);
            } else {
                tracing::warn!("lease {}: {error}", cfg.name);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
    Ok(rx)
}
