#!/usr/bin/env bash
# An arm64 smoke test of adaptd under qemu-user: the board's architecture on an x86 machine.
#
# Brings up a Debian bookworm arm64 root (Python 3.11) with debootstrap, installs adaptd and
# its serving dependencies there from wheels only (--only-binary=:all:, no TensorFlow), loads
# every LiteRT variant of the demo repository, serves it with `adaptd serve`, drives the CLI
# verbs against the daemon, stops it with SIGTERM and prints a summary. Exits non-zero on any
# failure. Not part of CI: it needs root, binfmt_misc and the Debian mirror and PyPI.
#
#   sudo bench/aarch64_smoke.sh [--root DIR] [--repository DIR] [--fresh] [--mirror URL]
#
# --root DIR        the cached arm64 root (default: $ADAPTD_AARCH64_ROOT, else
#                   .cache/aarch64-root in the repository); a later run reuses it and its venv
# --repository DIR  a demo repository built on this machine (`adaptd demo build`); default:
#                   .cache/aarch64-demo-repo, built with the repository's .venv if missing
# --fresh           delete the cached root first (a cold run)
# --mirror URL      the Debian mirror for debootstrap (default: http://deb.debian.org/debian)
#
# Needs, on this machine: root, the repository's .venv with the build extra
# (`python3 -m venv .venv && .venv/bin/pip install -e '.[build]'`: it builds the demo and picks
# the input sample), and apt (qemu-user-static, binfmt-support and debootstrap are installed on
# first use). About 10 minutes cold, under 2 with the root cached.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

export ADAPTD_SMOKE_T0=${ADAPTD_SMOKE_T0:-$(date +%s)}
die() { echo "aarch64_smoke: error: $*" >&2; exit 1; }
say() { printf '== [%4d s] %s\n' "$(($(date +%s) - ADAPTD_SMOKE_T0))" "$*"; }

