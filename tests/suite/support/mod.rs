//! Test support: run `shoal up` as a real process, talk to it over real
//! HTTP, inspect its workers and cgroups, stop it.

pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The shoal binary under test.
pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
/// The kubia sample component.
pub const HELLO_WASM: &str = env!("SHOAL_HELLO_WASM");
/// The fault-injection fixture component.
pub const FAULTY_WASM: &str = env!("SHOAL_FAULTY_WASM");
/// The frontend sample, which calls other services.
pub const FRONTEND_WASM: &str = env!("SHOAL_FRONTEND_WASM");

/// How long `shoal up` may take to become ready.
const READY: Duration = Duration::from_secs(90);

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("shoal-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes a file in the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A manifest for `module` with the given spec lines (indented under `spec:`).
pub fn manifest(name: &str, module: &str, spec: &str) -> String {
    let mut text =
        format!("apiVersion: shoal.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  module: {module}\n");
    for line in spec.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Starts `shoal up` with the faulty sample as service `faulty` (spec lines
/// `spec`, files in a scratch directory tagged `tag`) and waits until it is
/// ready.
pub fn start_faulty(tag: &str, spec: &str) -> (Shoal, Scratch) {
    let dir = Scratch::new(tag);
    let file = dir.write("faulty.yaml", manifest("faulty", FAULTY_WASM, spec));
    let mut shoal = Shoal::start(&["-f", file.to_str().unwrap()]);
    shoal.wait_ready("faulty");
    (shoal, dir)
}

/// A running `shoal up`.
pub struct Shoal {
    child: Child,
    /// The gateway's address.
    pub addr: SocketAddr,
    /// The admin API's address.
    pub admin: SocketAddr,
    lines: Receiver<String>,
    /// Every line seen so far on stdout and stderr.
    pub output: Arc<Mutex<Vec<String>>>,
    /// Set: its stdout and stderr are not read (as a paused terminal).
    paused: Arc<AtomicBool>,
    pub data: Scratch,
}

impl Shoal {
    /// Starts `shoal up` with `args` (plus a free port and a scratch data
    /// directory) and waits for the gateway to listen.
    pub fn start(args: &[&str]) -> Shoal {
        Self::start_with(args, |_| {})
    }

    /// Like [`Shoal::start`], letting `customize` change the command (its
    /// user, say) first.
    pub fn start_with(args: &[&str], customize: impl FnOnce(&mut Command)) -> Shoal {
        Self::start_in(Scratch::new("data"), args, customize)
    }

    /// Starts `shoal up` on an existing data directory (a restart).
    pub fn start_in(data: Scratch, args: &[&str], customize: impl FnOnce(&mut Command)) -> Shoal {
        // Writable for a test that runs shoal as another user.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&data.0, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut command = Command::new(SHOAL);
        customize(&mut command);
        command.arg("up");
        // A test may choose the gateway's address (to find it again after
        // a restart).
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data.0)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(command).expect("cannot start shoal");
        let (tx, rx) = channel();
        let output = Arc::new(Mutex::new(Vec::new()));
        let paused = Arc::new(AtomicBool::new(false));
        for reader in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            let output = output.clone();
            let paused = paused.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    while paused.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let Ok(line) = line else { break };
                    eprintln!("[shoal] {line}");
                    output.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let unset: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut shoal = Shoal { child, addr: unset, admin: unset, lines: rx, output, paused, data };
        let line = shoal.wait_for_line(|l| l.contains("gateway listening on http://"));
        shoal.addr = line.rsplit("http://").next().unwrap().trim().parse().unwrap();
        let line = shoal.wait_for_line(|l| l.contains("admin API listening on http://"));
        shoal.admin = line.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
        shoal
    }

    /// Waits for a line of output matching `matches`, among the lines not
    /// yet consumed by an earlier wait.
    pub fn wait_for_line(&mut self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + READY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(_) => {}
                Err(_) => panic!("shoal did not print the expected line in {READY:?}; output:\n{}", self.dump()),
            }
        }
    }

    /// Waits until `service` reports all its replicas ready (at any time
    /// since the start, unlike [`Shoal::wait_for_line`]).
    pub fn wait_ready(&mut self, service: &str) {
        let needle = format!("service/{service} Ready:");
        self.wait_for_output(|l| l.contains(&needle));
    }

    /// Waits until a line matching `matches` has been printed at any time
    /// since the start.
    pub fn wait_for_output(&self, matches: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + READY;
        while !self.output.lock().unwrap().iter().any(|l| matches(l)) {
            assert!(Instant::now() < deadline, "expected output missing after {READY:?}; output:\n{}", self.dump());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops reading its stdout and stderr (at the next line), as a
    /// terminal paused with Ctrl-S would, until [`Shoal::resume_output`].
    pub fn pause_output(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Reads its output again.
    pub fn resume_output(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far.
    pub fn dump(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// The worker processes of replicas: direct children that call
    /// themselves `shoal-worker` (a worker does once it has its
    /// configuration, before it reports ready), so not the standby worker
    /// waiting to become the next replica, nor one still starting.
    pub fn worker_pids(&self) -> Vec<u32> {
        children(self.pid()).into_iter().filter(|&pid| comm(pid).as_deref() == Some("shoal-worker")).collect()
    }

    /// Every child process, the standby worker included.
    pub fn all_children(&self) -> Vec<u32> {
        children(self.pid())
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(60)).expect("shoal did not exit within 60 s of SIGTERM")
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The admin API's URL.
    pub fn server(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The API token `shoal up` created.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.0.join("token")).expect("token file").trim().to_owned()
    }

    /// Runs a CLI command against this shoal: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(SHOAL)
            .args(args)
            .args(["--server", &self.server(), "--token", &self.token()])
            .stdin(Stdio::null())
            .output()
            .expect("cannot run the shoal CLI");
        let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        eprintln!("$ shoal {}\n{out}{err}", args.join(" "));
        (output.status.success(), out.into_owned(), err.into_owned())
    }

    /// Runs `shoal get ...` until `done` accepts its output (60 s at most).
    pub fn eventually(&self, args: &[&str], done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + READY;
        loop {
            let (ok, out, _) = self.cli(args);
            if ok && done(&out) {
                return out;
            }
            assert!(Instant::now() < deadline, "`shoal {}` never matched; last output:\n{out}", args.join(" "));
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops shoal and hands back its data directory, for a restart.
    pub fn stop_keep_data(mut self) -> Scratch {
        assert!(self.stop().success());
        std::mem::replace(&mut self.data, Scratch::new("moved"))
    }
}

impl Drop for Shoal {
    fn drop(&mut self) {
        // (A test that failed with its output paused: let it drain, so the
        // stop below is not held up by it.)
        self.resume_output();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop();
        }
    }
}

/// Spawns `command` so that it gets SIGTERM when this test process dies
/// (a killed or aborted test run): `shoal up` then stops its workers and
/// removes its cgroups, so nothing is left behind. `PR_SET_PDEATHSIG`
/// fires when the *thread* that spawned the child ends, so every child is
/// spawned by one thread that lives as long as the test process.
pub fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt as _;
    type Job = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, receiver) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("shoal-spawner".into())
            .spawn(move || {
                for (mut command, reply) in receiver {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        Mutex::new(jobs)
    });
    let (reply, answer) = std::sync::mpsc::channel();
    spawner.lock().unwrap().send((command, reply)).expect("the spawner thread is gone");
    answer.recv().expect("the spawner thread is gone")
}

/// Whether `pid` is a standby worker, waiting to become a replica (it
/// names itself `shoal-standby` until it gets its configuration).
pub fn is_standby(pid: u32) -> bool {
    comm(pid).as_deref() == Some("shoal-standby")
}

/// A process's name (`/proc/<pid>/comm`).
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim().to_owned())
}

/// The direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Runs `shoal` with `args` to completion: (exit status, stdout, stderr).
pub fn run_shoal(args: &[&str], data: &Path) -> (ExitStatus, String, String) {
    let (_pid, status, out, err) = run_shoal_pid(args, data);
    (status, out, err)
}

/// [`run_shoal`], also giving the pid the process had.
pub fn run_shoal_pid(args: &[&str], data: &Path) -> (u32, ExitStatus, String, String) {
    let child = Command::new(SHOAL)
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run shoal");
    let pid = child.id();
    let output = child.wait_with_output().expect("cannot wait for shoal");
    let (out, err) = (String::from_utf8_lossy(&output.stdout).into(), String::from_utf8_lossy(&output.stderr).into());
    (pid, output.status, out, err)
}

/// The cgroup of a process in the controller `controller` (v1) or the
/// unified hierarchy (v2), as a path relative to the hierarchy root.
pub fn cgroup_of(pid: u32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == controller) {
            return Some(path.to_owned());
        }
        if controllers.is_empty() {
            unified = Some(path.to_owned());
        }
    }
    unified
}

