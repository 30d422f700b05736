//! Figures collected over repeats, the targets they are judged by, a table on
//! stdout and a JSON file with the machine they were measured on.

use crate::common::{Env, target_dir};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// One figure: a value per repeat.
pub struct Figure {
    pub scenario: String,
    /// The size measured, e.g. `C=64`.
    pub case: String,
    /// `chatapp`, or the ceiling it is compared with (`pgbench`, `broadcast`).
    pub system: String,
    pub metric: String,
    pub unit: String,
    pub values: Vec<f64>,
}

impl Figure {
    pub fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

pub struct Target {
    pub scenario: String,
    pub name: String,
    pub measured: f64,
    /// `<=` or `>=`.
    pub op: &'static str,
    pub limit: f64,
    pub met: bool,
}

pub struct Report {
    pub figures: Vec<Figure>,
    pub targets: Vec<Target>,
    /// Correctness checks (every member got every message, ...); any failure
    /// fails the run, also in smoke size.
    pub checks: Vec<(String, bool, String)>,
    /// Per scenario: the command that reproduces it.
    pub commands: Vec<(String, String)>,
    started: String,
}

impl Report {
    pub fn new(_env: &Env) -> Report {
        Report {
            figures: Vec::new(),
            targets: Vec::new(),
            checks: Vec::new(),
            commands: Vec::new(),
            started: now_rfc3339(),
        }
    }

    /// Records one repeat's value of a figure.
    pub fn add(
        &mut self,
        scenario: &str,
        case: &str,
        system: &str,
        metric: &str,
        unit: &str,
        value: f64,
    ) {
        if let Some(f) = self.figures.iter_mut().find(|f| {
            f.scenario == scenario && f.case == case && f.system == system && f.metric == metric
        }) {
            f.values.push(value);
            return;
        }
        self.figures.push(Figure {
            scenario: scenario.into(),
            case: case.into(),
            system: system.into(),
            metric: metric.into(),
            unit: unit.into(),
            values: vec![value],
        });
    }

    /// The median over repeats of a recorded figure.
    pub fn median(&self, scenario: &str, case: &str, system: &str, metric: &str) -> Option<f64> {
        self.figure(scenario, case, system, metric)
            .map(Figure::median)
    }

    fn figure(&self, scenario: &str, case: &str, system: &str, metric: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| {
            f.scenario == scenario && f.case == case && f.system == system && f.metric == metric
        })
    }

    /// The latest repeat's value of a recorded figure.
    pub fn last(&self, scenario: &str, case: &str, system: &str, metric: &str) -> Option<f64> {
        self.figure(scenario, case, system, metric)
            .and_then(|f| f.values.last().copied())
    }

    /// Judges `measured op limit` (on medians over repeats).
    pub fn target(
        &mut self,
        scenario: &str,
        name: &str,
        measured: f64,
        op: &'static str,
        limit: f64,
    ) {
        let met = match op {
            "<=" => measured <= limit,
            ">=" => measured >= limit,
            _ => unreachable!("target op {op}"),
        };
        self.targets.push(Target {
            scenario: scenario.into(),
            name: name.into(),
            measured,
            op,
            limit,
            met,
        });
    }

    /// A correctness check; a failed one fails the run.
    pub fn check(&mut self, scenario: &str, ok: bool, what: impl Into<String>) {
        let what = what.into();
        if !ok {
            eprintln!("CHECK FAILED [{scenario}] {what}");
        }
        self.checks.push((scenario.into(), ok, what));
    }

