# Image for infra/deploy/docker-compose.yml (untested here: no Docker engine on the dev box).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY longretriever longretriever
COPY core core
COPY data data
COPY stream stream
COPY export export
COPY retriever retriever
COPY infra infra
COPY benchmarks benchmarks
# serving image: the base install (no torch); add [train] to train inside the image
RUN pip install --no-cache-dir .
ENTRYPOINT []
