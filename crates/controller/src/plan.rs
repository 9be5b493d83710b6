//! **Where a policy is decided.** From the cluster as an [`Inventory`] (nodes, namespaces, pods)
//! and the `TapPolicy` specs, what every node's agent taps and what every broker runs. No I/O:
//! the Kubernetes API and the lab's inventory file both become a [`View`] and go through
//! [`Planner::plan`].
//!
//! Three things are allocated and kept stable while their owner lives: a VNI per accepted
//! policy (the label its copies carry; a policy's earlier VNI, from its status, is kept across
//! controller restarts), a tap id per tapped pod, and the flow slots of the broker table
//! ([`broker_table`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use podtap_api::{Direction, TapPolicySpec};
use podtap_cluster::selector::PodSelection;
use podtap_cluster::{Inventory, MAX_TAP_ID, PodRef};

use crate::proto;

/// Flow slots of the broker table: a flow's symmetric hash picks one, the slot a broker.
pub const SLOTS: usize = 256;

/// The largest VNI handed out: policy labels must also fit the 16-bit policy part of an L2GRE
/// key.
pub const MAX_VNI: u32 = 0xffff;

/// One `TapPolicy` as the planner needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInput {
    pub name: String,
    /// `metadata.generation` (None where the source has none: the lab's files).
    pub generation: Option<i64>,
    pub spec: TapPolicySpec,
    /// The VNI its status records, kept if still free.
    pub vni: Option<u32>,
}

/// The cluster and its policies, from whichever source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The nodes (each gets a desired state, even an empty one).
    pub nodes: BTreeSet<String>,
    /// The pods and namespaces (its `nodes` are not read: Kubernetes nodes have no lab
    /// details).
    pub inventory: Inventory,
    pub policies: Vec<PolicyInput>,
}

/// A connected broker replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BrokerMember {
    pub name: String,
    /// `vxlan://ADDR[:PORT]` or `l2gre://ADDR`.
    pub endpoint: String,
}

/// What one policy comes to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyPlan {
    pub generation: Option<i64>,
    /// Every problem with the spec; non-empty: nothing of the policy is applied.
    pub problems: Vec<String>,
    pub vni: Option<u32>,
    /// Matched pods per node (host-network pods included: they are matched, and untappable).
    pub matched: BTreeMap<String, Vec<PodRef>>,
    /// Matched pods that share their node's network and so cannot be tapped.
    pub host_network: BTreeSet<PodRef>,
    /// The policy asks for the decrypted view (not applied by controller-driven agents yet).
    pub decrypt: bool,
}

impl PolicyPlan {
    /// Pods the selectors match, on every node.
    pub fn matched_pods(&self) -> usize {
        self.matched.values().map(Vec::len).sum()
    }
}

/// What every node taps, what every broker runs, and each policy's share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub policies: BTreeMap<String, PolicyPlan>,
    /// Every node of the inventory (and any node a pod names), tapping something or not.
    pub nodes: BTreeMap<String, proto::NodeTaps>,
    /// The accepted policies, for every broker.
    pub broker_policies: Vec<proto::BrokerPolicy>,
    pub brokers: proto::BrokerTable,
}

/// Turns views into plans, keeping VNIs and tap ids stable from one plan to the next.
#[derive(Debug, Default)]
pub struct Planner {
    vnis: BTreeMap<String, u32>,
    tap_ids: BTreeMap<PodRef, u16>,
}

