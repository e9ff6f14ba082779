//! Desired state on a node: which of the workflows published to the fleet are for this node,
//! checking and keeping them as files of its own, and what it reports back.
//!
//! A workflow is published under a target (`all`, a label or a node name). When several
//! targets of one name address a node, the closest wins: its node name, then a label (of two
//! labels, the later publication), then `all`. Applied workflows live as files in the fleet
//! directory beside the state file (`<state file>.fleet/NAME.yaml`), so a node that starts
//! without its fleet server runs what it last applied. A local workflow file always wins over
//! an applied workflow of the same name: the applied one is refused on that node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::names::Identity;
use super::records::{decode, Desired};
use crate::contract::Catalog;
use crate::executor::Registry;
use crate::validate::{load_workflow, workflow_files};

/// The first line of an applied file: what it was applied from.
const HEADER: &str = "# picoflow fleet: target=";

/// Where a workflow came from in the bucket: its target and revision.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Origin {
    pub(crate) target: String,
    pub(crate) revision: u64,
}

/// Per workflow name, the desired entry that addresses `id` most closely, from the bucket's
/// entries `key (TARGET.NAME) → revision`.
pub(crate) fn choose(id: &Identity, entries: &BTreeMap<String, u64>) -> BTreeMap<String, Origin> {
    let mut best: BTreeMap<String, (u8, Origin)> = BTreeMap::new();
    for (key, &revision) in entries {
        let Some((target, name)) = super::names::split_key(key) else {
            continue;
        };
        let Some(close) = id.closeness(target) else {
            continue;
        };
        let o = Origin {
            target: target.to_string(),
            revision,
        };
        match best.get(name) {
            Some((c, prev)) if (*c, prev.revision) >= (close, revision) => {}
            _ => {
                best.insert(name.to_string(), (close, o));
            }
        }
    }
    best.into_iter().map(|(n, (_, o))| (n, o)).collect()
}

/// The file of applied workflow `name`.
pub(crate) fn file_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.yaml"))
}

/// The applied workflows in `dir`: name → origin, from each file's first line.
pub(crate) fn applied_in(dir: &Path) -> BTreeMap<String, Origin> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let path = e.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".yaml"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(o) = text.lines().next().and_then(parse_header) {
            out.insert(name.to_string(), o);
        }
    }
    out
}

fn parse_header(line: &str) -> Option<Origin> {
    let rest = line.strip_prefix(HEADER)?;
    let (target, rev) = rest.split_once(" revision=")?;
    Some(Origin {
        target: target.to_string(),
        revision: rev.trim().parse().ok()?,
    })
}

/// Checks the desired record `value` for workflow `name` as the node would load it, and
/// keeps it in `dir`. The reason when refused.
pub(crate) fn apply(
    dir: &Path,
    name: &str,
    origin: &Origin,
    value: &[u8],
    registry: &Registry,
    catalog: &Catalog,
) -> Result<(), String> {
    let d: Desired = decode(value)?;
    check_shape(&d.yaml)?;
    let shown = format!("{} (fleet {}.{name})", d.file, origin.target);
    let wf =
        crate::validate::parse_workflow(&d.yaml, &shown, registry).map_err(|e| e.to_string())?;
    if wf.name != name {
        return Err(format!(
            "the file defines workflow '{}', not '{name}'",
            wf.name
        ));
    }
    if let Some(local) = catalog.get(name).filter(|e| e.source.parent() != Some(dir)) {
        return Err(local_wins(&local.source));
    }
    crate::private::create_dirs_for(dir, "the fleet's workflows").map_err(|e| e.to_string())?;
    let text = format!(
        "{HEADER}{} revision={}\n{}",
        origin.target, origin.revision, d.yaml
    );
    crate::private::replace(&file_of(dir, name), text.as_bytes()).map_err(|e| e.to_string())
}

/// Why a published workflow is refused where the local file `local` has its name.
pub(crate) fn local_wins(local: &Path) -> String {
    format!(
        "a local workflow file ({}) has this name; local files win",
        local.display()
    )
}

