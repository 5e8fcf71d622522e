//! Container images without a registry: OCI image-layout archives written here and
//! imported into the real node's containerd (`ctr images import`).
//!
//! - The pause and workload images carry Debian's static busybox.
//! - volguard's own image follows the `Dockerfile`: the binary is built with the
//!   Dockerfile's own `cargo build` command and copied where its final stage copies it,
//!   and the image config takes its `USER`, `ENTRYPOINT` and `CMD`. Its first layer
//!   stands in for the final stage's base, `gcr.io/distroless/cc-debian12:nonroot`:
//!   the shared libraries the binary links (Debian 12's glibc and libgcc, as that base
//!   ships them), `/etc/passwd` with `nonroot` (65532), and no shell.

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::{Value, json};

use super::{fail, repo, write};
use crate::common::dockerfile::Dockerfile;

/// The base the stand-in layer of [`volguard_image`] replaces; another base in the
/// Dockerfile fails the test until the stand-in follows it.
pub const DOCKERFILE_BASE: &str = "gcr.io/distroless/cc-debian12:nonroot";

/// The platform's architecture as OCI names it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Dockerfile (`tests/common/dockerfile.rs`), with the build arg the install docs
/// pass (`REVISION`, the checkout's commit); fails naming what the test image could not
/// reproduce.
pub fn dockerfile() -> Dockerfile {
    let text = fs::read_to_string(repo("Dockerfile"))
        .unwrap_or_else(|e| fail("read the Dockerfile", e, None));
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo(""))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    crate::common::dockerfile::parse(&text, &[("REVISION", &commit)])
        .unwrap_or_else(|e| fail("read the Dockerfile", e, None))
}

/// The target folder of this test build (`CARGO_TARGET_DIR` or `target/`): the
/// folder above the one holding the volguard binary cargo built for the tests.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_volguard"))
        .ancestors()
        .nth(2)
        .expect("target/<profile>/volguard")
        .to_owned()
}

/// What the test process's environment must not pass to the Dockerfile's build: what
/// cargo sets for a test run (some build scripts, ring's, rebuild when
/// CARGO_MANIFEST_DIR changes) and what changes how cargo builds (flags, profiles,
/// wrappers, the target), which `docker build` would not have.
const NOT_FOR_THE_BUILD: &[&str] = &[
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_",
    "CARGO_RUSTC_CURRENT_DIR",
    "CARGO_BUILD_",
    "CARGO_PROFILE_",
    "CARGO_INCREMENTAL",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "OUT_DIR",
];

/// The binary the Dockerfile builds, built here with the Dockerfile's own `cargo
/// build` command and variables, in this build's target folder (a no-op when it is up
/// to date); once per test binary.
pub fn release_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let docker = dockerfile();
        let target = target_dir();
        let (cargo, args) = docker.build.split_first().expect("cargo build");
        assert_eq!(cargo, "cargo", "the Dockerfile builds with {cargo}");
        eprintln!(
            "volguard image: {} (the Dockerfile's build)",
            docker.build.join(" ")
        );
        let mut command = Command::new(env!("CARGO"));
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if NOT_FOR_THE_BUILD.iter().any(|p| name.starts_with(p)) {
                command.env_remove(name.as_ref());
            }
        }
        command
            .args(args)
            .envs(docker.build_env.iter().map(|(k, v)| (k, v)))
            .current_dir(repo(""))
            .env("CARGO_TARGET_DIR", &target);
        let status = command
            .status()
            .unwrap_or_else(|e| fail("build the release binary", e, None));
        if !status.success() {
            fail(
                "build the release binary",
                format!("`{}` failed: {status}", docker.build.join(" ")),
                None,
            );
        }
        let binary = target.join(&docker.built);
        if !binary.is_file() {
            fail(
                "build the release binary",
                format!("`{}` made no {}", docker.build.join(" "), binary.display()),
                None,
            );
        }
        binary
    })
}

/// Writes a deterministic tar of `dir`'s contents to `out`.
fn tar(dir: &Path, out: &Path) {
    let ok = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fail(
            "write an image archive",
            format!("tar of {}", dir.display()),
            None,
        );
    }
}