/// The content of `file` of `controller` for the cgroup of `pid`, on cgroup
/// v1 (`/sys/fs/cgroup/<controller>/<path>/<file>`) or v2
/// (`/sys/fs/cgroup/<path>/<file>`), trimmed.
pub fn cgroup_setting(pid: u32, controller: &str, file: &str) -> Option<String> {
    let path = cgroup_of(pid, controller)?;
    let relative = path.trim_start_matches('/');
    let v1 = Path::new("/sys/fs/cgroup").join(controller).join(relative).join(file);
    let v2 = Path::new("/sys/fs/cgroup").join(relative).join(file);
    [v1, v2].iter().find_map(|p| std::fs::read_to_string(p).ok()).map(|s| s.trim().to_owned())
}

/// The CPU quota of the cgroup of `pid`: (quota, period) in microseconds,
/// from v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` or v2 `cpu.max`;
/// `None` for no limit.
pub fn cpu_quota(pid: u32) -> Option<(u64, u64)> {
    if let Some(max) = cgroup_setting(pid, "cpu", "cpu.max") {
        let (quota, period) = max.split_once(' ')?;
        return Some((quota.parse().ok()?, period.parse().ok()?));
    }
    let quota: i64 = cgroup_setting(pid, "cpu", "cpu.cfs_quota_us")?.parse().ok()?;
    let period: u64 = cgroup_setting(pid, "cpu", "cpu.cfs_period_us")?.parse().ok()?;
    u64::try_from(quota).ok().map(|quota| (quota, period))
}

