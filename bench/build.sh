#!/bin/sh
# Compile the load generator and the origin server into bench/bin/ (or $BENCH_BIN).
# run.py calls this whenever a binary is missing or older than its source.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${BENCH_BIN:-$here/bin}
cc=${CC:-gcc}
cflags=${CFLAGS:--O2 -Wall -Wextra -Werror}
mkdir -p "$bin"
for prog in origin loadgen; do
    # -o to a temporary name, then rename: a concurrent run never sees half a binary.
    $cc $cflags -o "$bin/$prog.tmp.$$" "$here/$prog.c" -lm
    mv -f "$bin/$prog.tmp.$$" "$bin/$prog"
done
echo "built $bin/origin $bin/loadgen"