# ---------------------------------------------------------------------------------------------
# Stage 2: in private mount and PID namespaces (see the end of this file): mount, chroot, serve.
# Every mount made here, and every process started here, goes with the namespaces however the
# script ends (this shell is their PID 1: when it exits, the kernel kills the rest).
# ---------------------------------------------------------------------------------------------
if [[ ${ADAPTD_SMOKE_STAGE:-} == root ]]; then
    ROOT=$ADAPTD_SMOKE_ROOT
    WORK=$ADAPTD_SMOKE_WORK
    DEMO_REPO=$ADAPTD_SMOKE_REPO
    VENV=/opt/adaptd-venv            # inside the root
    RUN=/tmp/adaptd-smoke            # the daemon's runtime and state dir, inside the root
    DEPS_STAMP=$ROOT$VENV/.deps-sha256
    trap 'exit 130' INT TERM         # PID 1 of a namespace gets only the signals it handles

    mount -t proc proc "$ROOT/proc"
    # qemu-user passes the host's /proc/cpuinfo through unchanged, so an arm64 process reads x86
    # entries; the CPU probe that LiteRT's XNNPACK runs at interpreter creation then crashes
    # (a segfault). An Arm cpuinfo, as a TX2's Cortex-A57 cluster shows it, is bound over it.
    mount --bind -o ro "$WORK/cpuinfo" "$ROOT/proc/cpuinfo"
    mount -t sysfs -o ro sysfs "$ROOT/sys"
    mount --rbind /dev "$ROOT/dev"
    mount -t tmpfs -o mode=1777 shm "$ROOT/dev/shm"   # the daemon's shared memory, private
    mount -t tmpfs -o mode=1777 tmp "$ROOT/tmp"
    mkdir -p "$ROOT/mnt/smoke" "$ROOT/mnt/demo-repo"
    mount --bind -o ro "$WORK" "$ROOT/mnt/smoke"
    mount --bind -o ro "$DEMO_REPO" "$ROOT/mnt/demo-repo"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # pip in the root trusts what the host's pip trusts (a host behind a TLS-inspecting proxy
    # adds its CA there; the root's own bundle lacks it).
    mount --bind -o ro "$WORK/ca-certificates.crt" "$ROOT/etc/ssl/certs/ca-certificates.crt"

    # The root's environment: nothing from the host's. QEMU_CPU has qemu emulate the board's
    # Cortex-A57 (as the cpuinfo above says) instead of its default "max" CPU, which advertises
    # SME; with it, LiteRT's full-integer kernels give wrong classes under qemu 7.2
    # (int8_full and pruned75_int8 answer 5 for a 7 that every other variant gets right).
    ROOT_ENV=(HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 QEMU_CPU=cortex-a57
        PATH="$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
        ADAPTD_ENDPOINT="ipc://$RUN/adaptd.sock" ADAPTD_PUB_ENDPOINT="ipc://$RUN/adaptd-selections.sock")
    in_root() { chroot "$ROOT" /usr/bin/env -i "${ROOT_ENV[@]}" "$@"; }

    say "arm64 root: $(in_root uname -m), $(in_root python3 --version)"
    in_root python3 -c 'import platform, sys; sys.exit(platform.machine() != "aarch64")' \
        || die "the root's python3 does not run as aarch64"

    # The venv: the serving dependencies once (again when pyproject.toml changes), adaptd always.
    wheel=$(cd "$WORK/wheel" && echo adaptd-*.whl)
    deps_sha=$(sha256sum "$REPO_DIR/pyproject.toml" | cut -d' ' -f1)
    if [[ ! -x $ROOT$VENV/bin/python || $(cat "$DEPS_STAMP" 2>/dev/null) != "$deps_sha" ]]; then
        say "venv $VENV: installing the serving dependencies (wheels only)"
        rm -rf "${ROOT:?}$VENV"
        in_root python3 -m venv "$VENV"
        in_root pip install -q --only-binary=:all: "/mnt/smoke/wheel/$wheel" \
            || die "pip could not install adaptd's serving dependencies from aarch64 wheels"
        # pyarrow is optional (Parquet export, the report extra): skip it where no wheel exists.
        if in_root pip install -q --only-binary=:all: 'pyarrow>=15,<30'; then
            echo "pyarrow: installed"
        else
            echo "pyarrow: no aarch64 wheel installable; \`log export\` will write CSV, not Parquet"
        fi
        echo "$deps_sha" >"$DEPS_STAMP"
    else
        say "venv $VENV: cached"
    fi
    in_root pip install -q --only-binary=:all: --no-deps --force-reinstall "/mnt/smoke/wheel/$wheel"
    in_root pip check >/dev/null || die "pip check failed in the root's venv"
    in_root python -c 'import ai_edge_litert, numpy, zmq; print(f"numpy {numpy.__version__}, pyzmq {zmq.__version__}")'
    if in_root python -c 'import tensorflow' 2>/dev/null; then
        die "TensorFlow is importable in the root: the serving install must not pull it in"
    fi

    declare -a results=()
    failed=0
    record() {  # record NAME STATUS [NOTE]
        results+=("$(printf '%-24s %s' "$1" "$2${3:+  ($3)}")")
        if [[ $2 == FAIL ]]; then failed=$((failed + 1)); fi
    }

    say "every LiteRT variant on aarch64 (the daemon's runtime wrapper)"
    if in_root python /mnt/smoke/aarch64_variants.py check /mnt/demo-repo /mnt/smoke/input; then
        record "variants load and run" ok
    else
        record "variants load and run" FAIL
    fi

    mkdir -p "$ROOT$RUN/state"
    # A board's system has a machine id (systemd writes it at first boot), from which the daemon
    # derives the board id it records; a debootstrapped root has none.
    if [[ ! -s $ROOT/etc/machine-id ]]; then
        od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$ROOT/etc/machine-id"
    fi
    cat >"$ROOT$RUN/adaptd.toml" <<EOF
repository = "/mnt/demo-repo"
state_dir = "$RUN/state"
runtime_dir = "$RUN"
log_level = "info"

