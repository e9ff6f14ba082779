//! The UI's HTML: every page is rendered here, on the server. The embedded script only
//! reloads a live page's content once a second and follows logs.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::{levels, task_index, LogChunk, WorkflowView};
use crate::events::{TaskExecution, TaskState, WorkflowExecution, WorkflowStatus};
use crate::httpd::{percent_encode as enc, Response};
use crate::views::{self, is_attempt_of, local_time as local};

/// Scripts and styles only from this server; no inline code, no frames, no form posts.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `850ms`, `12.3s`, `4m 05s`, `2h 03m`.
fn human(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 1.0 {
        format!("{}ms", (secs * 1000.0).round())
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        let s = secs.round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        let m = (secs / 60.0).round() as u64;
        format!("{}h {:02}m", m / 60, m % 60)
    }
}

fn badge(state: &str) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", esc(state))
}

/// The page around `body`; a live page reloads its `<main>` once a second.
fn layout(title: &str, live: bool, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · PicoFlow</title>\
         <link rel=\"stylesheet\" href=\"/static/picoflow.css\">\
         <script src=\"/static/picoflow.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/\">PicoFlow</a>\
         <span class=\"host\">{host}</span></header>\
         <main id=\"live\" data-live=\"{live}\">{body}</main></body></html>\n",
        title = esc(title),
        host = esc(&crate::schedule::host_name()),
    );
    Response::new(200, "text/html; charset=utf-8", html)
        .with("Content-Security-Policy", CSP)
        .with("Cache-Control", "no-store")
}

/// An error page.
pub(super) fn error(status: u16, message: &str) -> Response {
    let mut r = layout(
        "Error",
        false,
        &format!("<h1>{status}</h1><p class=\"error\">{}</p>", esc(message)),
    );
    r.status = status;
    r
}

/// The sign-in form, shown instead of a page when reads need the token; it posts the token
/// to `/login`, which sets the session cookie and leads back to `next`.
pub(super) fn login(status: u16, next: &str, problem: Option<&str>) -> Response {
    let problem = problem.map_or(String::new(), |p| {
        format!("<p class=\"error\">{}</p>", esc(p))
    });
    let mut r = layout(
        "Sign in",
        false,
        &format!(
            "<h1>Sign in</h1>{problem}<p>This PicoFlow asks for its web token \
             (<code>[web] token_file</code>).</p>\
             <form method=\"post\" action=\"/login\">\
             <input type=\"hidden\" name=\"next\" value=\"{next}\">\
             <label>Token <input type=\"password\" name=\"token\" \
             autocomplete=\"current-password\" required autofocus></label> <button type=\"submit\">Sign in</button></form>",
            next = esc(next),
        ),
    );
    r.status = status;
    for (name, value) in &mut r.headers {
        if *name == "Content-Security-Policy" {
            *value = CSP.replace("form-action 'none'", "form-action 'self'");
        }
    }
    r
}

/// `/`: every loaded workflow; a link to the fleet page when the daemon has a fleet.
pub(super) fn workflows(list: &[WorkflowView], now: DateTime<Utc>, fleet: bool) -> Response {
    let mut b = String::from("<h1>Workflows</h1>");
    if fleet {
        b.push_str("<p><a id=\"fleet-link\" href=\"/fleet\">Fleet: every node</a></p>");
    }
    if list.is_empty() {
        b.push_str("<p>No workflows loaded.</p>");
        return layout("Workflows", false, &b);
    }
    b.push_str(
        "<table id=\"workflows\"><thead><tr><th>Workflow</th><th>Description</th>\
         <th>Schedule</th><th>Next run</th><th>Last status</th><th>Last run</th>\
         <th>Success rate</th></tr></thead><tbody>",
    );
    let mut live = false;
    for v in list {
        let wf = &v.entry.wf;
        let last = v.summary.as_ref().and_then(|s| s.last.as_ref());
        live |= last.is_some_and(|l| l.status == WorkflowStatus::Running);
        let schedule = match (&wf.schedule, &wf.timezone) {
            (Some(s), Some(tz)) => format!("<code>{}</code> {}", esc(s), esc(tz)),
            (Some(s), None) => format!("<code>{}</code>", esc(s)),
            (None, _) => "on demand".into(),
        };
        let next = v.entry.next.map_or("-".into(), |t| {
            let wait = (t - now).num_seconds().max(0) as f64;
            format!("{} <small>(in {})</small>", local(t), human(wait))
        });
        let rate = match v
            .summary
            .as_ref()
            .and_then(|s| s.success_rate().map(|r| (r, s)))
        {
            Some((r, s)) => format!(
                "{:.0}% <small>of {}</small>",
                r * 100.0,
                s.success + s.failed
            ),
            None => "-".into(),
        };
        let _ = write!(
            b,
            "<tr data-workflow=\"{n}\"><td><a href=\"/workflows/{u}\">{n}</a></td><td>{d}</td>\
             <td>{schedule}</td><td>{next}</td><td>{st}</td><td>{lr}</td><td>{rate}</td></tr>",
            n = esc(&wf.name),
            u = enc(&wf.name),
            d = esc(wf.description.as_deref().unwrap_or("")),
            st = last.map_or("-".into(), |l| badge(l.status.as_str())),
            lr = last.map_or("-".into(), |l| {
                format!(
                    "<a href=\"/executions/{}\">{}</a>",
                    enc(&l.id),
                    local(l.started_at)
                )
            }),
        );
    }
    b.push_str("</tbody></table>");
    layout("Workflows", live, &b)
}

