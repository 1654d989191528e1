# One image for every rpa-bus service: the command picks the part (relay, monitor).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rpa_bus ./rpa_bus
COPY producer ./producer
COPY relay ./relay
COPY monitor ./monitor
COPY workers ./workers
# The wheel carries the reference robot and quote site (pyproject's force-include) for
# `rpa-bus demo --real`: without them `pip install .` fails ("Forced include not found").
COPY examples ./examples
RUN pip install . && useradd --system --uid 10001 rpabus
USER rpabus
ENV XDG_STATE_HOME=/tmp/rpa-bus-state
EXPOSE 8765
CMD ["rpa-bus", "--help"]
