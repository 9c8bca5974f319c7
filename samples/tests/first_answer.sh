#!/bin/bash
# first_answer: the fastest replica wins when it beats the timeout, "timeout"
# otherwise, and the losers are cancelled at once (the program does not wait
# for their latency).
set -euo pipefail
exe=$1
# Defaults run and exit 0.
"$exe"
# Timeout 0: nothing can answer in time.
out=$("$exe" 5 0)
echo "$out"
grep -q '^timeout' <<< "$out"
# No replica: timeout too.
"$exe" 0 50 | grep -q '^timeout'
# A generous timeout: the replica with the smallest latency answers.
for seed in 1 2 3 4 5; do
    out=$("$exe" 6 2000 "$seed")
    echo "$out"
    lat=$(sed -n 's/.*latencies ms:\([0-9 ]*\)).*/\1/p' <<< "$out")
    best=$(tr ' ' '\n' <<< "$lat" | grep -v '^$' | sort -n | awk 'NR == 1')
    grep -Eq "^replica [0-9]+ answered in [0-9]+ ms \(latency $best ms\)" <<< "$out"
    # 5 of 6 cancelled (unless two latencies tie), and ended well before the slowest latency.
    grep -Eq ' [45] cancelled' <<< "$out"
    ended=$(sed -n 's/.*all ended after \([0-9]*\) ms.*/\1/p' <<< "$out")
    worst=$(tr ' ' '\n' <<< "$lat" | grep -v '^$' | sort -n | tail -n 1)
    [ "$worst" -le "$best" ] || [ "$ended" -lt "$worst" ] || { echo "losers were not cancelled early"; exit 1; }
done
echo "first_answer: ok"
