//! Aligned text tables like kubectl's (columns separated by three spaces,
//! uppercase headers, no trailing spaces) and the small formats their
//! cells use.

use std::time::Duration;

/// What an empty list prints (to stderr), as kubectl does.
pub const NO_RESOURCES: &str = "No resources found.";

/// What an absent value shows as.
pub const NONE: &str = "<none>";

/// The space between two columns.
const GAP: &str = "   ";

/// A table: headers and rows of cells (one cell per header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Self {
        Table { headers, rows: Vec::new() }
    }

    /// Adds a row; control characters in cells become spaces so that a
    /// row stays one line.
    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.headers.len(), "one cell per column");
        self.rows.push(row.into_iter().map(|cell| clean(&cell)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The width of each column: its widest cell or header.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            widen(&mut widths, row);
        }
        widths
    }

    /// The header line.
    pub fn header(&self, widths: &[usize]) -> String {
        let cells: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        format_row(&cells, widths)
    }

    /// Header and rows, each line ending in `\n`.
    pub fn render(&self) -> String {
        self.render_indented("")
    }

    /// Like [`Table::render`], every line starting with `indent`.
    pub fn render_indented(&self, indent: &str) -> String {
        let widths = self.widths();
        let mut out = format!("{indent}{}\n", self.header(&widths));
        for row in &self.rows {
            out.push_str(indent);
            out.push_str(&format_row(row, &widths));
            out.push('\n');
        }
        out
    }
}

/// Grows `widths` to fit `row`.
pub fn widen(widths: &mut [usize], row: &[String]) {
    for (column, cell) in widths.iter_mut().zip(row) {
        *column = (*column).max(width(cell));
    }
}

