# podtap: one image for the controller, the agent and the broker (`podtap controller|agent|broker`).
#   docker build -t ghcr.io/podtap/podtap:0.1.0 .
FROM rust:1.95-bookworm AS build
# clang and the libbpf/kernel headers compile the eBPF programs; libpcap-dev is for the
# broker's filter expressions.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev linux-libc-dev libpcap-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p podtap \
 && install -D target/release/podtap /out/podtap

FROM debian:bookworm-slim
# iproute2: the agent creates its tunnel device and, on kernels without TCX, clsact filters
# with `ip`/`tc`. libpcap0.8: the broker's filter expressions. ca-certificates: none of
# podtap's own traffic needs them, the Kubernetes client's in-cluster config does.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 libpcap0.8 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/podtap /usr/local/bin/podtap
# The controller and the broker run as this user; the agent's DaemonSet runs as root with
# only the capabilities it needs (docs/install.md).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/podtap"]
