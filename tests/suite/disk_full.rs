//! A full disk under the data directory: writes fail with a message that
//! says so, serving goes on, and once space is freed the next write works
//! without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: Scratch,
}

impl Tmpfs {
    /// Mounts it, or says why it cannot.
    fn mount(tag: &str, size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let dir = Scratch::new(tag);
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir.0)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status})"));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir.0).status();
    }
}

/// `base` with a custom section of `size` bytes seeded by `seed` appended:
/// a valid component with a digest of its own.
fn component_with_padding(base: &[u8], seed: u64, size: usize) -> Vec<u8> {
    let mut bytes = base.to_vec();
    let name = b"padding";
    let mut payload = Vec::with_capacity(size + 16);
    payload.push(name.len() as u8);
    payload.extend_from_slice(name);
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ seed;
    payload.extend((0..size).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    append_section(&mut bytes, 0, &payload);
    bytes
}

/// Fills the filesystem of `dir` with a file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_named_and_the_store_recovers_once_space_is_freed() {
    let tmpfs = match Tmpfs::mount("diskfull", "24m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the data directory: {reason}");
            return;
        }
    };
    let data = tmpfs.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut shoal = Shoal::start_in(Scratch(data.clone()), &[], |_| {});
    shoal.wait_ready("kubia");

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (url, stop, ok, failed) = (shoal.url("/"), stop.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                let (status, _) = get_with(&client, &url, None).await;
                if status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Push distinct valid components of 1 MiB until the disk is full.
    let base = std::fs::read(HELLO_WASM).unwrap();
    let scratch = Scratch::new("diskfull-modules");
    let mut refused = None;
    for n in 0..100 {
        let file = scratch.write(&format!("m{n}.wasm"), component_with_padding(&base, n, 1 << 20));
        let (ok, _, err) = shoal.cli(&["push", file.to_str().unwrap()]);
        if !ok {
            refused = Some(err);
            break;
        }
    }
    let err = refused.expect("the disk never filled up");
    assert!(err.contains(&format!("disk full in {}", data.display())), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Every last byte taken: writes to the store itself fail too, and say so.
    let filler = fill(tmpfs.path());
    let mut scale_failed = None;
    for replicas in [2, 3, 2, 3] {
        let (ok, _, err) = shoal.cli(&["scale", "service", "kubia", "--replicas", &replicas.to_string()]);
        if !ok {
            scale_failed = Some(err);
            break;
        }
    }
    if let Some(err) = &scale_failed {
        assert!(err.contains("disk full in"), "{err}");
    }
    // Reads go on.
    let (ok, out, err) = shoal.cli(&["get", "services"]);
    assert!(ok && out.contains("kubia"), "{err}");

    // Space freed: the next write succeeds, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let (ok, _, err) = shoal.cli(&["scale", "service", "kubia", "--replicas", "2"]);
    assert!(ok, "scale after freeing space: {err}");
    shoal.eventually(&["get", "services"], |out| out.contains("2/2"));
    let (ok, _, err) = shoal.cli(&["gc"]);
    assert!(ok, "{err}");
    let (ok, _, err) = shoal.cli(&["scale", "service", "kubia", "--replicas", "3"]);
    assert!(ok, "{err}");
    shoal.eventually(&["get", "services"], |out| out.contains("3/3"));

    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    let (ok, failed) = (served.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!(
        "kubia during the full disk: {ok} × 200, {failed} other; a store write failed: {}",
        scale_failed.is_some()
    );
    assert_eq!(failed, 0, "kubia did not answer 200 throughout");
    assert!(shoal.stop().success());
    // The data survives: a restart on it serves kubia at 3 replicas.
    let data = std::mem::replace(&mut shoal.data, Scratch::new("moved"));
    let started = Instant::now();
    let mut shoal = Shoal::start_in(data, &[], |_| {});
    shoal.wait_ready("kubia");
    shoal.eventually(&["get", "services"], |out| out.contains("3/3"));
    eprintln!("restarted in {:?}", started.elapsed());
    assert!(shoal.stop().success());
}
