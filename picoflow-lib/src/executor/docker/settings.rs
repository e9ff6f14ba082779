//! `type: docker` settings (EXEC-006): what `config:` holds, read and checked when a
//! workflow is loaded, in every build (a build without `docker` then refuses the task by
//! name). Declared by `settings` (below the model, which holds them); the running code is this
//! folder's `mod.rs`, which checks volumes again once `${VAR}` is expanded.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::settings::{from_value, Problems, Value, ValueError};

/// The network a container gets when its task names none: none at all.
pub const DEFAULT_DOCKER_NETWORK: &str = "none";

/// `type: docker` configuration (EXEC-006).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// Image reference, e.g. `alpine:3.20` or `registry.local/backup@sha256:…`.
    pub image: String,
    /// Command and arguments, run without a shell; the image's own command when absent.
    pub command: Option<Vec<String>>,
    /// Variables set in the container (the image's others stay).
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container (`workdir`, alias `working_dir`).
    pub workdir: Option<String>,
    /// Bind mounts, `host:container` or `host:container:ro`.
    pub volumes: Vec<String>,
    /// Network mode: `none` (the default), `bridge`, `host` or a network's name.
    pub network: String,
    /// `user` or `user:group` (names or numbers) the command runs as.
    pub user: Option<String>,
    /// When the image is fetched from its registry.
    pub pull: PullPolicy,
    /// Whether the container is removed once the attempt is over (default true).
    pub remove: bool,
}

/// `pull` of a docker task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Use the image on the host; a missing image fails the task (the default: a device
    /// runs what was put on it, and does not depend on a registry).
    #[default]
    Never,
    /// Pull the image when the host does not have it.
    Missing,
    /// Pull before every attempt.
    Always,
}

/// `config:` as written; an unknown key is an error that names it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    image: String,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default, alias = "working_dir")]
    workdir: Option<String>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    pull: Option<String>,
    #[serde(default)]
    remove: Option<bool>,
}

/// The keys `config:` accepts.
pub(crate) fn keys() -> &'static [&'static str] {
    crate::fields::of::<RawDocker>()
}

/// Reads a task's `config:`; a value of the wrong shape is the error, a value out of its
/// range or format is added to `problems`.
pub(crate) fn parse(
    config: Value,
    problems: &mut Problems<'_>,
) -> Result<DockerConfig, ValueError> {
    let r: RawDocker = from_value(config)?;
    if r.image.trim().is_empty() || r.image.contains(char::is_whitespace) {
        problems.add(format_args!(
            "config.image '{}' must be an image reference without spaces",
            r.image
        ));
    }
    if r.command.as_ref().is_some_and(Vec::is_empty) {
        problems.add("config.command must list the program and its arguments");
    }
    for v in &r.volumes {
        if let Err(why) = check_volume(v) {
            problems.add(format_args!("config.volumes: '{v}' {why}"));
        }
    }
    let network = r
        .network
        .unwrap_or_else(|| DEFAULT_DOCKER_NETWORK.to_string());
    if network.trim().is_empty() {
        problems.add("config.network must not be empty");
    }
    let pull = match r.pull.as_deref() {
        None | Some("never") => PullPolicy::Never,
        Some("missing") => PullPolicy::Missing,
        Some("always") => PullPolicy::Always,
        Some(other) => {
            problems.add(format_args!(
                "config.pull '{other}' is not one of never, missing, always"
            ));
            PullPolicy::Never
        }
    };
    Ok(DockerConfig {
        image: r.image,
        command: r.command,
        env: r.env,
        workdir: r.workdir,
        volumes: r.volumes,
        network,
        user: r.user,
        pull,
        remove: r.remove.unwrap_or(true),
    })
}

/// Checks a bind mount, `host:container[:ro|rw]`: both paths absolute (the host side may
/// also name a volume). A part built from `${VAR}` is checked when the task runs.
pub(crate) fn check_volume(v: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = v.split(':').collect();
    let (host, container) = match parts.as_slice() {
        [h, c] | [h, c, "ro" | "rw"] => (*h, *c),
        [_, _, _] => return Err("ends in a mode other than ro or rw"),
        _ => return Err("must be host:container or host:container:ro"),
    };
    let is_volume_name = |s: &str| {
        s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    if !host.contains("${") && !host.starts_with('/') && !is_volume_name(host) {
        return Err("needs an absolute host path or a volume name before ':'");
    }
    if !container.contains("${") && !container.starts_with('/') {
        return Err("needs an absolute path in the container after ':'");
    }
    Ok(())
}
