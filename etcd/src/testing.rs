//! Real local etcd clusters for integration tests (of this crate and of others).
//!
//! [`EtcdCluster::start`] runs `etcd` members found on `PATH` on free loopback ports, each with its
//! own data directory under [`std::env::temp_dir`] holding its log (`etcd.log`); dropping the
//! cluster kills them and removes the directories. When `etcd` is not installed, `start` prints
//! `SKIPPED: <reason>` and returns `None`, so a test can return early, unless
//! `SHOAL_REQUIRE_ETCD=1`, which makes it panic instead (for CI, where skipping would hide a
//! missing dependency).

use std::fs::{self, File};
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Client;

/// How long a cluster, or a restarted member, has to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How many times [`EtcdCluster::start`] starts over, on other ports, when a member exits while
/// starting (another process may have taken a port between picking and binding it).
const START_ATTEMPTS: usize = 3;

/// The key [`EtcdCluster::start`] puts on every member to see that it serves writes.
pub const READY_KEY: &[u8] = b"shoal-etcd-testing/ready";

/// A local etcd cluster for tests; see the [module documentation](self).
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    token: String,
    members: Vec<Member>,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Holds `data/` (the data dir) and `etcd.log`.
    dir: PathBuf,
    /// The running process, if this struct started it and it has not been stopped.
    child: Option<Child>,
}

impl Member {
    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }
}

