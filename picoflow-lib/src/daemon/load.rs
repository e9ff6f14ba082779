//! Loading the workflow files: every one at start, where one that does not validate stops the
//! daemon, and again on SIGHUP, where one that does not validate keeps its previous version.
//! In both, one workflow name in two files is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::timeguard::not_before;
use crate::contract::CatalogEntry;
use crate::error::{Error, Result};
use crate::executor::Registry;
use crate::model::Workflow;
use crate::schedule::{host_name, Schedule};
use crate::store::Store;
use crate::validate::{load_workflow, workflow_files};

/// A workflow the daemon runs, with its schedule and next fire.
pub(super) struct Loaded {
    pub(super) wf: Arc<Workflow>,
    pub(super) schedule: Option<Schedule>,
    /// The fixed delay of every fire (jitter).
    pub(super) offset: Duration,
    pub(super) next: Option<DateTime<Utc>>,
    /// Fire instants up to this one are handled (fired, or given up by the catch-up policy
    /// after a step of the clock): none of them fires again, even when the wall clock goes
    /// back behind it.
    pub(super) done_until: Option<DateTime<Utc>>,
    /// The file it was loaded from.
    pub(super) source: PathBuf,
}

impl Loaded {
    pub(super) fn new(
        wf: Workflow,
        source: PathBuf,
        host: &str,
        after: DateTime<Utc>,
    ) -> Result<Loaded> {
        let schedule =
            match &wf.schedule {
                Some(expr) => Some(Schedule::parse(expr, wf.timezone.as_deref()).map_err(|m| {
                    Error::Invalid {
                        file: source.display().to_string(),
                        problems: vec![format!("schedule: {m}")],
                    }
                })?),
                None => None,
            };
        let offset = wf.fire_delay(host);
        let mut l = Loaded {
            wf: Arc::new(wf),
            schedule,
            offset,
            next: None,
            done_until: None,
            source,
        };
        l.next = l.next_after(after);
        Ok(l)
    }

    /// The next fire after `now` that was not handled yet: strictly after both `now` and
    /// [`Loaded::done_until`].
    pub(super) fn next_from(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after(not_before(now, self.done_until))
    }

    /// The fire instants in `(from, to]`, jitter included, counted up to `cap`.
    pub(super) fn fires_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cap: usize,
    ) -> usize {
        let mut t = from;
        let mut n = 0;
        while n < cap {
            match self.next_after(t) {
                Some(next) if next <= to => {
                    n += 1;
                    t = next;
                }
                _ => break,
            }
        }
        n
    }

    /// Next fire strictly after `t`, jitter included.
    pub(super) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.as_ref()?.next_after_delayed(t, self.offset)
    }

    /// How the web UI shows it.
    pub(super) fn entry(&self) -> CatalogEntry {
        CatalogEntry {
            wf: self.wf.clone(),
            source: self.source.clone(),
            next: self.next,
        }
    }
}

