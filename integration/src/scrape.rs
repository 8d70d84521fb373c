//! lbd's `/metrics` endpoint as a test sees it: one HTTP/1.1 request over a plain TCP socket
//! from inside a namespace ([`http`]), and a scrape parsed as Prometheus parses it ([`Scrape`]),
//! with the family types of its `# TYPE` lines.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use xdplb_testkit::NetNs;

/// lbd's default metrics address, inside the LB namespace.
pub const METRICS: &str = "127.0.0.1:9469";
/// Connect, read and write timeout of one request.
const TIMEOUT: Duration = Duration::from_secs(2);

/// An HTTP/1.1 answer.
pub struct HttpReply {
    pub status: u16,
    /// The header lines, lower-cased.
    pub headers: String,
    pub body: String,
}

/// One request to lbd's metrics endpoint ([`METRICS`]) from inside `ns`.
pub fn http(ns: &NetNs, method: &str, path: &str, accept: &str) -> Result<HttpReply> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {METRICS}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    let raw = ns.run(move || -> Result<Vec<u8>> {
        let addr = METRICS.parse().context("metrics address")?;
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
            .with_context(|| format!("connecting to {METRICS} in the LB namespace"))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        s.write_all(request.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).context("reading the answer")?;
        Ok(buf)
    })??;
    let text = String::from_utf8(raw).context("answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {text:?}"))?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    Ok(HttpReply {
        status,
        headers: headers.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// A parsed scrape.
pub struct Scrape {
    pub text: String,
    pub parsed: prometheus_parse::Scrape,
}

impl Scrape {
    /// `GET /metrics` (Prometheus text format 0.0.4) from inside `ns`, parsed; panics on a
    /// failed request or an unparsable answer.
    pub fn take(ns: &NetNs) -> Scrape {
        let r = http(ns, "GET", "/metrics", "text/plain").expect("GET /metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
        assert!(
            r.headers
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            r.headers
        );
        let parsed = prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_string())))
            .expect("Prometheus text format");
        Scrape {
            text: r.body,
            parsed,
        }
    }

    /// A scrape whose map walk (tracked flows, map entries) is newer than the traffic so far:
    /// lbd reuses a walk for 50 times as long as it took (at most 10 s), so one scrape tells how
    /// long to wait before the next one walks again.
    pub fn fresh(ns: &NetNs) -> Scrape {
        let probe = Scrape::take(ns);
        let took = probe.get("xdplb_map_walk_duration_seconds", &[]);
        std::thread::sleep(
            Duration::from_secs_f64((took * 50.0).min(10.0)) + Duration::from_millis(100),
        );
        Scrape::take(ns)
    }

    /// The value of the one sample of `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .parsed
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect();
        match found.as_slice() {
            [v] => *v,
            _ => panic!(
                "want one sample {name}{labels:?}, found {}:\n{}",
                found.len(),
                self.text
            ),
        }
    }

    /// Sum of every sample of `name` whose label `key` satisfies `keep`.
    pub fn sum(&self, name: &str, key: &str, keep: impl Fn(&str) -> bool) -> f64 {
        self.parsed
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get(key).is_some_and(&keep))
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => Some(v),
                _ => None,
            })
            .sum()
    }

    /// The type of every family, by name, from the `# TYPE NAME TYPE` lines (`counter`,
    /// `gauge`, `histogram`, `summary`, `info`, `untyped`).
    pub fn types(&self) -> BTreeMap<String, String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
            .collect()
    }

    /// Runs `promtool check metrics` on the scraped text; it must report nothing.
    pub fn promtool(&self) {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs (Debian package `prometheus`, installed by `make deps`)");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(self.text.as_bytes())
            .expect("feeding promtool");
        let out = child.wait_with_output().expect("promtool finishes");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool check metrics: {report}\n{}",
            self.text
        );
    }
}
