//! Every name the fleet uses on the NATS server, under one prefix (`[fleet] prefix`,
//! `picoflow` by default), and which of them concern a node.
//!
//! | what | name |
//! | --- | --- |
//! | inventory (key-value) | bucket `P-nodes`, key `NODE` |
//! | desired workflows (key-value) | bucket `P-workflows`, key `TARGET.WORKFLOW` |
//! | what each node applied (key-value) | bucket `P-applied`, key `NODE.WORKFLOW` |
//! | execution records (stream `P-results`) | subject `P.exec.NODE.WORKFLOW` |
//! | run requests (core NATS) | subject `P.run.TARGET` |
//! | answers to run requests (core NATS) | subject `P.answer.NODE.REQUEST` |
//!
//! A target is `all`, a label or a node name: a node takes what is addressed to `all`, to its
//! name and to each of its labels.

/// The names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }

    pub(crate) fn nodes_bucket(&self) -> String {
        format!("{}-nodes", self.prefix)
    }

    pub(crate) fn workflows_bucket(&self) -> String {
        format!("{}-workflows", self.prefix)
    }

    pub(crate) fn applied_bucket(&self) -> String {
        format!("{}-applied", self.prefix)
    }

    pub(crate) fn results_stream(&self) -> String {
        format!("{}-results", self.prefix)
    }

    /// The subjects of the results stream.
    pub(crate) fn results_subjects(&self) -> String {
        format!("{}.exec.>", self.prefix)
    }

    /// Where `node` sends the records of `workflow`'s executions.
    pub(crate) fn results_subject(&self, node: &str, workflow: &str) -> String {
        format!("{}.exec.{node}.{workflow}", self.prefix)
    }

    /// The records of one node and/or one workflow (`None`: any).
    pub(crate) fn results_filter(&self, node: Option<&str>, workflow: Option<&str>) -> String {
        format!(
            "{}.exec.{}.{}",
            self.prefix,
            node.unwrap_or("*"),
            workflow.unwrap_or("*")
        )
    }

    /// Where `node` answers the run request `id`: under its own name, so that the server's
    /// permissions vouch for who answered.
    pub(crate) fn answer_subject(&self, node: &str, id: &str) -> String {
        format!("{}.answer.{node}.{id}", self.prefix)
    }

    /// Every node's answer to the run request `id`.
    pub(crate) fn answers_filter(&self, id: &str) -> String {
        format!("{}.answer.*.{id}", self.prefix)
    }

    /// The node of an answer's subject; `None` for a subject of another shape.
    pub(crate) fn answer_node<'s>(&self, subject: &'s str) -> Option<&'s str> {
        let rest = subject.strip_prefix(&format!("{}.answer.", self.prefix))?;
        rest.split_once('.').map(|(node, _)| node)
    }

    /// Where a run request for `target` goes.
    pub(crate) fn run_subject(&self, target: &str) -> String {
        format!("{}.run.{target}", self.prefix)
    }
}

/// The key of a desired workflow: `TARGET.WORKFLOW`.
pub(crate) fn desired_key(target: &str, workflow: &str) -> String {
    format!("{target}.{workflow}")
}

/// `TARGET.WORKFLOW` split; `None` for a key of another shape.
pub(crate) fn split_key(key: &str) -> Option<(&str, &str)> {
    let (a, b) = key.split_once('.')?;
    (crate::model::is_valid_name(a) && crate::model::is_valid_name(b)).then_some((a, b))
}

/// Who a node is: its name and labels. Says which targets address it and how closely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) node: String,
    pub(crate) labels: Vec<String>,
}

impl Identity {
    /// How closely `target` addresses this node: 3 by its name, 2 by a label, 1 as `all`;
    /// `None` when it does not.
    pub(crate) fn closeness(&self, target: &str) -> Option<u8> {
        if target == self.node {
            Some(3)
        } else if self.labels.iter().any(|l| l == target) {
            Some(2)
        } else if target == "all" {
            Some(1)
        } else {
            None
        }
    }

    /// The targets that address this node, each a run-request subject it listens on.
    pub(crate) fn targets(&self) -> Vec<&str> {
        let mut t = vec!["all", self.node.as_str()];
        t.extend(self.labels.iter().map(String::as_str));
        t.dedup();
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pi() -> Identity {
        Identity {
            node: "pi-1".into(),
            labels: vec!["camera".into(), "garage".into()],
        }
    }

    #[test]
    fn a_name_beats_a_label_beats_all() {
        let id = pi();
        assert_eq!(id.closeness("pi-1"), Some(3));
        assert_eq!(id.closeness("garage"), Some(2));
        assert_eq!(id.closeness("all"), Some(1));
        assert_eq!(id.closeness("pi-2"), None);
        assert_eq!(id.targets(), ["all", "pi-1", "camera", "garage"]);
    }

    #[test]
    fn keys_and_subjects() {
        let n = Names::new("pf");
        assert_eq!(n.results_subject("pi-1", "backup"), "pf.exec.pi-1.backup");
        assert_eq!(n.results_filter(None, Some("backup")), "pf.exec.*.backup");
        assert_eq!(n.run_subject("camera"), "pf.run.camera");
        assert_eq!(n.answer_subject("pi-1", "r1"), "pf.answer.pi-1.r1");
        assert_eq!(n.answers_filter("r1"), "pf.answer.*.r1");
        assert_eq!(n.answer_node("pf.answer.pi-1.r1"), Some("pi-1"));
        assert_eq!(n.answer_node("pf.exec.pi-1.r1"), None);
        assert_eq!(
            split_key(&desired_key("all", "backup")),
            Some(("all", "backup"))
        );
        assert_eq!(split_key("nodot"), None);
        assert_eq!(split_key("a.b.c"), None);
    }
}
