# Labelweave coordinator image (also runs `labelweave workers` once the distributed backend lands).
#
#   docker build -t labelweave:0.1.0 .
#   docker run -p 50051:50051 -p 9464:9464 -v labelweave-data:/data labelweave:0.1.0
#
# The bootstrap admin token is written to /data/admin.token on first start of an empty volume.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Fixed uid/gid so volume ownership is predictable across rebuilds.
RUN groupadd --system --gid 10001 labelweave \
    && useradd --system --uid 10001 --gid labelweave --home-dir /home/labelweave --create-home \
       --shell /usr/sbin/nologin labelweave \
    && mkdir -p /data \
    && chown labelweave:labelweave /data

WORKDIR /src
COPY . /src
# Every dependency (grpcio, numpy, cassandra-driver, faust-streaming, aiokafka) ships manylinux wheels
# for CPython 3.11, so no compiler is needed. The source tree is removed once installed.
RUN pip install --no-cache-dir ".[distributed]" \
    && cd / && rm -rf /src

WORKDIR /home/labelweave
USER labelweave:labelweave

# 50051: gRPC API (+ grpc.health.v1, reflection). 9464: Prometheus /metrics.
EXPOSE 50051 9464
VOLUME /data

# Plaintext check against the in-container listener; with --tls the check needs credentials instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys,grpc;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;sys.exit(0 if g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(),timeout=3).status==h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["labelweave"]
# The metrics server binds 127.0.0.1 by default; inside a container it must bind 0.0.0.0 to be scraped.
CMD ["serve", "--data-dir", "/data", "--listen", "0.0.0.0:50051", "--metrics-host", "0.0.0.0"]
