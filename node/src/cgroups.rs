//! Per-replica cgroups (v1 and v2, through cgroups-rs).
//!
//! Every replica gets `shoal/<instance>/<replica>` in the memory, cpu and
//! pids controllers, with the manifest's memory limit, its cpu quota and a
//! pids limit. The worker joins it right after the zygote forked it,
//! before it runs any worker code (see [`ReplicaCgroup::procs_files`]). The group is removed once the worker has exited.

use std::fs::File;
use std::path::{Path, PathBuf};

use cgroups_rs::cgroup::Cgroup;
use cgroups_rs::cpu::CpuController;
use cgroups_rs::memory::MemController;
use cgroups_rs::pid::PidController;
use cgroups_rs::{Hierarchy, MaxValue};

/// The controllers a replica's cgroup uses.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// The CFS period for cpu quotas, in microseconds: 10 ms, not the kernel's
/// (and Kubernetes') 100 ms, so that a replica that used up its quota
/// waits at most the rest of 10 ms rather than of 100 ms. Measured with
/// hello-js (3 replicas at 500m, saturated): p99 42 ms -> 12 ms at the same
/// throughput; 5 ms gave nothing more.
const CPU_PERIOD_US: u64 = 10_000;
/// The smallest quota the kernel accepts, in microseconds.
const CPU_QUOTA_MIN_US: u64 = 1_000;
/// The largest period the kernel accepts, in microseconds.
const CPU_PERIOD_MAX_US: u64 = 1_000_000;

/// The CFS `(quota, period)` in microseconds for `millis` milli-cores:
/// [`CPU_PERIOD_US`], lengthened for small shares so that the quota is at
/// least the kernel's minimum.
pub fn cpu_quota_and_period(millis: u32) -> (u64, u64) {
    let millis = u64::from(millis.max(1));
    let period = CPU_PERIOD_US.max(CPU_QUOTA_MIN_US * 1000 / millis).min(CPU_PERIOD_MAX_US);
    ((millis * period / 1000).max(CPU_QUOTA_MIN_US), period)
}

/// Processes (threads count) one worker may have: tokio's two workers and
/// bounded blocking pool, the epoch ticker, and compiler threads on a cache
/// miss.
pub const WORKER_PIDS_MAX: i64 = 64;

/// Limits for one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory limit in bytes.
    pub memory: u64,
    /// CPU quota in milli-cores; `None` is unlimited.
    pub cpu_millis: Option<u32>,
}

/// Access to the cgroup hierarchy for one `shoal up` instance.
pub struct Cgroups {
    /// `shoal/<instance>`, relative to each controller's root.
    base: String,
    v2: bool,
}

/// One replica's cgroup.
pub struct ReplicaCgroup {
    cgroup: Cgroup,
    /// `/shoal/<instance>/<replica>`, as `/proc/<pid>/cgroup` shows it.
    path: String,
}

fn hierarchy() -> Box<dyn Hierarchy> {
    cgroups_rs::hierarchies::auto()
}