/// `/fleet`: the nodes with their health, then the latest execution of each workflow on
/// each node, from the snapshot the fleet thread read (see `contract::FleetSource`).
pub(super) fn fleet(snapshot: &serde_json::Value) -> Response {
    let none = Vec::new();
    let nodes = snapshot["nodes"].as_array().unwrap_or(&none);
    let latest = snapshot["latest"].as_array().unwrap_or(&none);
    let mut b = String::from("<h1>Fleet</h1><h2>Nodes</h2>");
    if nodes.is_empty() {
        b.push_str("<p>No node has reported.</p>");
    } else {
        fleet_nodes(&mut b, nodes);
    }
    b.push_str("<h2>Latest results</h2>");
    if latest.is_empty() {
        b.push_str("<p>No execution reported.</p>");
        return layout("Fleet", false, &b);
    }
    let live = fleet_latest(&mut b, latest);
    layout("Fleet", live, &b)
}

/// A JSON string, escaped; `-` when absent.
fn text(v: &serde_json::Value) -> String {
    esc(v.as_str().unwrap_or("-"))
}

/// An RFC 3339 time of a record in local time; `-` when absent.
fn when(v: &serde_json::Value) -> String {
    v.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or("-".into(), |t| local(t.with_timezone(&Utc)))
}

/// The nodes' table of the fleet page.
fn fleet_nodes(b: &mut String, nodes: &[serde_json::Value]) {
    let mb = |v: &serde_json::Value| {
        v.as_u64()
            .map_or("-".into(), |b| format!("{} MB", b / 1_000_000))
    };
    b.push_str(
        "<table id=\"nodes\"><thead><tr><th>Node</th><th>State</th><th>Labels</th>\
         <th>Version</th><th>Arch</th><th>Load</th><th>Memory free</th><th>Disk free</th>\
         <th>CPU</th><th>Running</th><th>Last heard</th></tr></thead><tbody>",
    );
    for n in nodes {
        let alive = n["alive"].as_bool().unwrap_or(false);
        let labels: Vec<String> = n["labels"]
            .as_array()
            .map(|l| l.iter().map(text).collect())
            .unwrap_or_default();
        let _ = write!(
            b,
            "<tr data-node=\"{node}\"><td>{node}</td><td>{state}</td><td>{labels}</td>\
             <td>{version}</td><td>{arch}</td><td>{load}</td><td>{mem}</td><td>{disk}</td>\
             <td>{temp}</td><td>{running}</td><td>{heard}</td></tr>",
            node = text(&n["node"]),
            state = badge(if alive { "up" } else { "silent" }),
            labels = labels.join(", "),
            version = text(&n["version"]),
            arch = text(&n["arch"]),
            load = n["load1"]
                .as_f64()
                .map_or("-".into(), |l| format!("{l:.2}")),
            mem = mb(&n["memory_available_bytes"]),
            disk = mb(&n["disk_free_bytes"]),
            temp = n["cpu_temperature_celsius"]
                .as_f64()
                .map_or("-".into(), |t| format!("{t:.0} °C")),
            running = n["running"].as_u64().unwrap_or(0),
            heard = when(&n["heartbeat"]),
        );
    }
    b.push_str("</tbody></table>");
}

