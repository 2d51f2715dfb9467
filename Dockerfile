# The one datashare image: every Cloud Run role runs it, the role chosen by
# the arguments (`datashare worker`, `datashare deliver --sink sftp|api|email`,
# `datashare alert`). Build: see terraform/README.md.

# Builder base: the Rust toolchain, the C toolchain of -sys crates
# (libssh2-sys, aws-lc-sys) and OpenSSL headers (ssh2 links libssl
# dynamically), and cargo-chef to cache dependencies in their own layer.
FROM rust:1.95-slim-bookworm AS chef
# Debian pins its package versions within a release; pinning them again here
# would break the build at every security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev cmake make \
    && rm -rf /var/lib/apt/lists/* \
    && cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

# The dependency recipe: changes only when Cargo.toml or Cargo.lock do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# Dependencies only: this layer is reused while the lock file is unchanged.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin datashare \
    && cp target/release/datashare /usr/local/bin/datashare

# Runtime: distroless cc (Debian 12, like the builder) has glibc, libgcc,
# libssl3 and CA certificates, no shell and no package manager, and runs as
# the non-root user `nonroot` (65532).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
WORKDIR /app
COPY --from=builder /usr/local/bin/datashare /usr/local/bin/datashare
COPY config/ /app/config/
# The partner contracts (DATASHARE_PARTNERS_DIR defaults to partners/): their
# secrets are the Secret Manager files terraform mounts under /secrets/.
COPY partners/ /app/partners/
USER 65532:65532
# Cloud Run sets PORT; the default serves local runs. The push server listens
# on 0.0.0.0 where Cloud Run's K_SERVICE is set, else on 127.0.0.1: a local
# `docker run` needs `--host 0.0.0.0` after the role's arguments.
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/datashare"]
CMD ["worker"]