/// Loads every workflow file named by `paths` (files or directories). Fails naming every
/// invalid file when one or more do not validate.
pub(super) fn load_all(paths: &[PathBuf], registry: &Registry) -> Result<Vec<(PathBuf, Workflow)>> {
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        match workflow_files(p) {
            Ok(files) => {
                for f in files {
                    match load_workflow(&f, registry) {
                        Ok(wf) => ok.push((f, wf)),
                        Err(e) => problems.push(e),
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    let mut seen = BTreeMap::new();
    let mut clashes = Vec::new();
    for (f, wf) in &ok {
        if let Some(prev) = seen.insert(wf.name.clone(), f.clone()) {
            clashes.push(clash(&wf.name, &prev, f));
        }
    }
    // One problem is reported as it is, so that a missing file is an I/O error (exit 5) and
    // not an invalid workflow; several are listed together.
    if problems.len() == 1 && clashes.is_empty() {
        return Err(problems.remove(0));
    }
    if problems.is_empty() && clashes.is_empty() {
        Ok(ok)
    } else {
        Err(Error::Invalid {
            file: "daemon".into(),
            problems: problems
                .iter()
                .map(ToString::to_string)
                .chain(clashes)
                .collect(),
        })
    }
}

/// Adds the workflows applied from the fleet (the files of `dir`, when the daemon has a
/// fleet) to `files`, the local ones. Local files win: an applied workflow whose name a local
/// file uses is left out, as is one that no longer validates (both logged; the daemon goes on
/// with the rest). Nothing without the `fleet` feature.
pub(super) fn add_fleet_files(
    files: &mut Vec<(PathBuf, Result<Workflow>)>,
    dir: Option<&Path>,
    registry: &Registry,
) {
    #[cfg(feature = "fleet")]
    if let Some(dir) = dir {
        crate::fleet::add_applied(files, dir, registry);
    }
    #[cfg(not(feature = "fleet"))]
    let _ = (files, dir, registry);
}

/// [`load_all`]'s files with the fleet's applied workflows added as [`add_fleet_files`]
/// decides.
pub(super) fn with_fleet_files(
    files: Vec<(PathBuf, Workflow)>,
    dir: Option<&Path>,
    registry: &Registry,
) -> Vec<(PathBuf, Workflow)> {
    if dir.is_none() {
        return files;
    }
    let mut read = files.into_iter().map(|(p, wf)| (p, Ok(wf))).collect();
    add_fleet_files(&mut read, dir, registry);
    read.into_iter()
        .filter_map(|(p, wf)| wf.ok().map(|wf| (p, wf)))
        .collect()
}

/// The message for one workflow name in two files.
fn clash(name: &str, one: &Path, other: &Path) -> String {
    format!(
        "workflow name '{name}' is used by both {} and {}",
        one.display(),
        other.display()
    )
}

/// The daemon's workflows from the files [`load_all`] read, by name, each recorded in `store`.
pub(super) fn start(
    files: Vec<(PathBuf, Workflow)>,
    store: &Store,
) -> Result<BTreeMap<String, Loaded>> {
    let host = host_name();
    let now = Utc::now();
    let mut loaded = BTreeMap::new();
    for (path, wf) in files {
        store.record_workflow(
            &wf.name,
            wf.schedule.as_deref(),
            Some(&path.display().to_string()),
        )?;
        let l = Loaded::new(wf, path, &host, now)?;
        loaded.insert(l.wf.name.clone(), l);
    }
    Ok(loaded)
}

/// Every workflow file named by `paths` as SIGHUP finds them, loaded or not. A path that
/// cannot be listed is logged and contributes nothing. File I/O: the scheduler calls it on a
/// thread of its own.
pub(super) fn read_all(paths: &[PathBuf], registry: &Registry) -> Vec<(PathBuf, Result<Workflow>)> {
    let mut files = Vec::new();
    for p in paths {
        match workflow_files(p) {
            Ok(f) => files.extend(f),
            Err(e) => tracing::error!(error = %e, "reload: cannot list workflow files"),
        }
    }
    files
        .into_iter()
        .map(|f| {
            let wf = load_workflow(&f, registry);
            (f, wf)
        })
        .collect()
}

/// Replaces `loaded` with the workflows [`read_all`] found: a file that no longer validates
/// keeps its previous version (the error is logged). A set in which one name means two
/// workflows is refused whole, as at start, and `loaded` stays as it was. Returns whether
/// `loaded` was replaced.
pub(super) fn reload(
    loaded: &mut BTreeMap<String, Loaded>,
    read: Vec<(PathBuf, Result<Workflow>)>,
    now: DateTime<Utc>,
) -> bool {
    let host = host_name();
    let mut fresh: BTreeMap<String, Loaded> = BTreeMap::new();
    let mut kept = Vec::new();
    let mut ambiguous = Vec::new();
    for (f, wf) in read {
        match wf.and_then(|wf| Loaded::new(wf, f.clone(), &host, now)) {
            Ok(l) => match fresh.get(&l.wf.name) {
                Some(other) => ambiguous.push(clash(&l.wf.name, &other.source, &f)),
                None => {
                    fresh.insert(l.wf.name.clone(), l);
                }
            },
            Err(e) => {
                tracing::error!(file = %f.display(), error = %e, "reload: invalid workflow; keeping its previous version");
                kept.extend(
                    loaded
                        .values()
                        .filter(|l| l.source == f)
                        .map(|l| l.wf.name.clone()),
                );
            }
        }
    }
    for name in &kept {
        if let (Some(new), Some(old)) = (fresh.get(name), loaded.get(name)) {
            ambiguous.push(clash(name, &old.source, &new.source));
        }
    }
    if !ambiguous.is_empty() {
        for problem in &ambiguous {
            tracing::error!(problem = %problem, "reload refused; keeping the previous workflows");
        }
        return false;
    }
    for name in kept {
        if let Some(prev) = loaded.remove(&name) {
            fresh.insert(name, prev);
        }
    }
    // What fired before the reload stays fired, whatever the wall clock says now.
    for l in fresh.values_mut() {
        if let Some(prev) = loaded.get(&l.wf.name) {
            l.done_until = prev.done_until;
            l.next = l.next_from(now);
        }
    }
    *loaded = fresh;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::parse_workflow;

    fn read(name: &str, file: &str, valid: bool) -> (PathBuf, Result<Workflow>) {
        let command = if valid { "true" } else { "" };
        let yaml = format!(
            "name: {name}\nschedule: \"0 * * * *\"\ntasks:\n  - name: t\n    type: shell\n    \
             config:\n      command: \"{command}\"\n"
        );
        let wf = parse_workflow(&yaml, file, &Registry::builtin());
        assert_eq!(wf.is_ok(), valid, "{wf:?}");
        (PathBuf::from(file), wf)
    }

    fn loaded(files: &[(&str, &str)]) -> BTreeMap<String, Loaded> {
        let mut set = BTreeMap::new();
        assert!(reload(
            &mut set,
            files.iter().map(|(n, f)| read(n, f, true)).collect(),
            Utc::now()
        ));
        set
    }

    fn sources(set: &BTreeMap<String, Loaded>) -> Vec<(String, PathBuf)> {
        set.iter()
            .map(|(n, l)| (n.clone(), l.source.clone()))
            .collect()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn an_instant_already_fired_never_fires_again_after_the_clock_went_back() {
        let (path, wf) = read("h", "h.yaml", true); // hourly, at minute 0
        let mut l = Loaded::new(wf.unwrap(), path, "host", at("2026-01-01T09:59:00Z")).unwrap();
        assert_eq!(l.next, Some(at("2026-01-01T10:00:00Z")));
        l.done_until = l.next;
        // An hour back, across the 10:00 fire: the next one is 11:00, not 10:00 again.
        assert_eq!(
            l.next_from(at("2026-01-01T09:30:00Z")),
            Some(at("2026-01-01T11:00:00Z"))
        );
        assert_eq!(
            l.next_from(at("2026-01-01T12:30:00Z")),
            Some(at("2026-01-01T13:00:00Z"))
        );
        // A reload keeps what was handled.
        let mut set = BTreeMap::from([("h".to_string(), l)]);
        assert!(reload(
            &mut set,
            vec![read("h", "h.yaml", true)],
            at("2026-01-01T09:30:00Z")
        ));
        assert_eq!(set["h"].next, Some(at("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn fires_between_counts_up_to_its_cap() {
        let (path, wf) = read("h", "h.yaml", true);
        let l = Loaded::new(wf.unwrap(), path, "host", at("2026-01-01T00:00:00Z")).unwrap();
        let (from, to) = (at("2026-01-01T00:00:00Z"), at("2026-01-31T00:00:00Z"));
        assert_eq!(l.fires_between(from, to, 5), 5);
        assert_eq!(l.fires_between(from, at("2026-01-01T03:00:00Z"), 100), 3);
        assert_eq!(l.fires_between(from, from, 100), 0);
    }

    #[test]
    fn a_reload_swaps_in_the_files_found_now() {
        let mut set = loaded(&[("a", "a.yaml"), ("b", "b.yaml")]);
        let now = Utc::now();
        assert!(reload(&mut set, vec![read("c", "c.yaml", true)], now));
        assert_eq!(sources(&set), [("c".into(), PathBuf::from("c.yaml"))]);
        assert!(set["c"].next.is_some_and(|n| n > now));
    }

    #[test]
    fn a_file_that_no_longer_validates_keeps_its_previous_version() {
        let mut set = loaded(&[("a", "a.yaml"), ("b", "b.yaml")]);
        let read = vec![read("a", "a.yaml", false), read("b", "b.yaml", true)];
        assert!(reload(&mut set, read, Utc::now()));
        assert_eq!(
            sources(&set),
            [
                ("a".into(), PathBuf::from("a.yaml")),
                ("b".into(), PathBuf::from("b.yaml"))
            ]
        );
    }

    /// A reload refused for a name in two files used to lose the workflows whose files had
    /// become invalid in the same reload: their previous versions had already been moved out.
    #[test]
    fn a_refused_reload_keeps_every_previous_workflow() {
        let mut set = loaded(&[("a", "a.yaml"), ("b", "b.yaml")]);
        let read = vec![
            read("a", "a.yaml", false),
            read("b", "b.yaml", true),
            read("b", "b2.yaml", true),
        ];
        assert!(!reload(&mut set, read, Utc::now()));
        assert_eq!(
            sources(&set),
            [
                ("a".into(), PathBuf::from("a.yaml")),
                ("b".into(), PathBuf::from("b.yaml"))
            ]
        );
    }

    #[test]
    fn a_kept_workflow_whose_name_another_file_now_uses_refuses_the_reload() {
        let mut set = loaded(&[("a", "a.yaml")]);
        let read = vec![read("a", "a.yaml", false), read("a", "other.yaml", true)];
        assert!(!reload(&mut set, read, Utc::now()));
        assert_eq!(sources(&set), [("a".into(), PathBuf::from("a.yaml"))]);
    }
}
