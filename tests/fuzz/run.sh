#!/usr/bin/env bash
# The long fuzz pass (the unit tests run a short one): atheris on the frame, request and reply
# decoders for a while each, then 100,000 mutated frames at one live node and at a cluster of three.
#
#   tests/fuzz/run.sh                                   300 s per codec target, 100,000 frames per live run
#   tests/fuzz/run.sh --codec-seconds 60 --frames 20000 a shorter pass
#   tests/fuzz/run.sh --help                            every option
#
# Corpora grow in .fuzz/corpus/, crash inputs land in .fuzz/crashes/. Exits 1 if anything failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/venv.sh
PYTHONPATH=tests exec .venv/bin/python -m fuzz "$@"
