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

/// One plot: written as `bench/results/<file>.png`.
#[derive(Debug, Clone)]
pub struct Plot {
    pub file: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub sections: Vec<Section>,
    pub plots: Vec<Plot>,
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
        let mut out = String::new();
        for s in &self.sections {
            let _ = writeln!(out, "## {}\n", s.title);
            if !s.columns.is_empty() {
                let _ = writeln!(out, "| {} | target |", s.columns.join(" | "));
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
        }
        out
    }
}
