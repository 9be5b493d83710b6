//! What the controller reports on a `TapPolicy`: its plan ([`PolicyPlan`]) joined with what
//! the agents and brokers say ([`Health`]). Conditions keep their `lastTransitionTime` while
//! their status stays, so that an unchanged policy produces an identical status and no write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use podtap_api::{AgentState, NodeTapState, TapPolicyStatus, UntappablePod};
use podtap_cluster::PodRef;

use crate::plan::PolicyPlan;

/// One node's agent as the fabric sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentHealth {
    pub state: AgentState,
    /// The agent has applied the node's current desired state.
    pub up_to_date: bool,
    /// Per pod: tapped, or why not (from the agent's last report).
    /// Per pod: tapped, or why not (reason, message).
    pub pods: BTreeMap<PodRef, Result<(), (String, String)>>,
    /// Per VNI: (copied, dropped) packets.
    pub counters: BTreeMap<u32, (u64, u64)>,
}

/// The fabric's members, as seen now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub agents: BTreeMap<String, AgentHealth>,
    /// Connected broker replicas.
    pub brokers: Vec<String>,
    /// Policies (by VNI) whose copies were dropped recently somewhere.
    pub dropping: BTreeSet<u32>,
}

/// The status of one policy.
pub fn policy_status(
    plan: &PolicyPlan,
    health: &Health,
    previous: Option<&TapPolicyStatus>,
    now: &Time,
) -> TapPolicyStatus {
    let accepted = plan.problems.is_empty();
    let mut nodes = Vec::new();
    let (mut tapped_total, mut untappable_total) = (0usize, 0usize);
    let mut not_connected = Vec::new();
    let mut disconnected = Vec::new();
    for (node, pods) in &plan.matched {
        let agent = health.agents.get(node);
        let state = agent.map(|a| a.state).unwrap_or(AgentState::Pending);
        match state {
            AgentState::Connected => {}
            AgentState::Pending => not_connected.push(node.as_str()),
            AgentState::Disconnected => {
                not_connected.push(node.as_str());
                disconnected.push(node.as_str());
            }
        }
        let mut ns = NodeTapState {
            node: node.clone(),
            agent: state,
            ..NodeTapState::default()
        };
        for pod in pods {
            let reported = agent
                .filter(|a| a.up_to_date && a.state == AgentState::Connected)
                .and_then(|a| a.pods.get(pod));
            match reported {
                Some(Ok(())) => ns.tapped += 1,
                Some(Err((reason, message))) => ns.untappable.push(UntappablePod {
                    pod: pod.to_string(),
                    reason: reason.clone(),
                    message: message.clone(),
                }),
                // Known without the agent: it has no veth.
                None if plan.host_network.contains(pod) => ns.untappable.push(UntappablePod {
                    pod: pod.to_string(),
                    reason: "HostNetwork".into(),
                    message: String::new(),
                }),
                None => {}
            }
        }
        if let (Some(a), Some(vni)) = (agent, plan.vni)
            && let Some(&(copied, dropped)) = a.counters.get(&vni)
        {
            ns.copied_packets = copied;
            ns.dropped_packets = dropped;
        }
        tapped_total += ns.tapped as usize;
        untappable_total += ns.untappable.len();
        nodes.push(ns);
    }
    let matched = plan.matched_pods();

    let mut conditions = Vec::new();
    let generation = plan.generation;
    let mut condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: since,
        });
    };
    if accepted {
        condition("Accepted", true, "Valid", "the spec is valid".into());
    } else {
        condition(
            "Accepted",
            false,
            "Invalid",
            format!(
                "{} problem(s), listed in status.problems; nothing of this policy is applied",
                plan.problems.len()
            ),
        );
    }
    let pending = matched - tapped_total - untappable_total;
    let (ready, reason, message) = if !accepted {
        (false, "Invalid", "the spec is not accepted".to_string())
    } else if health.brokers.is_empty() {
        (
            false,
            "NoBroker",
            "no broker replica is connected".to_string(),
        )
    } else if !not_connected.is_empty() {
        (
            false,
            "AgentNotConnected",
            format!("agents not connected on: {}", not_connected.join(", ")),
        )
    } else if pending > 0 {
        (
            false,
            "Applying",
            format!(
                "{tapped_total} of {} tappable pods tapped",
                matched - untappable_total
            ),
        )
    } else if matched == 0 {
        (
            true,
            "NoMatchingPods",
            "no pod matches the selectors".to_string(),
        )
    } else {
        (
            true,
            "Tapped",
            format!("{tapped_total} pod(s) tapped on {} node(s)", nodes.len()),
        )
    };
    condition("Ready", ready, reason, message);
    let (degraded, reason, message) = if !disconnected.is_empty() {
        (
            true,
            "AgentDisconnected",
            format!("agents disconnected on: {}", disconnected.join(", ")),
        )
    } else if untappable_total > 0 {
        (
            true,
            "PodsNotTappable",
            format!("{untappable_total} matched pod(s) cannot be tapped (see status.nodes)"),
        )
    } else if plan.decrypt {
        // Said, not silently ignored: the packets are tapped, the plaintext is not.
        (
            true,
            "DecryptUnavailable",
            "decrypt: controller-driven agents do not capture TLS plaintext yet; packets are \
             tapped (docs/install.md)"
                .to_string(),
        )
    } else if plan.vni.is_some_and(|v| health.dropping.contains(&v)) {
        (
            true,
            "CopiesDropped",
            "copies were dropped in the last minute (see status.nodes)".to_string(),
        )
    } else {
        (false, "Healthy", "nothing is lost".to_string())
    };
    condition("Degraded", degraded, reason, message);

    TapPolicyStatus {
        observed_generation: generation,
        conditions,
        problems: plan.problems.clone(),
        matched_pods: matched as u32,
        vni: plan.vni,
        brokers: if accepted {
            health.brokers.clone()
        } else {
            Vec::new()
        },
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn plan() -> PolicyPlan {
        let pods = |node: &str, n: usize| {
            (0..n)
                .map(|i| PodRef {
                    namespace: "shop".into(),
                    name: format!("{node}-p{i}"),
                })
                .collect::<Vec<_>>()
        };
        PolicyPlan {
            generation: Some(3),
            problems: vec![],
            vni: Some(7),
            matched: [
                ("n1".to_string(), pods("n1", 2)),
                ("n2".to_string(), pods("n2", 1)),
            ]
            .into(),
            host_network: BTreeSet::new(),
            decrypt: false,
        }
    }

    fn connected(pods: &[&str]) -> AgentHealth {
        AgentHealth {
            state: AgentState::Connected,
            up_to_date: true,
            pods: pods
                .iter()
                .map(|p| (PodRef::parse(p).unwrap(), Ok(())))
                .collect(),
            counters: [(7, (100, 0))].into(),
        }
    }

    fn cond<'a>(s: &'a TapPolicyStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_when_every_pod_is_tapped_and_a_broker_is_connected() {
        let health = Health {
            agents: [
                ("n1".to_string(), connected(&["shop/n1-p0", "shop/n1-p1"])),
                ("n2".to_string(), connected(&["shop/n2-p0"])),
            ]
            .into(),
            brokers: vec!["b0".into()],
            dropping: BTreeSet::new(),
        };
        let s = policy_status(&plan(), &health, None, &t(10));
        assert_eq!(cond(&s, "Accepted").status, "True");
        assert_eq!(cond(&s, "Ready").status, "True", "{:?}", cond(&s, "Ready"));
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(s.matched_pods, 3);
        assert_eq!(s.nodes[0].tapped, 2);
        assert_eq!(s.nodes[0].copied_packets, 100);
        // Recomputed later with nothing changed: identical, times included.
        assert_eq!(policy_status(&plan(), &health, Some(&s), &t(20)), s);
    }

    #[test]
    fn a_disconnected_agent_makes_the_policy_degraded_and_not_ready() {
        let mut n2 = connected(&["shop/n2-p0"]);
        n2.state = AgentState::Disconnected;
        let health = Health {
            agents: [
                ("n1".to_string(), connected(&["shop/n1-p0", "shop/n1-p1"])),
                ("n2".to_string(), n2),
            ]
            .into(),
            brokers: vec!["b0".into()],
            dropping: BTreeSet::new(),
        };
        let s = policy_status(&plan(), &health, None, &t(10));
        assert_eq!(cond(&s, "Ready").reason, "AgentNotConnected");
        assert_eq!(cond(&s, "Degraded").reason, "AgentDisconnected");
        assert_eq!(s.nodes[1].agent, AgentState::Disconnected);
        assert_eq!(
            s.nodes[1].tapped, 0,
            "a disconnected agent's taps are unknown"
        );
    }

    #[test]
    fn an_invalid_policy_lists_its_problems_and_is_not_ready() {
        let mut p = plan();
        p.problems = vec!["spec.prefilter: bad".into(), "spec.pipeline: worse".into()];
        p.vni = None;
        p.matched.clear();
        let s = policy_status(&p, &Health::default(), None, &t(1));
        assert_eq!(cond(&s, "Accepted").status, "False");
        assert!(cond(&s, "Accepted").message.starts_with("2 problem(s)"));
        assert_eq!(cond(&s, "Ready").reason, "Invalid");
        assert_eq!(s.problems.len(), 2);
    }

    #[test]
    fn a_decrypt_policy_says_the_plaintext_is_not_captured() {
        let mut p = plan();
        p.decrypt = true;
        let health = Health {
            agents: [
                ("n1".to_string(), connected(&["shop/n1-p0", "shop/n1-p1"])),
                ("n2".to_string(), connected(&["shop/n2-p0"])),
            ]
            .into(),
            brokers: vec!["b0".into()],
            dropping: BTreeSet::new(),
        };
        let s = policy_status(&p, &health, None, &t(1));
        assert_eq!(cond(&s, "Ready").status, "True", "{s:#?}");
        assert_eq!(cond(&s, "Degraded").status, "True");
        assert_eq!(cond(&s, "Degraded").reason, "DecryptUnavailable");
    }

    #[test]
    fn untappable_pods_carry_their_reason() {
        let mut p = plan();
        p.host_network.insert(PodRef::parse("shop/n1-p1").unwrap());
        let mut n2 = connected(&[]);
        n2.pods.insert(
            PodRef::parse("shop/n2-p0").unwrap(),
            Err(("VethNotFound".into(), "no route".into())),
        );
        let health = Health {
            agents: [
                ("n1".to_string(), connected(&["shop/n1-p0"])),
                ("n2".to_string(), n2),
            ]
            .into(),
            brokers: vec!["b0".into()],
            dropping: BTreeSet::new(),
        };
        let s = policy_status(&p, &health, None, &t(1));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Degraded").reason, "PodsNotTappable");
        assert_eq!(s.nodes[0].untappable[0].reason, "HostNetwork");
        assert_eq!(s.nodes[1].untappable[0].reason, "VethNotFound");
        assert_eq!(s.nodes[1].untappable[0].message, "no route");
    }
}
