# The gateway image: gunicorn + gevent workers serving wsgi:app.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    GATEWAY_BIND=0.0.0.0:8080

WORKDIR /srv/gateway
COPY setup.cfg pyproject.toml README.md ./
COPY flask_inference_gateway ./flask_inference_gateway
COPY app ./app
RUN pip install --no-cache-dir '.[gpu]' && useradd --system gateway
COPY gunicorn.conf.py wsgi.py ./

USER gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
