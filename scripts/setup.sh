#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (Python 3.11, no GPU, no hub): apt packages and .venv.
# Each step leaves a stamp so a second run costs seconds. `make run` and `make test` both call this.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMPS=.venv/.stamps
PY=${PYTHON:-python3}

APT_PACKAGES=(
  ffmpeg                 # torchcodec (datasets audio decoding) and the pipeline's file input
  espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts  # TTS engines for synth
  sox libsox-fmt-all     # telephone channel shaping
  libportaudio2          # sounddevice
  pulseaudio pulseaudio-utils alsa-utils libasound2-plugins  # virtual capture device for tests
  systemd                # systemd-analyze verify/security
  haproxy                # the L4 balancer in front of several daemons (tests/test_multi_daemon.py, docs/deploy.md)
)

need_apt=0
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  echo "setup: installing apt packages" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
mkdir -p "$STAMPS"
# torch first and pinned: torchaudio and torchcodec pin it exactly (the comments in pyproject.toml say why).
if [ ! -f "$STAMPS/torch" ]; then
  echo "setup: installing torch (large download, a few minutes)" >&2
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "torch==2.9.1" "torchaudio==2.9.*" "torchcodec==0.8.*"
  touch "$STAMPS/torch"
fi
# Reinstall the project whenever pyproject.toml changes.
if [ ! -f "$STAMPS/project" ] || [ pyproject.toml -nt "$STAMPS/project" ]; then
  echo "setup: installing intentd and its extras" >&2
  .venv/bin/pip install -q -e ".[daemon,train,dev]"
  touch "$STAMPS/project"
fi
