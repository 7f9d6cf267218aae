//! Where replicas run: a pure function of the services, the nodes and the
//! placement so far (no clock, no IO), like [`crate::autoscaler::decide`].
//!
//! A placement gives each service a replica count per node. The leader
//! computes the next one on every pass and writes what changed; each node
//! runs, for each service, as many replicas as the placement gives it, and
//! rolls them to new revisions itself.
//!
//! The rules, in order, per service (services in name order, so the result
//! does not depend on the order of the input):
//!
//! 1. Replicas on a node that is gone or not ready are placed again.
//! 2. Too many: one comes off the node with the most replicas of the
//!    service (then the most memory reserved, then the last name) until the
//!    count is right.
//! 3. Too few: one goes to the node with the fewest replicas of the service
//!    (then the least memory reserved, then the first name) among those
//!    whose capacity holds one more, until the count is right or no node
//!    can take one (the rest are reported unschedulable).
//! 4. Spread: while the nodes with the most and the fewest replicas of the
//!    service differ by more than one, one moves from the first to the
//!    second, if it fits: at most one move per service per pass, so a node
//!    that joins takes its share over a few passes and never all at once.
//!
//! Nothing else moves: a placement that keeps the rules is returned as it
//! is, so a leader's pass over an unchanged cluster writes nothing.

use std::collections::BTreeMap;

/// A node, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Memory the node gives replicas, in bytes.
    pub capacity: u64,
    /// Whether it may run replicas (its lease is held).
    pub ready: bool,
}

/// A service, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// The service's name.
    pub service: String,
    /// How many replicas it wants.
    pub replicas: u32,
    /// Memory each replica reserves (its cgroup limit), in bytes.
    pub memory: u64,
}

/// Replica counts per service, then per node. Nodes with none are left
/// out.
pub type Placement = BTreeMap<String, BTreeMap<String, u32>>;

/// What [`schedule`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// The next placement.
    pub placement: Placement,
    /// Services with replicas that fit on no node: (service, how many, why).
    pub unschedulable: Vec<(String, u32, String)>,
}

