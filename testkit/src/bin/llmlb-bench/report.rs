//! The Markdown report: one section per workload and a closing table of
//! every figure against its goal.

use std::fmt::Write as _;

/// A figure compared with its goal.
#[derive(Clone, Debug)]
pub struct Goal {
    /// Workload number and name.
    pub workload: String,
    /// What was measured.
    pub figure: String,
    /// The goal as written in the issue.
    pub goal: String,
    /// The measured value.
    pub measured: String,
    /// Whether the goal was met; `None` for figures without a goal.
    pub met: Option<bool>,
}

/// One workload's text.
#[derive(Clone, Debug)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// Markdown body.
    pub body: String,
}

/// Everything the run produced.
#[derive(Debug, Default)]
pub struct Report {
    /// Sections in run order.
    pub sections: Vec<Section>,
    /// Figures against goals.
    pub goals: Vec<Goal>,
}

impl Report {
    /// Adds a goal row.
    pub fn goal(
        &mut self,
        workload: &str,
        figure: &str,
        goal: &str,
        measured: String,
        met: Option<bool>,
    ) {
        self.goals.push(Goal {
            workload: workload.into(),
            figure: figure.into(),
            goal: goal.into(),
            measured,
            met,
        });
    }

    /// The goals table.
    pub fn goals_table(&self) -> String {
        let mut t = Table::new(&["workload", "figure", "goal", "measured", "met"]);
        for g in &self.goals {
            t.row(vec![
                g.workload.clone(),
                g.figure.clone(),
                g.goal.clone(),
                g.measured.clone(),
                match g.met {
                    Some(true) => "yes".into(),
                    Some(false) => "**no**".into(),
                    None => "–".into(),
                },
            ]);
        }
        t.render()
    }
}

/// A Markdown table.
#[derive(Clone, Debug)]
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Markdown text, ending with a newline.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| {} |", self.head.join(" | "));
        let _ = writeln!(
            s,
            "|{}",
            self.head.iter().map(|_| "---|").collect::<String>()
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        s
    }
}
