FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY fsstream ./fsstream
RUN pip install --no-cache-dir -c constraints.txt .
ENV FSSTREAM_DATA_DIR=/data FSSTREAM_WEB_HOST=0.0.0.0
VOLUME /data
ENTRYPOINT ["fsstream"]