/// The latest results' table of the fleet page; whether one of them is still running.
fn fleet_latest(b: &mut String, latest: &[serde_json::Value]) -> bool {
    b.push_str(
        "<table id=\"latest\"><thead><tr><th>Node</th><th>Workflow</th><th>Status</th>\
         <th>Started</th><th>Duration</th><th>Tasks</th></tr></thead><tbody>",
    );
    let mut live = false;
    for r in latest {
        let e = &r["execution"];
        let status = e["status"].as_str().unwrap_or("-");
        live |= status == "running";
        let _ = write!(
            b,
            "<tr data-node=\"{node}\" data-workflow=\"{wf}\"><td>{node}</td><td>{wf}</td>\
             <td>{st}</td><td>{started}</td><td>{dur}</td><td>{ok}/{total}</td></tr>",
            node = text(&r["node"]),
            wf = text(&e["workflow_name"]),
            st = badge(status),
            started = when(&e["started_at"]),
            dur = e["duration_seconds"].as_f64().map_or("-".into(), human),
            ok = e["successful_tasks"].as_u64().unwrap_or(0),
            total = e["total_tasks"].as_u64().unwrap_or(0),
        );
    }
    b.push_str("</tbody></table>");
    live
}

/// `/workflows/NAME`: the DAG coloured by the latest execution, and the history.
pub(super) fn workflow(
    v: &WorkflowView,
    states: Option<&BTreeMap<String, &'static str>>,
    history: &[(WorkflowExecution, Vec<TaskExecution>)],
) -> Response {
    let wf = &v.entry.wf;
    let live = history
        .first()
        .is_some_and(|(e, _)| e.status == WorkflowStatus::Running);
    let mut b = format!("<h1>{}</h1>", esc(&wf.name));
    if let Some(d) = &wf.description {
        let _ = write!(b, "<p class=\"description\">{}</p>", esc(d));
    }
    let _ = write!(
        b,
        "<p>Schedule: {} · next run: {} · file: <code>{}</code></p>",
        wf.schedule
            .as_deref()
            .map_or("on demand".into(), |s| format!("<code>{}</code>", esc(s))),
        v.entry.next.map_or("-".into(), local),
        esc(&v.entry.source.display().to_string()),
    );
    b.push_str("<h2>Tasks</h2>");
    b.push_str(&dag_svg(v, states));
    if !wf.handlers.is_empty() {
        b.push_str("<p class=\"handlers\">Handlers: ");
        for (when, t) in wf.handlers.all() {
            let _ = write!(b, "<span>{} → {}</span> ", esc(when), esc(&t.name));
        }
        b.push_str("</p>");
    }
    b.push_str("<h2>History</h2>");
    if history.is_empty() {
        b.push_str("<p>No executions yet.</p>");
    } else {
        b.push_str(
            "<table id=\"history\"><thead><tr><th>Started</th><th>Status</th><th>Duration</th>\
             <th>Tasks</th><th>Execution</th></tr></thead><tbody>",
        );
        for (e, _) in history {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td>\
                 <td><a href=\"/executions/{}\"><code>{}</code></a></td></tr>",
                local(e.started_at),
                badge(e.status.as_str()),
                e.duration_seconds.map_or("-".into(), human),
                e.successful_tasks,
                e.total_tasks,
                enc(&e.id),
                esc(&e.id),
            );
        }
        b.push_str("</tbody></table>");
    }
    layout(&wf.name, live, &b)
}

const NODE_W: usize = 168;
const NODE_H: usize = 34;
const COL_GAP: usize = 56;
const ROW_GAP: usize = 14;
const PAD: usize = 8;

