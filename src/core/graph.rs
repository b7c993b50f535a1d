//! Dependency graphs over units: cycles (named), topological order and transitive dependents; pure.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::unit::{UnitName, UnitSet};

/// A directed graph where an edge `a -> b` means "a depends on b" (b comes first).
///
/// Every traversal runs in node order, so results are deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepGraph<N: Ord + Clone> {
    deps: BTreeMap<N, BTreeSet<N>>,
}

impl<N: Ord + Clone> Default for DepGraph<N> {
    fn default() -> Self {
        DepGraph {
            deps: BTreeMap::new(),
        }
    }
}

impl<N: Ord + Clone> DepGraph<N> {
    pub fn new() -> Self {
        DepGraph::default()
    }

    pub fn add_node(&mut self, node: N) {
        self.deps.entry(node).or_default();
    }

    /// `from` depends on `to`; both become nodes.
    pub fn add_edge(&mut self, from: N, to: N) {
        self.add_node(to.clone());
        self.deps.entry(from).or_default().insert(to);
    }

    pub fn nodes(&self) -> impl Iterator<Item = &N> {
        self.deps.keys()
    }

    /// Direct dependencies of `node`.
    pub fn dependencies_of(&self, node: &N) -> impl Iterator<Item = &N> {
        self.deps.get(node).into_iter().flatten()
    }

    /// Every node that depends on `node`, directly or not (`node` itself only if on a cycle).
    pub fn dependents(&self, node: &N) -> BTreeSet<N> {
        let mut rdeps: BTreeMap<&N, Vec<&N>> = BTreeMap::new();
        for (from, tos) in &self.deps {
            for to in tos {
                rdeps.entry(to).or_default().push(from);
            }
        }
        reach(node, |n| rdeps.get(n).cloned().unwrap_or_default())
    }

    /// Every node `node` depends on, directly or not.
    pub fn dependencies(&self, node: &N) -> BTreeSet<N> {
        reach(node, |n| self.dependencies_of(n).collect())
    }

    /// One cycle per strongly connected component that has one, as a path that returns to its
    /// start (`[a, b, c, a]`). Each starts at the component's smallest node and is a shortest
    /// cycle through it.
    pub fn cycles(&self) -> Vec<Vec<N>> {
        // A node that depends on nothing is in no cycle: left out, the thousands of units
        // with no `after` cost nothing here (the components and cycles are the same).
        let nodes: Vec<&N> = self
            .deps
            .iter()
            .filter(|(_, deps)| !deps.is_empty())
            .map(|(n, _)| n)
            .collect();
        let index: BTreeMap<&N, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let adj: Vec<Vec<usize>> = nodes
            .iter()
            .map(|n| {
                self.dependencies_of(n)
                    .filter_map(|d| index.get(d).copied())
                    .collect()
            })
            .collect();
        let mut cycles: Vec<Vec<N>> = strongly_connected(&adj)
            .into_iter()
            .filter_map(|comp| shortest_cycle(&adj, &comp))
            .map(|path| path.into_iter().map(|i| nodes[i].clone()).collect())
            .collect();
        cycles.sort();
        cycles
    }

    /// All nodes, each after everything it depends on; ties go in node order.
    /// `Err` carries a cycle (as [`DepGraph::cycles`] names it) when there is no such order.
    pub fn topological_order(&self) -> Result<Vec<N>, Vec<N>> {
        let mut waiting: BTreeMap<&N, usize> =
            self.deps.iter().map(|(n, d)| (n, d.len())).collect();
        let mut rdeps: BTreeMap<&N, Vec<&N>> = BTreeMap::new();
        for (from, tos) in &self.deps {
            for to in tos {
                rdeps.entry(to).or_default().push(from);
            }
        }
        let mut ready: BTreeSet<&N> = waiting
            .iter()
            .filter(|(_, c)| **c == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut order = Vec::with_capacity(self.deps.len());
        while let Some(n) = ready.pop_first() {
            order.push(n.clone());
            for dependent in rdeps.get(n).into_iter().flatten() {
                if let Some(count) = waiting.get_mut(dependent) {
                    *count -= 1;
                    if *count == 0 {
                        ready.insert(dependent);
                    }
                }
            }
        }
        if order.len() == self.deps.len() {
            Ok(order)
        } else {
            Err(self.cycles().into_iter().next().unwrap_or_default())
        }
    }
}

fn reach<'a, N: Ord + Clone + 'a>(start: &'a N, next: impl Fn(&'a N) -> Vec<&'a N>) -> BTreeSet<N> {
    let mut seen: BTreeSet<&N> = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(n) = todo.pop() {
        for m in next(n) {
            if seen.insert(m) {
                todo.push(m);
            }
        }
    }
    seen.into_iter().cloned().collect()
}

