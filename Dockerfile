# Astro Runtime 3 image for Airflow 3.3.2 (`astro dev start` builds this). The runtime brings Airflow itself;
# requirements.txt adds FT-Ops' libraries, pinned, with constraints.txt locking the tree.
FROM astrocrpublic.azurecr.io/runtime:3.3-2

ENV FTOPS_HOME=/usr/local/airflow/.ftops \
    PYTHONPATH=/usr/local/airflow/include \
    GX_ANALYTICS_ENABLED=False \
    DVC_NO_ANALYTICS=1 \
    TOKENIZERS_PARALLELISM=false
