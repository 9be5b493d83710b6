//! **Where desired state leaves the controller**, and where agents' and brokers' reports come
//! in: the fabric API's server side (`proto/fabric.proto`) and the members it knows.
//!
//! Each node's desired [`proto::NodeTaps`] lives in a watch channel: [`Fabric::publish`]
//! replaces it (bumping its generation) only when it changed, and every open session of that
//! node streams the latest value. A member's state comes from its reports alone: Connected
//! while they arrive, Pending once one is `pending_after` late (or its stream closed), and
//! Disconnected after `disconnected_after` without one.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use podtap_api::AgentState;
use podtap_cluster::PodRef;
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status, Streaming};

use crate::plan::{BrokerMember, Plan};
use crate::proto::{self, fabric_server};
use crate::status::{AgentHealth, Health};

/// Heartbeat and liveness timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often members report (sent to them).
    pub heartbeat: Duration,
    /// A member whose last report is older than this is Pending.
    pub pending_after: Duration,
    /// ... and older than this, Disconnected.
    pub disconnected_after: Duration,
    /// Drops within this long make a policy Degraded.
    pub drops_window: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_secs(2),
            pending_after: Duration::from_secs(6),
            disconnected_after: Duration::from_secs(20),
            drops_window: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// Every problem with the timing, at once.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.heartbeat < Duration::from_millis(50) {
            p.push("the heartbeat interval must be at least 50 ms".to_string());
        }
        if self.pending_after <= self.heartbeat {
            p.push("pending-after must be longer than the heartbeat interval".to_string());
        }
        if self.disconnected_after <= self.pending_after {
            p.push("disconnected-after must be longer than pending-after".to_string());
        }
        p
    }
}

/// A member's liveness bookkeeping.
#[derive(Debug)]
struct Liveness {
    /// The open session (each session gets a new id; an old one closing late changes nothing).
    session: Option<u64>,
    last_report: Instant,
}

impl Liveness {
    fn state(&self, now: Instant, t: &Timing) -> AgentState {
        let age = now.saturating_duration_since(self.last_report);
        if self.session.is_some() && age <= t.pending_after {
            AgentState::Connected
        } else if age <= t.disconnected_after {
            AgentState::Pending
        } else {
            AgentState::Disconnected
        }
    }
}

#[derive(Debug)]
struct AgentEntry {
    live: Liveness,
    report: proto::AgentReport,
    /// Per VNI: the last dropped count and when it last went up.
    drops: BTreeMap<u32, (u64, Option<Instant>)>,
}

#[derive(Debug)]
struct BrokerEntry {
    live: Liveness,
    report: proto::BrokerReport,
}

struct State {
    agents: BTreeMap<String, AgentEntry>,
    brokers: BTreeMap<String, BrokerEntry>,
    nodes: BTreeMap<String, watch::Sender<proto::NodeTaps>>,
    /// Nodes of the last plan, with when they first appeared (a node whose agent never
    /// connected is Disconnected that long after).
    planned: BTreeMap<String, Instant>,
    broker_policies: watch::Sender<proto::BrokerPolicies>,
    next_session: u64,
}

struct Inner {
    timing: Timing,
    state: Mutex<State>,
    /// Something a plan or a status depends on changed.
    changed: Notify,
    /// Sessions are served only while this is true (the leader).
    serving: watch::Receiver<bool>,
}

/// The controller's side of the fabric: its members and their desired state.
#[derive(Clone)]
pub struct Fabric {
    inner: Arc<Inner>,
}

impl Fabric {
    /// A fabric that serves sessions while `serving` is true.
    pub fn new(timing: Timing, serving: watch::Receiver<bool>) -> Fabric {
        Fabric {
            inner: Arc::new(Inner {
                timing,
                state: Mutex::new(State {
                    agents: BTreeMap::new(),
                    brokers: BTreeMap::new(),
                    nodes: BTreeMap::new(),
                    planned: BTreeMap::new(),
                    broker_policies: watch::channel(proto::BrokerPolicies {
                        heartbeat_ms: timing.heartbeat.as_millis() as u32,
                        ..Default::default()
                    })
                    .0,
                    next_session: 1,
                }),
                changed: Notify::new(),
                serving,
            }),
        }
    }

    /// The timing this fabric runs with.
    pub fn timing(&self) -> Timing {
        self.inner.timing
    }

