#!/usr/bin/env bash
# aarch64 smoke test of the torch-free runtime under qemu-user: benchmarks/arm_smoke.sh ARTIFACT [WORKDIR]
#
# Functional only: latency under emulation means nothing and is never printed. Checks, on an emulated ARM core
# (QEMU_CPU, default cortex-a76; cortex-a53 has no dotprod), that `bertship profiles show mobile-arm` judges the
# machine and its CPU class, that load() re-checks an int8 artifact verified only on x86 (its class recorded in the
# manifest) on the ARM kernels, that `bertship verify` reproduces the golden outputs, and that the worker runs the mobile-arm
# runtime (XNNPACK asked for, CPU fallback noted) with its fidelity on the golden inputs.
# Setup (~1 minute, ~300 MB, nothing installed system-wide): qemu-aarch64-static from its .deb, an arm64 sysroot
# (python3.11) from a private apt configuration, aarch64 wheels via pip --target (ANCHORS.md §5).
# There is no binfmt_misc here, so an emulated process cannot start emulated children: the worker is run directly
# instead of through `bertship bench`.
set -euo pipefail
ART=$(realpath "${1:?usage: benchmarks/arm_smoke.sh ARTIFACT [WORKDIR]}")
WORK=${2:-/tmp/bertship-arm}
CPU=${QEMU_CPU:-cortex-a76}
SRC=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK" && cd "$WORK"

if [ ! -x qemu-aarch64-static ]; then
  apt-get download -q qemu-user-static >/dev/null 2>&1
  dpkg -x qemu-user-static_*.deb qemu && cp qemu/usr/bin/qemu-aarch64-static . && rm -rf qemu qemu-user-static_*.deb
fi
if [ ! -x sysroot/usr/bin/python3.11 ]; then
  mkdir -p apt/state/lists/partial apt/cache/archives/partial apt/sources apt/prefs && touch apt/state/status
  cp /etc/apt/sources.list.d/debian.sources apt/sources/
  cat > apt/apt.conf <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
Dir::State "$WORK/apt/state";
Dir::State::status "$WORK/apt/state/status";
Dir::Cache "$WORK/apt/cache";
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$WORK/apt/sources";
Dir::Etc::PreferencesParts "$WORK/apt/prefs";
APT::Sandbox::User "root";
EOF
  APT_CONFIG=$WORK/apt/apt.conf apt-get update -q >/dev/null
  APT_CONFIG=$WORK/apt/apt.conf apt-get install -y -q --download-only python3.11 libstdc++6 libgcc-s1 >/dev/null
  for deb in apt/cache/archives/*.deb; do dpkg -x "$deb" sysroot; done
fi
if [ ! -d site/onnxruntime ]; then
  pip install -q --target site --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 numpy==2.4.6 tokenizers==0.22.2 \
    onnxruntime==1.32.0 >pip.log 2>&1 || { cat pip.log; exit 1; }
fi
# bertship itself, built from this checkout as a wheel (so the profiles' package data is what a user installs)
rm -rf src wheels site/bertship && mkdir -p src wheels
(cd "$SRC" && tar --exclude=.git --exclude=benchmarks/.cache --exclude=benchmarks/results --exclude=__pycache__ \
  --exclude='*.egg-info' --exclude=build -cf - .) | tar -xf - -C src
(cd src && pip wheel -q --no-deps . -w ../wheels >../pip.log 2>&1) && pip install -q --no-deps --target site \
  wheels/bertship-*.whl >pip.log 2>&1 || { cat pip.log; exit 1; }

# onnxruntime reads /proc/cpuinfo at import; qemu's -L serves it from the sysroot: describe the emulated core.
declare -A PART=([cortex-a76]=0xd0b [neoverse-n1]=0xd0c [cortex-a53]=0xd03)
declare -A FEATURES=([cortex-a76]="fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
  [neoverse-n1]="fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
  [cortex-a53]="fp asimd aes pmull sha1 sha2 crc32 cpuid")
mkdir -p sysroot/proc && : > sysroot/proc/cpuinfo
for n in 0 1; do
  printf 'processor\t: %s\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: %s\n\n' \
    "$n" "${FEATURES[$CPU]}" "${PART[$CPU]}" >> sysroot/proc/cpuinfo
done
arm() { QEMU_CPU=$CPU PYTHONPATH=$WORK/site PYTHONDONTWRITEBYTECODE=1 HOME=$WORK \
  ./qemu-aarch64-static -L "$WORK/sysroot" "$WORK/sysroot/usr/bin/python3.11" "$@"; }

echo "== emulated $CPU: platform and onnxruntime providers"
arm -c "import platform, onnxruntime; print(platform.machine(), onnxruntime.__version__, onnxruntime.get_available_providers())"
echo "== bertship profiles show mobile-arm (machine check)"
arm -m bertship.cli profiles show mobile-arm | sed -n '/^this machine/,$p'
echo "== load(): an int8 artifact verified on x86 only is re-checked on the ARM kernels first"
arm -c "import sys; from bertship.runtimes import load; m = load(sys.argv[1], backend='onnxruntime'); r = m.recheck
print('recheck', None if r is None else {k: r[k] for k in ('cpu_class', 'verified_on', 'target', 'seconds', 'tail')})" "$ART"
echo "== bertship verify (checksums, tokenizer, golden outputs on aarch64)"
arm -m bertship.cli verify "$ART" --backends onnxruntime || echo "verify failed with exit $?"
echo "== benchmark worker with the mobile-arm runtime (timings discarded: emulation)"
arm -m bertship.bench.worker "$ART" --backend onnxruntime --threads 1 --shapes 1x16 --iters 1 --rounds 1 --warmup 1 \
  --fidelity --runtime '{"providers": ["XnnpackExecutionProvider", "CPUExecutionProvider"], "model_format": "ort"}' \
  | arm -c "import json, sys; d = json.load(sys.stdin); print('providers', d['env']['providers'], '| precision',
d['env']['precision'], '| fidelity cosine_min', round(d['fidelity']['cosine_min'], 6)); [print('note:', n) for n in d['notes']]"
