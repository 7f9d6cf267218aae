//! Per-replica cgroups (v1 and v2, through cgroups-rs).
//!
//! Every replica gets `shoal/<instance>/<replica>` in the memory, cpu and
//! pids controllers, with the manifest's memory limit, its cpu quota and a
//! pids limit. The worker joins it right after the zygote forked it,
//! before it runs any worker code (see [`ReplicaCgroup::procs_files`]). The group is removed once the worker has exited.

use std::fs::File;
use std::path::{Path, PathBuf};

use cgroups_rs::cgroup::Cgroup;

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
///
/// cgroups-rs finds the hierarchy and creates `shoal/<instance>` once;
/// every per-replica operation after that is a few system calls on paths
/// found then. Going through cgroups-rs for each one re-read
/// `/proc/self/mountinfo` and built a handle for every mounted controller
/// per call: in a storm of 300 cold starts that was a third of `shoal up`'s
/// CPU (ARCHITECTURE.md, the cgroups-rs decision).
pub struct Cgroups {
    /// `shoal/<instance>`, relative to each controller's root.
    base: String,
    v2: bool,
    /// Where each controller is mounted (all three the same on v2).
    mounts: Mounts,
}

/// A directory per controller; on v2 the three are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mounts {
    memory: PathBuf,
    cpu: PathBuf,
    pids: PathBuf,
}

impl Mounts {
    fn join(&self, path: &str) -> Mounts {
        Mounts { memory: self.memory.join(path), cpu: self.cpu.join(path), pids: self.pids.join(path) }
    }

    /// The distinct directories, in a fixed order.
    fn distinct(&self) -> Vec<&Path> {
        let mut dirs = vec![self.memory.as_path(), self.cpu.as_path(), self.pids.as_path()];
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// One replica's cgroup.
pub struct ReplicaCgroup {
    dirs: Mounts,
    v2: bool,
    /// `/shoal/<instance>/<replica>`, as `/proc/<pid>/cgroup` shows it.
    path: String,
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
        let hier = cgroups_rs::hierarchies::auto();
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
        let base = format!("shoal/{instance}");
        let probe =
            Cgroup::load_with_specified_controllers(hier, &base, CONTROLLERS.iter().map(|c| (*c).to_owned()).collect());
        let mounts = controller_mounts(&probe, &base)?;
        let cgroups = Cgroups { base, v2, mounts };
        cgroups.remove_stale();
        probe.create().map_err(|e| format!("cannot create cgroup {}: {e}", cgroups.base))?;
        let dirs = cgroups.mounts.join(&cgroups.base);
        if !dirs.distinct().iter().all(|d| d.is_dir()) {
            return Err(format!("cannot create cgroup {} (permission denied or read-only cgroupfs)", cgroups.base));
        }
        if v2 {
            // Replica groups are made in the base: its children get the
            // three controllers (cgroups-rs enabled them above it).
            let control = dirs.memory.join("cgroup.subtree_control");
            std::fs::write(&control, "+memory +cpu +pids")
                .map_err(|e| format!("cannot enable controllers in {}: {e}", control.display()))?;
        }
        Ok(cgroups)
    }

    /// Removes the groups of earlier `shoal up` instances that were killed
    /// before they could clean up (`shoal/up-<pid>` whose process is gone).
    /// Only empty groups can be removed, so live processes are never
    /// affected.
    fn remove_stale(&self) {
        for root in self.mounts.join("shoal").distinct() {
            let Ok(entries) = std::fs::read_dir(root) else { continue };
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

    fn group(&self, replica: &str) -> ReplicaCgroup {
        let path = format!("{}/{replica}", self.base);
        ReplicaCgroup { dirs: self.mounts.join(&path), v2: self.v2, path: format!("/{path}") }
    }

    /// The group a running process is in (a worker taken over from another
    /// `shoal up`), from `/proc/<pid>/cgroup`; `None` unless it is one of
    /// Shoal's (`/shoal/…`).
    pub fn of_process(&self, pid: u32) -> Option<ReplicaCgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = if self.v2 { controllers.is_empty() } else { controllers.split(',').any(|c| c == "memory") };
            wanted.then_some(path)
        })?;
        path.starts_with("/shoal/").then(|| ReplicaCgroup {
            dirs: self.mounts.join(path.trim_start_matches('/')),
            v2: self.v2,
            path: path.to_owned(),
        })
    }

    /// Creates the cgroup of `replica` with `limits`.
    pub fn create(&self, replica: &str, limits: CgroupLimits) -> Result<ReplicaCgroup, String> {
        let group = self.group(replica);
        for dir in group.dirs.distinct() {
            if let Err(error) = std::fs::create_dir(dir) {
                let _ = group.remove();
                return Err(format!("cannot create cgroup {}: {error}", dir.display()));
            }
        }
        if let Err(error) = group.apply(limits) {
            let _ = group.remove();
            return Err(format!("cannot set limits on cgroup {}: {error}", group.path.trim_start_matches('/')));
        }
        Ok(group)
    }