/// The deepest nesting of flow collections (`[`, `{`) and the deepest indentation a
/// workflow from the fleet may have. Real workflows stay far below both; the YAML reader's
/// time grows with the square of the depth, so a file of nested brackets under the message
/// limit would keep the fleet thread busy for an hour.
const MAX_FLOW_DEPTH: usize = 64;
const MAX_INDENT: usize = 256;

/// Refuses text nested deeper than [`MAX_FLOW_DEPTH`] brackets or indented deeper than
/// [`MAX_INDENT`] columns, before the YAML reader sees it (brackets inside quotes count too:
/// a real workflow does not come near the bound either way).
fn check_shape(yaml: &str) -> Result<(), String> {
    let mut depth = 0usize;
    for (n, line) in yaml.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if indent > MAX_INDENT {
            return Err(format!(
                "line {}: indented {indent} columns, more than the {MAX_INDENT} a workflow \
                 from the fleet may use",
                n + 1
            ));
        }
        for b in line.bytes() {
            match b {
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_FLOW_DEPTH {
                return Err(format!(
                    "line {}: brackets nested more than {MAX_FLOW_DEPTH} deep",
                    n + 1
                ));
            }
        }
    }
    Ok(())
}

/// Adds the workflows applied from the fleet (the files of `dir`) to `files`, the local
/// ones, as `daemon::load` reads them: local files win, and an applied file that no longer
/// validates is left out (both logged).
pub(crate) fn add_applied(
    files: &mut Vec<(PathBuf, crate::error::Result<crate::model::Workflow>)>,
    dir: &Path,
    registry: &Registry,
) {
    let local: std::collections::BTreeSet<String> = files
        .iter()
        .filter_map(|(_, wf)| wf.as_ref().ok().map(|wf| wf.name.clone()))
        .collect();
    let Ok(found) = workflow_files(dir) else {
        return;
    };
    for f in found {
        match load_workflow(&f, registry) {
            Ok(wf) if local.contains(&wf.name) => {
                tracing::warn!(workflow = %wf.name, file = %f.display(),
                    "fleet: a local workflow file has this name; the local one runs");
            }
            Ok(wf) => files.push((f, Ok(wf))),
            Err(e) => {
                tracing::error!(file = %f.display(), error = %e, "fleet: applied workflow does not validate; left out")
            }
        }
    }
}

/// Removes applied workflow `name`.
pub(crate) fn remove(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(file_of(dir, name));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
        v.iter().map(|(k, r)| (k.to_string(), *r)).collect()
    }

    #[test]
    fn the_closest_target_wins() {
        let id = Identity {
            node: "pi-1".into(),
            labels: vec!["camera".into(), "garage".into()],
        };
        let e = entries(&[
            ("all.backup", 9),
            ("camera.backup", 3),
            ("garage.backup", 5),
            ("all.health", 2),
            ("pi-2.health", 7),
            ("pi-1.sync", 1),
            ("all.sync", 8),
            ("other.only", 4),
            ("malformed", 1),
        ]);
        let c = choose(&id, &e);
        let pick = |n: &str| c.get(n).map(|o| (o.target.as_str(), o.revision));
        assert_eq!(pick("backup"), Some(("garage", 5)));
        assert_eq!(pick("health"), Some(("all", 2)));
        assert_eq!(pick("sync"), Some(("pi-1", 1)));
        assert_eq!(pick("only"), None);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn deeply_nested_text_is_refused_before_it_is_parsed() {
        let deep = format!("name: x\ntasks: {}{}\n", "[".repeat(70), "]".repeat(70));
        let e = check_shape(&deep).unwrap_err();
        assert!(e.contains("line 2: brackets nested more than 64"), "{e}");
        let indented = format!("name: x\n{}a: 1\n", " ".repeat(300));
        assert!(check_shape(&indented)
            .unwrap_err()
            .contains("indented 300 columns"));
        let normal =
            "name: x\ntasks:\n  - name: a\n    type: shell\n    config: {command: \"echo [1]\"}\n";
        assert_eq!(check_shape(normal), Ok(()));
    }

    #[test]
    fn the_header_says_where_a_file_came_from() {
        let o = parse_header("# picoflow fleet: target=camera revision=12").unwrap();
        assert_eq!((o.target.as_str(), o.revision), ("camera", 12));
        assert_eq!(parse_header("name: x"), None);
    }
}
