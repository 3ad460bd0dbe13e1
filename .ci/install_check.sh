#!/usr/bin/env bash
# Installing sedd-megatron as a user would, outside the checkout's own .venv (CI step; docs:
# README "Install into your container"): `pip wheel` builds the wheel; a fresh venv that already
# has another torch (torch $OTHER_TORCH, as a container brings) gets a plain `pip install <wheel>`
# (dependencies resolved, no --no-deps). torch must be unchanged afterwards, the package must come
# from the wheel (not the checkout), and each console script must answer --help and do one short
# real run (.ci/smoke.sh), from outside the checkout. Downloads are cached under ~/.cache/pip;
# each pip install is retried once.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PY:-$root/.venv/bin/python}"  # the locked environment (make test builds it)
WORK="${WORK:-$(mktemp -d /tmp/sedd-install.XXXXXX)}"
OTHER_TORCH="${OTHER_TORCH:-2.11.0}"
base="$("$py" -c 'import sys; print(sys.base_prefix)')/bin/python3.12"
[ -x "$base" ] || base="$("$py" -c 'import sys; print(sys._base_executable)')"
retry() { "$@" || { echo "install_check: retrying: $*" >&2; sleep 5; "$@"; }; }
t0=$(date +%s)

echo "install_check: the wheel, into a fresh environment with torch $OTHER_TORCH ($WORK/container)"
rm -rf "$WORK/dist" "$WORK/container" "$WORK/run"
"$py" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$root"
"$base" -m venv "$WORK/container"
c="$WORK/container/bin/python"
# the 'container': its own torch first (numpy < 2.4: torch 2.11's triton 3.6 interpreter, see docs/usage.md §8)
retry "$c" -m pip install --quiet "torch==$OTHER_TORCH" "numpy<2.4"
before="$("$c" -c 'import torch; print(torch.__version__)')"
retry "$c" -m pip install --quiet "$WORK"/dist/sedd_megatron-*.whl
after="$("$c" -c 'import torch; print(torch.__version__)')"
if [ "$before" != "$after" ]; then
    echo "install_check: FAILED: pip install replaced torch $before with $after" >&2
    exit 1
fi
site="$("$c" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
(cd "$WORK" && "$c" -c "import sedd_megatron, sys
sys.exit(0 if sedd_megatron.__file__.startswith('$site') else 'not the wheel: ' + sedd_megatron.__file__)")
echo "install_check: torch unchanged ($after); megatron-core $("$c" -m pip show megatron-core | sed -n 's/^Version: //p')"
bash "$root/.ci/smoke.sh" "$WORK/container/bin" "$WORK/run"
echo "install_check: all ok in $(( $(date +%s) - t0 )) s"