/// The next placement of `services` over `nodes`, starting from `current`.
/// See the [module documentation](self) for the rules.
pub fn schedule(services: &[Demand], nodes: &[NodeInfo], current: &Placement) -> Scheduled {
    let ready: BTreeMap<&str, &NodeInfo> =
        nodes.iter().filter(|node| node.ready).map(|node| (node.name.as_str(), node)).collect();
    let mut services: Vec<&Demand> = services.iter().collect();
    services.sort_by(|a, b| a.service.cmp(&b.service));
    let memory_of: BTreeMap<&str, u64> = services.iter().map(|d| (d.service.as_str(), d.memory)).collect();

    // What stays: counts of known services on ready nodes.
    let mut placement: Placement = BTreeMap::new();
    for (service, counts) in current {
        if !memory_of.contains_key(service.as_str()) {
            continue;
        }
        let kept: BTreeMap<String, u32> = counts
            .iter()
            .filter(|(node, count)| **count > 0 && ready.contains_key(node.as_str()))
            .map(|(node, count)| (node.clone(), *count))
            .collect();
        if !kept.is_empty() {
            placement.insert(service.clone(), kept);
        }
    }
    let mut reserved: BTreeMap<&str, u64> = ready.keys().map(|name| (*name, 0)).collect();
    for (service, counts) in &placement {
        for (node, count) in counts {
            *reserved.get_mut(node.as_str()).expect("a ready node") += u64::from(*count) * memory_of[service.as_str()];
        }
    }

    let mut unschedulable = Vec::new();
    for demand in services {
        let counts = placement.entry(demand.service.clone()).or_default();
        let count_of = |counts: &BTreeMap<String, u32>, node: &str| counts.get(node).copied().unwrap_or(0);
        let mut total: u32 = counts.values().sum();
        while total > demand.replicas {
            let node = counts
                .iter()
                .max_by(|(a, ca), (b, cb)| {
                    ca.cmp(cb).then(reserved[a.as_str()].cmp(&reserved[b.as_str()])).then(a.cmp(b))
                })
                .map(|(node, _)| node.clone())
                .expect("a node with replicas");
            remove_one(counts, &node);
            *reserved.get_mut(node.as_str()).expect("a ready node") -= demand.memory;
            total -= 1;
        }
        while total < demand.replicas {
            let fits = ready
                .values()
                .filter(|node| reserved[node.name.as_str()] + demand.memory <= node.capacity)
                .min_by(|a, b| {
                    count_of(counts, &a.name)
                        .cmp(&count_of(counts, &b.name))
                        .then(reserved[a.name.as_str()].cmp(&reserved[b.name.as_str()]))
                        .then(a.name.cmp(&b.name))
                });
            let Some(node) = fits else {
                let why = if ready.is_empty() {
                    "no node is ready".to_owned()
                } else {
                    format!("no ready node has {} of memory left for another replica", demand.memory)
                };
                unschedulable.push((demand.service.clone(), demand.replicas - total, why));
                break;
            };
            *counts.entry(node.name.clone()).or_default() += 1;
            *reserved.get_mut(node.name.as_str()).expect("a ready node") += demand.memory;
            total += 1;
        }
        // One move toward an even spread, if it fits.
        if total > 0 {
            let most = ready.keys().max_by_key(|node| (count_of(counts, node), std::cmp::Reverse(**node))).copied();
            let fewest = ready
                .values()
                .filter(|node| reserved[node.name.as_str()] + demand.memory <= node.capacity)
                .min_by_key(|node| (count_of(counts, &node.name), reserved[node.name.as_str()], node.name.clone()));
            if let (Some(most), Some(fewest)) = (most, fewest)
                && count_of(counts, most) > count_of(counts, &fewest.name) + 1
            {
                remove_one(counts, most);
                *reserved.get_mut(most).expect("a ready node") -= demand.memory;
                *counts.entry(fewest.name.clone()).or_default() += 1;
                *reserved.get_mut(fewest.name.as_str()).expect("a ready node") += demand.memory;
            }
        }
    }
    placement.retain(|_, counts| !counts.is_empty());
    Scheduled { placement, unschedulable }
}

