#!/bin/sh
# Runs inside an image build (the last step of clients/Dockerfile and server/Dockerfile), never on a host.
# $1: the service account's name (hospital or superlink), uid and gid 10001, home /var/lib/fedhealth.
# Written straight into /etc/passwd and /etc/group because a minimal Debian base has no useradd. Then the
# tools a running SuperNode or SuperLink never needs are taken out: the package managers (apt, dpkg),
# su, and any pip the base image brought. What stays: bash and coreutils (the entrypoints are bash
# scripts), Python in /opt/venv, and the C libraries they link.
set -eu
name=${1:?name the service account}
echo "$name:x:10001:10001:fedhealth $name:/var/lib/fedhealth:/usr/sbin/nologin" >> /etc/passwd
echo "$name:x:10001:" >> /etc/group
mkdir -p /var/lib/fedhealth
chown 10001:10001 /var/lib/fedhealth
chmod 0755 /opt/fedhealth/clients/*.sh /opt/fedhealth/server/*.sh
rm -rf /usr/local/bin/pip* /usr/local/lib/python3*/site-packages/pip /usr/lib/python3/dist-packages/pip \
  /usr/share/python-wheels
rm -f /usr/bin/apt /usr/bin/apt-* /usr/bin/dpkg /usr/bin/dpkg-* /bin/su /usr/bin/su
rm -rf /var/lib/apt /var/cache/apt /var/cache/debconf/*-old /var/log/* /usr/share/doc /usr/share/man \
  /usr/share/info /usr/share/locale /tmp/*
