//! The Dockerfile as the real-node tests read it (`tests/common/dockerfile.rs`): the
//! shipped one gives the build command, user and entry point the test image carries,
//! its user is the one the shipped Deployment runs as, and a Dockerfile the test image
//! could not reproduce is refused with the reason.

mod common;

use common::{dockerfile::parse, repo};

fn shipped() -> String {
    std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile")
}

#[test]
fn the_shipped_dockerfile_gives_the_test_image_its_build_user_and_entry_point() {
    let d = parse(&shipped(), &[("REVISION", "0123456789ab")]).expect("the shipped Dockerfile");
    assert_eq!(
        d.build,
        [
            "cargo",
            "build",
            "--release",
            "--locked",
            "--bin",
            "volguard"
        ]
    );
    assert_eq!(
        d.build_env,
        [("VOLGUARD_GIT_COMMIT".to_owned(), "0123456789ab".to_owned())],
        "the build arg REVISION reaches the build as docker build passes it"
    );
    assert_eq!(d.built, "release/volguard");
    assert_eq!(d.base, "gcr.io/distroless/cc-debian12:nonroot");
    assert_eq!(d.binary, "/usr/local/bin/volguard");
    assert_eq!(d.user, "65532:65532");
    assert_eq!(d.entrypoint, ["/usr/local/bin/volguard"]);
    assert_eq!(d.cmd, ["serve"]);
    let without = parse(&shipped(), &[]).expect("the shipped Dockerfile");
    assert_eq!(
        without.build_env,
        [("VOLGUARD_GIT_COMMIT".to_owned(), String::new())],
        "REVISION defaults to empty"
    );
}

/// The Deployment's `runAsUser:runAsGroup` (pod and container) is the image's `USER`:
/// the pod runs as the user the image was made for.
#[test]
fn the_shipped_deployment_runs_as_the_dockerfile_user() {
    let user = parse(&shipped(), &[]).expect("Dockerfile").user;
    let text = std::fs::read_to_string(repo("manifests/base/deployment.yaml")).expect("deployment");
    let docs = volguard::sources::snapshot::parse_documents(&text, false).expect("YAML");
    let spec = &docs[0]["spec"]["template"]["spec"];
    for (what, context) in [
        ("pod", &spec["securityContext"]),
        ("container", &spec["containers"][0]["securityContext"]),
    ] {
        let ids = format!("{}:{}", context["runAsUser"], context["runAsGroup"]);
        assert_eq!(ids, user, "the {what} securityContext");
        assert_eq!(context["runAsNonRoot"], true, "the {what} securityContext");
    }
}

/// Each Dockerfile change the test image would not follow is refused, naming it.
#[test]
fn a_dockerfile_the_test_image_cannot_reproduce_is_refused() {
    let shipped = shipped();
    let cases: [(&str, String, &str); 11] = [
        (
            "a second RUN in the build stage",
            shipped.replace(
                "COPY . .",
                "COPY . .\nRUN rustup target add x86_64-unknown-linux-musl",
            ),
            "the build stage has a second RUN (`rustup target add x86_64-unknown-linux-musl`)",
        ),
        (
            "another command in the build's RUN",
            shipped.replace(
                "&& install -D",
                "&& strip target/release/volguard && install -D",
            ),
            "`strip target/release/volguard` in the build's RUN",
        ),
        (
            "a RUN flag other than --mount",
            shipped.replace("RUN --mount=", "RUN --network=none --mount="),
            "RUN --network=none: the test image reproduces only --mount=",
        ),
        (
            "two build args on one line",
            shipped.replace("ARG REVISION=\"\"", "ARG REVISION=\"\" OTHER=1"),
            "one plain ARG per line",
        ),
        (
            "ENV in the build stage",
            shipped.replace("WORKDIR /src", "WORKDIR /src\nENV RUSTFLAGS=-Ctarget-cpu=native"),
            "the build stage has `ENV RUSTFLAGS=-Ctarget-cpu=native`, which the test image does not reproduce",
        ),
        (
            "STOPSIGNAL in the final stage",
            shipped.replace("USER 65532:65532", "USER 65532:65532\nSTOPSIGNAL SIGINT"),
            "the final stage has `STOPSIGNAL SIGINT`, which the test image does not reproduce",
        ),
        (
            "no USER",
            shipped.replace("USER 65532:65532", ""),
            "the final stage has no USER",
        ),
        (
            "a second COPY",
            shipped.replace(
                "COPY --from=build /out/volguard /usr/local/bin/volguard",
                "COPY --from=build /out/volguard /usr/local/bin/volguard\nCOPY README.md /README.md",
            ),
            "the final stage has more than one COPY",
        ),
        (
            "a copy into a folder",
            shipped.replace("/out/volguard /usr/local/bin/volguard", "/out/volguard /usr/local/bin/"),
            "COPY --from=build /out/volguard /usr/local/bin/: expected `COPY --from=<build stage> /out/volguard /path/to/binary`",
        ),
        (
            "CMD in shell form",
            shipped.replace("CMD [\"serve\"]", "CMD serve"),
            "CMD serve is not in exec form",
        ),
        (
            "an unknown build arg",
            shipped.replace("${REVISION}", "${COMMIT}"),
            "uses $COMMIT, which is not a build ARG",
        ),
    ];
    for (what, text, reason) in cases {
        assert_ne!(text, shipped, "{what}: the case changes the Dockerfile");
        let e = parse(&text, &[]).expect_err(what);
        assert!(e.contains(reason), "{what}: {e}");
    }
}