/// The sha256 of a file, hex.
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| fail("sha256sum", e, None));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| fail("sha256sum", path.display(), None))
        .to_owned()
}

/// Stores `file` as a blob of the OCI layout `layout`; returns its descriptor.
fn blob(layout: &Path, file: &Path, media_type: &str) -> Value {
    let digest = sha256(file);
    let size = fs::metadata(file).expect("blob").len();
    fs::rename(file, layout.join("blobs/sha256").join(&digest)).expect("blob");
    json!({"mediaType": media_type, "digest": format!("sha256:{digest}"), "size": size})
}

/// Whether the ELF executable `path` is static (no program interpreter).
fn is_static(path: &Path) -> bool {
    let Ok(elf) = fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // 64-bit little-endian ELF only (what Debian amd64 ships).
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..usize::from(count)).all(|i| {
        let at = phoff as usize + i * usize::from(size);
        elf.get(at..at + 4)
            .is_some_and(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) != PT_INTERP)
    })
}

/// The busybox layer: Debian's static busybox with a link per applet, root and nobody
/// in /etc/passwd, /tmp.
fn busybox_layer(work: &Path) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    let listed = Command::new(busybox).arg("--list").output().ok();
    let Some(listed) = listed.filter(|o| o.status.success()) else {
        fail(
            "build the busybox image",
            "/bin/busybox is missing or not a busybox: install Debian's busybox-static",
            None,
        )
    };
    if !is_static(busybox) {
        fail(
            "build the busybox image",
            "/bin/busybox is linked dynamically: the image has no libc; install Debian's \
             busybox-static",
            None,
        );
    }
    let root = work.join("rootfs");
    for d in ["bin", "etc", "tmp", "dev", "proc", "sys"] {
        fs::create_dir_all(root.join(d)).expect("rootfs");
    }
    fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    for applet in String::from_utf8_lossy(&listed.stdout).lines() {
        if applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).expect("applet link");
        }
    }
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    write(&root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n");
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("tmp");
    let layer = work.join("layer.tar");
    tar(&root, &layer);
    layer
}

/// An image written as an OCI image-layout archive.
#[derive(Clone)]
pub struct Image {
    /// The archive, for `ctr images import`.
    pub archive: PathBuf,
    /// Its name (`io.containerd.image.name`).
    pub name: String,
    /// The image config's digest (`sha256:...`): the image id containerd reports.
    pub id: String,
}

/// An OCI image-layout archive of one image: `layers` (tars, bottom first) with
/// `config` (the image config's `config` part), named `name`.
pub fn image_archive(work: &Path, tag: &str, name: &str, layers: &[&Path], config: Value) -> Image {
    let layout = work.join(format!("layout-{tag}"));
    fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    let layers: Vec<Value> = layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let copy = work.join(format!("{tag}-layer{i}.tar"));
            fs::copy(layer, &copy).expect("layer");
            blob(&layout, &copy, "application/vnd.oci.image.layer.v1.tar")
        })
        .collect();
    let image_config = json!({
        "architecture": oci_arch(), "os": "linux",
        "config": config,
        "rootfs": {"type": "layers",
            "diff_ids": layers.iter().map(|l| l["digest"].clone()).collect::<Vec<_>>()},
    });
    let file = work.join(format!("{tag}-config.json"));
    write(&file, &image_config.to_string());
    let config = blob(&layout, &file, "application/vnd.oci.image.config.v1+json");
    let id = config["digest"].as_str().expect("digest").to_owned();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layers,
    });
    let file = work.join(format!("{tag}-manifest.json"));
    write(&file, &manifest.to_string());
    let mut manifest = blob(&layout, &file, "application/vnd.oci.image.manifest.v1+json");
    manifest["annotations"] = json!({
        "io.containerd.image.name": name,
        // The tag: after the last `:` of the last path segment.
        "org.opencontainers.image.ref.name": name.rsplit('/').next().and_then(|last| last.split_once(':')).map(|(_, tag)| tag),
    });
    write(
        &layout.join("index.json"),
        &json!({"schemaVersion": 2, "manifests": [manifest]}).to_string(),
    );
    write(
        &layout.join("oci-layout"),
        &json!({"imageLayoutVersion": "1.0.0"}).to_string(),
    );
    let archive = work.join(format!("{tag}.tar"));
    tar(&layout, &archive);
    Image {
        archive,
        name: name.to_owned(),
        id,
    }
}

