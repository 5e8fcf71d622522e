//! The machine a real node ([`super::node`]) shares: paths every kubelet, containerd
//! shim and CNI plugin uses whatever their flags, kernel settings, cgroups and
//! processes. A real node starts only on a machine where no other kubelet or container
//! runtime runs ([`prepare`]), records what the machine was like ([`Before`]) in a file
//! beside its lock before it changes anything, and puts it back after; a run that died
//! (killed, timed out) is cleaned up by the next first real node, from that file.
//!
//! The lock and the state file are in [`STATE_DIR`], root's alone and on `/run` (a
//! tmpfs: a reboot, which resets the kernel settings, forgets them too). Removal does
//! not enter mount points (by mountinfo and device number) and does not follow symbolic
//! links.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::{DirBuilderExt, MetadataExt},
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
/// Where the real nodes' locks and [`Before`] are: one per machine whatever `TMPDIR`
/// says, so that runs from several checkouts take turns too.
pub const STATE_DIR: &str = "/run/volguard-real-node";
/// The file in [`STATE_DIR`] holding [`Before`] while a first real node runs.
const STATE: &str = "state.json";
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
    "conmon",
];
/// A real node's own programs (as `comm` names them; the second node's namespace holder
/// is a `sleep`): only these are killed as a dead run's, not a `tail -f` of its log.
const NODE_PROGRAMS: &[&str] = &[
    "kubelet",
    "containerd",
    "containerd-shim",
    "volume-device-p",
    "runc",
    "sleep",
];
/// What another container runtime leaves while it runs or after; a real node keeps its
/// own in its folder.
const FOREIGN_FILES: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/containerd/io.containerd.runtime.v2.task",
];
/// What another kubelet leaves; a real node's dead run too (checked after the reclaim).
const KUBELET_SOCKET: &str = "/var/lib/kubelet/device-plugins/kubelet.sock";

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
    Path::new(STATE_DIR).join(STATE)
}

/// [`STATE_DIR`], made root's alone when missing; refused when anyone else could have
/// put something in it (or it is a link), since root acts on what it holds.
fn state_dir() -> &'static Path {
    let dir = Path::new(STATE_DIR);
    if let Err(e) = fs::DirBuilder::new().mode(0o700).create(dir)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        fail(
            "start a real node",
            format!("cannot make {STATE_DIR}: {e}"),
            None,
        );
    }
    let meta = fs::symlink_metadata(dir)
        .unwrap_or_else(|e| fail("start a real node", format!("{STATE_DIR}: {e}"), None));
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        fail(
            "start a real node",
            format!(
                "{STATE_DIR} is not a folder only root can write (a link, another owner, or \
                 writable by others): remove it"
            ),
            None,
        );
    }
    dir
}

