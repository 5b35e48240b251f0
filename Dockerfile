# ooo-storage in a container: a slim Python base, a non-root user, the data in a volume.
#
#   docker build -t ooo-storage .
#   docker run -p 8800:8800 -v ooo-data:/data -v $PWD/auth.toml:/etc/ooo-storage/auth.toml:ro \
#       -e OOO_AUTH=/etc/ooo-storage/auth.toml ooo-storage
#
# Every `serve` flag can be given as an OOO_* environment variable (docs/operations.md,
# Configuration) or as arguments after the image name; give the port, TLS and health flags as OOO_*
# variables (or OOO_CONFIG) so that the HEALTHCHECK, which reads the same sources, follows them.
# Bound to 0.0.0.0 the server refuses to start without an access policy: give OOO_AUTH (tokens from
# `ooo-storage token new`), or OOO_INSECURE_NO_AUTH=1 on a private network only.
#
# Host names: a request published with -p arrives on the container's own address with
# `Host: localhost:8800`, which the server would refuse (the Host check that defeats DNS
# rebinding answers only names of the address a connection arrived on). OOO_ALLOWED_HOST below
# allows the loopback names, which no web page can make its own, so `curl localhost:8800` from the
# host works; add your DNS name (OOO_ALLOWED_HOST=localhost,127.0.0.1,[::1],kv.example.com: a
# value replaces the list whole). Online backups are off until OOO_BACKUP_DIR names a directory.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY ooo_storage ./ooo_storage
RUN pip install . && rm -rf /src

RUN groupadd --system ooo && useradd --system --gid ooo --home-dir /data --shell /usr/sbin/nologin ooo \
    && mkdir -p /data && chown ooo:ooo /data

USER ooo
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8800

ENV OOO_HOST=0.0.0.0 \
    OOO_PORT=8800 \
    OOO_DATA=/data/db \
    OOO_ALLOWED_HOST=localhost,127.0.0.1,[::1]

# GET /healthz answers 200 while the process serves. `ooo-storage health` asks it where the
# configuration (OOO_* variables, OOO_CONFIG) says the server listens: its port, https under TLS.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["ooo-storage", "health"]

# SIGTERM (docker stop) stops the server cleanly: websockets closed with 1001, the database closed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ooo-storage"]
CMD ["serve"]