/// The DAG as SVG: one column per dependency level, one node per task, coloured by its state
/// in the latest execution (`data-state`), edges from each dependency to its dependent.
fn dag_svg(v: &WorkflowView, states: Option<&BTreeMap<String, &'static str>>) -> String {
    let wf = &v.entry.wf;
    let level = levels(wf);
    let mut rows_used: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pos = Vec::with_capacity(wf.tasks.len());
    for &l in &level {
        let row = rows_used.entry(l).or_default();
        let x = PAD + l * (NODE_W + COL_GAP);
        let y = PAD + *row * (NODE_H + ROW_GAP);
        *row += 1;
        pos.push((x, y));
    }
    let cols = level.iter().max().map_or(0, |m| m + 1);
    let rows = rows_used.values().max().copied().unwrap_or(0);
    let width = (2 * PAD + cols * (NODE_W + COL_GAP))
        .saturating_sub(COL_GAP)
        .max(NODE_W);
    let height = (2 * PAD + rows * (NODE_H + ROW_GAP))
        .saturating_sub(ROW_GAP)
        .max(NODE_H);
    let mut s = format!(
        "<svg id=\"dag\" class=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-label=\"Task graph\"><defs><marker id=\"arrow\" viewBox=\"0 0 8 8\" refX=\"8\" \
         refY=\"4\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
         <path d=\"M0,0 L8,4 L0,8 z\"/></marker></defs>"
    );
    let index = task_index(wf);
    for (i, t) in wf.tasks.iter().enumerate() {
        for d in &t.depends_on {
            let Some(&j) = index.get(d.as_str()) else {
                continue;
            };
            let (x1, y1) = (pos[j].0 + NODE_W, pos[j].1 + NODE_H / 2);
            let (x2, y2) = (pos[i].0, pos[i].1 + NODE_H / 2);
            let _ = write!(
                s,
                "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" marker-end=\"url(#arrow)\" \
                 d=\"M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}\"/>",
                esc(d),
                esc(&t.name),
                x1 + COL_GAP / 2,
                x2 - COL_GAP / 2,
            );
        }
    }
    for (i, t) in wf.tasks.iter().enumerate() {
        let state = states
            .and_then(|m| m.get(&t.name).copied())
            .unwrap_or("not-run");
        let (x, y) = pos[i];
        let mut label: String = t.name.chars().take(19).collect();
        if t.name.chars().count() > 19 {
            label.push('…');
        }
        let _ = write!(
            s,
            "<g class=\"node s-{state}\" data-task=\"{n}\" data-state=\"{state}\">\
             <title>{n} ({kind}): {state}</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"6\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{label}</text></g>",
            n = esc(&t.name),
            kind = esc(&t.kind),
            tx = x + 10,
            ty = y + NODE_H / 2 + 5,
            label = esc(&label),
        );
    }
    s.push_str("</svg>");
    s
}

const LABEL_W: f64 = 210.0;
const BAR_W: f64 = 620.0;
const ROW_H: f64 = 22.0;

/// `/executions/ID`: the task table and a timeline of every attempt.
pub(super) fn execution(
    e: &WorkflowExecution,
    last: &[&TaskExecution],
    attempts: &[TaskExecution],
    planned: &[String],
    now: DateTime<Utc>,
) -> Response {
    let running = e.status == WorkflowStatus::Running;
    let mut b = format!(
        "<h1><a href=\"/workflows/{}\">{}</a> · execution</h1>\
         <p class=\"summary\" data-status=\"{}\">{} <code>{}</code> · started {} · {}</p>",
        enc(&e.workflow_name),
        esc(&e.workflow_name),
        e.status.as_str(),
        badge(e.status.as_str()),
        esc(&e.id),
        local(e.started_at),
        match e.duration_seconds {
            Some(d) if !running => format!("took {}", human(d)),
            _ => format!(
                "running for {}",
                human((now - e.started_at).num_milliseconds() as f64 / 1000.0)
            ),
        },
    );
    b.push_str(
        "<h2>Tasks</h2><table id=\"tasks\"><thead><tr><th>Task</th><th>State</th>\
         <th>Attempt</th><th>Started</th><th>Duration</th><th>Exit</th><th>Message</th>\
         <th>Log</th></tr></thead><tbody>",
    );
    let mut shown: Vec<&str> = Vec::new();
    for t in last {
        shown.push(&t.task_name);
        let state = views::shown_state(t, running);
        let _ = write!(
            b,
            "<tr data-task=\"{n}\" data-state=\"{state}\"><td>{n}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><a href=\"/executions/{}/tasks/{}/log\">log</a></td></tr>",
            badge(state),
            t.attempt,
            local(t.started_at),
            t.duration_seconds.map_or("-".into(), human),
            t.exit_code.map_or("-".into(), |c| c.to_string()),
            esc(t.error_message.as_deref().unwrap_or("")),
            enc(&e.id),
            enc(&t.task_name),
            n = esc(&t.task_name),
        );
    }
    for name in planned {
        if !shown.iter().any(|s| is_attempt_of(s, name)) {
            let state = if running { "pending" } else { "not-run" };
            let _ = write!(
                b,
                "<tr data-task=\"{n}\" data-state=\"{state}\"><td>{n}</td><td>{}</td>\
                 <td colspan=\"6\"></td></tr>",
                badge(state),
                n = esc(name),
            );
        }
    }
    b.push_str("</tbody></table><h2>Timeline</h2>");
    b.push_str(&gantt(e, attempts, now));
    layout(&format!("{} execution", e.workflow_name), running, &b)
}

