# syntax=docker/dockerfile:1
# docker build -t ghcr.io/volguard/volguard:0.1.0 .
# Needs BuildKit (the default builder) for the cache mounts below.

FROM rust:1-bookworm AS build
# The commit `volguard --version` names (.git is not in the build context).
ARG REVISION=""
WORKDIR /src
# The whole source tree (filtered by .dockerignore): Cargo needs every target
# the manifest declares (benches, examples, tests) to exist, even unbuilt.
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between
# builds; the binary is copied out because the target dir is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    VOLGUARD_GIT_COMMIT="${REVISION}" cargo build --release --locked --bin volguard \
 && install -D -m 0755 target/release/volguard /out/volguard

# glibc + libgcc, no shell, no package manager. Same Debian release as the
# build stage, so the glibc the binary links against is present.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="volguard" \
      org.opencontainers.image.description="Storage-aware Kubernetes admission webhook and scheduler extender for block volumes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/volguard/volguard" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/volguard /usr/local/bin/volguard
# Numeric, so runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
# 8443: webhook + extender (TLS); 9090: /metrics /healthz /readyz (plain HTTP).
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/volguard"]
CMD ["serve"]
