#!/bin/sh
# Runs inside an image build (the last step of clients/Dockerfile and server/Dockerfile), never on a host.
# $1: the service account's name (hospital or superlink), uid and gid 10001, home /var/lib/fedhealth.
# Written straight into /etc/passwd and /etc/group because a minimal Debian base has no useradd. Then the
# tools a running SuperNode or SuperLink never needs are taken out: the package managers (apt, dpkg),
# su, and any pip the base image brought; every setuid and setgid bit (mount, passwd, chsh, ...: nothing in
# the image may gain privileges); and write access for anyone but root to the code (/opt/fedhealth,
# /opt/venv), whatever the checkout's umask was, so the service account cannot change what runs next.
# What stays: bash and coreutils (the entrypoints are bash scripts), perl and openssl from the base's
# essential packages, Python in /opt/venv, and the C libraries they link.
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
find / -xdev -type f -perm /6000 -exec chmod ug-s {} +
# only what needs it, so the layer holds just those files (/opt/venv is done in image_install.sh's own layer)
find /opt/fedhealth -perm /022 -exec chmod go-w {} +