/// One bar per attempt, from its start for its duration (up to now while it runs).
fn gantt(e: &WorkflowExecution, attempts: &[TaskExecution], now: DateTime<Utc>) -> String {
    let mut list: Vec<&TaskExecution> = attempts.iter().collect();
    list.sort_by_key(|a| a.started_at);
    let end_of = |a: &TaskExecution| -> DateTime<Utc> {
        match (a.finished_at, a.status) {
            (Some(f), _) => f,
            (None, TaskState::Running) if e.status == WorkflowStatus::Running => now,
            (None, _) => e.finished_at.unwrap_or(a.started_at),
        }
    };
    let since = |t: DateTime<Utc>| (t - e.started_at).num_milliseconds().max(0) as f64 / 1000.0;
    let span = list
        .iter()
        .map(|a| since(end_of(a)))
        .fold(e.duration_seconds.unwrap_or(0.0), f64::max)
        .max(0.001);
    let height = ROW_H * (list.len() as f64 + 1.0) + 4.0;
    let width = LABEL_W + BAR_W + 10.0;
    let mut s = format!(
        "<svg id=\"timeline\" class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">"
    );
    for (i, a) in list.iter().enumerate() {
        let y = ROW_H * i as f64 + 2.0;
        let start = since(a.started_at);
        let length = (since(end_of(a)) - start).max(0.0);
        let x = LABEL_W + start / span * BAR_W;
        let w = (length / span * BAR_W).max(2.0);
        let label: String = a.task_name.chars().take(26).collect();
        let _ = write!(
            s,
            "<text class=\"label\" x=\"4\" y=\"{ty}\">{label} #{n}</text>\
             <rect class=\"bar s-{st}\" data-task=\"{name}\" data-attempt=\"{n}\" x=\"{x:.1}\" \
             y=\"{y}\" width=\"{w:.1}\" height=\"{h}\" rx=\"3\">\
             <title>{name} attempt {n}: {st}, +{from} for {len}</title></rect>",
            ty = y + 15.0,
            label = esc(&label),
            name = esc(&a.task_name),
            n = a.attempt,
            st = views::shown_state(a, e.status == WorkflowStatus::Running),
            h = ROW_H - 6.0,
            from = human(start),
            len = human(length),
        );
    }
    let axis = ROW_H * list.len() as f64 + 16.0;
    let _ = write!(
        s,
        "<text class=\"axis\" x=\"{LABEL_W}\" y=\"{axis}\">0s</text>\
         <text class=\"axis end\" x=\"{}\" y=\"{axis}\">{}</text></svg>",
        LABEL_W + BAR_W,
        human(span)
    );
    s
}

/// `/executions/ID/tasks/TASK/log`: the end of the log, followed while the execution runs.
pub(super) fn log(e: &WorkflowExecution, task: &str, chunk: &LogChunk) -> Response {
    let mut b = format!(
        "<h1><a href=\"/executions/{}\">{}</a> · {}</h1>",
        enc(&e.id),
        esc(&e.workflow_name),
        esc(task)
    );
    if chunk.offset > 0 {
        let _ = write!(
            b,
            "<p class=\"note\">Showing the last {} of {} bytes; <code>picoflow logs \
             --execution-id {} --task {}</code> shows it all.</p>",
            chunk.size - chunk.offset,
            chunk.size,
            esc(&e.id),
            esc(task)
        );
    }
    let _ = write!(
        b,
        "<pre id=\"log\" data-src=\"/api/v1/executions/{}/tasks/{}/log\" data-offset=\"{}\" \
         data-follow=\"{}\">{}</pre>",
        enc(&e.id),
        enc(task),
        chunk.next_offset,
        !chunk.complete,
        esc(&chunk.text)
    );
    layout(&format!("{task} log"), false, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_names_encoded() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(enc("up[a/b c].txt"), "up%5Ba%2Fb%20c%5D.txt");
        assert_eq!(enc("plain-name_1"), "plain-name_1");
    }

    #[test]
    fn durations_show_milliseconds_below_a_second_and_two_units_above_a_minute() {
        assert_eq!(human(0.25), "250ms");
        assert_eq!(human(12.34), "12.3s");
        assert_eq!(human(245.0), "4m 05s");
        assert_eq!(human(7380.0), "2h 03m");
    }
}
