#!/bin/sh
# A release of deploy/compose.yaml without dropping requests: build the new image,
# migrate (once, while the old workers serve), then restart one worker at a time.
# Each worker is taken out of nginx first, so it gets no new requests while it
# drains its streams and sockets (ECHO_DRAIN_SECONDS), and put back once its
# new container answers /health/ready.
set -eu
cd "$(dirname "$0")"
compose="docker compose -f compose.yaml"
conf=/run/echo/nginx.conf

nginx_mark() {  # nginx_mark WORKER down|up
    if [ "$2" = down ]; then
        expr="s/^\( *server $1:8000\)\( down\)\{0,1\} /\1 down /"
    else
        expr="s/^\( *server $1:8000\) down /\1 /"
    fi
    $compose exec -T nginx sh -c "sed -i '$expr' $conf && nginx -c $conf -s reload"
}

$compose build
$compose run --rm migrate
for worker in $($compose config --services | grep '^echo-'); do
    echo "== $worker"
    nginx_mark "$worker" down
    # The old container gets SIGTERM, drains, exits; --wait returns once the new one is healthy.
    $compose up -d --no-deps --force-recreate --wait "$worker"
    # The reload also resolves the new container's address.
    nginx_mark "$worker" up
done
echo "released"
