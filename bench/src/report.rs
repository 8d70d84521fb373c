//! The results of one `make bench` run: sections of tables (written to
//! `bench/results/latest.md` and printed) and series (drawn as PNG plots).
//!
//! Every figure is recorded next to the baseline measured in the same run, so
//! the table can show ratios or differences rather than absolute numbers alone.

use std::fmt::Write as _;

/// One table row: a label, the measured cells, and whether it meets its target.
#[derive(Debug, Clone)]
pub struct Row {
    pub cells: Vec<String>,
    /// `Some(true)` met, `Some(false)` missed, `None` no target.
    pub target_met: Option<bool>,
}

/// One section of the report: a heading, a table and free-text notes.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// One curve of a plot: (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One plot: written as `bench/results/<file>` (a PNG), shown under its section.
#[derive(Debug, Clone)]
pub struct Plot {
    pub file: String,
    /// Title of the section the plot belongs to.
    pub section: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
}

#[derive(Debug, Default)]
pub struct Report {
    /// Lines printed above the sections (machine, kernel, how the run was made).
    pub preamble: Vec<String>,
    pub sections: Vec<Section>,
    pub plots: Vec<Plot>,
    /// The closing note: missed targets, by how much, why, and what would close them.
    pub closing: Vec<String>,
}

impl Section {
    pub fn new(title: &str, columns: &[&str]) -> Self {
        Section {
            title: title.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn row(&mut self, cells: Vec<String>, target_met: Option<bool>) {
        self.rows.push(Row { cells, target_met });
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
}

impl Report {
    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# xdplb benchmarks (`make bench`)\n\n");
        for l in &self.preamble {
            let _ = writeln!(out, "{l}  ");
        }
        if !self.preamble.is_empty() {
            out.push('\n');
        }
        for s in &self.sections {
            let _ = writeln!(out, "## {}\n", s.title);
            if !s.columns.is_empty() {
                let _ = writeln!(out, "| {} | met? |", s.columns.join(" | "));
                let _ = writeln!(out, "|{}---|", "---|".repeat(s.columns.len()));
                for r in &s.rows {
                    let mark = match r.target_met {
                        Some(true) => "met",
                        Some(false) => "**missed**",
                        None => "",
                    };
                    let _ = writeln!(out, "| {} | {} |", r.cells.join(" | "), mark);
                }
                out.push('\n');
            }
            for n in &s.notes {
                let _ = writeln!(out, "- {n}");
            }
            if !s.notes.is_empty() {
                out.push('\n');
            }
            for p in self.plots.iter().filter(|p| p.section == s.title) {
                let _ = writeln!(out, "![{}]({})\n", p.title, p.file);
            }
        }
        if !self.closing.is_empty() {
            out.push_str("## Closing note: targets missed and where the time goes\n\n");
            for n in &self.closing {
                let _ = writeln!(out, "- {n}");
            }
            out.push('\n');
        }
        out
    }

    /// Writes `latest.md` and every plot into `dir`; returns the Markdown.
    pub fn write(&self, dir: &std::path::Path) -> anyhow::Result<String> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for p in &self.plots {
            crate::plot::draw(p, dir).with_context(|| format!("drawing {}", p.file))?;
        }
        let md = self.markdown();
        let path = dir.join("latest.md");
        std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
        Ok(md)
    }
}

/// One line per missed target of the report: the section, the row and its figures.
pub fn missed_targets(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for s in &report.sections {
        for r in s.rows.iter().filter(|r| r.target_met == Some(false)) {
            let cells: Vec<String> = s
                .columns
                .iter()
                .zip(&r.cells)
                .skip(1)
                .filter(|(_, v)| !v.is_empty())
                .map(|(c, v)| format!("{c} {v}"))
                .collect();
            out.push(format!(
                "Missed in {}: **{}** ({}).",
                s.title,
                r.cells.first().map(String::as_str).unwrap_or("?"),
                cells.join(", ")
            ));
        }
    }
    out
}
