#!/usr/bin/env bash
# The benchmark's own environment for vs_lightly.py: lightly (from PyPI) next to dimcl, in
# benchmarks/speed/.venv-lightly. lightly is never a dependency of the dimcl package itself.
# Idempotent: an environment that already imports lightly, dimcl and the pinned torch is left as it is.
#
#   bash benchmarks/speed/setup_lightly_env.sh
#
# torch / torchvision are pinned to the releases this machine holds locally (plain pip finds them through
# the machine's pip configuration), so nothing else is downloaded in their place.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv-lightly"
python="${PYTHON:-python3}"
torch_pin="torch==2.14.1"
torchvision_pin="torchvision==0.29.1"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md
import lightly, dimcl  # noqa: F401
assert md.version("torch").split("+")[0] == "2.14.1", md.version("torch")
assert md.version("torchvision").split("+")[0] == "0.29.1", md.version("torchvision")
PY
then
    echo "lightly environment already set up: $venv (lightly $("$venv/bin/python" -c 'import lightly; print(lightly.__version__)'))"
    exit 0
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --upgrade pip
"$venv/bin/python" -m pip install "$torch_pin" "$torchvision_pin"
# The same pins again, so that lightly's requirements cannot pull another torch release.
"$venv/bin/python" -m pip install lightly "$torch_pin" "$torchvision_pin"
"$venv/bin/python" -m pip install -e "$repo" "$torch_pin" "$torchvision_pin"
"$venv/bin/python" -c 'import lightly, torch, dimcl; print("lightly", lightly.__version__, "torch", torch.__version__)'