/// Waits for the file lock `name` (in [`STATE_DIR`]) and holds it until dropped: real
/// nodes of one kind take turns on a machine, across processes and checkouts.
pub fn lock(name: &str) -> fs::File {
    let path = state_dir().join(name);
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
        // Written aside and renamed: a run killed meanwhile leaves the old file or none,
        // never half of one.
        let file = state_file();
        let partial = file.with_extension("partial");
        let text = serde_json::to_string(&before).expect("the machine's state as JSON");
        if let Err(e) = fs::write(&partial, text).and_then(|()| fs::rename(&partial, &file)) {
            fail(
                "start a real node",
                format!("cannot write {}: {e}", file.display()),
                None,
            );
        }
        before
    }

    /// The state a run that died left, if any.
    fn saved() -> Option<Before> {
        let file = state_file();
        let text = fs::read_to_string(&file).ok()?;
        match serde_json::from_str::<Before>(&text) {
            // Only the settings a real node changes: the file names what root writes.
            Ok(b) if b.sysctls.iter().all(|(k, _)| SYSCTLS.contains(&k.as_str())) => Some(b),
            Ok(_) => fail(
                "start a real node",
                format!(
                    "{} names kernel settings other than {SYSCTLS:?}: not a real node's; \
                     remove it",
                    file.display()
                ),
                None,
            ),
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
        let mounts = mount_points();
        for p in GLOBAL_PATHS.iter().map(Path::new) {
            if self.paths.contains(p) {
                for entry in fs::read_dir(p).into_iter().flatten().flatten() {
                    remove_new(&entry.path(), &self.inside, &mounts, left);
                }
                continue;
            }
            remove_tree_in(p, &mounts, left);
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
/// refuses when another kubelet or container runtime runs or left its files (their
/// cgroups and sockets are the ones a real node uses and removes), undoes what a run
/// that died left, and records the machine. `bridges` and `cgroup_roots` are those of
/// every real node a dead run may have left.
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
    let found: Vec<&str> = FOREIGN_FILES
        .iter()
        .copied()
        .filter(|p| fs::symlink_metadata(p).is_ok())
        .collect();
    if !found.is_empty() {
        fail(
            "start a real node",
            format!(
                "{} exist: a containerd of another kind ran on this machine and left them (a \
                 real node's are in its own folder). Remove them when nothing uses them any \
                 more",
                found.join(", ")
            ),
            None,
        );
    }
    match DeadRun::find() {
        Some(dead) => dead.reclaim(bridges, cgroup_roots),
        None => {
            // Nothing of a real node's: processes in these cgroups are another's pods.
            for hierarchy in cgroup_hierarchies() {
                for name in CGROUPS {
                    let tree = hierarchy.join(name);
                    if !cgroup_procs(&tree).is_empty() {
                        fail(
                            "start a real node",
                            format!(
                                "processes run in the cgroup {}: pods of another kubelet or \
                                 runtime, which a real node would kill when it goes",
                                tree.display()
                            ),
                            None,
                        );
                    }
                }
            }
        }
    }
    if Path::new(KUBELET_SOCKET).exists() {
        fail(
            "start a real node",
            format!(
                "{KUBELET_SOCKET} exists: another kubelet ran on this machine and left it. \
                 Remove /var/lib/kubelet when nothing uses it any more"
            ),
            None,
        );
    }
    Before::record()
}

/// The kubelets and container runtimes running that are no real node's, described: a
/// real node's teardown also asks, and leaves the shared cgroups, paths and settings
/// alone when one started meanwhile.
pub fn foreign_runtimes() -> Vec<String> {
    pids()
        // A process dying or dead (its memory freed) has an empty command line; so have
        // kernel threads. Neither runs anything any more.
        .filter(|pid| has_cmdline(*pid) && !is_ours(*pid))
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

/// The process's `comm` and the fields of `/proc/<pid>/stat` after it (state, ppid,
/// ...): comm may hold spaces and parentheses, so they are split after its last ')'.
pub fn stat(pid: i32) -> Option<(String, Vec<String>)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = text.rsplit_once(')')?;
    let (_, comm) = head.split_once('(')?;
    Some((
        comm.to_owned(),
        tail.split_whitespace().map(str::to_owned).collect(),
    ))
}

/// Whether the process has a command line (it is no kernel thread, and not exiting).
fn has_cmdline(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
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

/// Whether the process is one of a real node's programs ([`NODE_PROGRAMS`]), and
/// [`is_ours`].
fn is_node_program(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| {
        let comm = comm.trim();
        NODE_PROGRAMS
            .iter()
            .any(|p| comm == *p || (*p == "containerd-shim" && comm.starts_with(p)))
    }) && is_ours(pid)
}

/// What a real node of an earlier run that died without its teardown (killed, timed
/// out) left: its state file, processes and folders.
struct DeadRun {
    saved: Option<Before>,
    pids: Vec<i32>,
    folders: Vec<PathBuf>,
}

impl DeadRun {
    fn find() -> Option<DeadRun> {
        let dead = DeadRun {
            saved: Before::saved(),
            pids: pids().filter(|pid| is_node_program(*pid)).collect(),
            folders: dead_folders(),
        };
        (dead.saved.is_some() || !dead.pids.is_empty() || !dead.folders.is_empty()).then_some(dead)
    }

    /// Undoes it all: processes, cgroups, mounts, folders, bridges, and from the state
    /// file the global paths and kernel settings (the caller made sure no other runtime
    /// runs). Fails, naming them, when some cannot be.
    fn reclaim(self, bridges: &[&str], cgroup_roots: &[&str]) {
        let mut left = Vec::new();
        let mut killed = self.pids;
        for &pid in &killed {
            kill_pid(pid);
        }
        let names: Vec<&str> = CGROUPS.iter().chain(cgroup_roots).copied().collect();
        remove_cgroups(&names, &mut killed, &mut left);
        reap(&killed);
        for folder in &self.folders {
            remove_unmounted(folder, &mut left);
        }
        for bridge in bridges {
            if !delete_link(bridge) {
                left.push(format!("network interface {bridge}"));
            }
        }
        if let Some(before) = self.saved {
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
}

/// The folders of real nodes that are no more: those in the temp folder, and those
/// named by a mount or a node program's arguments (a run with another `TMPDIR`);
/// root's only.
fn dead_folders() -> Vec<PathBuf> {
    let mut found = HashSet::new();
    let named = fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .chain(
            mount_points()
                .into_iter()
                .map(|p| p.to_string_lossy().into_owned()),
        )
        .chain(
            pids()
                .filter(|pid| is_node_program(*pid))
                .filter_map(|pid| {
                    let c = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    Some(String::from_utf8_lossy(&c).replace('\0', " "))
                }),
        );
    for text in named {
        found.extend(folders_named_in(&text));
    }
    let mut folders: Vec<PathBuf> = found
        .into_iter()
        .filter(|f| fs::symlink_metadata(f).is_ok_and(|m| m.is_dir() && m.uid() == 0))
        .collect();
    folders.sort();
    folders
}

/// The node folders (`<dir>/volguard-node-<suffix>`) that `text` names.
fn folders_named_in(text: &str) -> Vec<PathBuf> {
    let needle = format!("/{FOLDER_PREFIX}");
    let mut out = Vec::new();
    for (at, _) in text.match_indices(&needle) {
        let start = text[..at].rfind([' ', '=']).map_or(0, |i| i + 1);
        let end = text[at + 1..]
            .find(['/', ' '])
            .map_or(text.len(), |i| at + 1 + i);
        let path = Path::new(&text[start..end]);
        // A node's folder as tempfile names it: the prefix and six letters or digits.
        let suffix = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(FOLDER_PREFIX))
            .unwrap_or_default();
        if path.is_absolute()
            && suffix.len() == 6
            && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            out.push(path.to_owned());
        }
    }
    out
}

/// Forgets the machine's record without restoring it: when another runtime started
/// during the run, what is in the shared paths and settings may be its, and undoing
/// the record later would undo its changes too.
pub fn forget() {
    let _ = fs::remove_file(state_file());
}

/// Unmounts everything under `folder`, then removes it; when a mount stays, names it
/// and removes nothing (what is mounted may be another's).
pub fn remove_unmounted(folder: &Path, left: &mut Vec<String>) {
    let stuck = unmount_under(folder);
    if stuck.is_empty() {
        remove_tree(folder, left);
    } else {
        left.extend(stuck.iter().map(|m| format!("mount {}", m.display())));
        left.push(format!("{}: kept, mounts remain in it", folder.display()));
    }
}

/// Removes the cgroup trees `names` (relative to each hierarchy's root), killing their
/// processes (added to `killed`); those that stay are named in `left`.
pub fn remove_cgroups(names: &[&str], killed: &mut Vec<i32>, left: &mut Vec<String>) {
    for hierarchy in cgroup_hierarchies() {
        for name in names {
            let tree = hierarchy.join(name.trim_start_matches('/'));
            if !remove_cgroup(&tree, killed) {
                left.push(format!("cgroup {}", tree.display()));
            }
        }
    }
}

/// Whether process `pid` holds a socket listening on TCP `port` (IPv4 or IPv6): the
/// process that answers there is that one, not another that took the port.
pub fn listens(pid: u32, port: u16) -> bool {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && fields.get(3) == Some(&"0A") {
                inodes.extend(fields.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .any(|link| inodes.contains(link.to_string_lossy().as_ref()))
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
            stat(*pid).is_some_and(|(comm, f)| {
                comm.starts_with("containerd-shim")
                    && f.first().is_some_and(|s| s == "Z")
                    && f.get(1) == Some(&me)
            })
        })
        .collect()
}

/// Every path inside `dir`, recursively, without entering other mounts (nothing when
/// it does not exist).
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mounts = mount_points();
    let mut out = Vec::new();
    list_into(dir, &mounts, &mut out);
    out
}

fn list_into(dir: &Path, mounts: &HashSet<PathBuf>, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if crossable(&p, mounts) == Some(true) {
            list_into(&p, mounts, out);
        }
        out.push(p);
    }
}