[placements]
load = "eager"
# Interpreters start slowly under emulation.
worker_start_timeout_s = 300.0

[power]
# The estimated meter needs no 1 kHz sampling; spare the emulated CPUs.
sample_hz = 50.0
EOF

    say "adaptd serve"
    # A simple command, not the function: bash, chroot and env exec, so $! is the daemon's pid.
    chroot "$ROOT" /usr/bin/env -i "${ROOT_ENV[@]}" adaptd serve --config "$RUN/adaptd.toml" \
        >"$ROOT$RUN/daemon.log" 2>&1 &
    daemon_pid=$!
    # shellcheck disable=SC2317  # invoked by the trap
    stop_daemon() {
        if kill -0 "$daemon_pid" 2>/dev/null; then kill -KILL "$daemon_pid" 2>/dev/null || true; fi
    }
    trap stop_daemon EXIT

    # Ready when it answers `health` (status serving); the deadline covers eager loading under qemu.
    deadline=$((SECONDS + 300))
    until in_root adaptd health --timeout-ms 2000 >/dev/null 2>&1; do
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            tail -n 40 "$ROOT$RUN/daemon.log" >&2
            die "the daemon exited before answering health"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 40 "$ROOT$RUN/daemon.log" >&2
            die "the daemon did not answer health within 300 s"
        fi
    done
    say "daemon serving (pid $daemon_pid)"

    verb() {  # verb NAME ARGS...: run `adaptd ARGS...`, print its output, record its exit status
        local name=$1 rc=0
        shift
        echo "--- adaptd $*"
        in_root adaptd "$@" >"$ROOT$RUN/$name.out" 2>&1 || rc=$?
        cat "$ROOT$RUN/$name.out"
        if ((rc == 0)); then record "$name" ok; else record "$name" FAIL "exit $rc"; fi
        return "$rc"
    }

    label=$(cat "$WORK/input/label.txt")
    infer_args=(infer digits /mnt/smoke/input/digit.npy --min-accuracy 0.95 --objective latency)
    verb models models || true
    if in_root adaptd placements --help >/dev/null 2>&1; then
        verb placements placements || true
    else
        echo "--- adaptd placements: no such verb here (\`models\` lists the placements)"
        record placements skipped "no such verb; listed by models"
    fi
    verb explain explain digits --min-accuracy 0.95 --objective energy || true
    if verb infer "${infer_args[@]}"; then
        got=$(sed -n 's/.*output 0 .*top: \([0-9]*\) (.*/\1/p' "$ROOT$RUN/infer.out")
        if [[ $got == "$label" ]]; then
            record "infer class" ok "class $got, label $label"
        else
            record "infer class" FAIL "printed class '${got}', label $label"
        fi
        variant=$(sed -n '1s/^digits v[0-9]*: \([^ ]*\) on .*/\1/p' "$ROOT$RUN/infer.out")
        if [[ $variant == float32_tf ]]; then record "infer variant" FAIL "float32_tf has no placement here"; fi
    fi

    # The PUB stream: a subscriber joins asynchronously, so requests are sent until it has one.
    echo "--- adaptd log tail --count 1 --model digits (while requests are sent)"
    chroot "$ROOT" /usr/bin/env -i "${ROOT_ENV[@]}" adaptd log tail --count 1 --model digits \
        >"$ROOT$RUN/tail.out" 2>&1 &
    tail_pid=$!
    deadline=$((SECONDS + 120))
    sent=0
    while kill -0 "$tail_pid" 2>/dev/null && ((SECONDS < deadline)); do
        in_root adaptd "${infer_args[@]}" >/dev/null || { record "infer (tail)" FAIL; break; }
        sent=$((sent + 1))
    done
    if kill -0 "$tail_pid" 2>/dev/null; then kill "$tail_pid"; fi
    rc=0
    wait "$tail_pid" || rc=$?
    cat "$ROOT$RUN/tail.out"
    if ((rc == 0)) && grep -q 'digits:' "$ROOT$RUN/tail.out"; then
        record "log tail" ok "a selection after $sent request(s)"
    else
        record "log tail" FAIL "exit $rc after $sent request(s)"
    fi

    verb stats stats || true
    verb health health || true
    if grep -q float32_tf "$ROOT$RUN/stats.out"; then
        echo "note: stats lists float32_tf arms"
    fi

    say "SIGTERM"
    kill -TERM "$daemon_pid"
    rc=0
    wait "$daemon_pid" || rc=$?
    trap - EXIT
    if ((rc == 0)); then record "serve (SIGTERM)" ok "exit 0"; else record "serve (SIGTERM)" FAIL "exit $rc"; fi
    if grep -E 'Traceback|CRITICAL|ERROR' "$ROOT$RUN/daemon.log" >/dev/null; then
        record "daemon log" FAIL "errors logged, see below"
        grep -E -B2 -A10 'Traceback|CRITICAL|ERROR' "$ROOT$RUN/daemon.log" | head -n 60
    else
        record "daemon log" ok "no error logged"
    fi
    echo "--- daemon warnings"
    grep '^WARNING' "$ROOT$RUN/daemon.log" || echo "(none)"

    requests=$((sent + 1))
    if in_root python -c 'import pyarrow.parquet' 2>/dev/null; then
        out=$RUN/selections.parquet
    else
        echo "pyarrow is not installed in the root: exporting CSV instead of Parquet"
        out=$RUN/selections.csv
    fi
    if verb log-export log export --store "$RUN/state/selections.sqlite3" --out "$out"; then
        n=$(sed -n 's/^wrote \([0-9]*\) selection.*/\1/p' "$ROOT$RUN/log-export.out")
        if ((${n:-0} >= requests)); then
            record "exported rows" ok "$n selections for $requests infer requests"
        else
            record "exported rows" FAIL "${n:-no} selections for $requests infer requests"
        fi
    fi

    echo
    say "summary (arm64 under qemu-user)"
    printf '  %s\n' "${results[@]}"
    if ((failed > 0)); then
        echo "--- daemon log (last 30 lines)"
        tail -n 30 "$ROOT$RUN/daemon.log"
        die "$failed check(s) failed"
    fi
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# Stage 1: on the host: packages, binfmt_misc, the cached root, the demo repository, the wheel.
# ---------------------------------------------------------------------------------------------
ROOT=${ADAPTD_AARCH64_ROOT:-$REPO_DIR/.cache/aarch64-root}
DEMO_REPO=$REPO_DIR/.cache/aarch64-demo-repo
DEMO_GIVEN=0
FRESH=0
MIRROR=http://deb.debian.org/debian
HOST_VENV=$REPO_DIR/.venv
while (($# > 0)); do
    case $1 in
        --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
        --repository) DEMO_REPO=${2:?--repository needs a directory}; DEMO_GIVEN=1; shift 2 ;;
        --fresh) FRESH=1; shift ;;
        --mirror) MIRROR=${2:?--mirror needs a URL}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

