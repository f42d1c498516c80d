FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000

WORKDIR /app
RUN useradd --create-home --uid 10001 app

COPY pyproject.toml README.md openapi.yaml ./
COPY service ./service
COPY providers ./providers
COPY storage ./storage
# The same install command as the README; the embedded SQLite store writes to /app/data.
RUN pip install --no-cache-dir -e . && mkdir -p /app/data && chown app:app /app/data

USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=2)"
CMD ["python", "-m", "service"]
