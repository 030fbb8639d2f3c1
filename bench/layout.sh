#!/usr/bin/env bash
# The shared layout (model/src/layout.rs) against Graphviz dot on the same graphs: the demo's real
# topologies (examples/*/mesh.yaml: bookinfo, Online Boutique, the social network, TrainTicket) and
# synthetic meshes from model/src/synth.rs at 19, 187, 331 and 3,101 nodes. Both are scored the same way: edge
# crossings of straight segments between node positions, from each layout's own positions (dot's from
# `dot -Tplain`), and wall time to lay out (dot's includes its process start). dot is not run on
# the 3,101-node mesh (minutes). Installs Debian's graphviz if dot is missing.
#
# Usage: bench/layout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/meshlens-target}
if ! command -v dot >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get install -y -qq --no-install-recommends graphviz >/dev/null
fi
cargo run -q --release -p meshlens-model --features synth --example layout_vs_dot
