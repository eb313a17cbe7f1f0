# One image, three services: `nexus scheduler`, `nexus receiver`, `nexus maintainer`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY nexus nexus
COPY receiver receiver
COPY maintainer maintainer
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c requirements.lock .

FROM python:3.11-slim
# user and group 10001, which the Kubernetes manifests name (runAsUser, runAsGroup)
RUN groupadd --system --gid 10001 nexus && useradd --system --uid 10001 --gid 10001 nexus
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
ENTRYPOINT ["nexus"]
CMD ["--help"]
