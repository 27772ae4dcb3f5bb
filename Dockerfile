# syntax=docker/dockerfile:1
# turnstream container image: `docker build -t turnstream .`
#   docker run -p 50051:50051 -p 8080:8080 -v turnstream-data:/var/lib/turnstream turnstream
# It listens on 0.0.0.0, so it needs an API key to exist before it starts (`turnstream keys create
# --tenant acme --scopes ingest,read` against the same database; docs/auth.md).
# SQLite in /var/lib/turnstream by default (mount a volume there); set TURNSTREAM_DATABASE_URL for
# PostgreSQL.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: install turnstream and its dependencies into /opt/venv ------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, from pyproject.toml alone, so that editing src/ reuses this layer.
# (Every runtime dependency ships manylinux wheels, psycopg[binary] included: no compiler needed
# for them.)
COPY pyproject.toml /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# A C compiler for the compiled per-record fast path (setup.py compiles core/fastgen.py and
# core/fastrt.py with mypyc); only the built modules reach the runtime stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

COPY README.md setup.py /src/
COPY src /src/src
# Not editable: the runtime image gets no source tree, only the installed package. The image
# must run the compiled fast path: the build fails rather than ship the slower one unnoticed.
RUN pip install --no-deps /src \
 && python -c "import turnstream.cli, turnstream.v1.ingest_pb2" \
 && python -c "from turnstream.core import fastpath; assert fastpath.COMPILED, fastpath.PATH"

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# The venv's interpreter is a symlink to /usr/local/bin/python3.11, identical in both stages.
COPY --from=builder /opt/venv /opt/venv

RUN groupadd --system --gid 10001 turnstream \
 && useradd --system --uid 10001 --gid turnstream --home-dir /var/lib/turnstream \
        --no-create-home --shell /usr/sbin/nologin turnstream \
 && install -d -o turnstream -g turnstream -m 0750 /var/lib/turnstream

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TURNSTREAM_GRPC_ADDR=0.0.0.0:50051 \
    TURNSTREAM_HTTP_ADDR=0.0.0.0:8080

USER 10001:10001
# The default SQLite database (./turnstream.db) lands here: mount a volume to keep it. (No VOLUME
# instruction: it would leave an anonymous volume behind every run, PostgreSQL users included.)
WORKDIR /var/lib/turnstream
EXPOSE 50051 8080

# No curl in slim images: the interpreter does the GET; any error or non-2xx exits 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]

# turnstream handles SIGTERM itself (drain, then exit), and as PID 1 with an exec-form
# ENTRYPOINT it receives the signal directly.
ENTRYPOINT ["turnstream"]
CMD ["serve"]
