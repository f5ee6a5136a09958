# Shared by bin/dev and bin/test: make the machine ready, installing only what is missing.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    say "Installing $* from Debian packages"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
    # Reinstall only when a requirements file changed since the last install.
    local stamp="$VENV/.requirements.sha" want
    want=$(cat "$ROOT"/requirements/*.txt | sha256sum | cut -d' ' -f1)
    if [ ! -x "$VENV/bin/python" ]; then
        say "Creating the virtualenv in .venv"
        "$PYTHON" -m venv "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "Installing Python packages (requirements/dev.txt)"
        "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/requirements/dev.txt"
        echo "$want" >"$stamp"
    fi
    export PATH="$VENV/bin:$PATH"
}

redis_up() { "$VENV/bin/python" -c "import redis, sys; redis.Redis.from_url('${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}', socket_timeout=2).ping()" 2>/dev/null; }

ensure_redis_server() { command -v redis-server >/dev/null || apt_install redis-server; }

ensure_redis() {
    redis_up && return
    ensure_redis_server
    say "Starting Redis on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/batchadmin-redis.log
    for _ in $(seq 50); do redis_up && return; sleep 0.1; done
    echo "Redis did not start; see /tmp/batchadmin-redis.log" >&2
    return 1
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ensure_postgres() {
    command -v pg_isready >/dev/null || apt_install postgresql
    pg_up && return
    say "Starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    if [ -z "$version" ]; then
        apt_install postgresql
        version=$(ls /etc/postgresql | sort -V | tail -n1)
    fi
    # The tests connect as postgres over TCP without a password (trust), as on the CI machines.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -q "^host all all 127.0.0.1/32 trust" "$hba" 2>/dev/null; then
        as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 100); do pg_up && return; sleep 0.2; done
    echo "PostgreSQL did not start" >&2
    return 1
}

ensure_chromium() {
    # Browser tests drive Debian's Chromium with Playwright (playwright install cannot
    # download browsers on these machines).
    [ -x /usr/bin/chromium ] || apt_install chromium
}
