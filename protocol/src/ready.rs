//! The readiness report: one line a worker writes on its readiness pipe
//! once it serves, with how long each step of its start took:
//!
//! ```text
//! ready exec_us=15000 runtime_us=100 engine_us=700 load_us=1100 check_us=150 total_us=2100
//! ```

use std::time::Duration;

/// How long a worker's start took, step by step, as it reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadyReport {
    /// From the node agent's spawn to the worker's `main` (fork, exec, the
    /// binary's start).
    pub exec: Duration,
    /// Starting its tokio runtime.
    pub runtime: Duration,
    /// Configuring wasmtime (the pooling allocator's reservation).
    pub engine: Duration,
    /// Loading the precompiled component and linking it.
    pub load: Duration,
    /// The start check: one instantiation.
    pub check: Duration,
    /// The worker's own time, from its `main` until ready.
    pub total: Duration,
}

impl ReadyReport {
    /// The line, with its newline.
    pub fn to_line(&self) -> String {
        format!(
            "ready exec_us={} runtime_us={} engine_us={} load_us={} check_us={} total_us={}\n",
            self.exec.as_micros(),
            self.runtime.as_micros(),
            self.engine.as_micros(),
            self.load.as_micros(),
            self.check.as_micros(),
            self.total.as_micros()
        )
    }

    /// Reads a line; fields it lacks are zero. `None` if it is not a
    /// readiness line at all.
    pub fn parse(line: &str) -> Option<ReadyReport> {
        let rest = line.strip_prefix("ready")?;
        let field = |key: &str| {
            rest.split_whitespace()
                .find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
                .map_or(Duration::ZERO, Duration::from_micros)
        };
        Some(ReadyReport {
            exec: field("exec_us"),
            runtime: field("runtime_us"),
            engine: field("engine_us"),
            load: field("load_us"),
            check: field("check_us"),
            total: field("total_us"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back() {
        let report = ReadyReport {
            exec: Duration::from_micros(15_000),
            runtime: Duration::from_micros(100),
            engine: Duration::from_micros(700),
            load: Duration::from_micros(1_100),
            check: Duration::from_micros(150),
            total: Duration::from_micros(2_100),
        };
        let line = report.to_line();
        assert_eq!(line, "ready exec_us=15000 runtime_us=100 engine_us=700 load_us=1100 check_us=150 total_us=2100\n");
        assert_eq!(ReadyReport::parse(&line), Some(report));
        assert_eq!(ReadyReport::parse("ready\n"), Some(ReadyReport::default()));
        assert_eq!(ReadyReport::parse("error: no\n"), None);
    }
}
