//! The operators' dashboards and alerts against what lbd really exports:
//! `packaging/prometheus/alerts.yml` passes `promtool check rules` and its unit tests
//! (`promtool test rules alerts_test.yml`: every alert both fires and stays quiet); and every
//! metric, label and label value named by an expr of the Grafana dashboard
//! (`packaging/grafana/xdplb.json`: panels and template variables) or of an alert exists in the
//! `/metrics` scrape of a real lbd in a namespace, with a VIP, a health-checked backend and the
//! default rate-limit policy. Each dashboard expr is also parsed by promtool (as a recording rule
//! of a temporary rules file, with Grafana's variables filled in).
//!
//! Run as root: `cargo test -p xdplb-integration --test dashboards -- --test-threads=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use regex::Regex;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use xdplb_integration::procs::health_flags;
use xdplb_integration::scrape::Scrape;
use xdplb_integration::{tcp_name_server, tcp_requests, Lbd, Proto, Topology, VIP};

/// Labels Prometheus adds to every series of a scrape target (not lbd's own).
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the integration crate is in the workspace")
        .to_path_buf()
}

fn prometheus_dir() -> PathBuf {
    repo().join("packaging/prometheus")
}

fn dashboard_path() -> PathBuf {
    repo().join("packaging/grafana/xdplb.json")
}

/// Runs `promtool args...` in `dir`; a missing promtool fails with what to install.
fn promtool(dir: &Path, args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool not found: it comes with Debian's `prometheus` package \
             (`apt-get install prometheus`, or `make deps`)"
        ),
        Err(e) => panic!("running promtool {}: {e}", args.join(" ")),
    }
}

