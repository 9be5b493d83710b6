//! The member side of the fabric: how an agent or a broker keeps its session with the
//! controller. It connects with mutual TLS, sends its latest report at once and then every
//! `heartbeat_ms` the controller asks for, and hands on each desired state it receives. When
//! the session fails (controller restarting, a follower replica answering UNAVAILABLE, the
//! network) it reconnects with exponential backoff and jitter, from 250 ms up to 10 s; the
//! last desired state stays in force meanwhile, so taps and pipelines keep running.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::proto::{self, fabric_client::FabricClient};
use crate::tls;

/// Backoff bounds between sessions.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Report period until the controller says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// A kind of member: what it reports and what it is sent.
pub trait Role: Send + 'static {
    /// Its report.
    type Report: Clone + Send + Sync + 'static;
    /// Its desired state.
    type Desired: Clone + Send + Sync + 'static;
    /// Its TLS role (the certificate it presents).
    const TLS_ROLE: &'static str;
    /// How often the controller wants reports (0: unchanged).
    fn heartbeat_ms(desired: &Self::Desired) -> u32;
    /// Opens the session stream.
    fn open(
        client: FabricClient<Channel>,
        reports: ReceiverStream<Self::Report>,
    ) -> impl Future<Output = Result<Streaming<Self::Desired>, tonic::Status>> + Send;
}

/// A node's tap agent.
pub struct AgentRole;

impl Role for AgentRole {
    type Report = proto::AgentReport;
    type Desired = proto::NodeTaps;
    const TLS_ROLE: &'static str = "agent";
    fn heartbeat_ms(d: &proto::NodeTaps) -> u32 {
        d.heartbeat_ms
    }
    async fn open(
        mut client: FabricClient<Channel>,
        reports: ReceiverStream<proto::AgentReport>,
    ) -> Result<Streaming<proto::NodeTaps>, tonic::Status> {
        Ok(client.agent_session(reports).await?.into_inner())
    }
}

/// A broker replica.
pub struct BrokerRole;

impl Role for BrokerRole {
    type Report = proto::BrokerReport;
    type Desired = proto::BrokerPolicies;
    const TLS_ROLE: &'static str = "broker";
    fn heartbeat_ms(d: &proto::BrokerPolicies) -> u32 {
        d.heartbeat_ms
    }
    async fn open(
        mut client: FabricClient<Channel>,
        reports: ReceiverStream<proto::BrokerReport>,
    ) -> Result<Streaming<proto::BrokerPolicies>, tonic::Status> {
        Ok(client.broker_session(reports).await?.into_inner())
    }
}

/// A member's running session (reconnecting as needed) on a tokio runtime.
pub struct Member<R: Role> {
    /// The latest desired state (None until the first arrives). Kept across reconnections.
    pub desired: watch::Receiver<Option<R::Desired>>,
    report: watch::Sender<R::Report>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl<R: Role> Member<R> {
    /// Starts the session with the controller at `url` (`https://HOST:PORT`), with the
    /// certificates in `tls_dir`, reporting `first` until [`Member::report`] replaces it.
    pub fn start(
        rt: &tokio::runtime::Handle,
        url: String,
        tls_dir: PathBuf,
        first: R::Report,
    ) -> Member<R> {
        let (desired_tx, desired) = watch::channel(None);
        let (report, report_rx) = watch::channel(first);
        let (stop, stop_rx) = watch::channel(false);
        let task = rt.spawn(run::<R>(url, tls_dir, report_rx, desired_tx, stop_rx));
        Member {
            desired,
            report,
            stop,
            task,
        }
    }

    /// Replaces the report sent with the next heartbeat.
    pub fn report(&self, report: R::Report) {
        self.report.send_replace(report);
    }

    /// Ends the session.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run<R: Role>(
    url: String,
    tls_dir: PathBuf,
    report: watch::Receiver<R::Report>,
    desired: watch::Sender<Option<R::Desired>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut failing = false;
    while !*stop.borrow() {
        let mut served = false;
        // Stopping never waits for the network (a connect, a stalled stream).
        let result = tokio::select! {
            r = session::<R>(&url, &tls_dir, &report, &desired, &mut served) => r,
            _ = stop.changed() => break,
        };
        if served {
            backoff = BACKOFF_FIRST;
        }
        match result {
            Ok(()) => tracing::warn!("the controller at {url} ended the session; reconnecting"),
            // Every failure is logged while things work; a controller that stays away is
            // reported once until it is back.
            Err(e) if !failing || served => {
                tracing::warn!(
                    "session with the controller: {e:#}; retrying (the last desired state stays in force)"
                )
            }
            Err(e) => tracing::debug!("session with the controller: {e:#}"),
        }
        failing = !served;
        let jitter = Duration::from_millis(u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
                % 250,
        ));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One session, until it fails. `served` turns true once a desired state arrived.
async fn session<R: Role>(
    url: &str,
    tls_dir: &std::path::Path,
    report: &watch::Receiver<R::Report>,
    desired: &watch::Sender<Option<R::Desired>>,
    served: &mut bool,
) -> anyhow::Result<()> {
    let channel = tls::connect(url, tls_dir, R::TLS_ROLE).await?;
    let (tx, rx) = mpsc::channel(4);
    let hello = report.borrow().clone();
    tx.send(hello).await?;
    let mut inbound = R::open(FabricClient::new(channel), ReceiverStream::new(rx)).await?;
    let mut period = DEFAULT_HEARTBEAT;
    let mut next = Instant::now() + period;
    loop {
        tokio::select! {
            message = inbound.message() => match message? {
                Some(d) => {
                    if !*served {
                        tracing::info!("connected to the controller at {url}");
                    }
                    *served = true;
                    let ms = R::heartbeat_ms(&d);
                    if ms > 0 {
                        period = Duration::from_millis(u64::from(ms));
                    }
                    desired.send_replace(Some(d));
                }
                None => return Ok(()),
            },
            _ = tokio::time::sleep_until(next) => {
                next = Instant::now() + period;
                let r = report.borrow().clone();
                match tx.try_send(r) {
                    Ok(()) => {}
                    // The controller is behind: skip this report, the next carries the
                    // latest state (never block here, or desired states would wait too).
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        anyhow::bail!("the report stream closed")
                    }
                }
            }
        }
    }
}
