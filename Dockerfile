# One production image, three services: `nexus scheduler`, `nexus receiver`, `nexus
# maintainer`. It holds the server's wheel and the SDK's (which has the `nexus` command),
# never the development package: `docker build .` builds it (the last stage).
# `docker build --target development .` adds nexus-dev for `nexus dev` (docker-compose.yml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY sdk sdk
COPY nexus nexus
COPY receiver receiver
COPY maintainer maintainer
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c requirements.lock ./sdk .

FROM build AS build-development
COPY dev dev
RUN pip wheel --no-cache-dir --wheel-dir /wheels --find-links /wheels \
        -c requirements.lock ./sdk . ./dev

FROM python:3.11-slim AS development
RUN groupadd --system --gid 10001 nexus && useradd --system --uid 10001 --gid 10001 nexus
COPY --from=build-development /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
ENTRYPOINT ["nexus"]
CMD ["dev", "--help"]

FROM python:3.11-slim AS production
# user and group 10001, which the Kubernetes manifests name (runAsUser, runAsGroup)
RUN groupadd --system --gid 10001 nexus && useradd --system --uid 10001 --gid 10001 nexus
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
ENTRYPOINT ["nexus"]
CMD ["--help"]