/// The pause image (`name`) and the busybox workload image (`workload`).
pub fn busybox_images(work: &Path, pause: &str, workload: &str) -> [Image; 2] {
    let layer = busybox_layer(work);
    [
        image_archive(
            work,
            "pause",
            pause,
            &[&layer],
            json!({"Entrypoint": ["/bin/sleep", "infinity"], "Env": ["PATH=/bin"]}),
        ),
        image_archive(
            work,
            "busybox",
            workload,
            &[&layer],
            json!({"Cmd": ["sh"], "Env": ["PATH=/bin"]}),
        ),
    ]
}

/// The shared libraries `binary` loads (`ldd`), as absolute paths. They are this
/// machine's: the stand-in is faithful to [`DOCKERFILE_BASE`] only on Debian 12, whose
/// glibc and libgcc that base ships, so another machine fails here rather than test a
/// pairing `docker build` never makes.
fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let debian_12 = release.lines().any(|l| l == "ID=debian")
        && release.lines().any(|l| l == "VERSION_ID=\"12\"");
    if !debian_12 {
        fail(
            "build volguard's image",
            format!(
                "the test image takes the binary's libraries from this machine, which must \
                 be Debian 12 like {DOCKERFILE_BASE}; /etc/os-release says:\n{release}"
            ),
            None,
        );
    }
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| fail("list the binary's libraries (ldd)", e, None));
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not found") {
        fail(
            "list the binary's libraries (ldd)",
            format!("{}{}", text, String::from_utf8_lossy(&out.stderr)),
            None,
        );
    }
    text.lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`; not `linux-vdso.so.1 (0x...)`.
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The layer standing in for [`DOCKERFILE_BASE`]: the libraries `binary` links, the
/// base's users and groups (`nonroot` 65532), `/home/nonroot` and `/tmp`; no shell.
fn distroless_layer(work: &Path, binary: &Path) -> PathBuf {
    let root = work.join("base-rootfs");
    for d in ["etc", "tmp", "home/nonroot"] {
        fs::create_dir_all(root.join(d)).expect("rootfs");
    }
    for lib in linked_libraries(binary) {
        let at = root.join(lib.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(at.parent().expect("a folder")).expect("rootfs");
        // The file itself, not the host's link to it.
        fs::copy(&lib, &at).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
         nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    );
    write(
        &root.join("etc/group"),
        "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n",
    );
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("tmp");
    let layer = work.join("base-layer.tar");
    tar(&root, &layer);
    layer
}

/// volguard's image as the Dockerfile makes it (see the module docs), named `name`;
/// with the binary it carries.
pub fn volguard_image(work: &Path, name: &str) -> (Image, PathBuf) {
    let docker = dockerfile();
    if docker.base != DOCKERFILE_BASE {
        fail(
            "build volguard's image",
            format!(
                "the Dockerfile's final stage is FROM {}, the test image stands in for \
                 {DOCKERFILE_BASE}: make tests/control_plane/images.rs follow it",
                docker.base
            ),
            None,
        );
    }
    let binary = release_binary();
    let base = distroless_layer(work, binary);
    let root = work.join("volguard-rootfs");
    let at = root.join(docker.binary.trim_start_matches('/'));
    fs::create_dir_all(at.parent().expect("a folder")).expect("rootfs");
    fs::copy(binary, &at).expect("copy the binary");
    fs::set_permissions(&at, fs::Permissions::from_mode(0o755)).expect("mode");
    let layer = work.join("volguard-layer.tar");
    tar(&root, &layer);
    let image = image_archive(
        work,
        "volguard",
        name,
        &[&base, &layer],
        json!({
            "User": docker.user,
            "Entrypoint": docker.entrypoint,
            "Cmd": docker.cmd,
            // What the distroless base sets.
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/home/nonroot",
        }),
    );
    (image, binary.to_owned())
}
