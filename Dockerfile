# syntax=docker/dockerfile:1
# tortie's images, both from one build of the crate:
#   tortie        the operator (`tortie run`) and the CLI, plus tortie-ipam; distroless, non-root (65532)
#   tortie-agent  the node agent (`tortie agent`) with BIRD 1.6 (`bird`, `bird6`, `birdc`, `birdc6`: the
#                 agent checks configs with `bird -p` and reloads BIRD through its socket; the chart's
#                 `bird`/`bird6` containers run the daemons from this image, with `sh` for their
#                 start-up wait); `tortie install-cni` puts tortie-ipam on the node
#
#   docker build --target tortie       -t REGISTRY/tortie:0.1.0 .
#   docker build --target tortie-agent -t REGISTRY/tortie-agent:0.1.0 .
#
# then install the chart with image.repository=REGISTRY/tortie and agentImage.repository=
# REGISTRY/tortie-agent (README.md, "Install with Helm").

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
# The whole crate (Cargo.toml may name benches and tests); the cache mounts keep the registry and
# the compiled dependencies between builds.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/tortie target/release/tortie-ipam /out/

# glibc + libgcc and nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS tortie
COPY --from=build /out/tortie /out/tortie-ipam /usr/local/bin/
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/tortie"]
CMD ["run"]

FROM docker.io/library/debian:${DEBIAN}-slim AS tortie-agent
RUN apt-get update \
    && apt-get install -y --no-install-recommends bird ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/tortie /out/tortie-ipam /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/tortie"]
CMD ["agent"]
