#!/usr/bin/env bash
# The first day with Latchkey, against a running system (`make run` in another terminal):
# create a door and a user, grant access, open the door by user and by card, revoke,
# see the door refuse, then read it all back from the audit log and verify its chain.
# Every step is one command you can also paste by hand; ids flow from one to the next.
# Tested by tests/e2e/test_first_day.py; run it with `scripts/first-day.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

C=${LATCHKEY_CERTS_DIR:-.state/dev/certs}
BUF=tools/buf/node_modules/.bin/buf
LATCHKEY=.venv/bin/latchkey
P=https://${LATCHKEY_PERMISSIONS_TARGET:-localhost:7401}/latchkey.permissions.v1.PermissionsService
A=https://${LATCHKEY_ACCESS_TARGET:-localhost:7402}/latchkey.access.v1.AccessService
AS_ADMIN=(--protocol grpc --timeout 10s --cacert "$C/ca.pem" --cert "$C/admin.pem" --key "$C/admin-key.pem")
rid() { cat /proc/sys/kernel/random/uuid; }  # a fresh request id: a retried call reuses its own
say() { printf '\n== %s\n' "$*"; }

say "1. the admin creates a door and a user"
door=$($BUF curl "${AS_ADMIN[@]}" -d "{\"requestId\":\"$(rid)\",\"door\":{\"name\":\"Lab\",\"timeZone\":\"Europe/Madrid\"}}" \
  "$P/CreateDoor" | jq -r .door.doorId)
user=$($BUF curl "${AS_ADMIN[@]}" -d "{\"requestId\":\"$(rid)\",\"user\":{\"displayName\":\"Ada Lovelace\"}}" \
  "$P/CreateUser" | jq -r .user.userId)
echo "door $door, user $user"

say "2. the admin grants the user the door, and gives her a card"
granted=$($BUF curl "${AS_ADMIN[@]}" -d "{\"requestId\":\"$(rid)\",\"grant\":{\"userId\":\"$user\",\"doorId\":\"$door\"}}" \
  "$P/GrantAccess")
grant=$(jq -r .grant.grantId <<<"$granted")
# Every write returns the revision it committed at; an Unlock with minRevision answers
# from a view at least that fresh (or says STALE_VIEW), never from an older one.
revision=$($BUF curl "${AS_ADMIN[@]}" -d "{\"requestId\":\"$(rid)\",\"userId\":\"$user\",\"kind\":\"CREDENTIAL_KIND_CARD\",\"secret\":\"card-${user:0:8}\"}" \
  "$P/IssueCredential" | jq -r .revision)
echo "grant $grant; the card's revision: $revision"

say "3. the door controller gets its certificate (its identity is the door id)"
$LATCHKEY certs issue door "$door" >/dev/null
AS_DOOR=(--protocol grpc --timeout 5s --cacert "$C/ca.pem" --cert "$C/door-$door.pem" --key "$C/door-$door-key.pem")

say "4. the door opens for the user, and for her card"
$BUF curl "${AS_DOOR[@]}" -d "{\"doorId\":\"$door\",\"userId\":\"$user\",\"requestId\":\"$(rid)\",\"minRevision\":\"$revision\"}" \
  "$A/Unlock" | jq -c '{decision, reason}'
$BUF curl "${AS_DOOR[@]}" -d "{\"doorId\":\"$door\",\"credential\":{\"kind\":\"CREDENTIAL_KIND_CARD\",\"secret\":\"card-${user:0:8}\"},\"requestId\":\"$(rid)\",\"minRevision\":\"$revision\"}" \
  "$A/Unlock" | jq -c '{decision, reason}'

say "5. the admin revokes the grant; the door refuses from that revision on"
revision=$($BUF curl "${AS_ADMIN[@]}" -d "{\"grantId\":\"$grant\"}" "$P/RevokeAccess" | jq -r .revision)
$BUF curl "${AS_DOOR[@]}" -d "{\"doorId\":\"$door\",\"userId\":\"$user\",\"requestId\":\"$(rid)\",\"minRevision\":\"$revision\"}" \
  "$A/Unlock" | jq -c '{decision, reason}'

say "6. the auditor reads the door's history (decisions reach the log within moments)"
for _ in $(seq 50); do
  events=$($LATCHKEY audit export --door "$door" 2>/dev/null | jq -c '{type, outcome, reason}')
  [ "$(grep -c unlock_decided <<<"$events")" -ge 3 ] && break
  sleep 0.2  # the log is written asynchronously: poll, bounded
done
echo "$events"

say "7. the auditor verifies the hash chain"
$LATCHKEY audit verify
