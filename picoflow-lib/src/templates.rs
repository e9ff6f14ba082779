//! Starter workflows written by `picoflow init`.

/// Names of the templates, for help texts.
pub const TEMPLATE_NAMES: [&str; 7] = ["minimal", "shell", "ssh", "http", "full", "data", "edge"];

/// The YAML text of template `kind` for a workflow called `name`.
pub fn template(kind: &str, name: &str) -> Option<String> {
    let body = match kind {
        "minimal" => MINIMAL,
        "shell" => SHELL,
        "ssh" => SSH,
        "http" => HTTP,
        "full" => FULL,
        "data" => DATA,
        "edge" => EDGE,
        _ => return None,
    };
    Some(body.replace("__NAME__", name))
}

const MINIMAL: &str = r#"name: __NAME__
description: "A single shell task"

tasks:
  - name: hello
    type: shell
    config:
      command: "echo"
      args: ["Hello from PicoFlow"]
"#;

const SHELL: &str = r#"name: __NAME__
description: "Shell tasks with dependencies, retries and timeouts"

config:
  max_parallel: 2
  retry_default: 1
  timeout_default: 60

tasks:
  - name: prepare
    type: shell
    config:
      command: "mkdir"
      args: ["-p", "/tmp/__NAME__"]

  - name: collect
    type: shell
    depends_on: [prepare]
    config:
      # No args: run by /bin/sh -c, so pipes and redirections work.
      command: "df -h / > /tmp/__NAME__/disk.txt"

  - name: report
    type: shell
    depends_on: [collect]
    config:
      command: "/bin/cat"
      args: ["/tmp/__NAME__/disk.txt"]
    continue_on_failure: true
"#;

const SSH: &str = r#"name: __NAME__
description: "Run a command on another machine over SSH (key authentication only)"

tasks:
  - name: remote_uptime
    type: ssh
    config:
      host: "192.168.1.100"
      port: 22
      user: "pi"
      command: "uptime"
      key_path: "~/.ssh/id_ed25519"
      timeout: 30
    retry: 2
    timeout: 120
"#;

const HTTP: &str = r#"name: __NAME__
description: "Check a service's health over HTTP"

tasks:
  - name: health_check
    type: http
    config:
      url: "http://127.0.0.1:8080/health"
      method: GET
      timeout: 10
      expected_status: [200]
    retry: 2
"#;

const FULL: &str = r#"name: __NAME__
description: "Nightly backup: every feature of a workflow file"
schedule: "0 30 2 * * *"      # sec min hour day month weekday (0 = Sunday)
timezone: "UTC"
catchup: latest               # run once after an outage that missed the 02:30 fire
jitter: 60s                   # spread a fleet's load over a minute

config:
  max_parallel: 2
  retry_default: 2
  timeout_default: 600

tasks:
  - name: health_check
    type: http
    config:
      url: "http://127.0.0.1:8080/health"
      method: GET
      headers:
        Authorization: "Bearer ${API_TOKEN}"
      timeout: 10

  - name: dump_database
    type: ssh
    depends_on: [health_check]
    config:
      host: "db.local"
      user: "backup"
      command: "pg_dump mydb | gzip > /backup/db.sql.gz"
      key_path: "/home/pi/.ssh/backup_key"
    timeout: 1800

  - name: archive_logs
    type: shell
    config:
      command: "/usr/bin/tar"
      args: ["-czf", "/tmp/logs.tar.gz", "/var/log"]
      workdir: "/tmp"
      env:
        GZIP: "-9"

  - name: notify
    type: http
    depends_on: [dump_database, archive_logs]
    config:
      url: "http://127.0.0.1:8080/hooks/backup"
      method: POST
      body:
        status: "done"
    continue_on_failure: true
"#;

const DATA: &str = r#"name: __NAME__
description: "Data between tasks: outputs, a condition, a loop and a failure handler"

tasks:
  - name: find
    type: shell
    config:
      # Outputs: KEY=VALUE lines, or KEY<<EOF ... EOF blocks, appended to $PICOFLOW_OUTPUT.
      command: |
        ls /etc/*.conf 2>/dev/null | head -n 3 > /tmp/__NAME__-files.txt
        printf 'count=%s\n' "$(wc -l < /tmp/__NAME__-files.txt)" >> "$PICOFLOW_OUTPUT"
        printf 'files<<EOF\n%s\nEOF\n' "$(cat /tmp/__NAME__-files.txt)" >> "$PICOFLOW_OUTPUT"

  - name: report
    type: shell
    depends_on: [find]
    # Runs only when the condition holds; otherwise it is skipped (and its dependents run).
    when: "${tasks.find.outputs.count} > 0"
    config:
      # In a /bin/sh -c command line a value reaches the shell as a variable, never as code.
      command: "echo \"found ${tasks.find.outputs.count} files\""

  - name: checksum
    type: shell
    depends_on: [find]
    # One task per line of the output: checksum[/etc/a.conf], checksum[/etc/b.conf] ...
    iterate_over: "${tasks.find.outputs.files}"
    config:
      command: "sha256sum"
      args: ["${item}"]
    continue_on_failure: true

  - name: cleanup
    type: shell
    depends_on: [report, checksum]
    run_if: all_done              # all_success (default), all_done, any_failed, all_failed
    config:
      command: "rm -f /tmp/__NAME__-files.txt"

# Run after the whole workflow; they never change its status.
on_failure:
  - name: alert
    type: shell
    config:
      command: "echo \"${workflow.name} failed: ${failed_tasks} (execution ${execution.id})\" >&2"
"#;

const EDGE: &str = r#"name: __NAME__
description: "A nightly backup that starts only when the device is fit for it"
schedule: "0 30 2 * * *"

# Checked before the first task: a Pi that booted without a clock, or runs hot, waits.
requires:
  clock_synced: true
  max_cpu_temperature: 80
  on_unmet: wait
  wait_timeout: 30m

tasks:
  - name: archive
    type: shell
    # Room for the archive, or the task fails and says why (upload is then skipped).
    requires:
      min_free_disk: {path: /tmp, bytes: 200MB}
    limits: {nice: 10, io: idle, memory: 200MB}
    config:
      command: "tar czf /tmp/__NAME__.tar.gz -C /etc hostname"

  - name: upload
    type: shell
    depends_on: [archive]
    # The NAS (put its name here) must answer on its SMB port; if it does not, the upload
    # is skipped tonight. `on_unmet: wait` with `wait_timeout: 10m` would wait for it.
    requires:
      network: {host: nas.local, port: 445}
      on_unmet: skip
    config:
      command: "echo would copy /tmp/__NAME__.tar.gz to the NAS"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for kind in TEMPLATE_NAMES {
            let text = template(kind, "demo").unwrap();
            let wf =
                crate::yaml::parse_workflow(&text, kind).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(wf.name, "demo");
            crate::dag::Dag::build(&wf).unwrap();
            // The shell-only ones are complete workflows in every build.
            if ["minimal", "shell", "data", "edge"].contains(&kind) {
                crate::validate::validate_workflow(&wf, kind, &crate::Registry::builtin())
                    .unwrap_or_else(|e| panic!("{kind}: {e}"));
            }
        }
        assert!(template("nope", "x").is_none());
    }
}
