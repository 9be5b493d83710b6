//! Where copies leave when the controller drives the agent: each copy goes to the broker of
//! its flow (a symmetric hash picks one of 256 slots, the controller's table a broker), once
//! per policy that selects its pod, with that policy's VNI, direction and prefilter.

use std::collections::{BTreeMap, HashMap};

use podtap_tunnel::{Oversize, SendCounters, TunnelEndpoint, TunnelSender};

use crate::flow::{FlowKey, flow_key, slot_of};
use crate::prefilter::Prefilter;

/// Number of flow slots in the broker table.
pub const SLOTS: usize = 256;

/// Which directions of a pod's traffic a policy copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Directions {
    /// Both.
    #[default]
    Both,
    /// Packets the pod sends.
    FromPod,
    /// Packets the pod receives.
    ToPod,
}

impl Directions {
    fn wants(self, to_pod: bool) -> bool {
        match self {
            Directions::Both => true,
            Directions::FromPod => !to_pod,
            Directions::ToPod => to_pod,
        }
    }
}

/// One policy as a pod's copies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The policy's VNI (and L2GRE policy key).
    pub vni: u32,
    /// Which directions it copies.
    pub directions: Directions,
    /// Checked in user space when the node's policies do not share one in-kernel prefilter.
    pub prefilter: Option<Prefilter>,
}

/// What one policy's copies came to on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteCounters {
    /// Copies sent to a broker.
    pub sent: u64,
    /// Copies lost: the send failed, or no broker was assigned their slot.
    pub lost: u64,
    /// Of those, copies with no broker for their slot.
    pub no_broker: u64,
}

/// The broker table and each tap point's policies.
pub struct Routes {
    oversize: Oversize,
    brokers: Vec<TunnelSender>,
    /// Index into `brokers` per slot; `NONE`: no broker.
    slots: [u16; SLOTS],
    by_tap: HashMap<u16, Vec<Route>, foldhash::fast::FixedState>,
    counters: BTreeMap<u32, RouteCounters>,
    /// What senders that left the table had sent, for the totals.
    retired: SendCounters,
}

const NONE: u16 = u16::MAX;

impl Routes {
    /// No brokers and no routes yet.
    pub fn new(oversize: Oversize) -> Routes {
        Routes {
            oversize,
            brokers: Vec::new(),
            slots: [NONE; SLOTS],
            by_tap: HashMap::default(),
            counters: BTreeMap::new(),
            retired: SendCounters::default(),
        }
    }

