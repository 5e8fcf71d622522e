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

/// What the Dockerfile says about the binary and the final image.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The build stage's `cargo build ...` command, as words.
    pub build: Vec<String>,
    /// The built binary inside the target folder (`release/volguard`).
    pub built: String,
    /// The final stage's base image.
    pub base: String,
    /// Where the final stage puts the binary.
    pub binary: String,
    /// The final stage's `USER`.
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The Dockerfile's instructions, continuation lines joined, comments left out.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((word.to_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    out
}

/// Reads `Dockerfile` at the repository's root; fails naming what it cannot find.
pub fn dockerfile() -> Dockerfile {
    let path = repo("Dockerfile");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| fail("read the Dockerfile", e, None));
    let missing = |what: &str| -> ! { fail("read the Dockerfile", format!("no {what}"), None) };
    let json_words = |what: &str, args: &str| -> Vec<String> {
        serde_json::from_str(args).unwrap_or_else(|e| {
            fail(
                "read the Dockerfile",
                format!("{what} is not in exec form ({args}): {e}"),
                None,
            )
        })
    };
    let (mut build, mut built, mut installed) = (None, None, None);
    let (mut base, mut binary, mut user, mut entrypoint, mut cmd) = (None, None, None, None, None);
    for (word, args) in instructions(&text) {
        match word.as_str() {
            "FROM" => base = args.split_whitespace().next().map(str::to_owned),
            "RUN" if args.contains("cargo build") => {
                let from = &args[args.find("cargo build").expect("found")..];
                let command = from.split("&&").next().expect("one part");
                build = Some(command.split_whitespace().map(str::to_owned).collect());
                // `install -D -m 0755 target/<profile>/volguard /out/volguard`
                let words: Vec<&str> = args.split_whitespace().collect();
                if let Some(i) = words.iter().position(|w| w.starts_with("target/")) {
                    built = Some(words[i]["target/".len()..].to_owned());
                    installed = words.get(i + 1).map(|w| (*w).to_owned());
                }
            }
            "COPY" if args.starts_with("--from=") => {
                let words: Vec<&str> = args.split_whitespace().collect();
                if words.len() == 3 && Some(words[1]) == installed.as_deref() {
                    binary = Some(words[2].to_owned());
                }
            }
            "USER" => user = Some(args),
            "ENTRYPOINT" => entrypoint = Some(json_words("ENTRYPOINT", &args)),
            "CMD" => cmd = Some(json_words("CMD", &args)),
            _ => {}
        }
    }
    Dockerfile {
        build: build.unwrap_or_else(|| missing("RUN with `cargo build`")),
        built: built.unwrap_or_else(|| missing("`target/<profile>/volguard` in the build's RUN")),
        base: base.unwrap_or_else(|| missing("FROM")),
        binary: binary.unwrap_or_else(|| missing("COPY --from=build of the built binary")),
        user: user.unwrap_or_else(|| missing("USER")),
        entrypoint: entrypoint.unwrap_or_else(|| missing("ENTRYPOINT")),
        cmd: cmd.unwrap_or_else(|| missing("CMD")),
    }
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

/// The variables (and prefixes) cargo sets for a test process.
const CARGO_SETS: &[&str] = &[
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// The binary the Dockerfile builds, built here with the Dockerfile's own `cargo
/// build` command in this build's target folder (a no-op when it is up to date); once
/// per test binary.
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
        command
            .args(args)
            .current_dir(repo(""))
            .env("CARGO_TARGET_DIR", &target);
        // What cargo sets for this test process, not for a build: some build scripts
        // (ring's) rebuild when CARGO_MANIFEST_DIR changes.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if CARGO_SETS.iter().any(|p| name.starts_with(p)) {
                command.env_remove(name.as_ref());
            }
        }
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
        target.join(&docker.built)
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
        "org.opencontainers.image.ref.name": name.rsplit(':').next(),
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

/// The shared libraries `binary` loads (`ldd`), as absolute paths.
fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| fail("list the binary's libraries (ldd)", e, None));
    String::from_utf8_lossy(&out.stdout)
        .lines()
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
        "root:x:0:0:root:/root:/sbin/nologin
         nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
         nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
",
    );
    write(
        &root.join("etc/group"),
        "root:x:0:
nobody:x:65534:
nonroot:x:65532:
",
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
                "the Dockerfile's final stage is FROM {}, the test image stands in for                  {DOCKERFILE_BASE}: make tests/control_plane/images.rs follow it",
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
