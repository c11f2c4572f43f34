#!/usr/bin/env bash
# Install what the tests need and run the whole suite: once on SQLite, once on PostgreSQL.
# Used by `make test` (README) and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

make --quiet install-test
# Bytecode for what changed since the install: where Python may not write it at import
# (PYTHONDONTWRITEBYTECODE), each of the hundreds of processes the tests start would compile
# mailgate anew.
.venv/bin/python -m compileall -q mailgate

# PostgreSQL: the machines run one on 127.0.0.1:5432 (user postgres, no password).
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
fi

# Debian packages for the system tests: Dovecot for the IMAP tests and Postfix for the README's
# Postfix steps (tests start their own private instances), and the system's Python for
# Postfix's pipe transport, which runs `mailgate deliver` as an unprivileged user.
wanted=()
command -v dovecot >/dev/null || wanted+=(dovecot-imapd)
command -v postfix >/dev/null || [ -x /usr/sbin/postfix ] || wanted+=(postfix)
[ -x /usr/bin/python3 ] || wanted+=(python3)
if [ ${#wanted[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        # A policy-rc.d that says no keeps the packages' system services from starting;
        # one that was there before stays as it was.
        policy=/usr/sbin/policy-rc.d
        [ -e "$policy" ] && cp -p "$policy" "$policy.mailgate-saved"
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >/dev/null
        if [ -e "$policy.mailgate-saved" ]; then mv "$policy.mailgate-saved" "$policy"; else rm -f "$policy"; fi
    else
        echo "note: ${wanted[*]} not installed; the tests that need them will be skipped" >&2
    fi
fi

# Two test processes per core (pytest-xdist): on SQLite about a third of the suite's time is
# spent waiting on daemons, Dovecot and servers, and a second process per core fills it (246 s
# → 217–237 s on 2 cores); the PostgreSQL pass is bound by CPU (its server's included) either
# way. A file's tests stay on one worker (--dist loadfile), so a module fixture that runs a
# whole corpus runs once; files go to whichever worker is free.
PARALLEL=(-n "${MAILGATE_TEST_WORKERS:-$(( $(nproc) * 2 ))}" --dist loadfile)

echo "== tests on SQLite"
MAILGATE_TEST_DB=sqlite .venv/bin/pytest "${PARALLEL[@]}" "$@"

if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "== tests on PostgreSQL (the tests that touch a database)"
    MAILGATE_TEST_DB=postgresql .venv/bin/pytest "${PARALLEL[@]}" "$@"
elif [ -n "${CI:-}" ]; then
    echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2
    exit 1
fi