impl Planner {
    /// The plan for `view` with these brokers connected. `generation` and `heartbeat_ms` of the
    /// node states are left 0: the fabric sets them when it sends.
    pub fn plan(&mut self, view: &View, brokers: &[BrokerMember]) -> Plan {
        let inventory = &view.inventory;
        let mut plan = Plan {
            brokers: broker_table(brokers),
            ..Plan::default()
        };
        for node in &view.nodes {
            plan.nodes.insert(node.clone(), proto::NodeTaps::default());
        }

        let mut policies: Vec<&PolicyInput> = view.policies.iter().collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        self.assign_vnis(&policies);

        // pod → the VNIs of the policies that tap it
        let mut tapped: BTreeMap<PodRef, Vec<u32>> = BTreeMap::new();
        for p in &policies {
            let mut pp = PolicyPlan {
                generation: p.generation,
                problems: p.spec.problems(&p.name),
                decrypt: p.spec.decrypt,
                ..PolicyPlan::default()
            };
            let selection = match (p.spec.pod_selector(), p.spec.namespace_selector()) {
                (Some(pod_selector), Some(namespace_selector)) => PodSelection {
                    namespaces: Vec::new(),
                    namespace_selector,
                    pod_selector,
                    pods: Vec::new(),
                },
                _ => PodSelection::default(), // invalid: problems say why
            };
            if pp.problems.is_empty() {
                pp.vni = self.vnis.get(&p.name).copied();
                // No explicit pods, so selecting cannot fail.
                for pod in selection.select(inventory, None).unwrap_or_default() {
                    let key = pod.key();
                    pp.matched
                        .entry(pod.node.clone())
                        .or_default()
                        .push(key.clone());
                    if pod.host_network {
                        pp.host_network.insert(key.clone());
                    }
                    if let Some(vni) = pp.vni {
                        tapped.entry(key).or_default().push(vni);
                    }
                }
                if let Some(vni) = pp.vni {
                    plan.broker_policies.push(proto::BrokerPolicy {
                        name: p.name.clone(),
                        vni,
                        pipeline_json: p.spec.pipeline.to_string(),
                    });
                    let tap = policy_tap(&p.name, vni, &p.spec);
                    for node in pp.matched.keys() {
                        plan.nodes
                            .entry(node.clone())
                            .or_default()
                            .policies
                            .push(tap.clone());
                    }
                }
            }
            plan.policies.insert(p.name.clone(), pp);
        }

        self.assign_tap_ids(inventory, &tapped);
        for pod in &inventory.pods {
            let key = pod.key();
            let Some(vnis) = tapped.get(&key) else {
                continue;
            };
            let node = plan.nodes.entry(pod.node.clone()).or_default();
            node.pods.push(proto::PodTap {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                ip: pod.ip.clone(),
                tap_id: u32::from(self.tap_ids.get(&key).copied().unwrap_or(0)),
                vnis: vnis.clone(),
                host_network: pod.host_network,
                host_veth: pod.host_veth.clone(),
            });
        }
        for node in plan.nodes.values_mut() {
            node.pods
                .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            node.brokers = Some(plan.brokers.clone());
        }
        plan
    }

    /// Keeps every accepted policy's VNI; a new policy gets the one its status names if free,
    /// else the lowest free one. Policies that are gone or invalid give theirs back.
    fn assign_vnis(&mut self, policies: &[&PolicyInput]) {
        let valid: BTreeSet<&str> = policies
            .iter()
            .filter(|p| p.spec.problems(&p.name).is_empty())
            .map(|p| p.name.as_str())
            .collect();
        self.vnis.retain(|name, _| valid.contains(name.as_str()));
        for p in policies {
            if !valid.contains(p.name.as_str()) || self.vnis.contains_key(&p.name) {
                continue;
            }
            let used: BTreeSet<u32> = self.vnis.values().copied().collect();
            if let Some(vni) = allocate(p.vni, 1..=MAX_VNI, &used) {
                self.vnis.insert(p.name.clone(), vni);
            }
        }
    }

    /// Keeps every tapped pod's tap id; a newly tapped pod gets the one the inventory gives it
    /// (the lab's) if free, else the lowest free one. Pods no longer tapped give theirs back.
    fn assign_tap_ids(&mut self, inventory: &Inventory, tapped: &BTreeMap<PodRef, Vec<u32>>) {
        self.tap_ids.retain(|pod, _| tapped.contains_key(pod));
        for pod in &inventory.pods {
            let key = pod.key();
            if !tapped.contains_key(&key) || self.tap_ids.contains_key(&key) {
                continue;
            }
            let used: BTreeSet<u16> = self.tap_ids.values().copied().collect();
            if let Some(id) = allocate(pod.tap_id, 1..=MAX_TAP_ID, &used) {
                self.tap_ids.insert(key, id);
            }
        }
    }
}

/// `wanted` if it is in `range` and unused, else the lowest unused value of `range`.
fn allocate<T>(wanted: Option<T>, range: RangeInclusive<T>, used: &BTreeSet<T>) -> Option<T>
where
    T: Copy + Ord,
    RangeInclusive<T>: Iterator<Item = T>,
{
    wanted
        .filter(|v| range.contains(v) && !used.contains(v))
        .or_else(|| range.clone().find(|v| !used.contains(v)))
}

fn policy_tap(name: &str, vni: u32, spec: &TapPolicySpec) -> proto::PolicyTap {
    proto::PolicyTap {
        name: name.to_string(),
        vni,
        direction: match spec.direction {
            Direction::Both => proto::Direction::Both,
            Direction::FromPod => proto::Direction::FromPod,
            Direction::ToPod => proto::Direction::ToPod,
        } as i32,
        prefilter: spec.prefilter.clone().unwrap_or_default(),
        decrypt: spec.decrypt,
    }
}

