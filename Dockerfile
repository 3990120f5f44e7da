# imgcrunch for scale-out deployments (see docker-compose.yml): the API and the workers run
# this same image with different commands. libvips comes with the pyvips-binary wheel.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir '.[scale-out]' \
    && useradd --create-home --uid 1000 imgcrunch \
    && mkdir /data && chown imgcrunch /data

USER imgcrunch
ENV IMGCRUNCH_DATA_DIR=/data \
    IMGCRUNCH_HOST=0.0.0.0
VOLUME /data
EXPOSE 8000 9101
CMD ["imgcrunch", "serve"]
