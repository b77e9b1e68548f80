"""The `slurm_cluster` fixture: a real 2-node Slurm on this host for the whole session.

Installs slurm-wlm + munge with apt when missing. Where that or starting the daemons fails the
tests skip with the reason, except under CI=true, where they fail (tests.util.require).
"""

from __future__ import annotations

import sys

import pytest

from tests.slurm.cluster import SlurmCluster, install
from tests.util import require


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    require(sys.platform.startswith("linux"), "a Slurm test cluster needs Linux")
    ok, reason, seconds = install()
    require(ok, reason)
    if seconds:
        print(f"\ninstalled slurm-wlm + munge in {seconds:.1f}s", file=sys.stderr)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except Exception as e:  # noqa: BLE001 - any failure to start is a skip (or a CI failure)
        cluster.stop()
        require(False, f"cannot start a Slurm test cluster: {e}")
    yield cluster
    cluster.stop()