fn remove_one(counts: &mut BTreeMap<String, u32>, node: &str) {
    if let Some(count) = counts.get_mut(node) {
        *count -= 1;
        if *count == 0 {
            counts.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn nodes(names: &[&str], capacity: u64) -> Vec<NodeInfo> {
        names.iter().map(|name| NodeInfo { name: (*name).into(), capacity, ready: true }).collect()
    }

    fn kubia(replicas: u32) -> Demand {
        Demand { service: "kubia".into(), replicas, memory: 64 * MI }
    }

    fn counts(placement: &Placement, service: &str) -> Vec<(String, u32)> {
        placement.get(service).map(|c| c.iter().map(|(n, c)| (n.clone(), *c)).collect()).unwrap_or_default()
    }

    fn pairs(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    }

    fn placement(list: &[(&str, &[(&str, u32)])]) -> Placement {
        list.iter()
            .map(|(service, counts)| {
                ((*service).to_owned(), counts.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect())
            })
            .collect()
    }

    #[test]
    fn six_replicas_spread_two_two_two() {
        let out = schedule(&[kubia(6)], &nodes(&["a", "b", "c"], 8 << 30), &Placement::new());
        assert_eq!(counts(&out.placement, "kubia"), pairs(&[("a", 2), ("b", 2), ("c", 2)]));
        assert!(out.unschedulable.is_empty());
    }

    #[test]
    fn a_placement_that_keeps_the_rules_is_left_alone() {
        let nodes = nodes(&["a", "b", "c"], 8 << 30);
        let first = schedule(&[kubia(5)], &nodes, &Placement::new());
        let again = schedule(&[kubia(5)], &nodes, &first.placement);
        assert_eq!(again, first);
        // 2/2/1 stays 2/2/1 whichever node has the one.
        let current = placement(&[("kubia", &[("a", 1), ("b", 2), ("c", 2)])]);
        assert_eq!(schedule(&[kubia(5)], &nodes, &current).placement, current);
    }

    #[test]
    fn a_lost_nodes_replicas_go_to_the_survivors() {
        let mut nodes = nodes(&["a", "b", "c"], 8 << 30);
        let current = placement(&[("kubia", &[("a", 2), ("b", 2), ("c", 2)])]);
        nodes[1].ready = false;
        let out = schedule(&[kubia(6)], &nodes, &current);
        assert_eq!(counts(&out.placement, "kubia"), pairs(&[("a", 3), ("c", 3)]));
        // And a node that is gone from the list altogether.
        let out = schedule(&[kubia(6)], &nodes[..1], &current);
        assert_eq!(counts(&out.placement, "kubia"), pairs(&[("a", 6)]));
    }

    #[test]
    fn a_node_that_joins_takes_its_share_one_move_per_pass() {
        let nodes = nodes(&["a", "b", "c"], 8 << 30);
        let mut current = placement(&[("kubia", &[("a", 3), ("b", 3)])]);
        let mut passes = 0;
        loop {
            let next = schedule(&[kubia(6)], &nodes, &current).placement;
            if next == current {
                break;
            }
            let moved: u32 = next["kubia"]
                .iter()
                .map(|(node, count)| count.saturating_sub(current["kubia"].get(node).copied().unwrap_or(0)))
                .sum();
            assert_eq!(moved, 1, "one replica moves per pass: {current:?} → {next:?}");
            current = next;
            passes += 1;
            assert!(passes < 10);
        }
        assert_eq!(counts(&current, "kubia"), pairs(&[("a", 2), ("b", 2), ("c", 2)]));
        assert_eq!(passes, 2);
    }

    #[test]
    fn scaling_down_takes_from_the_node_with_the_most() {
        let nodes = nodes(&["a", "b", "c"], 8 << 30);
        let current = placement(&[("kubia", &[("a", 1), ("b", 3), ("c", 2)])]);
        let out = schedule(&[kubia(4)], &nodes, &current);
        assert_eq!(counts(&out.placement, "kubia"), pairs(&[("a", 1), ("b", 2), ("c", 1)]));
        let out = schedule(&[kubia(0)], &nodes, &current);
        assert!(!out.placement.contains_key("kubia"));
    }

    #[test]
    fn capacity_is_never_exceeded_and_the_rest_is_unschedulable() {
        // Each node holds two 64Mi replicas.
        let nodes = nodes(&["a", "b"], 128 * MI);
        let out = schedule(&[kubia(5)], &nodes, &Placement::new());
        assert_eq!(counts(&out.placement, "kubia"), pairs(&[("a", 2), ("b", 2)]));
        assert_eq!(out.unschedulable.len(), 1);
        let (service, missing, why) = &out.unschedulable[0];
        assert_eq!((service.as_str(), *missing), ("kubia", 1));
        assert!(why.contains("memory"), "{why}");
        let out = schedule(&[kubia(1)], &[], &Placement::new());
        assert_eq!(out.unschedulable[0].2, "no node is ready");
    }

    #[test]
    fn services_share_nodes_by_reserved_memory() {
        let nodes = nodes(&["a", "b"], 8 << 30);
        let big = Demand { service: "big".into(), replicas: 1, memory: 1 << 30 };
        let small = Demand { service: "small".into(), replicas: 1, memory: 64 * MI };
        let out = schedule(&[small.clone(), big.clone()], &nodes, &Placement::new());
        // "big" comes first by name and takes a; "small" goes where less is reserved.
        assert_eq!(counts(&out.placement, "big"), pairs(&[("a", 1)]));
        assert_eq!(counts(&out.placement, "small"), pairs(&[("b", 1)]));
        // The same whatever the order of the input.
        assert_eq!(schedule(&[big, small], &nodes, &Placement::new()), out);
    }

    #[test]
    fn deleted_services_leave_the_placement() {
        let nodes = nodes(&["a"], 8 << 30);
        let current = placement(&[("gone", &[("a", 2)]), ("kubia", &[("a", 1)])]);
        let out = schedule(&[kubia(1)], &nodes, &current);
        assert_eq!(out.placement, placement(&[("kubia", &[("a", 1)])]));
    }
}