fn assert_promtool_ok(dir: &Path, args: &[&str]) -> String {
    let out = promtool(dir, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

fn read_yaml(path: &Path) -> Yaml {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// `(alert name, rule)` of every alerting rule of alerts.yml.
fn alert_rules() -> Vec<(String, Yaml)> {
    let doc = read_yaml(&prometheus_dir().join("alerts.yml"));
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                out.push((name.to_string(), rule.clone()));
            }
        }
    }
    assert!(!out.is_empty(), "alerts.yml has no alerting rule");
    out
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = prometheus_dir();
    let checked = assert_promtool_ok(&dir, &["check", "rules", "alerts.yml"]);
    eprintln!("{checked}");
    let tested = assert_promtool_ok(&dir, &["test", "rules", "alerts_test.yml"]);
    eprintln!("{tested}");
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert: a `for:`, a severity, a summary and a description naming an lbctl command;
    // and unit tests where it fires and where it does not.
    let tests = read_yaml(&dir.join("alerts_test.yml"));
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_sequence().expect("tests") {
        for a in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = a["alertname"].as_str().expect("alertname").to_string();
            let expected = a["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                fired.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for (name, rule) in alert_rules() {
        assert!(rule["for"].as_str().is_some(), "{name}: no `for:`");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name}: severity {severity:?}"
        );
        assert!(
            rule["annotations"]["summary"].as_str().is_some(),
            "{name}: no summary"
        );
        let description = rule["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            description.contains("lbctl ") || description.contains("lbd.toml"),
            "{name}: the description names no fix (an lbctl command or lbd.toml): {description}"
        );
        assert!(fired.contains(&name), "{name}: no unit test where it fires");
        assert!(
            quiet.contains(&name),
            "{name}: no unit test where it stays quiet"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What lbd exports.

/// One exported family: its type and, per label, the values seen.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// The families of a scrape, by the name a query uses (`xdplb_vip_packets_total`).
struct Exported(BTreeMap<String, Family>);

impl Exported {
    fn of(scrape: &Scrape) -> Exported {
        let types = scrape.types();
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        // The family of a sample: its own name, or the histogram or summary that its
        // `_bucket`/`_sum`/`_count` suffix belongs to.
        let family_of = |name: &str| -> String {
            if types.contains_key(name) {
                return name.to_string();
            }
            ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|base| {
                    types
                        .get(*base)
                        .is_some_and(|k| k == "histogram" || k == "summary")
                })
                .unwrap_or(name)
                .to_string()
        };
        for s in &scrape.parsed.samples {
            let name = family_of(&s.metric);
            let f = families.entry(name.clone()).or_default();
            f.kind = types
                .get(&name)
                .cloned()
                .unwrap_or_else(|| "untyped".into());
            for (k, v) in s.labels.iter() {
                f.labels.entry(k.clone()).or_default().insert(v.clone());
            }
        }
        Exported(families)
    }

    /// The family a query name refers to, and the extra label its suffix brings: a histogram's
    /// `_bucket` (`le`), `_sum` and `_count`, a summary's `_sum` and `_count`.
    fn lookup(&self, name: &str) -> Option<(&Family, Option<&'static str>)> {
        if let Some(f) = self.0.get(name) {
            return Some((f, None));
        }
        for (suffix, kinds, extra) in [
            ("_bucket", &["histogram"][..], Some("le")),
            ("_sum", &["histogram", "summary"][..], None),
            ("_count", &["histogram", "summary"][..], None),
        ] {
            if let Some(base) = name.strip_suffix(suffix) {
                if let Some(f) = self.0.get(base) {
                    if kinds.contains(&f.kind.as_str()) {
                        return Some((f, extra));
                    }
                }
            }
        }
        None
    }

    fn names(&self) -> String {
        self.0.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// A small PromQL tokenizer: enough to find metric names, their matchers, grouping labels and
// the arguments of rate-like functions.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
    /// Operators, numbers, durations, Grafana variables.
    Other(String),
}

fn tokenize(expr: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            toks.push(Tok::Other(chars[start..i].iter().collect()));
        } else if c == '$' {
            let start = i;
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            toks.push(Tok::Other(
                chars[start..i.min(chars.len())].iter().collect(),
            ));
        } else if "\"'`".contains(c) {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("unterminated string in {expr:?}")),
                    Some(&q) if q == c => break,
                    Some('\\') if c != '`' => {
                        if let Some(&n) = chars.get(i + 1) {
                            s.push('\\');
                            s.push(n);
                        }
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            toks.push(Tok::Str(s));
        } else if "(){}[],".contains(c) {
            toks.push(Tok::Punct(c));
            i += 1;
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) {
                toks.push(Tok::Other(two));
                i += 2;
            } else {
                toks.push(Tok::Other(c.to_string()));
                i += 1;
            }
        }
    }
    Ok(toks)
}

