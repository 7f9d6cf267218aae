//! The readiness report: one line a worker writes on its readiness pipe
//! once it serves, with how long each step of its start took:
//!
//! ```text
//! ready exec_us=15000 runtime_us=100 engine_us=700 load_us=1100 check_us=150 total_us=2100 instances=reset
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
    /// How its instances serve requests (`None` from a line without it).
    pub instances: Option<Instances>,
    /// Whether the zygote had loaded its engine and module before forking
    /// it (`engine` and `load` are then next to nothing).
    pub preloaded: bool,
}

/// How a worker's instances serve requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instances {
    /// A fresh instance's state per request, by resetting an instance that
    /// served one to its state after instantiation.
    Reset,
    /// A new instance per request: the component's instances cannot be
    /// reset (the worker logs why).
    Instantiate,
    /// Instances serve several requests and keep the guest's state
    /// (`spec.instances.maxRequests` > 1).
    Reuse,
}

impl Instances {
    /// The word on the ready line and in the replica's `Started` event.
    pub fn as_str(self) -> &'static str {
        match self {
            Instances::Reset => "reset",
            Instances::Instantiate => "instantiate",
            Instances::Reuse => "reuse",
        }
    }

    fn parse(word: &str) -> Option<Instances> {
        [Instances::Reset, Instances::Instantiate, Instances::Reuse].into_iter().find(|i| i.as_str() == word)
    }
}

impl ReadyReport {
    /// The line, with its newline.
    pub fn to_line(&self) -> String {
        let instances = self.instances.map(|i| format!(" instances={}", i.as_str())).unwrap_or_default();
        let preloaded = if self.preloaded { " preloaded=1" } else { "" };
        format!(
            "ready exec_us={} runtime_us={} engine_us={} load_us={} check_us={} total_us={}{preloaded}{instances}\n",
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
        let value = |key: &str| rest.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='));
        let field =
            |key: &str| value(key).and_then(|v| v.parse::<u64>().ok()).map_or(Duration::ZERO, Duration::from_micros);
        Some(ReadyReport {
            exec: field("exec_us"),
            runtime: field("runtime_us"),
            engine: field("engine_us"),
            load: field("load_us"),
            check: field("check_us"),
            total: field("total_us"),
            instances: value("instances").and_then(Instances::parse),
            preloaded: value("preloaded") == Some("1"),
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
            instances: Some(Instances::Reset),
            preloaded: false,
        };
        let line = report.to_line();
        assert_eq!(
            line,
            "ready exec_us=15000 runtime_us=100 engine_us=700 load_us=1100 check_us=150 total_us=2100 instances=reset\n"
        );
        assert_eq!(ReadyReport::parse(&line), Some(report));
        let preloaded = ReadyReport { preloaded: true, ..report };
        assert!(preloaded.to_line().contains(" preloaded=1 "), "{}", preloaded.to_line());
        assert_eq!(ReadyReport::parse(&preloaded.to_line()), Some(preloaded));
        assert_eq!(ReadyReport::parse("ready\n"), Some(ReadyReport::default()));
        assert_eq!(ReadyReport::parse("error: no\n"), None);
        assert_eq!(ReadyReport::parse("ready instances=reuse\n").unwrap().instances, Some(Instances::Reuse));
        assert_eq!(ReadyReport::parse("ready instances=other\n").unwrap().instances, None);
    }
}