    /// Waits until a member joins, leaves or reports.
    pub async fn changed(&self) {
        self.inner.changed.notified().await
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going with it.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The brokers that take traffic: those Connected now.
    pub fn live_brokers(&self, now: Instant) -> Vec<BrokerMember> {
        let st = self.state();
        st.brokers
            .iter()
            .filter(|(_, b)| b.live.state(now, &self.inner.timing) == AgentState::Connected)
            .map(|(name, b)| BrokerMember {
                name: name.clone(),
                endpoint: b.report.endpoint.clone(),
            })
            .collect()
    }

    /// Sends every node and broker its part of `plan` (only what changed).
    pub fn publish(&self, plan: &Plan) {
        let heartbeat_ms = self.inner.timing.heartbeat.as_millis() as u32;
        let mut st = self.state();
        let now = Instant::now();
        st.planned.retain(|n, _| plan.nodes.contains_key(n));
        for node in plan.nodes.keys() {
            st.planned.entry(node.clone()).or_insert(now);
        }
        // A node that left the plan keeps its channel, now empty: its agent untaps everything.
        let empty = proto::NodeTaps::default();
        for (node, tx) in &st.nodes {
            if !plan.nodes.contains_key(node) {
                set_node(tx, &empty, heartbeat_ms);
            }
        }
        for (node, taps) in &plan.nodes {
            let tx = st
                .nodes
                .entry(node.clone())
                .or_insert_with(|| watch::channel(proto::NodeTaps::default()).0);
            set_node(tx, taps, heartbeat_ms);
        }
        st.broker_policies.send_if_modified(|cur| {
            if cur.policies == plan.broker_policies {
                return false;
            }
            cur.generation += 1;
            cur.policies = plan.broker_policies.clone();
            true
        });
    }

    /// The members as statuses need them. Nodes of the plan whose agent never reported are
    /// Pending, and Disconnected once `disconnected_after` has passed since they were planned.
    pub fn health(&self, now: Instant) -> Health {
        let t = self.inner.timing;
        let st = self.state();
        let mut agents = BTreeMap::new();
        let mut dropping = BTreeSet::new();
        for (node, since) in &st.planned {
            let desired = st.nodes.get(node).map(|tx| tx.borrow().generation);
            let h = match st.agents.get(node) {
                None => AgentHealth {
                    state: if now.saturating_duration_since(*since) > t.disconnected_after {
                        AgentState::Disconnected
                    } else {
                        AgentState::Pending
                    },
                    ..AgentHealth::default()
                },
                Some(a) => {
                    for (vni, (_, when)) in &a.drops {
                        if when.is_some_and(|w| now.saturating_duration_since(w) <= t.drops_window)
                        {
                            dropping.insert(*vni);
                        }
                    }
                    AgentHealth {
                        state: a.live.state(now, &t),
                        up_to_date: Some(a.report.applied_generation) == desired,
                        pods: a
                            .report
                            .pods
                            .iter()
                            .map(|p| {
                                let key = PodRef {
                                    namespace: p.namespace.clone(),
                                    name: p.name.clone(),
                                };
                                let v = if p.tapped {
                                    Ok(())
                                } else {
                                    Err((p.reason.clone(), p.message.clone()))
                                };
                                (key, v)
                            })
                            .collect(),
                        counters: a
                            .report
                            .counters
                            .iter()
                            .map(|c| (c.vni, (c.copied_packets, c.dropped_packets)))
                            .collect(),
                    }
                }
            };
            agents.insert(node.clone(), h);
        }
        drop(st);
        let brokers = self.live_brokers(now).into_iter().map(|b| b.name).collect();
        Health {
            agents,
            brokers,
            dropping,
        }
    }

    /// The states of every agent and broker that ever connected (for `/members`).
    pub fn members(&self, now: Instant) -> Vec<(String, &'static str, AgentState)> {
        let t = self.inner.timing;
        let st = self.state();
        let agents = st
            .agents
            .iter()
            .map(|(n, a)| (n.clone(), "agent", a.live.state(now, &t)));
        let brokers = st
            .brokers
            .iter()
            .map(|(n, b)| (n.clone(), "broker", b.live.state(now, &t)));
        agents.chain(brokers).collect()
    }

    fn agent_report(&self, session: u64, report: proto::AgentReport) {
        let now = Instant::now();
        let mut st = self.state();
        let entry = st
            .agents
            .entry(report.node.clone())
            .or_insert_with(|| AgentEntry {
                live: Liveness {
                    session: Some(session),
                    last_report: now,
                },
                report: proto::AgentReport::default(),
                drops: BTreeMap::new(),
            });
        if entry.live.session.is_some_and(|s| s > session) {
            return; // a newer session of the same node took over
        }
        entry.live = Liveness {
            session: Some(session),
            last_report: now,
        };
        for c in &report.counters {
            let d = entry
                .drops
                .entry(c.vni)
                .or_insert((c.dropped_packets, None));
            if c.dropped_packets > d.0 {
                *d = (c.dropped_packets, Some(now));
            } else {
                d.0 = c.dropped_packets;
            }
        }
        entry.report = report;
        drop(st);
        self.inner.changed.notify_one();
    }

    fn broker_report(&self, session: u64, report: proto::BrokerReport) {
        let now = Instant::now();
        let mut st = self.state();
        let entry = st
            .brokers
            .entry(report.name.clone())
            .or_insert_with(|| BrokerEntry {
                live: Liveness {
                    session: Some(session),
                    last_report: now,
                },
                report: proto::BrokerReport::default(),
            });
        if entry.live.session.is_some_and(|s| s > session) {
            return; // a newer session of the same broker took over
        }
        entry.live = Liveness {
            session: Some(session),
            last_report: now,
        };
        entry.report = report;
        drop(st);
        self.inner.changed.notify_one();
    }

    fn session_closed(&self, kind: Kind, name: &str, session: u64) {
        let mut st = self.state();
        let live = match kind {
            Kind::Agent => st.agents.get_mut(name).map(|a| &mut a.live),
            Kind::Broker => st.brokers.get_mut(name).map(|b| &mut b.live),
        };
        if let Some(live) = live
            && live.session == Some(session)
        {
            live.session = None;
        }
        drop(st);
        tracing::info!("{kind:?} {name}: session closed");
        self.inner.changed.notify_one();
    }

    fn new_session(&self) -> Result<u64, Status> {
        if !*self.inner.serving.borrow() {
            return Err(Status::unavailable(
                "this controller replica is not the leader; retry (the Service routes to the leader)",
            ));
        }
        let mut st = self.state();
        st.next_session += 1;
        Ok(st.next_session)
    }

    /// The gRPC service, for a tonic server.
    pub fn service(&self) -> fabric_server::FabricServer<Fabric> {
        fabric_server::FabricServer::new(self.clone())
    }
}

fn set_node(tx: &watch::Sender<proto::NodeTaps>, taps: &proto::NodeTaps, heartbeat_ms: u32) {
    tx.send_if_modified(|cur| {
        let same = cur.policies == taps.policies
            && cur.pods == taps.pods
            && cur.brokers == taps.brokers
            && cur.heartbeat_ms == heartbeat_ms;
        if same {
            return false;
        }
        let generation = cur.generation + 1;
        *cur = taps.clone();
        cur.generation = generation;
        cur.heartbeat_ms = heartbeat_ms;
        true
    });
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Agent,
    Broker,
}

/// A session's first report (it names the member).
async fn first_report<R>(inbound: &mut Streaming<R>) -> Result<R, Status> {
    inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the stream ended before the first report"))
}

impl Fabric {
    /// Takes a member's further reports until its stream ends; reports naming another member
    /// are ignored.
    fn follow<R: Send + 'static>(
        &self,
        kind: Kind,
        name: String,
        session: u64,
        mut inbound: Streaming<R>,
        name_of: fn(&R) -> &String,
        report: fn(&Fabric, u64, R),
    ) {
        let fabric = self.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(r)) if *name_of(&r) == name => report(&fabric, session, r),
                    Ok(Some(r)) => {
                        tracing::warn!("{kind:?} {name} reported as {:?}: ignored", name_of(&r));
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            fabric.session_closed(kind, &name, session);
        });
    }
}

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl fabric_server::Fabric for Fabric {
    type AgentSessionStream = Outbound<proto::NodeTaps>;
    type BrokerSessionStream = Outbound<proto::BrokerPolicies>;

    async fn agent_session(
        &self,
        request: Request<Streaming<proto::AgentReport>>,
    ) -> Result<Response<Self::AgentSessionStream>, Status> {
        let session = self.new_session()?;
        let mut inbound = request.into_inner();
        let first = first_report(&mut inbound).await?;
        if first.node.is_empty() {
            return Err(Status::invalid_argument(
                "the first report must name the node",
            ));
        }
        let node = first.node.clone();
        tracing::info!("agent of {node}: connected");
        let heartbeat_ms = self.inner.timing.heartbeat.as_millis() as u32;
        let rx = {
            let mut st = self.state();
            st.nodes
                .entry(node.clone())
                .or_insert_with(|| {
                    watch::channel(proto::NodeTaps {
                        heartbeat_ms,
                        ..proto::NodeTaps::default()
                    })
                    .0
                })
                .subscribe()
        };
        self.agent_report(session, first);
        self.follow(
            Kind::Agent,
            node,
            session,
            inbound,
            |r| &r.node,
            Fabric::agent_report,
        );
        let out = WatchStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }

    async fn broker_session(
        &self,
        request: Request<Streaming<proto::BrokerReport>>,
    ) -> Result<Response<Self::BrokerSessionStream>, Status> {
        let session = self.new_session()?;
        let mut inbound = request.into_inner();
        let first = first_report(&mut inbound).await?;
        if first.name.is_empty() || first.endpoint.is_empty() {
            return Err(Status::invalid_argument(
                "the first report must give the broker's name and tunnel endpoint",
            ));
        }
        let name = first.name.clone();
        tracing::info!("broker {name} ({}): connected", first.endpoint);
        let rx = self.state().broker_policies.subscribe();
        self.broker_report(session, first);
        self.follow(
            Kind::Broker,
            name,
            session,
            inbound,
            |r| &r.name,
            Fabric::broker_report,
        );
        let out = WatchStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}