    /// Replaces the broker table: `slots[i]` indexes `brokers` (an out-of-range index or a
    /// short table means no broker for those slots). Senders to endpoints that stay are kept;
    /// the others are opened here, in the calling thread's network namespace. Returns the
    /// endpoints that could not be opened, with why (their slots have no broker).
    pub fn set_brokers(
        &mut self,
        brokers: &[TunnelEndpoint],
        slots: &[u32],
    ) -> Vec<(TunnelEndpoint, String)> {
        let mut old: Vec<Option<TunnelSender>> = self.brokers.drain(..).map(Some).collect();
        let mut failed = Vec::new();
        let mut index = Vec::with_capacity(brokers.len());
        for ep in brokers {
            let kept = old
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|s| s.endpoint() == *ep))
                .and_then(Option::take);
            let sender = match kept {
                Some(s) => Ok(s),
                None => TunnelSender::connect(*ep, 0, self.oversize),
            };
            match sender {
                Ok(s) => {
                    index.push(self.brokers.len() as u16);
                    self.brokers.push(s);
                }
                Err(e) => {
                    index.push(NONE);
                    failed.push((*ep, e.to_string()));
                }
            }
        }
        for s in old.into_iter().flatten() {
            self.retired.add(&s.counters());
        }
        self.slots = [NONE; SLOTS];
        for (slot, &b) in self.slots.iter_mut().zip(slots) {
            *slot = index.get(b as usize).copied().unwrap_or(NONE);
        }
        failed
    }

    /// Replaces the policies of every tap point.
    pub fn set_routes(&mut self, by_tap: impl IntoIterator<Item = (u16, Vec<Route>)>) {
        self.by_tap = by_tap.into_iter().collect();
        for routes in self.by_tap.values() {
            for r in routes {
                self.counters.entry(r.vni).or_default();
            }
        }
    }

    /// Whether tap point `tap` has any policy.
    pub fn has_routes(&self, tap: u16) -> bool {
        self.by_tap.get(&tap).is_some_and(|r| !r.is_empty())
    }

    /// Sends one copy of tap point `tap` to its flow's broker, once per policy that wants it.
    pub fn send(&mut self, tap: u16, to_pod: bool, frame: &[u8]) {
        let Some(routes) = self.by_tap.get(&tap) else {
            return;
        };
        // The frame's headers are read once, and only for a copy some policy wants.
        let mut key: Option<Option<FlowKey>> = None;
        let mut slot = None;
        for r in routes {
            if !r.directions.wants(to_pod) {
                continue;
            }
            let k = key.get_or_insert_with(|| flow_key(frame)).as_ref();
            if r.prefilter.as_ref().is_some_and(|p| !p.matches_key(k)) {
                continue;
            }
            let broker = *slot.get_or_insert_with(|| self.slots[usize::from(slot_of(k, frame))]);
            let c = self.counters.entry(r.vni).or_default();
            match self.brokers.get_mut(usize::from(broker)) {
                Some(sender) => {
                    if sender.send_policy(r.vni, tap, to_pod, frame) {
                        c.sent += 1;
                    } else {
                        c.lost += 1;
                    }
                }
                None => {
                    c.lost += 1;
                    c.no_broker += 1;
                }
            }
        }
    }

    /// Counters per VNI since the agent started.
    pub fn counters(&self) -> &BTreeMap<u32, RouteCounters> {
        &self.counters
    }

    /// What every sender sent and lost, summed (senders no longer in the table included).
    pub fn send_counters(&self) -> SendCounters {
        let mut sum = self.retired;
        for s in &self.brokers {
            sum.add(&s.counters());
        }
        sum
    }

    /// The brokers' endpoints, in table order of the senders that opened.
    pub fn endpoints(&self) -> Vec<TunnelEndpoint> {
        self.brokers.iter().map(TunnelSender::endpoint).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::flow_slot;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn udp4(sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 12..14 + 16].copy_from_slice(&[10, 244, 1, 2]);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 244, 2, 3]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f
    }

    fn listener() -> (UdpSocket, TunnelEndpoint) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let ep = TunnelEndpoint::vxlan(s.local_addr().unwrap());
        (s, ep)
    }

    fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = s.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[test]
    fn each_flow_goes_to_its_slots_broker_once_per_policy() {
        let (a, ea) = listener();
        let (b, eb) = listener();
        let mut routes = Routes::new(Oversize::Fragment);
        // Even slots to a, odd to b.
        let slots: Vec<u32> = (0..SLOTS as u32).map(|i| i % 2).collect();
        assert!(routes.set_brokers(&[ea, eb], &slots).is_empty());
        let only_udp = Prefilter::parse("proto udp").unwrap();
        let only_tcp = Prefilter::parse("proto tcp").unwrap();
        routes.set_routes([(
            7,
            vec![
                Route {
                    vni: 10,
                    directions: Directions::Both,
                    prefilter: None,
                },
                Route {
                    vni: 11,
                    directions: Directions::FromPod,
                    prefilter: Some(only_udp),
                },
                Route {
                    vni: 12,
                    directions: Directions::Both,
                    prefilter: Some(only_tcp),
                },
            ],
        )]);
        let mut expect_a = 0;
        for port in 1000..1040 {
            let f = udp4(port);
            let to_a = flow_slot(&f).is_multiple_of(2);
            routes.send(7, false, &f); // vni 10 and 11
            routes.send(7, true, &f); // vni 10 only
            routes.send(8, true, &f); // tap 8 has no policy
            if to_a {
                expect_a += 3;
            }
        }
        // One TCP copy to the pod: vni 10 and 12 (tcp only), not 11 (udp, from pod).
        let mut tcp = udp4(5000);
        tcp[14 + 9] = 6;
        routes.send(7, true, &tcp);
        if flow_slot(&tcp).is_multiple_of(2) {
            expect_a += 2;
        }
        let (got_a, got_b) = (drain(&a), drain(&b));
        assert_eq!(got_a.len(), expect_a);
        assert_eq!(got_a.len() + got_b.len(), 122);
        // Each copy went to the broker of its own flow's slot, with the pod's tap label.
        for (got, parity) in [(&got_a, 0), (&got_b, 1)] {
            for d in got.iter() {
                assert_eq!(flow_slot(&d[8..]) % 2, parity);
                assert_eq!(u16::from_be_bytes([d[2], d[3]]) & 0x3fff, 7, "tap label");
            }
        }
        let vni = |d: &Vec<u8>| u32::from_be_bytes([0, d[4], d[5], d[6]]);
        let all: Vec<u32> = got_a.iter().chain(&got_b).map(vni).collect();
        assert_eq!(all.iter().filter(|&&v| v == 10).count(), 81);
        assert_eq!(all.iter().filter(|&&v| v == 11).count(), 40);
        assert_eq!(all.iter().filter(|&&v| v == 12).count(), 1);
        assert_eq!(routes.counters()[&10].sent, 81);
        assert_eq!(routes.counters()[&12].sent, 1);
    }

    #[test]
    fn slots_without_a_broker_count_their_copies_lost() {
        let (a, ea) = listener();
        let mut routes = Routes::new(Oversize::Fragment);
        let slots: Vec<u32> = (0..SLOTS as u32)
            .map(|i| if i < 128 { 0 } else { 5 })
            .collect();
        routes.set_brokers(&[ea], &slots);
        routes.set_routes([(
            1,
            vec![Route {
                vni: 3,
                directions: Directions::Both,
                prefilter: None,
            }],
        )]);
        let mut lost = 0;
        for port in 0..100 {
            let f = udp4(port);
            if flow_slot(&f) >= 128 {
                lost += 1;
            }
            routes.send(1, false, &f);
        }
        let c = routes.counters()[&3];
        assert_eq!(
            (c.sent as usize, c.lost, c.no_broker),
            (drain(&a).len(), lost, lost)
        );
        assert_eq!(c.sent + c.lost, 100);
    }
}