((EUID == 0)) || die "needs root (debootstrap, mounts, chroot): run it with sudo"
[[ -x $HOST_VENV/bin/python ]] \
    || die "no $HOST_VENV: python3 -m venv .venv && .venv/bin/pip install -e '.[build]' first"

missing=()
for pkg in qemu-user-static binfmt-support debootstrap; do
    if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} > 0)); then
    say "apt-get install ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# binfmt_misc lets the kernel run arm64 ELF files through qemu-aarch64-static; its F flag opens
# the interpreter here, so the root needs no copy of it.
BINFMT=/proc/sys/fs/binfmt_misc
if [[ ! -e $BINFMT/status ]]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null \
        || die "cannot mount binfmt_misc on $BINFMT (a container without the privilege?): run it on the host or in a privileged container"
fi
if [[ ! -e $BINFMT/qemu-aarch64 ]]; then
    update-binfmts --enable qemu-aarch64 || die "cannot register qemu-aarch64 with binfmt_misc"
fi
grep -qx enabled "$BINFMT/qemu-aarch64" || die "binfmt_misc: qemu-aarch64 is registered but disabled"
grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" \
    || die "binfmt_misc: qemu-aarch64 is registered without the F flag, so a chroot cannot run it"

if ((FRESH)) && [[ -e $ROOT ]]; then
    say "removing the cached root $ROOT"
    rm -rf --one-file-system "$ROOT"
