#!/usr/bin/env bash
# Installing sedd-megatron as a user would, outside the checkout's own .venv (CI step; docs:
# README "Install into your container"). Two checks, each in a fresh environment under $WORK:
#  1. wheel: `pip wheel` builds the wheel; a fresh venv that already holds the locked stack
#     (torch, megatron-core: the project .venv's site-packages, linked in by a .pth file) gets a
#     plain `pip install <wheel>`; the console scripts run from outside the checkout.
#  2. container: a fresh venv with a different torch (torch $OTHER_TORCH, as a container brings)
#     gets a plain `pip install <checkout>` (dependencies resolved, no --no-deps); torch must be
#     unchanged afterwards and the console scripts must run.
# Downloads are cached under ~/.cache/pip; each pip install is retried once.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PY:-$root/.venv/bin/python}"  # the locked environment (make test builds it)
WORK="${WORK:-$(mktemp -d /tmp/sedd-install.XXXXXX)}"
OTHER_TORCH="${OTHER_TORCH:-2.11.0}"
base="$("$py" -c 'import sys; print(sys.base_prefix)')/bin/python3.12"
[ -x "$base" ] || base="$("$py" -c 'import sys; print(sys._base_executable)')"
retry() { "$@" || { echo "install_check: retrying: $*" >&2; sleep 5; "$@"; }; }
t0=$(date +%s)

echo "install_check: 1/2 the wheel in a fresh environment ($WORK/wheel)"
rm -rf "$WORK/wheel" "$WORK/dist"
"$py" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$root"
"$base" -m venv "$WORK/wheel"
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
new_site="$("$WORK/wheel/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$site" > "$new_site/locked_stack.pth"
retry "$WORK/wheel/bin/python" -m pip install --quiet "$WORK"/dist/sedd_megatron-*.whl
(cd "$WORK" && "$WORK/wheel/bin/python" -c "import sedd_megatron, sys
sys.exit(0 if sedd_megatron.__file__.startswith('$new_site') else 'not the wheel: ' + sedd_megatron.__file__)")
bash "$root/.ci/smoke.sh" "$WORK/wheel/bin" "$WORK/wheel-run"
echo "install_check: wheel ok ($(( $(date +%s) - t0 )) s so far)"

echo "install_check: 2/2 pip install into an environment with torch $OTHER_TORCH ($WORK/container)"
rm -rf "$WORK/container"
"$base" -m venv "$WORK/container"
c="$WORK/container/bin/python"
# the 'container': its own torch first (numpy < 2.4: torch 2.11's triton 3.6 interpreter, see README)
retry "$c" -m pip install --quiet "torch==$OTHER_TORCH" "numpy<2.4"
before="$("$c" -c 'import torch; print(torch.__version__)')"
retry "$c" -m pip install --quiet "$root"
after="$("$c" -c 'import torch; print(torch.__version__)')"
if [ "$before" != "$after" ]; then
    echo "install_check: FAILED: pip install replaced torch $before with $after" >&2
    exit 1
fi
echo "install_check: torch unchanged ($after); megatron-core $("$c" -m pip show megatron-core | sed -n 's/^Version: //p')"
bash "$root/.ci/smoke.sh" "$WORK/container/bin" "$WORK/container-run"
echo "install_check: all ok in $(( $(date +%s) - t0 )) s"
