//! The machine a real node ([`super::node`]) shares: paths every kubelet, containerd
//! shim and CNI plugin uses whatever their flags, kernel settings, cgroups and
//! processes. A real node starts only on a machine where no other kubelet or container
//! runtime runs ([`prepare`]), records what the machine was like ([`Before`]) in a file
//! beside its lock before it changes anything, and puts it back after; a run that died
//! (killed, timed out) is cleaned up by the next one, from that file.
//!
//! Removal never crosses a mount point and never follows a symbolic link.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::fail;

/// Paths outside a node's folder that the kubelet (its device plugins' socket), the
/// CNI plugins (their cache), containerd's shims (their sockets) and the container logs
/// use whatever the configuration. Removed after the node when they were not there
/// before it; inside those that were, what the node added is removed.
pub const GLOBAL_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/run/containerd/s",
    "/var/log/containers",
    "/var/log/pods",
];
/// The folders the second node covers with empty tmpfs mounts of its own (containerd's
/// whole `/run/containerd`, where its shims put their sockets).
pub const NAMESPACED_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/run/containerd",
    "/var/log/containers",
    "/var/log/pods",
];
/// The kernel settings the kubelet (`protectKernelDefaults: false`) and the bridge
/// plugin (`isGateway`) set, restored after the node.
const SYSCTLS: &[&str] = &[
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
];
/// The cgroups the kubelet (cgroupfs driver) and containerd make in each hierarchy.
pub const CGROUPS: &[&str] = &["kubepods", "k8s.io"];
/// The file (in the temp folder, beside the lock) holding [`Before`] while a first
/// real node runs.
const STATE: &str = "volguard-real-node.state.json";
/// What every process, folder and mount of a real node has in its path: its folder's
/// prefix in the temp folder.
pub const FOLDER_PREFIX: &str = "volguard-node-";
/// The processes that would share the global paths and cgroups: another kubelet or
/// container runtime (by `/proc/<pid>/comm`, which keeps 15 bytes of the name).
const RUNTIMES: &[&str] = &[
    "kubelet",
    "containerd",
    "containerd-shim",
    "dockerd",
    "crio",
];
/// What the machine's own container runtime or kubelet leaves while it runs or after.
const FOREIGN_FILES: &[&str] = &[
    "/var/lib/kubelet/device-plugins/kubelet.sock",
    "/run/containerd/containerd.sock",
    "/run/containerd/io.containerd.runtime.v2.task",
];

/// What the first real node found on the machine before it changed anything.
#[derive(Serialize, Deserialize)]
pub struct Before {
    /// The global paths (and their parents) that were there.
    paths: HashSet<PathBuf>,
    /// Everything inside those global paths.
    inside: HashSet<PathBuf>,
    /// The kernel settings ([`SYSCTLS`]) and their values.
    sysctls: Vec<(String, String)>,
}

/// Where [`Before`] is kept while a first real node runs.
pub fn state_file() -> PathBuf {
    std::env::temp_dir().join(STATE)
}

/// Waits for the file lock `name` (in the temp folder) and holds it until dropped: real
/// nodes of one kind take turns on a machine, across processes.
pub fn lock(name: &str) -> fs::File {
    let path = std::env::temp_dir().join(name);
    let file =
        fs::File::create(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    file
}

impl Before {
    /// Records the machine and saves it in the state file, so that a run killed from
    /// here on is undone by the next one.
    fn record() -> Before {
        let mut paths = HashSet::new();
        for p in GLOBAL_PATHS.iter().map(Path::new) {
            paths.extend(p.ancestors().filter(|a| a.exists()).map(Path::to_owned));
        }
        let before = Before {
            inside: GLOBAL_PATHS
                .iter()
                .flat_map(|p| listing(Path::new(p)))
                .collect(),
            paths,
            sysctls: SYSCTLS
                .iter()
                .filter_map(|k| {
                    let value = fs::read_to_string(Path::new("/proc/sys").join(k)).ok()?;
                    Some(((*k).to_owned(), value))
                })
                .collect(),
        };
        let file = state_file();
        let text = serde_json::to_string(&before).expect("the machine's state as JSON");
        fs::write(&file, text).unwrap_or_else(|e| {
            fail(
                "start a real node",
                format!("cannot write {}: {e}", file.display()),
                None,
            )
        });
        before
    }

    /// The state a run that died left, if any.
    fn saved() -> Option<Before> {
        let file = state_file();
        let text = fs::read_to_string(&file).ok()?;
        match serde_json::from_str(&text) {
            Ok(b) => Some(b),
            Err(e) => fail(
                "start a real node",
                format!(
                    "{} is not what a real node writes ({e}): remove it after checking the \
                     kernel settings {SYSCTLS:?} and the paths {GLOBAL_PATHS:?}",
                    file.display()
                ),
                None,
            ),
        }
    }

    /// Removes what is new in the global paths and puts the kernel settings back; once
    /// nothing is left (`left` empty, also of what the caller could not remove),
    /// removes the state file.
    pub fn restore(&self, left: &mut Vec<String>) {
        for p in GLOBAL_PATHS.iter().map(Path::new) {
            if self.paths.contains(p) {
                for entry in fs::read_dir(p).into_iter().flatten().flatten() {
                    remove_new(&entry.path(), &self.inside, left);
                }
                continue;
            }
            remove_tree(p, left);
            // A parent made for it (`/run/containerd`), when nothing else is in it.
            for parent in p.ancestors().skip(1) {
                if self.paths.contains(parent) {
                    break;
                }
                if let Err(e) = fs::remove_dir(parent)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    left.push(format!("{}: {e}", parent.display()));
                    break;
                }
            }
        }
        for (key, value) in &self.sysctls {
            let path = Path::new("/proc/sys").join(key);
            if fs::read_to_string(&path).ok().as_ref() != Some(value)
                && fs::write(&path, value).is_err()
            {
                left.push(format!("kernel setting {key} (was {})", value.trim()));
            }
        }
        if left.is_empty() {
            let _ = fs::remove_file(state_file());
        } else {
            left.push(format!(
                "(kept {}: the next real node finishes the cleanup from it)",
                state_file().display()
            ));
        }
    }
}

