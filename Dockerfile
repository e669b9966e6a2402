FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fsstream ./fsstream
RUN pip install --no-cache-dir .
ENV FSSTREAM_DATA_DIR=/data FSSTREAM_WEB_HOST=0.0.0.0
VOLUME /data
ENTRYPOINT ["fsstream"]
