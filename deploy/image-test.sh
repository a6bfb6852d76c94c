#!/bin/sh
# `make image-test`: a smoke test of the built image on a Docker engine (not part of `make test`/CI:
# CI machines have no engine). It runs the real `kith run` with placeholder Telegram credentials and
# no network at all (--network none): Telegram cannot be reached, so the bot keeps retrying (as it
# would during an outage) while its control server, its stores and its admin API serve — which is
# what the checks need:
#   1. start a container (a fresh volume on /data); time until /healthz answers 200 (cold start) and
#      until the stores are open and the embedding model loaded (/readyz parts);
#   2. import a transcript through the running bot (`kith import`, the admin API), search it
#      (`kith memory search`), count the messages (`kith memory stats --json`);
#   3. stop it with SIGTERM (`docker stop`: the bot drains and exits 0 on its own), start it again
#      and check the count is unchanged;
#   4. print the image's size and the times.
# Env: KITH_IMAGE (kith:latest), TRANSCRIPT (../shared/data/ubuntu-irc/2004-11-15_03.jsonl, else the
# test fixture). It uses plain `docker` (no Compose needed); compose.yaml runs the same image.
set -eu
cd "$(dirname "$0")/.."
IMAGE=${KITH_IMAGE:-kith:latest}
NAME=kith-image-test-$$
VOLUME=$NAME-data
TRANSCRIPT=${TRANSCRIPT:-../shared/data/ubuntu-irc/2004-11-15_03.jsonl}
if [ ! -f "$TRANSCRIPT" ]; then  # a small one of our own
	TRANSCRIPT=$(mktemp --suffix=.jsonl)
	for i in $(seq 0 39); do
		printf '{"chat_id": -1001, "chat_title": "#test", "message_id": %d, "date": "2024-01-01T12:%02d:00Z", "user": "u%d", "text": "how do I resize the partition number %d with gparted?"}\n' \
			"$i" "$i" "$((i % 5))" "$i" >> "$TRANSCRIPT"
	done
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 || { echo "no image $IMAGE: run make image" >&2; exit 1; }

cleanup() { docker rm -f "$NAME" >/dev/null 2>&1 || true; docker volume rm "$VOLUME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- container log (last 40 lines)" >&2; docker logs --tail 40 "$NAME" >&2 || true; exit 1; }
now() { date +%s.%N; }
since() { echo "$(now) $1" | awk '{printf "%.1f", $1 - $2}'; }
kith() { docker exec "$NAME" kith "$@"; }
# wait_for WHAT TIMEOUT_S COMMAND...: poll the command every 0.2 s
wait_for() {
	what=$1 limit=$2; shift 2
	deadline=$(echo "$(now) $limit" | awk '{printf "%.3f", $1 + $2}')
	until "$@" >/dev/null 2>&1; do
		[ "$(echo "$(now) $deadline" | awk '{print ($1 > $2)}')" = 1 ] && fail "$what: not within $limit s"
		sleep 0.2
	done
}
healthz() { docker exec "$NAME" curl -fsS http://127.0.0.1:8787/healthz; }
memory_ready() {  # the stores open and the model loaded (Telegram cannot be: no network)
	docker exec "$NAME" curl -sS http://127.0.0.1:8787/readyz \
		| python3 -c 'import json,sys; p=json.load(sys.stdin); sys.exit(not (p["parts"]["stores"]["ready"] and p["parts"]["embedder"]["ready"]))'
}
count() { kith memory stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dialogue"]["messages"])'; }
started() {  # $1: label; sets $healthy_s and $ready_s
	t0=$2
	wait_for "/healthz ($1)" 120 healthz
	healthy_s=$(since "$t0")
	wait_for "stores and model ready ($1)" 180 memory_ready
	ready_s=$(since "$t0")
	echo "$1: /healthz 200 after ${healthy_s} s; stores open and model loaded after ${ready_s} s"
}

echo "== image $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}') (uncompressed)"
docker volume create "$VOLUME" >/dev/null
t0=$(now)
docker run -d --name "$NAME" --network none -v "$VOLUME:/data" \
	-e TELEGRAM_API_ID=1 -e TELEGRAM_API_HASH=00000000000000000000000000000000 -e TELEGRAM_BOT_TOKEN=1:placeholder \
	"$IMAGE" >/dev/null
started "cold start" "$t0"
cold_healthy=$healthy_s cold_ready=$ready_s
wait_for "docker's HEALTHCHECK" 60 sh -c "[ \"\$(docker inspect -f '{{.State.Health.Status}}' $NAME)\" = healthy ]"
echo "docker health: $(docker inspect -f '{{.State.Health.Status}}' "$NAME") after $(since "$t0") s (checks every 10 s)"
docker exec "$NAME" id | grep -q 'uid=10001(kith)' || fail "the bot does not run as the user kith"
if docker logs "$NAME" 2>&1 | grep -q "converting all-MiniLM"; then
	echo "embedding model: converted at start (this CPU differs from the build machine's)"
else
	echo "embedding model: the image's conversion was used (no conversion at start)"
fi
docker exec "$NAME" curl -sS http://127.0.0.1:8787/readyz | python3 -c 'import json,sys; print("readyz:", json.load(sys.stdin))'

echo "== import $TRANSCRIPT ($(wc -l < "$TRANSCRIPT") lines) through the running bot"
docker cp "$TRANSCRIPT" "$NAME:/tmp/transcript.jsonl"
t1=$(now)
kith import /tmp/transcript.jsonl || fail "kith import"
echo "imported in $(since "$t1") s"
chat=$(head -1 "$TRANSCRIPT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["chat_id"])')
before=$(count)
[ "$before" -gt 0 ] || fail "no messages stored after the import"
echo "messages stored: $before"
echo "== kith memory search $chat 'partition' -k 3"
kith memory search -k 3 -- "$chat" "partition" || fail "kith memory search"

echo "== SIGTERM (docker stop), then start again"
t2=$(now)
docker stop -t 90 "$NAME" >/dev/null
echo "stopped in $(since "$t2") s, exit code $(docker inspect -f '{{.State.ExitCode}}' "$NAME")"
[ "$(docker inspect -f '{{.State.ExitCode}}' "$NAME")" = 0 ] || fail "kith run did not exit 0 on SIGTERM"
docker logs "$NAME" 2>&1 | grep -E "received SIGTERM|stopped" | tail -3
t3=$(now)
docker start "$NAME" >/dev/null
started "warm start" "$t3"
after=$(count)
echo "messages after the restart: $after (before: $before)"
[ "$after" = "$before" ] || fail "messages lost across the restart: $before -> $after"
kith memory search -k 1 -- "$chat" "partition" >/dev/null || fail "search after the restart"

echo "== summary"
echo "image size: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
echo "cold start: /healthz after ${cold_healthy} s, memory ready after ${cold_ready} s"
echo "image-test: OK"
