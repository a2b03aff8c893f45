//! Text tables for the command line, in the style calicoctl prints (go-pretty's default: `+---+`
//! rules, centred headers), drawn by comfy-table. A leaf module: the CLI and the node side both
//! render through it.

use comfy_table::{Cell, CellAlignment, ContentArrangement, LineStyle, Table, TableStyle};

/// calicoctl's look: ruled top, header separator and bottom; no rules between rows.
const CALICOCTL: TableStyle = TableStyle::new()
    .top_border(LineStyle::new('+', '-', '+', '+'))
    .header_lines(comfy_table::ContentLineStyle::new('|', '|', '|'))
    .header_separator(LineStyle::new('+', '-', '+', '+'))
    .content_lines(comfy_table::ContentLineStyle::new('|', '|', '|'))
    .bottom_border(LineStyle::new('+', '-', '+', '+'));

/// A table with a header; `right` lists the columns whose values are right-aligned (numbers).
pub struct TextTable {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<usize>,
}

impl TextTable {
    pub fn new<S: AsRef<str>>(header: &[S]) -> TextTable {
        TextTable {
            header: header.iter().map(|h| h.as_ref().to_string()).collect(),
            rows: vec![],
            right: vec![],
        }
    }

    /// Right-aligns these columns (0-based).
    pub fn right_align(mut self, cols: &[usize]) -> TextTable {
        self.right.extend_from_slice(cols);
        self
    }

    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(cells.into_iter().map(|c| c.to_string()).collect());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, each line ending in a newline.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| width(c))
                    .chain([width(&self.header[i])])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Headers centred as go-pretty does (an odd space goes to the right), which
        // comfy-table's centring (odd space left) is not.
        let header = self.header.iter().zip(&widths).map(|(h, w)| {
            let pad = w - width(h);
            Cell::new(format!("{}{h}{}", " ".repeat(pad / 2), " ".repeat(pad - pad / 2)))
        });
        let mut table = Table::new();
        table
            .load_style(CALICOCTL)
            // Never wrap cells to a terminal width: lines stay whole for grep and scripts.
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(header);
        for r in &self.rows {
            table.add_row(r.iter().enumerate().map(|(i, c)| {
                let cell = Cell::new(c);
                if self.right.contains(&i) {
                    cell.set_alignment(CellAlignment::Right)
                } else {
                    cell
                }
            }));
        }
        let mut s = table.to_string();
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calicoctls_layout() {
        let mut t = TextTable::new(&["NAME", "COUNT"]).right_align(&[1]);
        t.row(["a", "7"]).row(["longer", "12"]);
        assert_eq!(
            t.render(),
            "\
+--------+-------+
|  NAME  | COUNT |
+--------+-------+
| a      |     7 |
| longer |    12 |
+--------+-------+
"
        );
    }

    #[test]
    fn lines_are_never_wrapped() {
        let long = "x".repeat(300);
        let mut t = TextTable::new(&["A"]);
        t.row([long.as_str()]);
        assert!(t.render().lines().any(|l| l.contains(&long)));
    }
}
