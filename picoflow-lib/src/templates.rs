//! Starter workflows written by `picoflow init`.

/// Names of the templates, for help texts.
pub const TEMPLATE_NAMES: [&str; 5] = ["minimal", "shell", "ssh", "http", "full"];

/// The YAML text of template `kind` for a workflow called `name`.
pub fn template(kind: &str, name: &str) -> Option<String> {
    let body = match kind {
        "minimal" => MINIMAL,
        "shell" => SHELL,
        "ssh" => SSH,
        "http" => HTTP,
        "full" => FULL,
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
        }
        assert!(template("nope", "x").is_none());
    }
}