impl EtcdCluster {
    /// Starts a cluster of `members` members and waits (up to 20 s) until a put succeeds through
    /// each of them; panics with the members' logs if it does not. Returns `None` after printing
    /// why when etcd is not installed (unless `SHOAL_REQUIRE_ETCD=1`, then it panics).
    pub fn start(members: usize) -> Option<EtcdCluster> {
        assert!(members > 0, "an etcd cluster needs at least one member");
        let Some(binary) = find_etcd() else {
            let reason = "etcd is not installed (apt-get install etcd-server)";
            if std::env::var("SHOAL_REQUIRE_ETCD").as_deref() == Ok("1") {
                panic!("SHOAL_REQUIRE_ETCD=1 but {reason}");
            }
            eprintln!("SKIPPED: {reason}");
            return None;
        };
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = EtcdCluster::launch(binary.clone(), members);
            match cluster.wait_ready() {
                Ok(()) => return Some(cluster),
                Err(Startup::Exited(why)) if attempt < START_ATTEMPTS => {
                    eprintln!("etcd test cluster: {why}; starting over on other ports\n{}", cluster.log_tails());
                }
                Err(Startup::Exited(why) | Startup::TimedOut(why)) => {
                    panic!("etcd test cluster did not start: {why}\n{}", cluster.log_tails())
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn launch(binary: PathBuf, count: usize) -> EtcdCluster {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let unique = format!("{}-{sequence}-{nanos:x}", std::process::id());
        let ports = free_ports(count * 2);
        let members = (0..count)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                dir: std::env::temp_dir().join(format!("shoal-etcd-{unique}-m{i}")),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster { binary, token: format!("shoal-test-{unique}"), members };
        for i in 0..count {
            // Created before any member starts, so that Drop removes every one.
            fs::create_dir_all(&cluster.members[i].dir).expect("create the etcd member's directory");
        }
        for i in 0..count {
            cluster.spawn(i);
        }
        cluster
    }

    fn spawn(&mut self, member: usize) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[member];
        let log = File::options().create(true).append(true).open(m.log_path()).expect("open the etcd member's log");
        let client_url = format!("http://127.0.0.1:{}", m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let mut command = Command::new(&self.binary);
        command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.dir.join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log);
        // etcd reads its flags from ETCD_* variables too; keep the caller's out.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.members[member].child = Some(child);
    }

    /// Waits until a put succeeds through every member.
    fn wait_ready(&mut self) -> Result<(), Startup> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = vec![false; self.members.len()];
        let mut last_error = vec![String::from("not tried yet"); self.members.len()];
        while ready.contains(&false) {
            for i in 0..self.members.len() {
                if let Some(status) = self.exited(i) {
                    return Err(Startup::Exited(format!("member {i} exited while starting ({status})")));
                }
                if !ready[i] {
                    let endpoint = self.endpoint(i);
                    let put = block_on(async move {
                        let client = Client::new(&endpoint)?.with_timeout(Duration::from_secs(1));
                        client.put(READY_KEY, b"", 0).await
                    });
                    match put {
                        Ok(_) => ready[i] = true,
                        Err(e) => last_error[i] = e.to_string(),
                    }
                }
            }
            if ready.contains(&false) {
                if Instant::now() > deadline {
                    let errors = (0..ready.len())
                        .filter(|&i| !ready[i])
                        .map(|i| format!("member {i}: {}", last_error[i]))
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(Startup::TimedOut(format!("no put succeeded within {READY_TIMEOUT:?} ({errors})")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Whether the member's process has exited (and how), reaping it if so.
    fn exited(&mut self, member: usize) -> Option<String> {
        let child = self.members[member].child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.members[member].child = None;
                Some(status.to_string())
            }
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }

    /// The client URLs of all members, comma-separated (what [`Client::new`] takes).
    pub fn endpoints(&self) -> String {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect::<Vec<_>>().join(",")
    }

    /// The client URL of one member, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self, member: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[member].client_port)
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never: [`EtcdCluster::start`] wants at least one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Stops a member gracefully: SIGTERM, and waits for it to exit (SIGKILL after 10 s). Does
    /// nothing if it is not running.
    pub fn stop(&mut self, member: usize) {
        let Some(mut child) = self.members[member].child.take() else { return };
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) with the pid of our own child, which has not been waited for (so the
        // pid cannot have been reused).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        eprintln!("etcd member {member} did not exit within 10 s of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills a member (SIGKILL) and waits for it. Does nothing if it is not running.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped or killed member again, with its data dir and ports, and waits (up to
    /// 20 s) until it answers a status request (it may not have a leader yet). Panics with its log
    /// if it does not. Does nothing if it is running.
    pub fn restart(&mut self, member: usize) {
        if self.members[member].child.is_some() {
            return;
        }
        self.spawn(member);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited(member) {
                panic!("etcd member {member} exited after a restart ({status})\n{}", self.log_tail(member));
            }
            let endpoint = self.endpoint(member);
            let status = block_on(async move {
                let client = Client::new(&endpoint)?.with_timeout(Duration::from_secs(1));
                client.status().await
            });
            match status {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "etcd member {member} did not answer within {READY_TIMEOUT:?} of a restart: {e}\n{}",
                        self.log_tail(member)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The last lines of a member's log.
    pub fn log_tail(&self, member: usize) -> String {
        let m = &self.members[member];
        let path = m.log_path();
        match fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("--- last lines of {} (member {member}) ---\n{tail}", path.display())
            }
            Err(e) => format!("--- cannot read {}: {e}", path.display()),
        }
    }

    fn log_tails(&self) -> String {
        (0..self.members.len()).map(|i| self.log_tail(i)).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("etcd test cluster logs:\n{}", self.log_tails());
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
        for m in &self.members {
            let _ = fs::remove_dir_all(&m.dir);
        }
    }
}

enum Startup {
    Exited(String),
    TimedOut(String),
}

/// The `etcd` executable on `PATH`.
fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("etcd")).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `n` distinct free loopback ports: bound all at once (so they differ), then released.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("a bound listener's address").port()).collect()
}

/// Runs a future to completion on a runtime of its own, on a thread of its own, so that it works
/// whether or not the caller is inside a Tokio runtime (tests call these helpers from both).
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a Tokio runtime")
                    .block_on(future)
            })
            .join()
            .expect("the etcd test helper thread panicked")
    })
}
