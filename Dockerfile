# The image every service of docker-compose.yaml runs: Airflow 3.3.2 plus m3sh installed, so the
# DAGs' imports, the provider entry point (connection types m3ter/hubspot/netsuite with their
# Test buttons) and the `m3sh` CLI (the sandbox service) exist in every container.
FROM apache/airflow:3.3.2

ARG AIRFLOW_VERSION=3.3.2
USER airflow
WORKDIR /opt/m3sh
COPY --chown=airflow:0 pyproject.toml README.md ./
COPY --chown=airflow:0 include ./include
# Pinning apache-airflow keeps pip from up- or downgrading the Airflow the image ships. The sandbox
# extra because the compose file's m3sh-sandbox service runs the emulators from this same image.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" ".[sandbox]" \
    && python -c "import m3sh, m3sh.provider; print('m3sh', m3sh.__version__)"
WORKDIR /opt/airflow