/// The broker table: each of the [`SLOTS`] flow slots goes to the broker with the highest
/// rendezvous score for it. A broker that joins takes about 1/n of the slots, from every other
/// broker alike; one that leaves hands only its own slots on. Every agent gets the same table,
/// so a flow seen on two nodes lands on one broker.
pub fn broker_table(brokers: &[BrokerMember]) -> proto::BrokerTable {
    let mut members: Vec<&BrokerMember> = brokers.iter().collect();
    members.sort();
    members.dedup_by(|a, b| a.name == b.name);
    if members.is_empty() {
        return proto::BrokerTable::default();
    }
    let slots = (0..SLOTS as u32)
        .map(|slot| {
            let (best, _) = members
                .iter()
                .enumerate()
                .max_by_key(|(_, b)| score(&b.name, slot))
                .expect("members is not empty");
            best as u32
        })
        .collect();
    proto::BrokerTable {
        brokers: members
            .iter()
            .map(|b| proto::Broker {
                name: b.name.clone(),
                endpoint: b.endpoint.clone(),
            })
            .collect(),
        slots,
    }
}

/// The rendezvous score of a broker for a slot: FNV-1a over the name, mixed with the slot by
/// splitmix64's finalizer (stable across builds, unlike std's hasher).
fn score(name: &str, slot: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ u64::from(slot).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podtap_cluster::inventory::{Namespace, Pod};

    fn pod(ns: &str, name: &str, app: &str, node: &str, ip: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            node: node.into(),
            ip: ip.into(),
            host_veth: String::new(),
            host_network: false,
            netns: None,
            tap_id: None,
        }
    }

    fn policy(name: &str, yaml: &str) -> PolicyInput {
        PolicyInput {
            name: name.into(),
            generation: Some(1),
            spec: serde_json::from_value(
                serde_json::to_value(serde_yaml_ng::from_str::<serde_json::Value>(yaml).unwrap())
                    .unwrap(),
            )
            .unwrap(),
            vni: None,
        }
    }

    fn view() -> View {
        View {
            nodes: ["n1", "n2", "n3"].map(String::from).into(),
            inventory: Inventory {
                cluster: "t".into(),
                nodes: vec![],
                namespaces: vec![Namespace {
                    name: "shop".into(),
                    labels: [("team".to_string(), "shop".to_string())].into(),
                }],
                pods: vec![
                    pod("shop", "cart-1", "cart", "n1", "10.244.1.2"),
                    pod("shop", "web-1", "web", "n1", "10.244.1.3"),
                    pod("shop", "cart-2", "cart", "n2", "10.244.2.2"),
                    pod("pay", "cart-9", "cart", "n2", "10.244.2.9"),
                ],
            },
            policies: vec![policy(
                "carts",
                "podSelector: {matchLabels: {app: cart}}\nnamespaceSelector: {matchLabels: {team: shop}}\ndirection: FromPod\nprefilter: proto tcp\npipeline: {outputs: [{type: pcap, directory: /tmp/x}]}",
            )],
        }
    }

    #[test]
    fn each_node_gets_the_pods_its_policies_select() {
        let mut planner = Planner::default();
        let plan = planner.plan(&view(), &[]);
        let p = &plan.policies["carts"];
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.vni, Some(1));
        assert_eq!(p.matched_pods(), 2);
        let n1 = &plan.nodes["n1"];
        assert_eq!(n1.pods.len(), 1);
        assert_eq!(n1.pods[0].name, "cart-1");
        assert_eq!(n1.pods[0].vnis, [1]);
        assert_eq!(n1.policies[0].direction, proto::Direction::FromPod as i32);
        assert_eq!(n1.policies[0].prefilter, "proto tcp");
        assert_eq!(plan.nodes["n2"].pods[0].name, "cart-2");
        // A node with nothing to tap still gets its (empty) state.
        assert!(plan.nodes["n3"].pods.is_empty() && plan.nodes["n3"].policies.is_empty());
        assert_eq!(plan.broker_policies.len(), 1);
        let ids: BTreeSet<u32> = plan
            .nodes
            .values()
            .flat_map(|n| &n.pods)
            .map(|p| p.tap_id)
            .collect();
        assert_eq!(ids, [1, 2].into());
    }

    #[test]
    fn an_invalid_policy_is_not_applied_and_does_not_disturb_the_others() {
        let mut planner = Planner::default();
        let mut v = view();
        let before = planner.plan(&v, &[]);
        v.policies.push(policy(
            "broken",
            "podSelector: {matchLabels: {app: web}}\nprefilter: port 99999\npipeline: {outputs: []}",
        ));
        let after = planner.plan(&v, &[]);
        let broken = &after.policies["broken"];
        assert!(broken.problems.len() >= 2, "{:?}", broken.problems);
        assert_eq!(broken.vni, None);
        assert_eq!(broken.matched_pods(), 0);
        assert_eq!(
            before.nodes, after.nodes,
            "the valid policy's taps are untouched"
        );
        assert_eq!(after.broker_policies.len(), 1);
    }

    #[test]
    fn two_policies_on_one_pod_and_stable_ids() {
        let mut planner = Planner::default();
        let mut v = view();
        v.policies.push(policy(
            "all-shop",
            "podSelector: {}\nnamespaceSelector: {matchLabels: {team: shop}}\npipeline: {outputs: [{type: pcap, directory: /tmp/y}]}",
        ));
        let plan = planner.plan(&v, &[]);
        // Sorted by name: all-shop gets 1, carts 2.
        assert_eq!(plan.policies["all-shop"].vni, Some(1));
        assert_eq!(plan.policies["carts"].vni, Some(2));
        let cart1 = plan.nodes["n1"]
            .pods
            .iter()
            .find(|p| p.name == "cart-1")
            .unwrap();
        assert_eq!(cart1.vnis, [1, 2]);
        let cart1_id = cart1.tap_id;
        // Deleting the first policy keeps the second's VNI and the pods' tap ids.
        v.policies.remove(1);
        let plan = planner.plan(&v, &[]);
        assert_eq!(plan.policies["carts"].vni, Some(2));
        let cart1 = plan.nodes["n1"]
            .pods
            .iter()
            .find(|p| p.name == "cart-1")
            .unwrap();
        assert_eq!(cart1.tap_id, cart1_id);
        assert!(plan.nodes["n1"].pods.iter().all(|p| p.name != "web-1"));
    }

    #[test]
    fn a_policy_keeps_the_vni_its_status_names() {
        let mut planner = Planner::default();
        let mut v = view();
        v.policies[0].vni = Some(4242);
        assert_eq!(planner.plan(&v, &[]).policies["carts"].vni, Some(4242));
    }

    #[test]
    fn host_network_pods_are_matched_and_listed() {
        let mut planner = Planner::default();
        let mut v = view();
        v.inventory.pods[0].host_network = true;
        let plan = planner.plan(&v, &[]);
        let p = &plan.policies["carts"];
        assert_eq!(p.matched_pods(), 2);
        assert_eq!(p.host_network.len(), 1);
        assert!(plan.nodes["n1"].pods[0].host_network);
    }

    fn brokers(n: usize) -> Vec<BrokerMember> {
        (0..n)
            .map(|i| BrokerMember {
                name: format!("broker-{i}"),
                endpoint: format!("vxlan://10.0.0.{i}"),
            })
            .collect()
    }

    fn owners(t: &proto::BrokerTable) -> Vec<String> {
        t.slots
            .iter()
            .map(|&i| t.brokers[i as usize].name.clone())
            .collect()
    }

    #[test]
    fn a_joining_broker_takes_a_fair_share_and_nothing_else_moves() {
        let three = owners(&broker_table(&brokers(3)));
        let four = owners(&broker_table(&brokers(4)));
        assert_eq!(three.len(), SLOTS);
        let moved: Vec<usize> = (0..SLOTS).filter(|&i| three[i] != four[i]).collect();
        assert!(
            moved.iter().all(|&i| four[i] == "broker-3"),
            "only to the new broker"
        );
        // About a quarter: rendezvous hashing is fair within a few percent.
        assert!(
            (40..=90).contains(&moved.len()),
            "{} slots moved",
            moved.len()
        );
        for b in ["broker-0", "broker-1", "broker-2", "broker-3"] {
            let n = four.iter().filter(|o| *o == b).count();
            assert!((40..=90).contains(&n), "{b} has {n} slots");
        }
        // Leaving is the reverse: only the leaver's slots move.
        assert_eq!(owners(&broker_table(&brokers(3))), three);
    }

    #[test]
    fn the_table_does_not_depend_on_the_order_brokers_are_listed() {
        let mut b = brokers(5);
        let t1 = broker_table(&b);
        b.reverse();
        assert_eq!(broker_table(&b), t1);
        assert_eq!(broker_table(&[]), proto::BrokerTable::default());
    }
}
