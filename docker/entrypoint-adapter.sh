#!/bin/sh
# Entrypoint of the adapter image: exec the OpenAI adapter (`python -m adapter`) so
# signals reach uvicorn. Every setting comes from a TRITIUM_* variable mirroring a flag
# of `python -m adapter` (TRITIUM_TRITON_URLS <-> --triton-url, TRITIUM_PORT <-> --port,
# ...; see docs/deploy.md); arguments are passed on as flags and win over variables.
#
#   PYTHON  interpreter with the adapter installed (default: python3)
set -eu
exec "${PYTHON:-python3}" -m adapter "$@"
