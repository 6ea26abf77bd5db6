#!/usr/bin/env bash
# The GPU suite on a GPU machine, from the folder `cargo xtask bench gpu --pack` writes
# (target/gpu-bench: rlip.xz, rlip-golden.xz, lib/libvulkan.so.1, environment/default.db,
# golden/rlipv2_parseda_r50, this script).
#
#   target/gpu-bench/run.sh OUT [SECONDS]
#
# Run from the workspace root (cubecl keeps its tuning cache in target/environment of the
# enclosing Cargo workspace). SECONDS (default 480) is the wall-clock budget of the whole run:
# cuda gets two thirds of it, wgpu the rest. Writes OUT/suite-cuda.txt, OUT/suite-wgpu.txt,
# OUT/gpu.jsonl (one line per measurement) and OUT/environment.tgz (the tuning cache after the
# run, to carry to the next session and, once complete, to commit as bench/tuning/*.db.xz).
# First, in a process of its own (a faulting kernel poisons the CUDA context), the CubeCL
# deformable-attention kernels on cuda are checked against flex at the encoder shape
# (OUT/msda-check-cuda.txt; its one timed run is with CUDA_LAUNCH_BLOCKING, not a
# measurement); when they agree, the cuda suite runs with them (RLIP_MSDA=fused). Then the r50
# golden fixture on cuda with full-float32 matmuls and convolutions (--f32-precision highest;
# OUT/golden-cuda-highest.txt): the official outputs at float32 tolerance, or the errors. Before
# each backend's suite, the small preset against flex at full float32, a forward and two training
# steps (OUT/parity-BACKEND.txt); when it fails, again with Burn's ops in place of the fused
# kernels (OUT/parity-BACKEND-unfused.txt), and when that passes the backend's suite runs
# without them (RLIP_FUSED=off), so one faulty kernel costs the measurements nothing.
# After the cuda suite, one profiled r50 forward: per-kernel device times by kind
# (OUT/profile-cuda.txt; the raw log as OUT/profile-cuda.log.xz).
set -u
out=${1:?usage: run.sh OUT [SECONDS]}
budget=${2:-480}
here=$(cd "$(dirname "$0")" && pwd)
start=$(date +%s)
mkdir -p "$out" target/environment
for b in rlip rlip-golden; do
    [ -x "$here/$b" ] || { xz -dk "$here/$b.xz" && chmod +x "$here/$b"; }
done
# a shipped tuning cache is a starting point only: never overwrite one this machine has grown
if [ -f "$here/environment/default.db" ] && [ ! -f target/environment/default.db ]; then
    cp "$here/environment/default.db" target/environment/
fi
# wgpu needs the Vulkan loader; GPU containers often have the NVIDIA ICD but not the loader
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi -L | tee "$out/card.txt"
left() { echo $((budget - ($(date +%s) - start))); }
suite() { # backend seconds
    echo "== $1 (limit $2 s)"
    timeout "$2" "$here/rlip" --backend "$1" bench gpu --json "$out/gpu.jsonl" 2>&1 |
        grep -v ' INFO' | tee "$out/suite-$1.txt"
    echo "== $1 exit ${PIPESTATUS[0]} after $(($(date +%s) - start)) s"
}
echo "== fused deformable attention on cuda vs flex"
RLIP_MSDA=fused CUDA_LAUNCH_BLOCKING=1 timeout 120 "$here/rlip" --backend cuda bench msda \
    --check --warmup 0 --iters 1 2>&1 |
    grep -v ' INFO' | tee "$out/msda-check-cuda.txt"
if [ "${PIPESTATUS[0]}" = 0 ]; then
    echo "== fused kernels agree: the cuda suite uses them"
    export RLIP_MSDA=fused
elif [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
    echo "== fused kernels failed: the first memory errors (OUT/msda-sanitizer.txt)"
    RLIP_MSDA=fused timeout 120 /usr/local/cuda/bin/compute-sanitizer --print-limit 8 \
        "$here/rlip" --backend cuda bench msda --check --warmup 0 --iters 1 2>&1 |
        grep -v ' INFO' | head -200 > "$out/msda-sanitizer.txt"
fi
echo "== golden r50 on cuda, full float32"
timeout 150 "$here/rlip-golden" --backend cuda --f32-precision highest model \
    "$here/golden/rlipv2_parseda_r50" 2>&1 | grep -v ' INFO' | tee "$out/golden-cuda-highest.txt"
parity() { # backend file [env...]: the small preset on the backend against flex, full float32
    env "${@:3}" RLIP_PARITY_CUDA=1 RLIP_PARITY_BACKENDS="$1" timeout 100 "$here/rlip-golden" \
        --f32-precision highest parity 2>&1 | grep -v ' INFO' > "$out/$2"
    local rc=${PIPESTATUS[0]}
    grep -E 'FAIL|panicked|error' "$out/$2" | head -5
    echo "== parity on $1: exit $rc (OUT/$2)"
    return "$rc"
}
gate() { # backend: exports RLIP_FUSED=off when only Burn's ops pass the parity
    echo "== small preset on $1 vs flex: forward, and two training steps (fused backward, AdamW)"
    parity "$1" "parity-$1.txt"
    local rc=$?
    # 0: pass; 124: out of time, nothing learnt
    if [ "$rc" != 0 ] && [ "$rc" != 124 ]; then
        if parity "$1" "parity-$1-unfused.txt" RLIP_FUSED=off; then
            echo "== the fused kernels fail on $1 and Burn's ops pass: its suite runs with RLIP_FUSED=off"
            export RLIP_FUSED=off
        fi
    fi
}
gate cuda
# per kernel kind of one forward (from the first max pool to the second): launches, summed
# device time, and the total, to set against the measured wall time
profile_summary() { # log
    grep '^|' "$1" | awk -F'|' '
        $2 ~ /^ *[0-9.]+(ms|µs|ns|s) *$/ {
            d = $2; gsub(/ /, "", d); v = d + 0
            if (d ~ /ms$/) v *= 1000; else if (d ~ /µs$/) v *= 1; else if (d ~ /ns$/) v /= 1000; else v *= 1e6
            k = $3; n = (NF >= 4) ? $4 : ""; gsub(/ /, "", k); gsub(/ /, "", n)
            sub(/_[0-9a-f]+$/, "", k); sub(/_[0-9a-f]+$/, "", n)
            if (k ~ /MaxPool/ || n ~ /MaxPool/) pools++
            if (pools == 1) { name = k " " n; c[name]++; t[name] += v; total += v; launches++ }
        }
        END {
            for (x in c) printf "%10.1f us %6d  %s\n", t[x], c[x], x
            printf "%10.1f us %6d  TOTAL (device time of one forward, launches)\n", total, launches
        }' | sort -rn | head -40
}
suite cuda $((budget * 2 / 3 - 75 - ($(date +%s) - start)))
echo "== one r50 forward on cuda, per-kernel device time (cubecl profile; OUT/profile-cuda.txt)"
CUBECL_DEBUG_LOG="$out/profile-cuda.log" CUBECL_DEBUG_OPTION=profile timeout 75 "$here/rlip" \
    --backend cuda bench infer --config r50 --batch 1 --warmup 1 --iters 1 2>&1 |
    grep -v ' INFO' | tail -3
[ -f "$out/profile-cuda.log" ] && profile_summary "$out/profile-cuda.log" |
    tee "$out/profile-cuda.txt" && xz -T0 "$out/profile-cuda.log"
unset RLIP_MSDA RLIP_FUSED
gate wgpu
suite wgpu "$(left)"
tar czf "$out/environment.tgz" target/environment