/// Where `shoal/up-<pid>` groups live: each v1 controller Shoal uses, and
/// the v2 hierarchy.
pub const CGROUP_ROOTS: [&str; 4] =
    ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"];

/// The file holding the memory limit of cgroup `path` (v1 or v2).
pub fn memory_limit_file(path: &str) -> Option<PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')).join("memory.limit_in_bytes");
    let v2 = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')).join("memory.max");
    [v1, v2].into_iter().find(|p| p.exists())
}

/// Why cgroup tests cannot run here, if they cannot.
pub fn cgroups_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").is_ok_and(|c| c.contains("memory"));
    if !v1 && !v2 {
        return Some("no cgroup memory controller mounted".into());
    }
    None
}

/// A real HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url` with an optional Host header: (status, body).
pub async fn get(url: &str, host: Option<&str>) -> (u16, String) {
    get_with(&client(), url, host).await
}

pub async fn get_with(client: &Client<HttpConnector, Empty<Bytes>>, url: &str, host: Option<&str>) -> (u16, String) {
    let mut request = hyper::Request::get(url);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let response = client.request(request.body(Empty::new()).unwrap()).await.expect("request failed");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body failed").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `requests` GETs for `/` to a kubia-style service (one that
/// answers `You've hit <replica>\n`) on one keep-alive client; asserts each
/// answer is a `200` of that form and returns the replica names, in order.
pub async fn kubia_hits(shoal: &Shoal, requests: usize) -> Vec<String> {
    let client = client();
    let mut names = Vec::new();
    for _ in 0..requests {
        let (status, body) = get_with(&client, &shoal.url("/"), None).await;
        assert_eq!(status, 200, "body: {body}");
        let name = body
            .strip_prefix("You've hit ")
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("unexpected body {body:?}"));
        names.push(name.to_owned());
    }
    names
}