/// One line: every cell but the last padded to its column's width.
pub fn format_row(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (index, cell) in cells.iter().enumerate() {
        if index > 0 {
            line.push_str(GAP);
        }
        line.push_str(cell);
        if index + 1 < cells.len() {
            let pad = widths.get(index).copied().unwrap_or(0).saturating_sub(width(cell));
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    line.trim_end().to_owned()
}

/// Display width of a cell (characters; cells are mostly ASCII).
fn width(cell: &str) -> usize {
    cell.chars().count()
}

/// Replaces control characters (newlines, tabs) with spaces.
pub fn clean(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The age of something created at `then` (Unix seconds), kubectl-style.
pub fn age(now: u64, then: u64) -> String {
    if then == 0 { "<unknown>".to_owned() } else { shoal_api::objects::format_age(now.saturating_sub(then)) }
}

/// A size for people: `812 B`, `143.2 KiB`, `2.0 MiB`.
pub fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let (value, unit) = binary_scale(bytes);
    format!("{value:.1} {}", ["KiB", "MiB", "GiB", "TiB", "PiB"][unit])
}

/// Memory as manifests write it, rounded where the exact figure is long:
/// `128Mi`, `0`, `23.5Gi` (a machine's 24,683,656 KiB).
pub fn memory(bytes: u64) -> String {
    let exact = shoal_api::format_bytes(bytes);
    if exact.len() <= 6 {
        return exact;
    }
    let (value, unit) = binary_scale(bytes);
    format!("{value:.1}{}", ["Ki", "Mi", "Gi", "Ti", "Pi"][unit])
}

/// `bytes` in the largest binary unit (from KiB, 0, to PiB, 4) in which it
/// is at least 1.
fn binary_scale(bytes: u64) -> (f64, usize) {
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < 4 {
        value /= 1024.0;
        unit += 1;
    }
    (value, unit)
}

/// A CPU limit as written in manifests: `500m`, `2`, or `-` for unlimited.
pub fn cpu(millis: Option<u32>) -> String {
    match millis {
        None => "-".to_owned(),
        Some(m) if m % 1000 == 0 => (m / 1000).to_string(),
        Some(m) => format!("{m}m"),
    }
}

/// CPU use as `kubectl top` shows it: millicores (`23m`, `1500m`), or `-`.
pub fn millicores(millis: Option<u64>) -> String {
    millis.map_or_else(|| "-".to_owned(), |m| format!("{m}m"))
}

/// Memory use as `kubectl top` shows it: whole mebibytes (`12Mi`), or `-`.
pub fn mebibytes(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{}Mi", b >> 20))
}

/// A latency in milliseconds with two significant digits or so:
/// `0.42ms`, `1.8ms`, `230ms`, `1.2s`, `12s`; `-` when there is none.
pub fn latency(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if !ms.is_finite() => "-".to_owned(),
        // The bounds are where rounding would reach the next format.
        Some(ms) if ms < 0.005 => "<0.01ms".to_owned(),
        Some(ms) if ms < 0.995 => format!("{ms:.2}ms"),
        Some(ms) if ms < 9.95 => format!("{ms:.1}ms"),
        Some(ms) if ms < 999.5 => format!("{ms:.0}ms"),
        Some(ms) if ms < 9950.0 => format!("{:.1}s", ms / 1000.0),
        Some(ms) => format!("{:.0}s", ms / 1000.0),
    }
}

/// A duration as written in manifests: `1h`, `10m`, `30s`, `1500ms`.
pub fn duration(value: Duration) -> String {
    let ms = value.as_millis();
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// `sha256:` and the first 12 hex digits of a digest.
pub fn short_digest(digest: &str) -> String {
    format!("sha256:{}", digest.get(..12).unwrap_or(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut table = Table::new(vec!["NAME", "READY", "AGE"]);
        table.push(vec!["kubia".into(), "3/3".into(), "5m".into()]);
        table.push(vec!["a-much-longer-name".into(), "10/10".into(), "4h20m".into()]);
        table
    }

    #[test]
    fn memory_is_exact_when_short_and_rounded_when_long() {
        assert_eq!(memory(128 << 20), "128Mi");
        assert_eq!(memory(0), "0");
        assert_eq!(memory(24_683_656 * 1024), "23.5Gi");
        assert_eq!(memory(1_000_000_007), "953.7Mi");
    }

    #[test]
    fn columns_are_aligned_three_spaces_apart() {
        assert_eq!(
            table().render(),
            "NAME                 READY   AGE\n\
             kubia                3/3     5m\n\
             a-much-longer-name   10/10   4h20m\n"
        );
    }

    #[test]
    fn no_trailing_spaces_and_empty_last_cells() {
        let mut table = Table::new(vec!["NAME", "MESSAGE"]);
        table.push(vec!["a".into(), String::new()]);
        table.push(vec!["b".into(), "exit code 1\nsecond line".into()]);
        assert_eq!(table.render(), "NAME   MESSAGE\na\nb      exit code 1 second line\n");
        assert_eq!(table.render_indented("  "), "  NAME   MESSAGE\n  a\n  b      exit code 1 second line\n");
    }

    #[test]
    fn rows_can_be_printed_later_with_the_same_widths() {
        let table = table();
        let mut widths = table.widths();
        assert_eq!(widths, [18, 5, 5]);
        let row = vec!["x".into(), "0/1".into(), "1s".into()];
        assert_eq!(format_row(&row, &widths), "x                    0/1     1s");
        let wider = vec!["a-name-longer-than-the-rest".into(), "1/1".into(), "1s".into()];
        widen(&mut widths, &wider);
        assert_eq!(widths, [27, 5, 5]);
    }

    #[test]
    fn latencies_keep_about_two_significant_digits() {
        let cases = [
            (0.0, "<0.01ms"),
            (0.004, "<0.01ms"),
            (0.005, "0.01ms"),
            (0.42, "0.42ms"),
            (0.994, "0.99ms"),
            (0.996, "1.0ms"),
            (1.8, "1.8ms"),
            (9.94, "9.9ms"),
            (9.96, "10ms"),
            (230.4, "230ms"),
            (999.4, "999ms"),
            (999.6, "1.0s"),
            (1234.0, "1.2s"),
            (9949.0, "9.9s"),
            (9951.0, "10s"),
            (61_000.0, "61s"),
        ];
        for (ms, want) in cases {
            assert_eq!(latency(Some(ms)), want, "latency({ms})");
        }
        assert_eq!(latency(None), "-");
        assert_eq!(latency(Some(f64::NAN)), "-");
    }

    #[test]
    fn cell_formats() {
        assert_eq!(human_size(812), "812 B");
        assert_eq!(human_size(146_636), "143.2 KiB");
        assert_eq!(human_size(2 << 20), "2.0 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
        assert_eq!(cpu(None), "-");
        assert_eq!(cpu(Some(500)), "500m");
        assert_eq!(cpu(Some(2000)), "2");
        assert_eq!(cpu(Some(1500)), "1500m");
        assert_eq!(duration(Duration::from_secs(10)), "10s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(120)), "2m");
        assert_eq!(duration(Duration::from_secs(3600)), "1h");
        assert_eq!(short_digest(&"ab".repeat(32)), "sha256:abababababab");
        assert_eq!(millicores(Some(23)), "23m");
        assert_eq!(millicores(Some(2000)), "2000m", "kubectl top keeps millicores");
        assert_eq!(millicores(Some(0)), "0m");
        assert_eq!(millicores(None), "-");
        assert_eq!(mebibytes(Some(12 << 20)), "12Mi");
        assert_eq!(mebibytes(Some((12 << 20) + (1 << 19))), "12Mi", "truncated, as kubectl top does");
        assert_eq!(mebibytes(Some(3 << 30)), "3072Mi");
        assert_eq!(mebibytes(Some(1000)), "0Mi");
        assert_eq!(mebibytes(None), "-");
        assert_eq!(short_digest("abc"), "sha256:abc");
        assert_eq!(age(1000, 995), "5s");
        assert_eq!(age(1000, 0), "<unknown>");
        assert_eq!(age(1000, 2000), "0s", "a clock ahead of ours");
    }
}