    pub fn command(&mut self, scenario: &str, command: String) {
        self.commands.push((scenario.into(), command));
    }

    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|(_, ok, _)| !ok)
            .map(|(s, _, what)| format!("[{s}] {what}"))
            .collect()
    }

    pub fn print(&self) {
        println!("{}", self.table());
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut scenario = "";
        for f in &self.figures {
            if f.scenario != scenario {
                scenario = &f.scenario;
                let _ = writeln!(out, "\n## {scenario}");
                if let Some((_, cmd)) = self.commands.iter().find(|(s, _)| s == scenario) {
                    let _ = writeln!(out, "$ {cmd}");
                }
                let _ = writeln!(
                    out,
                    "{:<20} {:<14} {:<28} {:>10} {:>10} {:>10}  unit",
                    "case", "system", "metric", "median", "min", "max"
                );
            }
            let _ = writeln!(
                out,
                "{:<20} {:<14} {:<28} {:>10} {:>10} {:>10}  {}",
                f.case,
                f.system,
                f.metric,
                fmt(f.median()),
                fmt(f.min()),
                fmt(f.max()),
                f.unit
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\n## targets");
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "{:<4} {:<10} {:<52} {} {} {}",
                    if t.met { "MET" } else { "MISS" },
                    t.scenario,
                    t.name,
                    fmt(t.measured),
                    t.op,
                    fmt(t.limit)
                );
            }
        }
        let passed = self.checks.iter().filter(|(_, ok, _)| *ok).count();
        let _ = writeln!(out, "\nchecks: {passed}/{} passed", self.checks.len());
        out
    }

    pub fn write_json(&self, env: &Env) {
        let path = env.opts.out.clone().unwrap_or_else(|| {
            target_dir().join("bench").join(format!(
                "load-{}{}.json",
                self.started.replace(':', "-"),
                if env.opts.smoke { "-smoke" } else { "" }
            ))
        });
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                json!({
                    "scenario": f.scenario, "case": f.case, "system": f.system,
                    "metric": f.metric, "unit": f.unit,
                    "min": f.min(), "median": f.median(), "max": f.max(), "values": f.values,
                })
            })
            .collect();
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|t| {
                json!({
                    "scenario": t.scenario, "name": t.name, "measured": t.measured,
                    "op": t.op, "limit": t.limit, "met": t.met,
                })
            })
            .collect();
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|(s, ok, what)| json!({ "scenario": s, "ok": ok, "what": what }))
            .collect();
        let commands: Value = self
            .commands
            .iter()
            .map(|(s, c)| (s.clone(), Value::String(c.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let doc = json!({
            "started": self.started,
            "finished": now_rfc3339(),
            "command": env.opts.command_line,
            "smoke": env.opts.smoke,
            "repeats": env.opts.repeats,
            "machine": machine(),
            "commands": commands,
            "figures": figures,
            "targets": targets,
            "checks": checks,
        });
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::write(
            &path,
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
        ) {
            Ok(()) => println!("results: {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
        let markdown = path.with_extension("md");
        match std::fs::write(&markdown, self.markdown()) {
            Ok(()) => println!("tables for BENCHMARKS.md: {}", markdown.display()),
            Err(e) => eprintln!("cannot write {}: {e}", markdown.display()),
        }
    }

    /// Per scenario, one row per (case, metric) and one column per system,
    /// each cell `median (min-max)` over the repeats; then the targets.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let mut scenarios: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !scenarios.contains(&f.scenario.as_str()) {
                scenarios.push(&f.scenario);
            }
        }
        for scenario in scenarios {
            let figures: Vec<&Figure> = self
                .figures
                .iter()
                .filter(|f| f.scenario == scenario)
                .collect();
            let mut systems: Vec<&str> = Vec::new();
            let mut rows: Vec<(&str, &str, &str)> = Vec::new();
            for f in &figures {
                if !systems.contains(&f.system.as_str()) {
                    systems.push(&f.system);
                }
                if !rows.iter().any(|(c, m, _)| *c == f.case && *m == f.metric) {
                    rows.push((&f.case, &f.metric, &f.unit));
                }
            }
            let _ = writeln!(out, "\n### {scenario}\n");
            if let Some((_, cmd)) = self.commands.iter().find(|(s, _)| s == scenario) {
                let _ = writeln!(out, "`{cmd}`\n");
            }
            let _ = writeln!(out, "| case | metric | {} |", systems.join(" | "));
            let _ = writeln!(out, "|---|---|{}", "---|".repeat(systems.len()));
            for (case, metric, unit) in rows {
                let cells: Vec<String> = systems
                    .iter()
                    .map(|system| {
                        figures
                            .iter()
                            .find(|f| f.case == case && f.metric == metric && f.system == *system)
                            .map(|f| {
                                if f.values.len() > 1 {
                                    format!(
                                        "{} ({}–{})",
                                        fmt(f.median()),
                                        fmt(f.min()),
                                        fmt(f.max())
                                    )
                                } else {
                                    fmt(f.median())
                                }
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "| {case} | {metric} ({unit}) | {} |",
                    cells.join(" | ")
                );
            }
        }
        if !self.targets.is_empty() {
            let _ = writeln!(
                out,
                "\n### targets\n\n| | scenario | target | measured | limit |\n|---|---|---|---|---|"
            );
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} {} |",
                    if t.met { "met" } else { "**missed**" },
                    t.scenario,
                    t.name,
                    fmt(t.measured),
                    t.op,
                    fmt(t.limit)
                );
            }
        }
        let passed = self.checks.iter().filter(|(_, ok, _)| *ok).count();
        let _ = writeln!(
            out,
            "\nCorrectness checks: {passed} of {} passed.",
            self.checks.len()
        );
        out
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What the figures were measured on.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let postgres = std::process::Command::new("psql")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "postgres": postgres,
        "commit": commit,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
