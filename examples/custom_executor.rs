//! Embedding PicoFlow: register a custom task type and run a workflow from code.
//!
//! Run with `cargo run -p picoflow-lib --example custom_executor`.

use std::sync::{Arc, Mutex};

use picoflow_lib::{
    parse_workflow, BoxFuture, Capture, Engine, Event, EventSink, Executor, Outcome, Registry,
    RunOptions, Stream, TaskConfig, TaskContext, TaskOutput,
};

/// `type: greet`: writes a greeting for `config.who`, fails when `who` is missing.
struct Greeter;

impl Executor for Greeter {
    fn check(&self, task: &picoflow_lib::Task) -> Result<(), String> {
        match &task.config {
            TaskConfig::Custom(v) if v.get("who").and_then(|w| w.as_str()).is_some() => Ok(()),
            _ => Err("config.who: a name to greet is required".into()),
        }
    }

    fn execute<'a>(&'a self, ctx: TaskContext<'a>) -> BoxFuture<'a, TaskOutput> {
        Box::pin(async move {
            let who = match &ctx.task.config {
                TaskConfig::Custom(v) => v["who"].as_str().unwrap_or_default().to_string(),
                _ => String::new(),
            };
            let text = format!("hello, {who} (attempt {})\n", ctx.attempt);
            ctx.output.output(Stream::Stdout, text.as_bytes());
            let mut stdout = Capture::default();
            stdout.push(text.as_bytes(), picoflow_lib::CAPTURE_LIMIT);
            TaskOutput {
                outcome: Outcome::Success,
                exit_code: Some(0),
                stdout,
                stderr: Capture::default(),
                error: None,
                retryable: false,
            }
        })
    }
}

/// Collects events, as a device application might to update its own display.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl EventSink for Recorder {
    fn on_event(&self, event: &Event) {
        let line = match event {
            Event::TaskStarted(t) => format!("started {}", t.task_name),
            Event::TaskFinished { record, .. } => {
                format!("finished {} {}", record.task_name, record.status)
            }
            Event::WorkflowFinished(e) => format!("workflow {}", e.status),
            _ => return,
        };
        self.0.lock().unwrap().push(line);
    }
}

const WORKFLOW: &str = r#"
name: embedded
tasks:
  - name: greet_world
    type: greet
    config: {who: world}
  - name: list_tmp
    type: shell
    depends_on: [greet_world]
    config:
      command: /bin/ls
      args: ["/tmp"]
"#;

fn main() -> Result<(), picoflow_lib::Error> {
    let mut registry = Registry::builtin();
    registry.register("greet", Greeter);
    let wf = parse_workflow(WORKFLOW, "embedded.yaml", &registry)?;

    let recorder = Arc::new(Recorder::default());
    let engine = Engine::new(registry).with_sink(recorder.clone());
    let report = smol::block_on(engine.run(&wf, RunOptions::default()))?;

    for line in recorder.0.lock().unwrap().iter() {
        println!("{line}");
    }
    assert!(report.success(), "the embedded workflow failed");
    println!("ok: {} tasks", report.tasks.len());
    Ok(())
}
