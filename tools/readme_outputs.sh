#!/bin/sh
# Re-run the README's quoted commands (list, summary; the main job and table unless --quick) and diff the
# quotes against what the current commit prints. --write replaces the quotes. See tools/readme_outputs.py.
set -e
cd "$(dirname "$0")/.."
exec python tools/readme_outputs.py "$@"
