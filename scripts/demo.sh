#!/usr/bin/env bash
# `make demo`: score the example clips with the embedded default model, once with a prompt
# that describes each clip and once with one that does not: TA should drop for the mismatch.
set -euo pipefail
BIN=${BIN:-.venv/bin}
export HF_HUB_OFFLINE=1
cd "$(dirname "$0")/.."
while IFS= read -r line; do
    clip=$("$BIN/python" -c 'import json,sys; print(json.loads(sys.argv[1])["path"])' "$line")
    match=$("$BIN/python" -c 'import json,sys; print(json.loads(sys.argv[1])["prompt"])' "$line")
    other=$("$BIN/python" -c 'import json,sys; print(json.loads(sys.argv[1])["mismatched_prompt"])' "$line")
    echo "== examples/$clip"
    echo "   matching prompt:    $match"
    "$BIN/deramos-run" "examples/$clip" "$match"
    echo "   mismatching prompt: $other"
    "$BIN/deramos-run" "examples/$clip" "$other"
done < examples/prompts.jsonl
