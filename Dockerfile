# Small runtime image for ruddr. Build: docker build -t ruddr .
# Run:   docker run -p 53:53/udp -p 53:53/tcp -p 9153:9153 ruddr \
#          serve --config /etc/ruddr/ruddr.toml --listen 0.0.0.0:53 --admin-listen 0.0.0.0:9153 \
#          --etcd-endpoints http://etcd-1:2379,http://etcd-2:2379,http://etcd-3:2379
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
RUN cargo build --release --locked --bin ruddr && strip target/release/ruddr

FROM debian:bookworm-slim
COPY --from=build /src/target/release/ruddr /usr/local/bin/ruddr
COPY config/ruddr.toml /etc/ruddr/ruddr.toml
# Unprivileged; recent container runtimes allow binding port 53 without root.
USER 65534:65534
EXPOSE 53/udp 53/tcp 9153/tcp
ENTRYPOINT ["/usr/local/bin/ruddr"]
CMD ["serve", "--config", "/etc/ruddr/ruddr.toml", "--listen", "0.0.0.0:53", "--admin-listen", "0.0.0.0:9153"]