/// Makes the machine ready for the first real node, whose lock the caller holds:
/// refuses when another kubelet or container runtime runs (its cgroups and sockets are
/// the ones a real node uses and removes), undoes what a run that died left, refuses
/// when files of another runtime are there, and records the machine.
/// `bridges` and `cgroup_roots` are those of every real node a dead run may have left.
pub fn prepare(bridges: &[&str], cgroup_roots: &[&str]) -> Before {
    let foreign = foreign_runtimes();
    if !foreign.is_empty() {
        fail(
            "start a real node",
            format!(
                "another kubelet or container runtime runs on this machine ({}). A real node \
                 uses the same cgroups ({CGROUPS:?}), device-plugin socket and shim sockets \
                 ({GLOBAL_PATHS:?}) and removes what it finds there after it: run the \
                 real-node tests on a machine without one, or stop it first",
                foreign.join("; ")
            ),
            None,
        );
    }
    reclaim_dead_run(bridges, cgroup_roots);
    let found: Vec<&str> = FOREIGN_FILES
        .iter()
        .copied()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    if !found.is_empty() {
        fail(
            "start a real node",
            format!(
                "{} exist: a kubelet or containerd of another kind ran on this machine and \
                 left them (a real node's are in its own folder). Remove them when nothing \
                 uses them any more",
                found.join(", ")
            ),
            None,
        );
    }
    Before::record()
}

/// The kubelets and container runtimes running that are no real node's, described.
fn foreign_runtimes() -> Vec<String> {
    pids()
        .filter(|pid| !is_ours(*pid))
        .filter_map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            RUNTIMES
                .iter()
                .any(|r| comm == *r || (*r == "containerd-shim" && comm.starts_with(r)))
                .then(|| format!("pid {pid}: {comm}"))
        })
        .collect()
}

/// Every process id.
fn pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
}

/// Whether the process belongs to a real node: one of its arguments names a node's
/// folder (containerd's config, the shims' containerd address, the kubelet's config,
/// the device plugin's folder, the second node's namespace holder).
fn is_ours(pid: i32) -> bool {
    let needle = format!("/{FOLDER_PREFIX}");
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// A real node of an earlier run that died without its teardown left its processes,
/// cgroups, mounts, folder, bridges, its files in the global paths and the kernel
/// settings it changed: all undone (the caller made sure no other runtime runs).
/// Fails, naming them, when some cannot be.
fn reclaim_dead_run(bridges: &[&str], cgroup_roots: &[&str]) {
    let saved = Before::saved();
    let mut killed: Vec<i32> = pids().filter(|pid| is_ours(*pid)).collect();
    let folders: Vec<PathBuf> = fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(FOLDER_PREFIX))
        .map(|e| e.path())
        .collect();
    if saved.is_none() && killed.is_empty() && folders.is_empty() {
        return;
    }
    let mut left = Vec::new();
    for &pid in &killed {
        kill_pid(pid);
    }
    for hierarchy in cgroup_hierarchies() {
        for name in CGROUPS.iter().chain(cgroup_roots) {
            let tree = hierarchy.join(name.trim_start_matches('/'));
            if !remove_cgroup(&tree, &mut killed) {
                left.push(format!("cgroup {}", tree.display()));
            }
        }
    }
    reap(&killed);
    for folder in &folders {
        for m in unmount_under(folder) {
            left.push(format!("mount {}", m.display()));
        }
        remove_tree(folder, &mut left);
    }
    for bridge in bridges {
        if !delete_link(bridge) {
            left.push(format!("network interface {bridge}"));
        }
    }
    if let Some(before) = saved {
        before.restore(&mut left);
    }
    if !left.is_empty() {
        fail(
            "start a real node: remove what a run that died without its cleanup left",
            format!("could not remove:\n  {}", left.join("\n  ")),
            None,
        );
    }
    eprintln!("real node: removed what a run that died without its cleanup left");
}

/// Deletes the network interface `name`; returns whether it is gone.
pub fn delete_link(name: &str) -> bool {
    let _ = Command::new("ip")
        .args(["link", "delete", name])
        .stderr(Stdio::null())
        .status();
    !Path::new("/sys/class/net").join(name).exists()
}

