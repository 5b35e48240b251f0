# ooo-storage in a container: a slim Python base, a non-root user, the data in a volume.
#
#   docker build -t ooo-storage .
#   docker run -p 8800:8800 -v ooo-data:/data -v $PWD/auth.toml:/etc/ooo-storage/auth.toml:ro \
#       -e OOO_AUTH=/etc/ooo-storage/auth.toml ooo-storage
#
# Every `serve` flag can be given as an OOO_* environment variable (docs/operations.md,
# Configuration) or as arguments after the image name. Bound to 0.0.0.0 the server refuses to start
# without an access policy: give OOO_AUTH (tokens from `ooo-storage token new`), or
# OOO_INSECURE_NO_AUTH=1 on a private network only.
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
    OOO_DATA=/data/db

# GET /healthz answers 200 while the process serves; the image has no curl, Python asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('OOO_PORT', '8800') + '/healthz', timeout=4)"]

# SIGTERM (docker stop) stops the server cleanly: websockets closed with 1001, the database closed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ooo-storage"]
CMD ["serve"]
