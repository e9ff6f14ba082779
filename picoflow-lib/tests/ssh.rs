//! `type: ssh` through the engine against a real OpenSSH server on 127.0.0.1 (EXEC-002,
//! SEC-001): output, exit codes, host-key checks, key checks, connection failures and time
//! limits, and one session shared by the tasks of a run.
//!
//! Run: `cargo test -p picoflow-lib --features ssh --test ssh`. The tests start
//! `/usr/sbin/sshd` (package `openssh-server`) themselves with keys made by `ssh-keygen` in a
//! temporary directory; `scripts/install-test-deps.sh` installs both.

#[cfg(not(feature = "ssh"))]
#[test]
fn ssh_task_needs_the_ssh_feature() {
    use picoflow_lib::{parse_workflow, Error, Registry};
    let text = "name: w\ntasks:\n  - name: r\n    type: ssh\n    config: {host: h, user: u, command: \"true\"}\n";
    let err = parse_workflow(text, "w.yaml", &Registry::builtin()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingFeature {
                feature: Some("ssh"),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("ssh"));
}

#[cfg(feature = "ssh")]
mod with_ssh {
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use picoflow_lib::{parse_workflow, Engine, Registry, RunOptions, RunReport, TaskState};

    /// A real sshd on 127.0.0.1 and a free port, with its own host key and one accepted user
    /// key; stopped on drop.
    struct Sshd {
        dir: PathBuf,
        port: u16,
        child: Child,
    }

    fn keygen(path: &Path) {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .status()
            .expect("ssh-keygen is needed (package openssh-client)");
        assert!(st.success());
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn user() -> String {
        let out = Command::new("id").arg("-un").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    impl Sshd {
        fn start(tag: &str) -> Sshd {
            Sshd::start_with(tag, "")
        }

        /// Like `start`, with `extra` lines added to sshd_config.
        fn start_with(tag: &str, extra: &str) -> Sshd {
            assert!(
                Path::new("/usr/sbin/sshd").exists(),
                "/usr/sbin/sshd is needed (package openssh-server; scripts/install-test-deps.sh)"
            );
            let dir = std::env::temp_dir().join(format!(
                "picoflow-sshd-{tag}-{}-{}",
                std::process::id(),
                picoflow_lib::new_id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            keygen(&dir.join("host_key"));
            keygen(&dir.join("user_key"));
            keygen(&dir.join("stranger_key"));
            std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
            // Privilege separation needs this directory when sshd runs as root.
            // SAFETY: geteuid has no memory effects.
            if unsafe { libc::geteuid() } == 0 {
                let _ = std::fs::create_dir_all("/run/sshd");
            }
            let port = free_port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n{extra}",
                d = dir.display()
            );
            std::fs::write(dir.join("sshd_config"), config).unwrap();
            let child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
                .spawn()
                .unwrap();
            let s = Sshd { dir, port, child };
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "sshd did not start:\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            // known_hosts with the server's key, as `ssh-keyscan` would write it.
            let host_pub = std::fs::read_to_string(s.dir.join("host_key.pub")).unwrap();
            let mut parts = host_pub.split_whitespace();
            let line = format!(
                "[127.0.0.1]:{port} {} {}\n",
                parts.next().unwrap(),
                parts.next().unwrap()
            );
            std::fs::write(s.dir.join("known_hosts"), line).unwrap();
            s
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }

        /// A task of type ssh against this server.
        fn task(&self, name: &str, command: &str, extra: &str) -> String {
            format!(
                "  - name: {name}\n    type: ssh\n{extra}    config:\n      host: 127.0.0.1\n      port: {}\n      user: {}\n      command: \"{command}\"\n      key_path: {}\n      known_hosts: {}\n      timeout: 5\n",
                self.port,
                user(),
                self.path("user_key").display(),
                self.path("known_hosts").display()
            )
        }

        /// A task of type ssh whose command is a YAML block, so that it may hold any quotes.
        fn script_task(&self, name: &str, script: &str, extra: &str) -> String {
            let body: String = script.lines().map(|l| format!("        {l}\n")).collect();
            format!(
                "  - name: {name}\n    type: ssh\n{extra}    config:\n      host: 127.0.0.1\n      port: {}\n      user: {}\n      key_path: {}\n      known_hosts: {}\n      timeout: 5\n      command: |\n{body}",
                self.port,
                user(),
                self.path("user_key").display(),
                self.path("known_hosts").display()
            )
        }
    }

    impl Drop for Sshd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn run(yaml: &str) -> RunReport {
        let registry = Registry::builtin();
        let wf = parse_workflow(yaml, "ssh.yaml", &registry).unwrap();
        let logs = std::env::temp_dir().join(format!("picoflow-ssh-logs-{}", std::process::id()));
        let engine = Engine::new(registry).with_log_dir(logs);
        smol::block_on(engine.run(&wf, RunOptions::default())).unwrap()
    }

    fn workflow(tasks: &str) -> String {
        format!("name: remote\nconfig:\n  retry_default: 0\ntasks:\n{tasks}")
    }

    #[test]
    fn output_and_exit_codes_are_those_of_the_remote_command() {
        let sshd = Sshd::start("out");
        let yaml = workflow(&format!(
            "{}{}",
            sshd.task("hello", "echo hello from $(hostname) && echo oops >&2", ""),
            sshd.task("seven", "exit 7", "    continue_on_failure: true\n")
        ));
        let report = run(&yaml);
        let hello = &report.tasks[0];
        assert_eq!(
            hello.state,
            TaskState::Success,
            "{:?}\n{}",
            hello,
            sshd.log()
        );
        assert_eq!(hello.exit_code, Some(0));
        let seven = &report.tasks[1];
        assert_eq!(seven.state, TaskState::Failed);
        assert_eq!(seven.exit_code, Some(7));
    }

    #[test]
    fn captured_output_and_variables_arrive_as_data() {
        let sshd = Sshd::start("vars");
        let out = sshd.path("out.txt");
        std::env::set_var("PICOFLOW_SSH_TEST_VALUE", "it's $(echo injected)");
        let yaml = workflow(&sshd.task(
            "echo",
            &format!("printf %s ${{PICOFLOW_SSH_TEST_VALUE}} > {}", out.display()),
            "",
        ));
        let report = run(&yaml);
        assert_eq!(
            report.tasks[0].state,
            TaskState::Success,
            "{:?}",
            report.tasks[0]
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "it's $(echo injected)",
            "the value must reach the remote shell verbatim"
        );
    }

    #[test]
    fn unknown_and_mismatched_host_keys_are_refused() {
        let sshd = Sshd::start("hostkey");
        std::fs::write(sshd.path("known_hosts"), "").unwrap();
        let report = run(&workflow(&sshd.task("a", "true", "")));
        let t = &report.tasks[0];
        assert_eq!(t.state, TaskState::Failed);
        assert_eq!(t.exit_code, Some(255));
        let e = t.error.as_deref().unwrap();
        assert!(e.contains("not in") && e.contains("ssh-keyscan"), "{e}");

        // A different key recorded for this host and port.
        let other = std::fs::read_to_string(sshd.path("stranger_key.pub")).unwrap();
        let mut p = other.split_whitespace();
        std::fs::write(
            sshd.path("known_hosts"),
            format!(
                "[127.0.0.1]:{} {} {}\n",
                sshd.port,
                p.next().unwrap(),
                p.next().unwrap()
            ),
        )
        .unwrap();
        let report = run(&workflow(&sshd.task("a", "true", "")));
        let e = report.tasks[0].error.clone().unwrap();
        assert!(
            e.contains("HOST KEY MISMATCH") && e.contains("man-in-the-middle"),
            "{e}"
        );
    }

    #[test]
    fn hashed_known_hosts_entries_are_understood() {
        let sshd = Sshd::start("hashed");
        let st = Command::new("ssh-keygen")
            .args(["-H", "-f"])
            .arg(sshd.path("known_hosts"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let text = std::fs::read_to_string(sshd.path("known_hosts")).unwrap();
        assert!(text.starts_with("|1|"), "{text}");
        let report = run(&workflow(&sshd.task("a", "true", "")));
        assert_eq!(
            report.tasks[0].state,
            TaskState::Success,
            "{:?}",
            report.tasks[0]
        );
    }

    #[test]
    fn a_key_the_server_does_not_accept_fails() {
        let sshd = Sshd::start("badkey");
        let yaml = workflow(&sshd.task("a", "true", "")).replace(
            &sshd.path("user_key").display().to_string(),
            &sshd.path("stranger_key").display().to_string(),
        );
        let report = run(&yaml);
        let t = &report.tasks[0];
        assert_eq!(t.state, TaskState::Failed);
        assert_eq!(t.exit_code, Some(255));
        assert!(
            t.error.as_deref().unwrap().contains("did not accept key"),
            "{:?}",
            t.error
        );
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let sshd = Sshd::start("mode");
        std::fs::set_permissions(
            sshd.path("user_key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let report = run(&workflow(&sshd.task("a", "true", "")));
        let e = report.tasks[0].error.clone().unwrap();
        assert!(e.contains("chmod 600") && e.contains("user_key"), "{e}");
        assert!(
            !sshd.log().contains("Accepted publickey"),
            "nothing was sent"
        );
    }

    #[test]
    fn refused_and_silent_connections_fail_within_the_connection_timeout() {
        let sshd = Sshd::start("silent");
        let closed = free_port();
        let t0 = Instant::now();
        let yaml = workflow(&sshd.task("a", "true", ""))
            .replace(&format!("port: {}", sshd.port), &format!("port: {closed}"));
        let report = run(&yaml);
        assert_eq!(report.tasks[0].exit_code, Some(255));
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "refused took {:?}",
            t0.elapsed()
        );

        // A listener that accepts and never sends a banner.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let keep = std::thread::spawn(move || {
            let conns: Vec<_> = silent.incoming().take(1).collect();
            std::thread::sleep(Duration::from_secs(6));
            drop(conns);
        });
        let t0 = Instant::now();
        let yaml = workflow(&sshd.task("a", "true", ""))
            .replace(&format!("port: {}", sshd.port), &format!("port: {port}"))
            .replace("timeout: 5", "timeout: 2");
        let report = run(&yaml);
        let t = &report.tasks[0];
        assert_eq!(t.exit_code, Some(255));
        assert!(
            t.error.as_deref().unwrap().contains("timed out"),
            "{:?}",
            t.error
        );
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(4),
            "took {took:?}"
        );
        keep.join().unwrap();

        // The task's timeout bounds the connection too: a silent peer and a connection
        // timeout of 5 s, a task timeout of 1 s.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let keep = std::thread::spawn(move || {
            let conns: Vec<_> = silent.incoming().take(1).collect();
            std::thread::sleep(Duration::from_secs(3));
            drop(conns);
        });
        let t0 = Instant::now();
        let yaml = workflow(&sshd.task("a", "true", "    timeout: 1\n    retry: 0\n"))
            .replace(&format!("port: {}", sshd.port), &format!("port: {port}"));
        let report = run(&yaml);
        let t = &report.tasks[0];
        assert_eq!(t.state, TaskState::Timeout, "{t:?}");
        assert_eq!(t.exit_code, Some(124), "{t:?}");
        assert_eq!(
            t.error.as_deref(),
            Some("timed out after 1s; connection abandoned before the command started")
        );
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        keep.join().unwrap();
    }

    /// The processes whose command line holds `marker` (the remote side runs on this host).
    fn processes_with(marker: &str) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z'));
            if text.contains(marker) && !text.contains("cargo") && !zombie {
                found.push(format!("{name}: {text}"));
            }
        }
        found
    }

    /// The remote command ends with its task: at the timeout, and when the run is cancelled
    /// (sshd leaves a command without a terminal running when its channel closes).
    #[test]
    fn the_task_timeout_and_cancellation_stop_the_remote_command() {
        let sshd = Sshd::start("timeout");
        let t0 = Instant::now();
        let report = run(&workflow(&sshd.task(
            "nap",
            "sleep 30.25; echo done",
            "    timeout: 2\n",
        )));
        let t = &report.tasks[0];
        assert_eq!(t.state, TaskState::Timeout, "{t:?}");
        assert_eq!(t.exit_code, Some(124));
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(6), "took {took:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_with("sleep 30.25").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(processes_with("sleep 30.25"), Vec::<String>::new());

        // Cancelled a second after it started.
        let registry = Registry::builtin();
        let yaml = workflow(&sshd.task("nap", "sleep 30.5; echo done", ""));
        let wf = parse_workflow(&yaml, "ssh.yaml", &registry).unwrap();
        let (canceller, cancel) = picoflow_lib::CancelToken::new();
        let engine = Engine::new(registry).with_log_dir(
            std::env::temp_dir().join(format!("picoflow-ssh-logs-{}", std::process::id())),
        );
        let options = RunOptions {
            cancel,
            ..RunOptions::default()
        };
        let report = smol::block_on(futures_lite::future::zip(engine.run(&wf, options), async {
            let deadline = Instant::now() + Duration::from_secs(10);
            while processes_with("sleep 30.5").is_empty() && Instant::now() < deadline {
                smol::Timer::after(Duration::from_millis(100)).await;
            }
            canceller.cancel();
        }))
        .0
        .unwrap();
        assert_ne!(report.tasks[0].state, TaskState::Success);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_with("sleep 30.5").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(processes_with("sleep 30.5"), Vec::<String>::new());
    }

    /// Waits up to 5 s for no process to hold `marker`, and asserts it.
    fn assert_gone(marker: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_with(marker).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(processes_with(marker), Vec::<String>::new(), "{marker}");
    }

    /// A remote account whose rc file prints a line (bash reads ~/.bashrc for a command
    /// over ssh): the stop still finds the command's processes. The server gives the
    /// account a HOME of the test's own (sshd `SetEnv HOME=…`), so that the shell reads a
    /// real rc file there and this host's own rc files are left alone.
    #[test]
    fn a_line_printed_by_the_remote_rc_file_does_not_defeat_the_stop() {
        let home =
            std::env::temp_dir().join(format!("picoflow-ssh-home-{}", picoflow_lib::new_id()));
        std::fs::create_dir_all(&home).unwrap();
        let sourced = home.join("sourced");
        let rc = format!("echo hello from the rc file\ntouch {}\n", sourced.display());
        for f in [".bashrc", ".zshenv", ".profile"] {
            std::fs::write(home.join(f), &rc).unwrap();
        }
        let sshd = Sshd::start_with("rc", &format!("SetEnv HOME={}\n", home.display()));
        let report = run(&workflow(&sshd.task(
            "nap",
            "sleep 30.75; echo done",
            "    timeout: 2\n",
        )));
        assert!(
            sourced.exists(),
            "the remote shell did not read an rc file in {}: {}",
            home.display(),
            sshd.log()
        );
        let t = &report.tasks[0];
        assert_eq!(t.state, TaskState::Timeout, "{t:?}");
        assert_gone("sleep 30.75");
        // The rc file's line stays output; the marker line alone is taken off.
        let got = sshd.path("got.txt");
        let report = run(&workflow(&format!(
            "{}  - name: keep\n    type: shell\n    depends_on: [say]\n    config:\n      command: \"printf %s \\\"${{tasks.say.outputs.out}}\\\" > {}\"\n",
            sshd.task("say", "echo ok", "    outputs: {out: stdout}\n"),
            got.display()
        )));
        assert_eq!(report.tasks[1].state, TaskState::Success, "{report:?}");
        assert_eq!(
            std::fs::read_to_string(&got).unwrap().trim_end(),
            "hello from the rc file\nok"
        );
        std::fs::remove_dir_all(&home).unwrap();
    }

    /// Processes that left the command's process group (`setsid`, a job-control subshell)
    /// are stopped with it at the timeout: the stop reaches the whole remote session and
    /// the descendants that made sessions of their own.
    #[test]
    fn the_timeout_stops_processes_that_left_the_process_group() {
        let sshd = Sshd::start("session");
        let t0 = Instant::now();
        let report = run(&workflow(&sshd.script_task(
            "escape",
            "setsid sleep 1231 </dev/null >/dev/null 2>&1 &\n(set -m; sleep 1232 </dev/null >/dev/null 2>&1 &)\ntrap '' TERM\nsleep 1233\n",
            "    timeout: 3\n",
        )));
        let t = &report.tasks[0];
        assert_eq!(t.state, TaskState::Timeout, "{t:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "took {:?}",
            t0.elapsed()
        );
        for marker in ["sleep 1231", "sleep 1232", "sleep 1233"] {
            assert_gone(marker);
        }
    }

    #[test]
    fn tasks_to_the_same_host_share_one_session() {
        let sshd = Sshd::start("reuse");
        let yaml = workflow(&format!(
            "{}{}{}",
            sshd.task("one", "echo 1", ""),
            sshd.task("two", "echo 2", ""),
            sshd.task("three", "echo 3", "    depends_on: [one, two]\n")
        ));
        let report = run(&yaml);
        assert!(
            report.tasks.iter().all(|t| t.state == TaskState::Success),
            "{:?}",
            report.tasks
        );
        let logins = sshd.log().matches("Accepted publickey").count();
        assert_eq!(logins, 1, "three tasks, one session:\n{}", sshd.log());
    }

    /// A shared session that broke (here the server side of the connection is killed between
    /// two tasks) is replaced, and the task's timeout stops its command through the new
    /// session: the remote command does not live on.
    #[test]
    fn a_timeout_after_a_reconnect_stops_the_remote_command() {
        let sshd = Sshd::start("reconnect");
        let cut = format!(
            "  - name: cut\n    type: shell\n    depends_on: [one]\n    config:\n      command: \"pkill -KILL -P {}\"\n",
            sshd.child.id()
        );
        let yaml = workflow(&format!(
            "{}{cut}{}",
            sshd.task("one", "echo 1", ""),
            sshd.task(
                "nap",
                "sleep 30.75; echo done",
                "    depends_on: [cut]\n    timeout: 2\n"
            ),
        ));
        let report = run(&yaml);
        let state = |n: &str| report.tasks.iter().find(|t| t.name == n).unwrap().state;
        assert_eq!(state("one"), TaskState::Success, "{:?}", report.tasks);
        assert_eq!(state("cut"), TaskState::Success, "{:?}", report.tasks);
        assert_eq!(state("nap"), TaskState::Timeout, "{:?}", report.tasks);
        let logins = sshd.log().matches("Accepted publickey").count();
        assert_eq!(
            logins,
            2,
            "the broken session was replaced:\n{}",
            sshd.log()
        );
        assert_gone("sleep 30.75");
    }

    /// A value that would run `touch` on the remote host if it were pasted into shell text,
    /// in any quoting: command substitution, backquotes, `;`, both quotes, a newline.
    fn hostile(dir: &Path) -> String {
        let d = dir.display();
        format!(
            "a'b\"c $(touch {d}/PWNED_dollar) `touch {d}/PWNED_tick` x; touch {d}/PWNED_semi #\n\
             '; touch {d}/PWNED_sq; '\"; touch {d}/PWNED_dq; \"\\ end $HOME * ${{HOME}}"
        )
    }

    /// Writes `${reference}` four ways to files named `tag.*` in `dir`: inside "…", inside
    /// '…', bare and in a here-document.
    fn four_ways(tag: &str, reference: &str, dir: &Path) -> String {
        let d = dir.display();
        format!(
            "printf %s \"{reference}\" > {d}/{tag}.dq\n\
             printf %s '{reference}' > {d}/{tag}.sq\n\
             printf %s {reference} > {d}/{tag}.bare\n\
             cat > {d}/{tag}.heredoc <<EOF\n{reference}\nEOF\n"
        )
    }

    #[test]
    fn hostile_values_never_become_remote_shell_code() {
        let sshd = Sshd::start("inject");
        let dir = sshd.path("");
        let value = hostile(&dir);
        // From a task's output, a loop item and PicoFlow's environment.
        let published = sshd.path("published");
        std::fs::write(
            &published,
            format!("V<<END_OF_VALUE\n{value}\nEND_OF_VALUE\n"),
        )
        .unwrap();
        std::env::set_var("PICOFLOW_SSH_HOSTILE", &value);
        let item = serde_json::to_string(&value).unwrap();
        let yaml = workflow(&format!(
            "  - name: gen\n    type: shell\n    config:\n      command: \"cat {} > $PICOFLOW_OUTPUT\"\n{}{}{}",
            published.display(),
            sshd.script_task(
                "from-output",
                &four_ways("output", "${tasks.gen.outputs.V}", &dir),
                "    depends_on: [gen]\n"
            ),
            sshd.script_task(
                "from-item",
                &four_ways("item", "${item}", &dir),
                &format!("    iterate_over: [{item}]\n")
            ),
            sshd.script_task(
                "from-env",
                &four_ways("env", "${PICOFLOW_SSH_HOSTILE}", &dir),
                ""
            ),
        ));
        let report = run(&yaml);
        for t in &report.tasks {
            assert_eq!(t.state, TaskState::Success, "{t:?}\n{}", sshd.log());
        }
        let pwned: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("PWNED"))
            .collect();
        assert!(
            pwned.is_empty(),
            "the remote shell ran injected code: {pwned:?}"
        );
        for tag in ["output", "item", "env"] {
            let read =
                |ext: &str| std::fs::read_to_string(dir.join(format!("{tag}.{ext}"))).unwrap();
            assert_eq!(read("dq"), value, "{tag} inside \"…\" arrives byte-exact");
            assert_eq!(
                read("bare"),
                value,
                "{tag} as a bare word arrives byte-exact"
            );
            assert_eq!(
                read("heredoc"),
                format!("{value}\n"),
                "{tag} in a here-document"
            );
            let sq = read("sq");
            assert!(
                sq.starts_with("${PICOFLOW_REF_") && !sq.contains("touch"),
                "{tag} inside '…' stays literal text, as in a local sh -c: {sq}"
            );
        }
    }
}