/// Sends SIGKILL to `pid`.
pub fn kill_pid(pid: i32) {
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Makes this process the reaper of its orphaned descendants: containerd's shims
/// outlive containerd, and the pods' processes their shim. Killed, they would stay
/// zombies of PID 1 where PID 1 reaps nothing (as in some VMs); adopted, the teardown
/// reaps them ([`reap`]).
pub fn adopt_orphans() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
}

/// Waits up to 2 s for the killed `pids` that are (or became) this process's
/// children, so that none stays a zombie.
pub fn reap(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut waiting: Vec<i32> = pids.to_vec();
    while !waiting.is_empty() && Instant::now() < deadline {
        waiting.retain(|&pid| {
            let mut status = 0;
            // SAFETY: a valid pointer to an int; WNOHANG does not block.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            // 0: still running; -1 with ECHILD: not (yet) our child, while its dying
            // parent hands it over, or never: both wait until the deadline. Otherwise
            // reaped.
            r == 0
                || (r == -1
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
                    && Path::new("/proc").join(pid.to_string()).exists())
        });
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes whose command line has `arg` as one of its arguments.
pub fn processes_with_arg(arg: &str) -> Vec<i32> {
    pids()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

/// This process's children that are zombie shims (adopted after containerd went, they
/// exited on their own).
pub fn zombie_shims() -> Vec<i32> {
    let me = std::process::id().to_string();
    pids()
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = tail.split_whitespace();
            let (state, ppid) = (fields.next(), fields.next());
            head.contains("(containerd-shim") && state == Some("Z") && ppid == Some(&me)
        })
        .collect()
}

/// Every path inside `dir`, recursively, without entering other mounts (nothing when
/// it does not exist).
fn listing(dir: &Path) -> Vec<PathBuf> {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir() && m.dev() == meta.dev()) {
            out.extend(listing(&p));
        }
        out.push(p);
    }
    out
}

/// Removes `path` unless it was there before; inside a folder that was, looks deeper
/// (never into another mount).
fn remove_new(path: &Path, before: &HashSet<PathBuf>, left: &mut Vec<String>) {
    if !before.contains(path) {
        remove_tree(path, left);
        return;
    }
    let dev = |p: &Path| fs::symlink_metadata(p).ok().map(|m| m.dev());
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    if is_dir && path.parent().and_then(dev) == dev(path) {
        for e in fs::read_dir(path).into_iter().flatten().flatten() {
            remove_new(&e.path(), before, left);
        }
    }
}

/// Removes `path` and everything in it, except mounts (what is mounted there, and the
/// folders holding them, are named in `left`); a symbolic link goes, not its target.
pub fn remove_tree(path: &Path, left: &mut Vec<String>) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    let removed = if meta.is_dir() {
        let parent = path.parent().and_then(|p| fs::symlink_metadata(p).ok());
        if parent.is_some_and(|p| p.dev() != meta.dev()) {
            left.push(format!("{}: a mount point, left as is", path.display()));
            return;
        }
        for e in fs::read_dir(path).into_iter().flatten().flatten() {
            remove_tree(&e.path(), left);
        }
        fs::remove_dir(path)
    } else {
        fs::remove_file(path)
    };
    if let Err(e) = removed
        && e.kind() != std::io::ErrorKind::NotFound
    {
        left.push(format!("{}: {e}", path.display()));
    }
}

/// The mount points under `prefix`, deepest first.
fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as \040; none of our paths has them.
        .map(PathBuf::from)
        .filter(|p| p.starts_with(prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    points
}

/// Lazily unmounts every mount under `prefix`; returns those still there.
pub fn unmount_under(prefix: &Path) -> Vec<PathBuf> {
    for _ in 0..3 {
        let points = mounts_under(prefix);
        if points.is_empty() {
            break;
        }
        for p in points {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: a valid C string; MNT_DETACH unmounts lazily.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    mounts_under(prefix)
}

/// The cgroup hierarchies' mount points: `/sys/fs/cgroup` itself on a cgroup v2
/// machine, else each v1 controller's (and the hybrid `unified` one).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_owned()];
    }
    let mut roots: Vec<PathBuf> = fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists())
                .filter_map(|p| fs::canonicalize(p).ok())
                .collect()
        })
        .unwrap_or_default();
    roots.sort();
    roots.dedup();
    roots
}

/// Kills every process in the cgroup tree `dir` (adding them to `killed`), then removes
/// its folders, leaves first; returns whether the tree is gone (within 20 s).
pub fn remove_cgroup(dir: &Path, killed: &mut Vec<i32>) -> bool {
    fn procs(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                procs(&e.path(), out);
            }
        }
    }
    fn rmdirs(dir: &Path) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdirs(&e.path());
            }
        }
        let _ = fs::remove_dir(dir);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if !dir.exists() {
            return true;
        }
        let mut pids = Vec::new();
        procs(dir, &mut pids);
        for pid in pids {
            kill_pid(pid);
            killed.push(pid);
        }
        rmdirs(dir);
        if !dir.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