impl Cgroups {
    /// Checks that cgroups can be used (root, controllers mounted, groups
    /// can be created) and prepares `shoal/<instance>`. The error says why
    /// not, for the warning `shoal up` prints.
    pub fn detect(instance: &str) -> Result<Cgroups, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let hier = hierarchy();
        let v2 = hier.v2();
        let present: Vec<String> = hier.subsystems().iter().map(|s| s.controller_name()).collect();
        let missing: Vec<&str> = CONTROLLERS.iter().copied().filter(|c| !present.iter().any(|p| p == c)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "cgroup {} controllers not available: {}",
                if v2 { "v2" } else { "v1" },
                missing.join(", ")
            ));
        }
        let cgroups = Cgroups { base: format!("shoal/{instance}"), v2 };
        cgroups.remove_stale();
        let probe = cgroups.load(&cgroups.base);
        probe.create().map_err(|e| format!("cannot create cgroup {}: {e}", cgroups.base))?;
        if !controller_dirs(&probe).iter().all(|d| d.is_dir()) {
            return Err(format!("cannot create cgroup {} (permission denied or read-only cgroupfs)", cgroups.base));
        }
        Ok(cgroups)
    }

    /// Removes the groups of earlier `shoal up` instances that were killed
    /// before they could clean up (`shoal/up-<pid>` whose process is gone).
    /// Only empty groups can be removed, so live processes are never
    /// affected.
    fn remove_stale(&self) {
        for root in controller_dirs(&self.load("shoal")) {
            let Ok(entries) = std::fs::read_dir(&root) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("up-")).and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if Path::new(&format!("/proc/{pid}")).exists() {
                    continue;
                }
                if let Ok(replicas) = std::fs::read_dir(entry.path()) {
                    for replica in replicas.flatten().filter(|r| r.path().is_dir()) {
                        let _ = std::fs::remove_dir(replica.path());
                    }
                }
                if std::fs::remove_dir(entry.path()).is_ok() {
                    tracing::info!(group = %entry.path().display(), "removed the cgroup of an earlier shoal");
                }
            }
        }
    }

    /// Whether the unified (v2) hierarchy is in use.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    fn load(&self, path: &str) -> Cgroup {
        Cgroup::load_with_specified_controllers(
            hierarchy(),
            path,
            CONTROLLERS.iter().map(|c| (*c).to_owned()).collect(),
        )
    }

    /// Creates the cgroup of `replica` with `limits`.
    pub fn create(&self, replica: &str, limits: CgroupLimits) -> Result<ReplicaCgroup, String> {
        let path = format!("{}/{replica}", self.base);
        let cgroup = self.load(&path);
        cgroup.create().map_err(|e| format!("cannot create cgroup {path}: {e}"))?;
        if !controller_dirs(&cgroup).iter().all(|d| d.is_dir()) {
            return Err(format!("cannot create cgroup {path}"));
        }
        let group = ReplicaCgroup { cgroup, path: format!("/{path}") };
        if let Err(error) = group.apply(limits) {
            let _ = group.remove();
            return Err(format!("cannot set limits on cgroup {path}: {error}"));
        }
        Ok(group)
    }

    /// Renames a group to `replica`'s name, with its processes in it (a
    /// standby worker's group when the worker becomes that replica). Only
    /// cgroup v1 can rename groups; on failure the group keeps its name.
    pub fn rename(&self, group: ReplicaCgroup, replica: &str) -> ReplicaCgroup {
        let mut dirs = controller_dirs(&group.cgroup);
        dirs.sort();
        dirs.dedup();
        let mut done: Vec<(PathBuf, PathBuf)> = Vec::new();
        for dir in dirs {
            let to = dir.with_file_name(replica);
            match std::fs::rename(&dir, &to) {
                Ok(()) => done.push((dir, to)),
                Err(error) => {
                    tracing::debug!(%error, from = %dir.display(), "cannot rename a cgroup; it keeps its name");
                    for (from, to) in done.iter().rev() {
                        let _ = std::fs::rename(to, from);
                    }
                    return group;
                }
            }
        }
        let path = format!("{}/{replica}", self.base);
        ReplicaCgroup { cgroup: self.load(&path), path: format!("/{path}") }
    }

    /// The memory a replica's group uses now (v1 `memory.usage_in_bytes`,
    /// v2 `memory.current`); `path` as [`ReplicaCgroup::path`] gives it.
    pub fn memory_usage(&self, path: &str) -> Option<u64> {
        let cgroup = self.load(path.trim_start_matches('/'));
        let memory: &MemController = cgroup.controller_of()?;
        let dir: &Path = cgroups_rs::Controller::path(memory);
        ["memory.current", "memory.usage_in_bytes"]
            .iter()
            .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
            .and_then(|text| text.trim().parse().ok())
    }

    /// Removes `shoal/<instance>` (and `shoal` if nothing else is in it).
    /// Replica groups must have been removed first.
    pub fn remove_base(&self) {
        let _ = self.load(&self.base).delete();
        for dir in controller_dirs(&self.load("shoal")) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn controller_dirs(cgroup: &Cgroup) -> Vec<PathBuf> {
    cgroup.subsystems().iter().map(|s| s.to_controller().path().to_owned()).collect()
}

impl ReplicaCgroup {
    /// Sets the group's memory limit, cpu quota and pids limit.
    pub fn apply(&self, limits: CgroupLimits) -> cgroups_rs::error::Result<()> {
        let memory: &MemController = self.cgroup.controller_of().expect("memory controller is loaded");
        memory.set_limit(i64::try_from(limits.memory).unwrap_or(i64::MAX))?;
        if let Some(millis) = limits.cpu_millis {
            let cpu: &CpuController = self.cgroup.controller_of().expect("cpu controller is loaded");
            let (quota, period) = cpu_quota_and_period(millis);
            cpu.set_cfs_quota_and_period(Some(quota as i64), Some(period))?;
        }
        let pids: &PidController = self.cgroup.controller_of().expect("pids controller is loaded");
        pids.set_pid_max(MaxValue::Value(WORKER_PIDS_MAX))?;
        Ok(())
    }

    /// The group's path as `/proc/<pid>/cgroup` shows it, such as
    /// `/shoal/up-1234/kubia-7d5b8c-x2k4p`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `cgroup.procs` file of each controller directory. The node agent
    /// opens them and passes them to the zygote; its child writes `0`
    /// (itself) to each first.
    pub fn procs_files(&self) -> std::io::Result<Vec<File>> {
        let mut dirs = controller_dirs(&self.cgroup);
        dirs.sort();
        dirs.dedup();
        dirs.iter().map(|dir| File::options().write(true).open(dir.join("cgroup.procs"))).collect()
    }

    /// The file holding the memory limit (v1 `memory.limit_in_bytes`, v2
    /// `memory.max`).
    pub fn memory_limit_file(&self) -> Option<PathBuf> {
        let memory: &MemController = self.cgroup.controller_of()?;
        let dir: &Path = cgroups_rs::Controller::path(memory);
        let v2 = dir.join("memory.max");
        Some(if v2.exists() { v2 } else { dir.join("memory.limit_in_bytes") })
    }

    /// Whether the kernel OOM-killed a process of this group.
    pub fn oom_killed(&self) -> bool {
        let Some(memory) = self.cgroup.controller_of::<MemController>() else {
            return false;
        };
        let dir: &Path = cgroups_rs::Controller::path(memory);
        for (file, key) in [("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")] {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                let count = text
                    .lines()
                    .filter_map(|l| l.split_once(' '))
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok());
                if let Some(count) = count {
                    return count > 0;
                }
            }
        }
        false
    }

    /// Removes the group; its processes must have exited.
    pub fn remove(&self) -> Result<(), String> {
        self.cgroup.delete().map_err(|e| format!("cannot remove cgroup {}: {e}", self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quotas_use_a_10ms_period_and_the_kernels_bounds() {
        assert_eq!(cpu_quota_and_period(500), (5_000, 10_000));
        assert_eq!(cpu_quota_and_period(250), (2_500, 10_000));
        assert_eq!(cpu_quota_and_period(2_000), (20_000, 10_000));
        // Small shares: a longer period, so the quota stays at 1 ms.
        assert_eq!(cpu_quota_and_period(100), (1_000, 10_000));
        assert_eq!(cpu_quota_and_period(50), (1_000, 20_000));
        assert_eq!(cpu_quota_and_period(1), (1_000, 1_000_000));
    }
}