/// Tarjan's algorithm, iterative so a long dependency chain cannot overflow the stack.
fn strongly_connected(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = adj.len();
    let mut index: Vec<Option<usize>> = vec![None; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next_index = 0;
    let mut components = Vec::new();
    for root in 0..n {
        if index[root].is_some() {
            continue;
        }
        let mut calls = vec![(root, 0)];
        index[root] = Some(next_index);
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&(v, i)) = calls.last() {
            if let Some(&w) = adj[v].get(i) {
                if let Some(top) = calls.last_mut() {
                    top.1 += 1;
                }
                match index[w] {
                    None => {
                        index[w] = Some(next_index);
                        low[w] = next_index;
                        next_index += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        calls.push((w, 0));
                    }
                    Some(wi) if on_stack[w] => low[v] = low[v].min(wi),
                    Some(_) => {}
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if Some(low[v]) == index[v] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                components.push(comp);
            }
        }
    }
    components
}

/// A shortest cycle through the smallest node of `comp` (breadth-first), or `None` if the
/// component is a single node without a self-edge.
fn shortest_cycle(adj: &[Vec<usize>], comp: &[usize]) -> Option<Vec<usize>> {
    let start = *comp.iter().min()?;
    let members: BTreeSet<usize> = comp.iter().copied().collect();
    let mut parent: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &adj[v] {
            if w == start {
                let mut path = Vec::new();
                let mut at = v;
                while at != start {
                    path.push(at);
                    at = *parent.get(&at)?;
                }
                path.push(start);
                path.reverse();
                path.push(start);
                return Some(path);
            }
            if members.contains(&w) && !parent.contains_key(&w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    None
}

/// The ordering graph of a unit set: `after` and `requires` edges between known units.
pub fn ordering_graph(units: &UnitSet) -> DepGraph<UnitName> {
    let mut g = DepGraph::new();
    for (name, unit) in units {
        g.add_node(name.clone());
        for dep in unit.ordering_deps().filter(|d| units.contains_key(*d)) {
            g.add_edge(name.clone(), dep.clone());
        }
    }
    g
}

/// The ordering graph plus "a member depends on its slice", the order to start units in
/// (and, reversed, to stop them).
pub fn dependency_graph(units: &UnitSet) -> DepGraph<UnitName> {
    let mut g = ordering_graph(units);
    for (name, unit) in units {
        if let Some(slice) = unit.slice.as_ref().filter(|s| units.contains_key(*s)) {
            g.add_edge(name.clone(), slice.clone());
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&'static str, &'static str)]) -> DepGraph<&'static str> {
        let mut g = DepGraph::new();
        for (a, b) in edges {
            g.add_edge(*a, *b);
        }
        g
    }

    #[test]
    fn acyclic_graph_has_no_cycles_and_orders_deps_first() {
        let mut g = graph(&[
            ("web", "db"),
            ("web", "cache"),
            ("cache", "db"),
            ("worker", "db"),
        ]);
        g.add_node("lonely");
        assert!(g.cycles().is_empty());
        assert_eq!(
            g.topological_order(),
            Ok(vec!["db", "cache", "lonely", "web", "worker"])
        );
    }

    #[test]
    fn names_each_cycle_once_from_its_smallest_node() {
        let g = graph(&[
            ("a", "b"),
            ("b", "c"),
            ("c", "a"),
            ("x", "y"),
            ("y", "x"),
            ("z", "a"),
        ]);
        assert_eq!(
            g.cycles(),
            vec![vec!["a", "b", "c", "a"], vec!["x", "y", "x"]]
        );
        assert_eq!(g.topological_order(), Err(vec!["a", "b", "c", "a"]));
    }

    #[test]
    fn finds_a_shortest_cycle_and_self_loops() {
        // a -> b -> c -> d -> a and a shortcut c -> a.
        let g = graph(&[("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"), ("c", "a")]);
        assert_eq!(g.cycles(), vec![vec!["a", "b", "c", "a"]]);
        let g = graph(&[("a", "a")]);
        assert_eq!(g.cycles(), vec![vec!["a", "a"]]);
    }

    #[test]
    fn cycle_entered_from_a_larger_node_is_forwards() {
        let g = graph(&[("d", "c"), ("c", "b"), ("b", "d")]);
        assert_eq!(g.cycles(), vec![vec!["b", "d", "c", "b"]]);
    }

    #[test]
    fn dependents_and_dependencies_are_transitive() {
        let g = graph(&[
            ("web", "api"),
            ("api", "db"),
            ("batch", "db"),
            ("db", "disk"),
        ]);
        assert_eq!(g.dependents(&"db"), BTreeSet::from(["api", "batch", "web"]));
        assert_eq!(g.dependents(&"web"), BTreeSet::new());
        assert_eq!(
            g.dependencies(&"web"),
            BTreeSet::from(["api", "db", "disk"])
        );
        assert_eq!(g.dependencies_of(&"web").collect::<Vec<_>>(), vec![&"api"]);
        assert_eq!(g.nodes().count(), 5);
    }

    #[test]
    fn long_chains_do_not_overflow() {
        let names: Vec<String> = (0..20_000).map(|i| format!("u{i:06}")).collect();
        let mut g = DepGraph::new();
        for w in names.windows(2) {
            g.add_edge(w[0].clone(), w[1].clone());
        }
        assert!(g.cycles().is_empty());
        g.add_edge(names[names.len() - 1].clone(), names[0].clone());
        assert_eq!(g.cycles()[0].len(), names.len() + 1);
    }
}
