# The image of compose.yaml's api and worker services: the cdp package on Python 3.11.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cdp ./cdp
COPY workers ./workers
COPY lua ./lua
# The wheel carries lua/ inside the package (cdp/_lua), so the sources can go.
RUN pip install . \
    && rm -rf /src \
    && useradd --system --no-create-home --shell /usr/sbin/nologin cdp

WORKDIR /
USER cdp
EXPOSE 8080
CMD ["cdp", "api", "--host", "0.0.0.0", "--port", "8080"]