fi
if [[ ! -f $ROOT/.adaptd-aarch64-root ]]; then
    say "debootstrap arm64 bookworm into $ROOT (several minutes under qemu)"
    rm -rf --one-file-system "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    # In a mount namespace of its own, so that an interrupted run leaves no mount behind.
    unshare --mount --propagation private \
        debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOT.partial" "$MIRROR" >"$ROOT.partial.log" 2>&1 \
        || { tail -n 20 "$ROOT.partial.log" >&2; die "debootstrap failed (log: $ROOT.partial.log)"; }
    touch "$ROOT.partial/.adaptd-aarch64-root"
    rm -rf --one-file-system "$ROOT"
    mv "$ROOT.partial" "$ROOT"
    rm -f "$ROOT.partial.log"
else
    say "arm64 root: cached in $ROOT"
fi

if ! compgen -G "$DEMO_REPO/digits/*/manifest.json" >/dev/null; then
    ((DEMO_GIVEN == 0)) || die "$DEMO_REPO holds no digits model (adaptd demo build --repository DIR)"
    say "building the demo repository on the host into $DEMO_REPO"
    "$HOST_VENV/bin/adaptd" demo build --repository "$DEMO_REPO" --no-progress
fi
DEMO_REPO=$(cd "$DEMO_REPO" && pwd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/adaptd-aarch64.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
say "the input sample and the adaptd wheel (host)"
"$HOST_VENV/bin/python" "$SCRIPT_DIR/aarch64_variants.py" pick "$DEMO_REPO" "$WORK/input" \
    || die "no input sample: the demo repository's variants do not all run on the host"
# The wheel is built from a copy of the working tree (tracked and untracked, not ignored files):
# uncommitted changes are tested, and no stale build/ directory is packed into it.
mkdir "$WORK/src"
git -C "$REPO_DIR" ls-files -z --cached --others --exclude-standard \
    | tar -C "$REPO_DIR" --null --files-from=- --ignore-failed-read -cf - 2>/dev/null \
    | tar -C "$WORK/src" -xf -
"$HOST_VENV/bin/pip" wheel -q --no-deps -w "$WORK/wheel" "$WORK/src" >/dev/null \
    || die "could not build adaptd's wheel from the working tree"
cp "$SCRIPT_DIR/aarch64_variants.py" "$WORK/"
cp -L "${PIP_CERT:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}" "$WORK/ca-certificates.crt"

# Four Cortex-A57 cores as a Jetson TX2's kernel lists them (its A57 cluster); see stage 2.
for cpu in 0 1 2 3; do
    printf '%s\n' "processor	: $cpu" "model name	: ARMv8 Processor rev 3 (v8l)" \
        "BogoMIPS	: 62.50" "Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32" \
        "CPU implementer	: 0x41" "CPU architecture: 8" "CPU variant	: 0x1" \
        "CPU part	: 0xd07" "CPU revision	: 3" ""
done >"$WORK/cpuinfo"

# unshare's parent ignores SIGINT and SIGQUIT and its child inherits that, and a shell cannot
# trap a signal ignored on entry: env restores them, so that Ctrl-C ends stage 2 (and with it
# every process in its namespace).
ADAPTD_SMOKE_STAGE=root ADAPTD_SMOKE_ROOT=$ROOT ADAPTD_SMOKE_WORK=$WORK ADAPTD_SMOKE_REPO=$DEMO_REPO \
    unshare --mount --propagation private --pid --kill-child \
    env --default-signal=INT,QUIT "$BASH" "${BASH_SOURCE[0]}"
say "arm64 smoke test passed"
