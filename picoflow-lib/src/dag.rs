//! The task graph of a workflow, on petgraph (DAG-001, DAG-002).
//!
//! Edges point from a dependency to its dependent, i.e. in execution order.

use std::collections::HashMap;
use std::fmt::Write as _;

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use crate::model::Workflow;

/// A validated, acyclic dependency graph of a workflow's tasks.
#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<usize, ()>,
    names: Vec<String>,
    order: Vec<usize>,
    levels: Vec<usize>,
    /// Per task: its condition, rule and loop, in words (empty for a plain task).
    notes: Vec<Vec<String>>,
    /// Handlers: list (`on_failure` …) and task name.
    handlers: Vec<(&'static str, String)>,
}

/// Why a workflow's dependencies do not form a DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DagError {
    /// Problems with individual dependencies (unknown task, self-dependency, duplicate name).
    Problems(Vec<String>),
    /// A cycle, as task names with the first repeated at the end.
    Cycle(Vec<String>),
}

impl Dag {
    /// Builds the graph; reports every bad reference at once, or the first cycle found.
    pub(crate) fn build(wf: &Workflow) -> Result<Dag, DagError> {
        let n = wf.tasks.len();
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(n);
        let mut problems = Vec::new();
        for (i, t) in wf.tasks.iter().enumerate() {
            if index.insert(t.name.as_str(), i).is_some() {
                problems.push(format!(
                    "task '{}': name is used by more than one task (task names must be unique)",
                    t.name
                ));
            }
        }
        let mut graph = DiGraph::<usize, ()>::with_capacity(n, n);
        for i in 0..n {
            graph.add_node(i);
        }
        for (i, t) in wf.tasks.iter().enumerate() {
            for dep in &t.depends_on {
                if dep == &t.name {
                    problems.push(format!(
                        "task '{}': depends_on: a task cannot depend on itself",
                        t.name
                    ));
                    continue;
                }
                match index.get(dep.as_str()) {
                    Some(&d) => {
                        graph.update_edge(NodeIndex::new(d), NodeIndex::new(i), ());
                    }
                    None => problems.push(format!(
                        "task '{}': depends_on: unknown task '{dep}'",
                        t.name
                    )),
                }
            }
        }
        if !problems.is_empty() {
            return Err(DagError::Problems(problems));
        }
        let order: Vec<usize> = match toposort(&graph, None) {
            Ok(o) => o.into_iter().map(|n| n.index()).collect(),
            Err(c) => {
                let names: Vec<&str> = wf.tasks.iter().map(|t| t.name.as_str()).collect();
                return Err(DagError::Cycle(cycle_path(&graph, c.node_id(), &names)));
            }
        };
        let mut levels = vec![0usize; n];
        for &i in &order {
            let lvl = graph
                .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                .map(|d| levels[d.index()] + 1)
                .max()
                .unwrap_or(0);
            levels[i] = lvl;
        }
        Ok(Dag {
            graph,
            names: wf.tasks.iter().map(|t| t.name.clone()).collect(),
            order,
            levels,
            notes: wf.tasks.iter().map(crate::flow::notes).collect(),
            handlers: wf
                .handlers
                .all()
                .map(|(list, t)| (list, t.name.clone()))
                .collect(),
        })
    }

    /// The graph of an already validated workflow (validation errors are reported as such).
    pub fn from_workflow(wf: &Workflow) -> crate::error::Result<Dag> {
        Dag::build(wf).map_err(|e| match e {
            DagError::Problems(problems) => crate::error::Error::Invalid {
                file: wf.name.clone(),
                problems,
            },
            DagError::Cycle(path) => crate::error::Error::Cycle {
                file: wf.name.clone(),
                path,
            },
        })
    }

