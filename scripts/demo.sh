#!/usr/bin/env bash
# Set up from nothing and start the chat server.
#   bash scripts/demo.sh                          # a tiny random-weight model: it babbles, but everything runs
#   MODEL=~/models/my-model.gguf bash scripts/demo.sh   # a real GGUF
# Extra arguments go to `python -m runtime`, e.g. --port 9000 --no-browser.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
model=${MODEL:-}
if [ -z "$model" ]; then
    model=.demo/tiny.gguf
    mkdir -p .demo
    [ -f "$model" ] || python -m tests.tiny_gguf "$model"
    echo "demo: using a tiny random-weight model (gibberish answers). Set MODEL=path/to/model.gguf for a real one."
fi
exec python -m runtime --model "$model" "$@"
