# Sourced at the start of every device command: carried wheels on the path, offline, repo importable.
# Installed once per machine: a second script sourcing this while the first runs must not reinstall under it.
[ -f /tmp/site/.mcvqa_wheels ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl >/dev/null 2>&1 && touch /tmp/site/.mcvqa_wheels; } || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