    /// Renames a group to `replica`'s name, with its processes in it (a
    /// standby worker's group when the worker becomes that replica). Only
    /// cgroup v1 can rename groups; on failure the group keeps its name.
    pub fn rename(&self, group: ReplicaCgroup, replica: &str) -> ReplicaCgroup {
        let renamed = self.group(replica);
        let mut done: Vec<(&Path, &Path)> = Vec::new();
        for (from, to) in group.dirs.distinct().into_iter().zip(renamed.dirs.distinct()) {
            match std::fs::rename(from, to) {
                Ok(()) => done.push((from, to)),
                Err(error) => {
                    tracing::debug!(%error, from = %from.display(), "cannot rename a cgroup; it keeps its name");
                    for (from, to) in done.iter().rev() {
                        let _ = std::fs::rename(to, from);
                    }
                    return group;
                }
            }
        }
        renamed
    }

    /// The memory a replica's group uses now (v1 `memory.usage_in_bytes`,
    /// v2 `memory.current`); `path` as [`ReplicaCgroup::path`] gives it.
    pub fn memory_usage(&self, path: &str) -> Option<u64> {
        let file = if self.v2 { "memory.current" } else { "memory.usage_in_bytes" };
        let text = std::fs::read_to_string(self.mounts.memory.join(path.trim_start_matches('/')).join(file)).ok()?;
        text.trim().parse().ok()
    }

    /// Removes `shoal/<instance>` (and `shoal` if nothing else is in it).
    /// Replica groups must have been removed first.
    pub fn remove_base(&self) {
        for dir in self.mounts.join(&self.base).distinct() {
            let _ = std::fs::remove_dir(dir);
        }
        for dir in self.mounts.join("shoal").distinct() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Where the memory, cpu and pids controllers of `probe` (a group at
/// `path`) are mounted.
fn controller_mounts(probe: &Cgroup, path: &str) -> Result<Mounts, String> {
    let mount = |name: &str| -> Result<PathBuf, String> {
        let subsystem = probe
            .subsystems()
            .iter()
            .find(|s| s.controller_name() == name)
            .ok_or_else(|| format!("cgroup controller {name} not available"))?;
        let dir = subsystem.to_controller().path();
        // The controller's directory for `path`, less `path`.
        dir.ancestors()
            .nth(Path::new(path).components().count())
            .map(Path::to_path_buf)
            .ok_or_else(|| format!("unexpected cgroup directory {}", dir.display()))
    };
    Ok(Mounts { memory: mount("memory")?, cpu: mount("cpu")?, pids: mount("pids")? })
}

/// Writes `value` to a control file.
fn write_control(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), value).map_err(|e| format!("cannot write {value} to {file}: {e}"))
}

impl ReplicaCgroup {
    /// Sets the group's memory limit, cpu quota (left as it is when
    /// `cpu_millis` is `None`) and pids limit.
    pub fn apply(&self, limits: CgroupLimits) -> Result<(), String> {
        let memory = i64::try_from(limits.memory).unwrap_or(i64::MAX).to_string();
        std::fs::write(self.memory_limit_file(), &memory)
            .map_err(|e| format!("cannot set the memory limit {memory}: {e}"))?;
        if let Some(millis) = limits.cpu_millis {
            let (quota, period) = cpu_quota_and_period(millis);
            if self.v2 {
                write_control(&self.dirs.cpu, "cpu.max", &format!("{quota} {period}"))?;
            } else {
                write_control(&self.dirs.cpu, "cpu.cfs_quota_us", &quota.to_string())?;
                write_control(&self.dirs.cpu, "cpu.cfs_period_us", &period.to_string())?;
            }
        }
        write_control(&self.dirs.pids, "pids.max", &WORKER_PIDS_MAX.to_string())
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
        self.dirs.distinct().iter().map(|dir| File::options().write(true).open(dir.join("cgroup.procs"))).collect()
    }

    /// The file holding the memory limit (v1 `memory.limit_in_bytes`, v2
    /// `memory.max`).
    fn memory_limit_file(&self) -> PathBuf {
        self.dirs.memory.join(if self.v2 { "memory.max" } else { "memory.limit_in_bytes" })
    }

    /// Whether the kernel OOM-killed a process of this group.
    pub fn oom_killed(&self) -> bool {
        for (file, key) in [("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")] {
            if let Ok(text) = std::fs::read_to_string(self.dirs.memory.join(file)) {
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

    /// Removes the group; its processes must have exited. The kernel may
    /// still count a process that just exited: tried five times over
    /// ~150 ms, as runc does.
    pub fn remove(&self) -> Result<(), String> {
        let mut delay = std::time::Duration::from_millis(10);
        for dir in self.dirs.distinct() {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                    Err(error) if tries == 4 => {
                        return Err(format!("cannot remove cgroup {}: {error}", dir.display()));
                    }
                    Err(_) => {
                        tries += 1;
                        std::thread::sleep(delay);
                        delay *= 2;
                    }
                }
            }
            remove_if_orphaned(dir.parent());
        }
        Ok(())
    }
}

/// Removes `dir` if it is the group of a `shoal up` that is gone
/// (`up-<pid>`) and now empty: that of a predecessor whose last worker
/// taken over just ended.
fn remove_if_orphaned(dir: Option<&Path>) {
    let Some(dir) = dir else { return };
    let pid = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("up-")?.parse::<u32>().ok());
    if let Some(pid) = pid
        && !Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::remove_dir(dir).is_ok()
    {
        tracing::info!(group = %dir.display(), "removed the cgroup of an earlier shoal up");
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