/// Whether `path` is a folder on its parent's filesystem that is no mount point (a bind
/// mount of the same filesystem shows only in mountinfo); `None` when it is no folder.
fn crossable(path: &Path, mounts: &HashSet<PathBuf>) -> Option<bool> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.is_dir() {
        return None;
    }
    let parent = path.parent().and_then(|p| fs::symlink_metadata(p).ok());
    Some(parent.is_some_and(|p| p.dev() == meta.dev()) && !mounts.contains(path))
}

/// Every mount point of this mount namespace.
fn mount_points() -> HashSet<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as \040; none of our paths has them.
        .map(PathBuf::from)
        .collect()
}

/// Removes `path` unless it was there before; inside a folder that was, looks deeper
/// (never into a mount point).
fn remove_new(
    path: &Path,
    before: &HashSet<PathBuf>,
    mounts: &HashSet<PathBuf>,
    left: &mut Vec<String>,
) {
    if !before.contains(path) {
        remove_tree_in(path, mounts, left);
        return;
    }
    // A mount that was there before is not the node's: not entered.
    if crossable(path, mounts) == Some(true) {
        for e in fs::read_dir(path).into_iter().flatten().flatten() {
            remove_new(&e.path(), before, mounts, left);
        }
    }
}

/// Removes `path` and everything in it, except mounts (what is mounted there, and the
/// folders holding them, are named in `left`); a symbolic link goes, not its target.
pub fn remove_tree(path: &Path, left: &mut Vec<String>) {
    remove_tree_in(path, &mount_points(), left);
}

fn remove_tree_in(path: &Path, mounts: &HashSet<PathBuf>, left: &mut Vec<String>) {
    let removed = match crossable(path, mounts) {
        Some(false) => {
            left.push(format!("{}: a mount point, left as is", path.display()));
            return;
        }
        Some(true) => {
            for e in fs::read_dir(path).into_iter().flatten().flatten() {
                remove_tree_in(&e.path(), mounts, left);
            }
            fs::remove_dir(path)
        }
        None => fs::remove_file(path),
    };
    if let Err(e) = removed
        && e.kind() != std::io::ErrorKind::NotFound
    {
        left.push(format!("{}: {e}", path.display()));
    }
}

/// The mount points under `prefix`, deepest first.
fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mount_points()
        .into_iter()
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

/// The processes in the cgroup tree `dir` (none when it does not exist).
fn cgroup_procs(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(cgroup_procs(&e.path()));
        }
    }
    out
}

/// Kills every process in the cgroup tree `dir` (adding them to `killed`), then removes
/// its folders, leaves first; returns whether the tree is gone (within 20 s).
fn remove_cgroup(dir: &Path, killed: &mut Vec<i32>) -> bool {
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
        for pid in cgroup_procs(dir) {
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
