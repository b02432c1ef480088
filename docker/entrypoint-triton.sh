#!/bin/sh
# Entrypoint of the Triton image: package a model on first start if asked, then exec
# tritonserver (model control off, every model loaded at start) so signals reach it.
# Runs as-is outside a container too: tests run it with the nvidia-pytriton tritonserver.
#
#   TRITIUM_MODEL_REPOSITORY  model repository to serve (default: model_repository; image: /models)
#   TRITIUM_PACKAGE_MODEL     if set and <repository>/<name>/config.pbtxt is missing, run
#                             `tritium package $TRITIUM_PACKAGE_SOURCE --name <name>` first
#   TRITIUM_PACKAGE_SOURCE    what to package (default: default = SmolLM2-135M-Instruct);
#                             a Hugging Face model directory or a .gguf file also work
#   PYTHON                    interpreter with tritium installed (default: python3)
#   TRITIUM_TRITON_HOST, TRITIUM_HTTP_PORT, TRITIUM_GRPC_PORT, TRITIUM_METRICS_PORT,
#   TRITIUM_TRITON_LOG_VERBOSE, TRITONSERVER: see exec_tritonserver.py
# Arguments are passed on to tritonserver (e.g. --log-info=false).
set -eu

here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
python=${PYTHON:-python3}
repository=${TRITIUM_MODEL_REPOSITORY:-model_repository}

if [ -n "${TRITIUM_PACKAGE_MODEL:-}" ] \
    && [ ! -f "$repository/$TRITIUM_PACKAGE_MODEL/config.pbtxt" ]; then
    echo "entrypoint-triton: packaging ${TRITIUM_PACKAGE_SOURCE:-default} as $TRITIUM_PACKAGE_MODEL into $repository"
    "$python" -m tritium package "${TRITIUM_PACKAGE_SOURCE:-default}" \
        --name "$TRITIUM_PACKAGE_MODEL" --repository "$repository"
fi

TRITIUM_MODEL_REPOSITORY=$repository
export TRITIUM_MODEL_REPOSITORY
exec "$python" "$here/exec_tritonserver.py" "$@"
