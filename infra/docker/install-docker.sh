#!/usr/bin/env bash
# `make docker` (a prerequisite of `make image` and `make test`): a usable docker on this machine. Idempotent:
# - nothing when `docker info` answers;
# - Debian's docker.io (with mmdebstrap, which builds the base image without a registry, and rsync, which Ray's
#   cluster launcher syncs files into containers with) installed with apt when missing, as root;
# - dockerd started when no daemon answers, as root: by systemd where it runs, else in the background with its
#   log in /tmp/dockerd.log. dockerd listens on its unix socket only (/var/run/docker.sock), no TCP port.
set -euo pipefail
if docker info >/dev/null 2>&1; then
  exit 0
fi
as_root() {
  if [[ $EUID -ne 0 ]]; then
    echo "error: $1, and only root can fix that here: run \`sudo make docker\` (or ask for docker access)" >&2
    exit 1
  fi
}
missing=()
{ command -v docker && command -v dockerd; } >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v rsync >/dev/null || missing+=(rsync)  # the cluster launcher's file sync into containers
# `make rayup-loopback` (and its test) runs the launcher against an sshd of its own on loopback addresses
{ command -v ssh && { command -v sshd || test -x /usr/sbin/sshd; }; } >/dev/null || missing+=(openssh-server openssh-client)
if ((${#missing[@]})); then
  as_root "missing: ${missing[*]}"
  echo "== apt-get install ${missing[*]}"
  apt-get update -qq
  # openssh-server's package scripts would start the system sshd on port 22 of every interface: a
  # policy-rc.d that answers 101 ("not allowed") keeps every service stopped during the install.
  added_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && added_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ -n $added_policy ]]; then rm -f /usr/sbin/policy-rc.d; fi
fi
if docker info >/dev/null 2>&1; then  # the package's own service may have started it
  exit 0
fi
as_root "no docker daemon answers (docker info)"
if [[ -d /run/systemd/system ]]; then
  echo "== systemctl start docker"
  systemctl start docker
else
  echo "== starting dockerd (log: /tmp/dockerd.log)"
  setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &
  daemon=$!
fi
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then
    echo "== docker is up"
    exit 0
  fi
  if [[ -n ${daemon:-} ]] && ! kill -0 "$daemon" 2>/dev/null; then
    break  # it exited: its log says why
  fi
  sleep 1
done
echo "error: dockerd did not come up (docker info); its log: /tmp/dockerd.log" >&2
tail -n 20 /tmp/dockerd.log >&2 || true
exit 1