impl Shoal {
    /// GET `path` on the admin API with the token: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let request = hyper::Request::get(format!("{}{path}", self.server()))
            .header("authorization", format!("Bearer {}", self.token()))
            .body(Empty::new())
            .unwrap();
        let response = client().request(request).await.expect("admin request failed");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("body failed").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `METHOD path` on the admin API with the token and an optional JSON
    /// body: (status, body).
    pub async fn admin_request(&self, method: &str, path: &str, json: Option<String>) -> (u16, String) {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.server()))
            .header("authorization", format!("Bearer {}", self.token()));
        if json.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = http_body_util::Full::new(Bytes::from(json.unwrap_or_default()));
        let client = Client::builder(TokioExecutor::new()).build_http();
        let response = client.request(request.body(body).unwrap()).await.expect("admin request failed");
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.expect("body failed").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The replicas as `shoal get replicas -o json` lists them.
    pub fn replicas(&self) -> Vec<serde_json::Value> {
        let (ok, out, err) = self.cli(&["get", "replicas", "-o", "json"]);
        assert!(ok, "{err}");
        let replicas: serde_json::Value = serde_json::from_str(&out).unwrap();
        replicas.as_array().cloned().unwrap_or_default()
    }

    /// The name of the replica whose worker is `pid`, from the admin API.
    pub fn replica_of(&self, pid: u32) -> String {
        let replicas = self.replicas();
        replicas
            .iter()
            .find(|r| r["pid"].as_u64() == Some(u64::from(pid)))
            .and_then(|r| r["name"].as_str())
            .unwrap_or_else(|| panic!("no replica has pid {pid}: {replicas:?}"))
            .to_owned()
    }

    /// The worker process of the replica named `replica`, from the admin API.
    pub fn pid_of(&self, replica: &str) -> u32 {
        let replicas = self.replicas();
        let pid = replicas.iter().find(|r| r["name"] == replica).and_then(|r| r["pid"].as_u64());
        pid.unwrap_or_else(|| panic!("no running worker for {replica}: {replicas:?}")) as u32
    }

    /// How many lines printed so far match `matches`.
    pub fn count_lines(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.output.lock().unwrap().iter().filter(|l| matches(l)).count()
    }
}

/// The kubia sample with a large core module appended that nothing
/// instantiates: it serves like kubia, but compiling it takes seconds
/// (`functions` functions of arithmetic, about 2,000 per second here).
/// Used where a module must be slow to prepare.
pub fn slow_component(functions: usize) -> Vec<u8> {
    let mut wat = String::from("(module (memory 1)\n");
    for f in 0..functions {
        wat.push_str(&format!("(func (export \"f{f}\") (param i32 i32) (result i32) (local i32)\n"));
        for k in 0..40 {
            wat.push_str(&format!(
                "local.get 0 local.get 1 i32.mul i32.const {k} i32.xor local.tee 2 i32.load offset={} \
                 local.get 2 i32.rotl local.set 0 local.get 1 i32.const {} i32.add local.set 1\n",
                (k * 4) % 1024,
                k + f
            ));
            if k % 8 == 0 {
                wat.push_str("local.get 0 if local.get 1 i32.const 3 i32.shl local.set 1 end\n");
            }
        }
        wat.push_str("local.get 0)\n");
    }
    wat.push(')');
    let module = wat::parse_str(&wat).expect("the generated module is valid");
    let mut bytes = std::fs::read(HELLO_WASM).expect("the kubia sample");
    // A core module section (id 1) at the end of the component.
    append_section(&mut bytes, 1, &module);
    bytes
}

/// Appends a section (`id`, then the payload's length as LEB128, then the
/// payload) to a Wasm binary.
pub fn append_section(bytes: &mut Vec<u8>, id: u8, payload: &[u8]) {
    bytes.push(id);
    let mut n = payload.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(payload);
}

/// Raises this process's open-files limit to its hard limit; returns the
/// limit in effect.
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// A process's resident set (`VmRSS` in `/proc/<pid>/status`), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's resident set every 50 ms on a thread of its own,
/// keeping the peak, until [`RssPeak::finish`].
pub struct RssPeak {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssPeak {
    /// Starts sampling `pid` (its first sample is taken at once).
    pub fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssPeak { stop, thread: Some(thread) }
    }

    /// Stops sampling; the largest resident set seen, in KiB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().expect("finished once").join().expect("the sampler panicked")
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Byte `i` of the content the faulty sample's `/stream` sends (the same
/// function as its `pattern`): the top byte of a multiplicative hash of the
/// position, so that a byte out of place, lost or repeated shows.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// FNV-1a, 64 bits, continued from `hash` over `bytes` (as the faulty
/// sample's `/drain` computes it); start from [`FNV_OFFSET`].
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

/// FNV-1a's starting value.
pub const FNV_OFFSET: u64 = 0xCBF2_9CE4_8422_2325;

/// Whether process `pid` is stopped (`T` or `t` in `/proc/<pid>/stat`).
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state == 'T' || state == 't')
}