/// Index of the bracket closing the one opened at `open`.
fn closing(toks: &[Tok], open: usize) -> Option<usize> {
    let (o, c) = match toks.get(open)? {
        Tok::Punct('(') => ('(', ')'),
        Tok::Punct('{') => ('{', '}'),
        Tok::Punct('[') => ('[', ']'),
        _ => return None,
    };
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        if *t == Tok::Punct(o) {
            depth += 1;
        } else if *t == Tok::Punct(c) {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// Index of the bracket opening the one closed at `close`.
fn opening(toks: &[Tok], close: usize) -> Option<usize> {
    let mut depth = 0usize;
    for i in (0..=close).rev() {
        match &toks[i] {
            Tok::Punct(')') => depth += 1,
            Tok::Punct('(') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Functions whose argument must be a counter.
const COUNTER_FUNCTIONS: [&str; 4] = ["rate", "irate", "increase", "resets"];

fn is_metric(name: &str) -> bool {
    let re = Regex::new("^xdplb_[a-z0-9_]+$").expect("regex");
    re.is_match(name)
}

/// The metric names in `toks[range]`.
fn metrics_in(toks: &[Tok]) -> BTreeSet<String> {
    toks.iter()
        .filter_map(|t| match t {
            Tok::Ident(n) if is_metric(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// The labels of a parenthesised list starting at `toks[open]`, and its closing index.
fn label_list(toks: &[Tok], open: usize) -> Option<(Vec<String>, usize)> {
    let close = closing(toks, open)?;
    let labels = toks[open + 1..close]
        .iter()
        .filter_map(|t| match t {
            Tok::Ident(l) => Some(l.clone()),
            _ => None,
        })
        .collect();
    Some((labels, close))
}

/// Whether some exported value of a label satisfies a matcher `op value`.
fn value_problem(op: &str, value: &str, values: &BTreeSet<String>) -> Option<String> {
    if value.contains('$') {
        return None; // a Grafana variable
    }
    match op {
        "=" | "!=" => (!values.contains(value)).then(|| format!("no exported value {value:?}")),
        _ => {
            // Each alternative of a regex without groups must match some value (a typo in one
            // alternative would otherwise go unnoticed).
            let alternatives: Vec<&str> = if value.contains('(') {
                vec![value]
            } else {
                value.split('|').collect()
            };
            for alt in alternatives {
                let re = match Regex::new(&format!("^(?:{alt})$")) {
                    Ok(re) => re,
                    Err(e) => return Some(format!("bad regex {alt:?}: {e}")),
                };
                if !values.iter().any(|v| re.is_match(v)) {
                    return Some(format!("no exported value matches {alt:?}"));
                }
            }
            None
        }
    }
}

/// Every problem of `expr` against `exported`: unknown metrics, labels a metric does not have,
/// label values it never takes, rate() of a non-counter.
fn check_expr(expr: &str, exported: &Exported) -> Vec<String> {
    let toks = match tokenize(expr) {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let has_label = |metric: &str, label: &str| -> bool {
        TARGET_LABELS.contains(&label)
            || exported
                .lookup(metric)
                .is_some_and(|(f, extra)| f.labels.contains_key(label) || extra == Some(label))
    };
    let all_metrics = metrics_in(&toks);
    for m in &all_metrics {
        if exported.lookup(m).is_none() {
            problems.push(format!(
                "metric {m} is not exported by lbd (it exports: {})",
                exported.names()
            ));
        }
    }
    for (i, t) in toks.iter().enumerate() {
        let Tok::Ident(word) = t else { continue };
        let next_open = |c| toks.get(i + 1) == Some(&Tok::Punct(c));
        if is_metric(word) && next_open('{') && exported.lookup(word).is_some() {
            // A selector's matchers: label op "value", ...
            let Some(close) = closing(&toks, i + 1) else {
                problems.push(format!("unclosed {{ after {word}"));
                continue;
            };
            let mut j = i + 2;
            while j < close {
                match (&toks[j], toks.get(j + 1), toks.get(j + 2)) {
                    (Tok::Ident(label), Some(Tok::Other(op)), Some(Tok::Str(value))) => {
                        if !has_label(word, label) {
                            let known = exported.lookup(word).map(|(f, _)| {
                                f.labels.keys().cloned().collect::<Vec<_>>().join(", ")
                            });
                            problems.push(format!(
                                "{word} has no label {label} (its labels: {})",
                                known.unwrap_or_default()
                            ));
                        } else if !TARGET_LABELS.contains(&label.as_str()) {
                            let values = exported
                                .lookup(word)
                                .and_then(|(f, _)| f.labels.get(label))
                                .cloned()
                                .unwrap_or_default();
                            if let Some(p) = value_problem(op, value, &values) {
                                problems.push(format!(
                                    "{word}{{{label}{op}{value:?}}}: {p} (values: {values:?})"
                                ));
                            }
                        }
                        j += 3;
                    }
                    (Tok::Punct(','), _, _) => j += 1,
                    (other, _, _) => {
                        problems.push(format!("cannot read the matchers of {word} at {other:?}"));
                        break;
                    }
                }
            }
        } else if (word == "by" || word == "without") && next_open('(') {
            let Some((labels, close)) = label_list(&toks, i + 1) else {
                problems.push(format!("unclosed `{word} (`"));
                continue;
            };
            // `AGG by (l) (arg)` or `AGG (arg) by (l)`.
            let arg = match i.checked_sub(1).map(|p| &toks[p]) {
                Some(Tok::Ident(agg)) if AGGREGATIONS.contains(&agg.as_str()) => {
                    closing(&toks, close + 1).map(|end| &toks[close + 1..=end])
                }
                Some(Tok::Punct(')')) => opening(&toks, i - 1).map(|start| &toks[start..i]),
                _ => None,
            };
            let Some(arg) = arg else {
                problems.push(format!("cannot find the argument of `{word} ({labels:?})`"));
                continue;
            };
            for m in metrics_in(arg) {
                for l in &labels {
                    if exported.lookup(&m).is_some() && !has_label(&m, l) {
                        problems.push(format!("`{word} ({l})` over {m}, which has no label {l}"));
                    }
                }
            }
        } else if ["on", "ignoring", "group_left", "group_right"].contains(&word.as_str())
            && next_open('(')
        {
            let Some((labels, _)) = label_list(&toks, i + 1) else {
                continue;
            };
            for l in &labels {
                if !all_metrics.iter().any(|m| has_label(m, l)) {
                    problems.push(format!("`{word} ({l})`: no metric of the expr has {l}"));
                }
            }
        } else if COUNTER_FUNCTIONS.contains(&word.as_str()) && next_open('(') {
            let Some(close) = closing(&toks, i + 1) else {
                continue;
            };
            for m in metrics_in(&toks[i + 1..close]) {
                if let Some((f, _)) = exported.lookup(&m) {
                    // A counter, or the _bucket/_sum/_count series of a histogram or summary.
                    let suffixed = !exported.0.contains_key(&m);
                    let counter = f.kind == "counter"
                        || suffixed && matches!(f.kind.as_str(), "histogram" | "summary");
                    if !counter {
                        problems.push(format!("{word}({m}): {m} is a {}, not a counter", f.kind));
                    }
                }
            }
        }
    }
    problems
}

/// The labels a Grafana legend names (`{{vip}}/{{proto}}`).
fn legend_labels(legend: &str) -> Vec<String> {
    let re = Regex::new(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}").expect("regex");
    re.captures_iter(legend).map(|c| c[1].to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// The dashboard's queries.

/// A query of the dashboard: where it is, the PromQL, and its legend.
struct Query {
    place: String,
    expr: String,
    legend: Option<String>,
}

fn collect_panels(panels: &[Json], out: &mut Vec<Query>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or("<untitled>");
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(Query {
                    place: format!("panel {title:?} target {}", t["refId"]),
                    expr: expr.to_string(),
                    legend: t["legendFormat"].as_str().map(str::to_string),
                });
            }
        }
        if let Some(nested) = p["panels"].as_array() {
            collect_panels(nested, out);
        }
    }
}

/// The dashboard's panel queries and, for its `label_values(SELECTOR, LABEL)` variables, the
/// selector plus the label (which the selector's metric must have).
fn dashboard_queries() -> (Vec<Query>, Vec<(String, String, String)>) {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).expect("reading the dashboard");
    let dash: Json = serde_json::from_str(&text).expect("the dashboard is JSON");
    let schema = dash["schemaVersion"].as_u64().unwrap_or(0);
    assert!(schema >= 36, "schemaVersion {schema}");
    let mut queries = Vec::new();
    collect_panels(dash["panels"].as_array().expect("panels"), &mut queries);
    let mut variables = Vec::new();
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(names.contains(&"vip"), "no `vip` variable: {names:?}");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"),
        "no datasource variable: {names:?}"
    );
    let label_values =
        Regex::new(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$").expect("regex");
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_else(|| panic!("variable {} has no query", v["name"]));
        let c = label_values.captures(q).unwrap_or_else(|| {
            panic!(
                "variable {}: not label_values(SELECTOR, LABEL): {q}",
                v["name"]
            )
        });
        variables.push((
            format!("variable {}", v["name"]),
            c[1].to_string(),
            c[2].to_string(),
        ));
    }
    assert!(queries.len() >= 10, "only {} panel queries", queries.len());
    (queries, variables)
}

/// Grafana's variables replaced by what PromQL can parse.
fn fill_variables(expr: &str) -> String {
    let re = Regex::new(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?").expect("regex");
    re.replace_all(expr, |c: &regex::Captures<'_>| match &c[0] {
        "$__rate_interval" | "$__interval" | "$__range" => "5m".to_string(),
        _ => ".*".to_string(),
    })
    .into_owned()
}

/// Every dashboard expr (and variable selector) parses as PromQL: as the recording rules of a
/// temporary rules file that `promtool check rules` reads offline.
fn promtool_parses(queries: &[Query], variables: &[(String, String, String)]) {
    let rules: Vec<Json> = queries
        .iter()
        .map(|q| q.expr.as_str())
        .chain(variables.iter().map(|(_, sel, _)| sel.as_str()))
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("xdplb_dashboard:query_{i}"), "expr": fill_variables(e)}))
        .collect();
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, serde_yaml::to_string(&doc).expect("YAML")).expect("write rules");
    let report = assert_promtool_ok(dir.path(), &["check", "rules", "dashboard-rules.yml"]);
    eprintln!("dashboard exprs: {report}");
}

/// A lab exporting every family the dashboard and the alerts use: lbd with a TCP VIP whose one
/// backend is health-checked, and a few connections through it.
fn scrape_a_real_lbd() -> Scrape {
    let topo = Topology::two_arm(1).expect("topology");
    let b1 = topo.backend(1);
    let backend = SocketAddrV4::new(b1.addr, 8080);
    let server = tcp_name_server(&b1.ns, backend, "b1").expect("tcp server");
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
    let vip = SocketAddrV4::new(VIP, 80);
    lbd.add_vip_with(vip, Proto::Tcp, &health_flags("tcp", &[]))
        .expect("vip add");
    lbd.add_backend(vip, Proto::Tcp, backend)
        .expect("add backend");
    let timeout = std::time::Duration::from_secs(2);
    let results = tcp_requests(
        topo.client(),
        None,
        vip,
        5,
        timeout,
        std::time::Duration::from_secs(30),
    )
    .expect("client runs");
    assert!(
        results.iter().all(Result::is_ok),
        "requests through the VIP: {:?}",
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .collect::<Vec<_>>()
    );
    let scrape = Scrape::fresh(topo.lb());
    drop(server);
    drop(lbd);
    scrape
}

#[test]
fn dashboard_and_alerts_use_what_lbd_exports() {
    let (queries, variables) = dashboard_queries();
    promtool_parses(&queries, &variables);

    let scrape = scrape_a_real_lbd();
    let exported = Exported::of(&scrape);
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let mut report = |place: &str, expr: &str, found: Vec<String>| {
        for p in found {
            problems.push(format!("{place}: {p}\n    in: {expr}"));
        }
    };
    for q in &queries {
        let toks_metrics = tokenize(&q.expr)
            .map(|t| metrics_in(&t))
            .unwrap_or_default();
        assert!(
            !toks_metrics.is_empty(),
            "{}: no xdplb_ metric in {}",
            q.place,
            q.expr
        );
        used.extend(toks_metrics.iter().cloned());
        let mut found = check_expr(&q.expr, &exported);
        // A legend's labels must be labels of some metric of the query.
        for l in q.legend.iter().flat_map(|l| legend_labels(l)) {
            let known = TARGET_LABELS.contains(&l.as_str())
                || toks_metrics.iter().any(|m| {
                    exported
                        .lookup(m)
                        .is_some_and(|(f, _)| f.labels.contains_key(&l))
                });
            if !known {
                found.push(format!(
                    "legend names {{{{{l}}}}}, a label of no metric here"
                ));
            }
        }
        report(&q.place, &q.expr, found);
    }
    for (place, selector, label) in &variables {
        let mut found = check_expr(selector, &exported);
        for m in tokenize(selector)
            .map(|t| metrics_in(&t))
            .unwrap_or_default()
        {
            used.insert(m.clone());
            let has = TARGET_LABELS.contains(&label.as_str())
                || exported
                    .lookup(&m)
                    .is_some_and(|(f, _)| f.labels.contains_key(label));
            if !has {
                found.push(format!("label_values over {m}, which has no label {label}"));
            }
        }
        report(place, selector, found);
    }
    for (name, rule) in alert_rules() {
        let expr = rule["expr"].as_str().expect("expr").to_string();
        let metrics = tokenize(&expr).map(|t| metrics_in(&t)).unwrap_or_default();
        assert!(
            !metrics.is_empty(),
            "alert {name}: no xdplb_ metric in {expr}"
        );
        used.extend(metrics);
        report(
            &format!("alert {name}"),
            &expr,
            check_expr(&expr, &exported),
        );
    }
    eprintln!(
        "{} dashboard queries, {} variables and {} alerts use {} metrics: {}",
        queries.len(),
        variables.len(),
        alert_rules().len(),
        used.len(),
        used.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    assert!(
        problems.is_empty(),
        "{} problems with the dashboard and alerts against lbd's scrape:\n{}\n\nscrape:\n{}",
        problems.len(),
        problems.join("\n"),
        scrape.text
    );
}

/// The checker itself: it catches a wrong name, label, value, grouping and rate() of a gauge.
#[test]
fn the_checker_finds_wrong_names() {
    let text = "# TYPE xdplb_packets_total counter\n\
                xdplb_packets_total{reason=\"drop_no_backend\"} 1\n\
                xdplb_packets_total{reason=\"tx_nat_forward\"} 2\n\
                # TYPE xdplb_vip_tracked_flows gauge\n\
                xdplb_vip_tracked_flows{vip=\"10.0.0.1:80\",proto=\"tcp\"} 3\n\
                # TYPE xdplb_lat_seconds histogram\n\
                xdplb_lat_seconds_bucket{vip=\"10.0.0.1:80\",le=\"1\"} 1\n\
                xdplb_lat_seconds_bucket{vip=\"10.0.0.1:80\",le=\"+Inf\"} 1\n\
                xdplb_lat_seconds_sum{vip=\"10.0.0.1:80\"} 0.5\n\
                xdplb_lat_seconds_count{vip=\"10.0.0.1:80\"} 1\n";
    let parsed =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let exported = Exported::of(&Scrape {
        text: text.to_string(),
        parsed,
    });
    let ok = [
        r#"sum by (instance, reason) (rate(xdplb_packets_total{reason=~"drop_.*", reason!="tx_nat_forward"}[5m]))"#,
        r#"sum(xdplb_vip_tracked_flows{vip=~"$vip"}) by (vip, proto)"#,
        r#"histogram_quantile(0.9, sum by (le, vip) (rate(xdplb_lat_seconds_bucket[5m])))"#,
        r#"rate(xdplb_lat_seconds_sum[5m]) / rate(xdplb_lat_seconds_count[5m])"#,
    ];
    for e in ok {
        assert_eq!(check_expr(e, &exported), Vec::<String>::new(), "{e}");
    }
    for (bad, why) in [
        ("rate(xdplb_packet_total[5m])", "not exported"),
        (
            r#"xdplb_packets_total{reson="drop_no_backend"}"#,
            "no label reson",
        ),
        (
            r#"xdplb_packets_total{reason="drop_port_exhaustion"}"#,
            "no exported value",
        ),
        (
            r#"xdplb_packets_total{reason=~"drop_no_backend|drop_ct_ful"}"#,
            "drop_ct_ful",
        ),
        (
            "sum by (vip) (rate(xdplb_packets_total[5m]))",
            "no label vip",
        ),
        ("sum(xdplb_packets_total) by (backend)", "no label backend"),
        ("rate(xdplb_vip_tracked_flows[5m])", "not a counter"),
        ("xdplb_vip_tracked_flows_bucket", "not exported"),
    ] {
        let found = check_expr(bad, &exported).join("\n");
        assert!(found.contains(why), "{bad}: want {why:?}, found {found:?}");
    }
}