    /// Number of tasks.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the graph has no tasks.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Task names in a topological (execution) order.
    pub fn topological_order(&self) -> impl Iterator<Item = &str> + '_ {
        self.order.iter().map(|&i| self.names[i].as_str())
    }

    /// Tasks grouped by level: level 0 has no dependencies, level k depends on level k-1 at most.
    pub fn levels(&self) -> Vec<Vec<&str>> {
        let mut out: Vec<Vec<&str>> = vec![Vec::new(); self.level_count()];
        for &i in &self.order {
            out[self.levels[i]].push(self.names[i].as_str());
        }
        out
    }

    /// Number of levels ("max parallel levels" in `validate` output).
    pub fn level_count(&self) -> usize {
        self.levels.iter().max().map_or(0, |m| m + 1)
    }

    /// Indices (file order) of the tasks that task `i` depends on.
    pub fn dependencies(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
            .map(|n| n.index())
    }

    /// Whether task `b` depends on task `a`, directly or through other tasks.
    pub fn is_ancestor(&self, a: usize, b: usize) -> bool {
        a != b
            && petgraph::algo::has_path_connecting(
                &self.graph,
                NodeIndex::new(a),
                NodeIndex::new(b),
                None,
            )
    }

    /// Indices (file order) of the tasks that depend on task `i`.
    pub fn dependents(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.graph
            .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
            .map(|n| n.index())
    }

    /// Each task's condition, trigger rule and loop, in words (empty for a plain task).
    pub fn notes(&self, i: usize) -> &[String] {
        &self.notes[i]
    }

    /// The workflow's handlers: their list (`on_success`, `on_failure`, `on_exit`) and name.
    pub fn handlers(&self) -> &[(&'static str, String)] {
        &self.handlers
    }

    /// Graphviz DOT text of the graph. Conditions, rules and loops are in the nodes' labels;
    /// handlers are a cluster run after the DAG.
    pub fn to_dot(&self, title: &str) -> String {
        let mut s = format!("digraph \"{}\" {{\n  rankdir=LR;\n", escape(title));
        for (i, name) in self.names.iter().enumerate() {
            match self.notes[i].is_empty() {
                true => {
                    let _ = writeln!(s, "  \"{}\";", escape(name));
                }
                false => {
                    let label = std::iter::once(name.as_str())
                        .chain(self.notes[i].iter().map(String::as_str))
                        .map(escape)
                        .collect::<Vec<_>>()
                        .join("\\n");
                    let _ = writeln!(s, "  \"{}\" [label=\"{label}\"];", escape(name));
                }
            }
        }
        for e in self.graph.raw_edges() {
            let _ = writeln!(
                s,
                "  \"{}\" -> \"{}\";",
                escape(&self.names[e.source().index()]),
                escape(&self.names[e.target().index()])
            );
        }
        if !self.handlers.is_empty() {
            s.push_str("  subgraph cluster_handlers {\n    label=\"after the run\";\n");
            for (list, name) in &self.handlers {
                let _ = writeln!(
                    s,
                    "    \"{}\" [label=\"{}\\n{list}\", shape=box];",
                    escape(name),
                    escape(name)
                );
            }
            s.push_str("  }\n");
        }
        s.push_str("}\n");
        s
    }

    /// Mermaid flowchart text of the graph, with the same annotations as [`Dag::to_dot`].
    pub fn to_mermaid(&self) -> String {
        let mut s = String::from("flowchart LR\n");
        for (i, name) in self.names.iter().enumerate() {
            let mut label = name.clone();
            for note in &self.notes[i] {
                label.push_str("<br/>");
                label.push_str(note);
            }
            let _ = writeln!(s, "  t{i}[\"{}\"]", label.replace('"', "#quot;"));
        }
        for e in self.graph.raw_edges() {
            let _ = writeln!(s, "  t{} --> t{}", e.source().index(), e.target().index());
        }
        if !self.handlers.is_empty() {
            s.push_str("  subgraph after the run\n");
            for (k, (list, name)) in self.handlers.iter().enumerate() {
                let _ = writeln!(s, "    h{k}[\"{name}<br/>{list}\"]");
            }
            s.push_str("  end\n");
        }
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A cycle through `start`, found by depth-first search, in execution order.
fn cycle_path(graph: &DiGraph<usize, ()>, start: NodeIndex, names: &[&str]) -> Vec<String> {
    // Iterative DFS over the whole graph with colours; the first back edge closes a cycle.
    let n = graph.node_count();
    let mut colour = vec![0u8; n]; // 0 white, 1 on stack, 2 done
    let mut parent = vec![usize::MAX; n];
    let roots = std::iter::once(start.index()).chain(0..n);
    for root in roots {
        if colour[root] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, Vec<usize>)> = Vec::new();
        colour[root] = 1;
        stack.push((
            root,
            graph
                .neighbors(NodeIndex::new(root))
                .map(|x| x.index())
                .collect(),
        ));
        while let Some((node, next)) = stack.last_mut() {
            let node = *node;
            match next.pop() {
                Some(m) if colour[m] == 0 => {
                    colour[m] = 1;
                    parent[m] = node;
                    stack.push((
                        m,
                        graph
                            .neighbors(NodeIndex::new(m))
                            .map(|x| x.index())
                            .collect(),
                    ));
                }
                Some(m) if colour[m] == 1 => {
                    let mut path = vec![m];
                    let mut cur = node;
                    while cur != m {
                        path.push(cur);
                        cur = parent[cur];
                    }
                    path.reverse();
                    // Start at the task that comes first in the file, so the report is stable.
                    let first = (0..path.len()).min_by_key(|&i| path[i]).unwrap_or(0);
                    path.rotate_left(first);
                    path.push(path[0]);
                    return path.into_iter().map(|i| names[i].to_string()).collect();
                }
                Some(_) => {}
                None => {
                    colour[node] = 2;
                    stack.pop();
                }
            }
        }
    }
    vec![names[start.index()].to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ShellConfig, Task, TaskConfig, WorkflowConfig};

    fn wf(edges: &[(&str, &[&str])]) -> Workflow {
        Workflow {
            name: "w".into(),
            description: None,
            schedule: None,
            timezone: None,
            allow_concurrent: false,
            catchup: Default::default(),
            jitter: None,
            config: WorkflowConfig::default(),
            requires: None,
            tasks: edges
                .iter()
                .map(|(n, d)| Task {
                    depends_on: d.iter().map(|s| s.to_string()).collect(),
                    ..Task::new(*n, "shell", TaskConfig::Shell(ShellConfig::default()))
                })
                .collect(),
            handlers: Default::default(),
        }
    }

    #[test]
    fn order_and_levels() {
        let dag = Dag::build(&wf(&[("c", &["a", "b"]), ("a", &[]), ("b", &["a"])])).unwrap();
        let order: Vec<_> = dag.topological_order().collect();
        assert_eq!(order, vec!["a", "b", "c"]);
        assert_eq!(dag.level_count(), 3);
        assert_eq!(dag.levels(), vec![vec!["a"], vec!["b"], vec!["c"]]);
        assert!(dag.to_dot("w").contains("\"a\" -> \"b\""));
        assert!(dag.to_mermaid().contains("-->"));
    }

    #[test]
    fn cycle_is_reported_as_a_path() {
        let err = Dag::build(&wf(&[
            ("alpha", &["gamma"]),
            ("beta", &["alpha"]),
            ("gamma", &["beta"]),
            ("free", &[]),
        ]))
        .unwrap_err();
        match err {
            DagError::Cycle(p) => {
                assert_eq!(p.first(), p.last());
                assert_eq!(p.len(), 4);
                let joined = p.join(" -> ");
                assert!(
                    [
                        "alpha -> beta -> gamma -> alpha",
                        "beta -> gamma -> alpha -> beta",
                        "gamma -> alpha -> beta -> gamma"
                    ]
                    .contains(&joined.as_str()),
                    "{joined}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_references() {
        let err = Dag::build(&wf(&[("a", &["a"]), ("b", &["nope"]), ("b", &[])])).unwrap_err();
        match err {
            DagError::Problems(p) => {
                let all = p.join("\n");
                assert!(all.contains("cannot depend on itself"));
                assert!(all.contains("unknown task 'nope'"));
                assert!(all.contains("more than one task"));
            }
            other => panic!("{other:?}"),
        }
    }
}
