#!/usr/bin/env bash
# Installs the optional offline data sets where apt is available (Debian's
# dataset-fashion-mnist: the full Fashion-MNIST as IDX files). Never fails the set-up: without
# it, the fashion-mnist loader says what is missing and the tests that need it skip.
set -u
dir=/usr/share/datasets/fashion-mnist
if [ -d "$dir" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: apt-get not found; fashion-mnist stays unavailable (install Debian's dataset-fashion-mnist or pass data_dir)."
  exit 0
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo -n"
if $sudo true 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  ($sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
    ($sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) ||
    echo "note: could not install dataset-fashion-mnist; fashion-mnist stays unavailable."
else
  echo "note: no root rights for apt; fashion-mnist stays unavailable."
fi
exit 0
