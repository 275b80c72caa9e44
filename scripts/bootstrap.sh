#!/usr/bin/env bash
# Installs what a fresh machine lacks for voice-sidecar. Idempotent; safe to run every time.
#   scripts/bootstrap.sh          libopus (the Opus codec library, linked by the audio crate)
#   scripts/bootstrap.sh --test   also the test tools: opus-tools (reference Opus encoder/decoder),
#                                 prometheus (promtool), jq (reads session records), and the Python packages used to validate
#                                 protocol events offline (openai==3.57.0) and to benchmark (soxr)
set -euo pipefail
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

need_apt=()
if ! pkg-config --exists opus 2>/dev/null; then
  need_apt+=(libopus-dev pkg-config)
fi
if [ $want_test = 1 ]; then
  command -v opusenc >/dev/null 2>&1 || need_apt+=(opus-tools)
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  command -v jq >/dev/null 2>&1 || need_apt+=(jq)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} (Debian packages)" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "bootstrap: need root or sudo to install ${need_apt[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ $want_test = 1 ]; then
  if ! python3 -c "import openai, soxr, numpy; assert openai.__version__ == '3.57.0'" 2>/dev/null; then
    echo "bootstrap: installing Python test packages (openai==3.57.0, soxr, numpy)" >&2
    python3 -m pip install -q --disable-pip-version-check "openai==3.57.0" soxr numpy >&2
  fi
fi
