#!/usr/bin/env bash
# Makes sure the PostgreSQL server of the scale-out tests (tests/search/engine/test_scale_out.py)
# runs: at $HPO_TEST_POSTGRES, by default postgresql://postgres@127.0.0.1:5432 (trust auth).
# A local Debian cluster on that port that is down is started. If no server answers, one line
# says so; those tests then skip with the same reason, and every other test runs.
set -uo pipefail

url=${HPO_TEST_POSTGRES:-postgresql://postgres@127.0.0.1:5432}
address=${url#*://}
address=${address#*@}
address=${address%%/*}
host=${address%:*}
port=${address##*:}
[[ "$port" == "$address" ]] && port=5432

answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$host" -p "$port" -t 2
    else
        timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
    fi
}

start_local_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    local version cluster cport status rest started=1
    while read -r version cluster cport status rest; do
        if [[ "$cport" == "$port" && "$status" == down* ]]; then
            pg_ctlcluster "$version" "$cluster" start >/dev/null 2>&1 && started=0
        fi
    done < <(pg_lsclusters --no-header 2>/dev/null)
    return $started
}

answers && exit 0
if [[ "$host" == 127.0.0.1 || "$host" == localhost ]] && start_local_cluster; then
    for _ in $(seq 20); do
        answers && { echo "ci: started PostgreSQL on $host:$port"; exit 0; }
        sleep 0.5
    done
fi
echo "ci: no PostgreSQL server answers on $host:$port, so the scale-out tests on PostgreSQL" \
    "will be skipped; start one there (Debian: apt-get install postgresql) or set" \
    "HPO_TEST_POSTGRES to a server's URL."
exit 0
