"""ImageNet-1K's class count through the whole control plane on this machine: 1000 classes of tiny
images, 8 Ray workers on a two-node local cluster, a killed driver resumed, a lost node, and an
evaluation (tests/control_plane.py, at a size CI runs in minutes)."""
from control_plane import measure  # tests/control_plane.py


def test_a_1000_class_run_on_8_workers_resumes_and_survives_a_lost_node_with_the_same_set(tmp_path):
    # measure() raises unless the resumed run and the run that lost a node both end with the
    # synthetic set of the uninterrupted run, and every actor on the lost node was restored.
    rows = measure(classes=1000, per_class=3, size=8, worker_counts=[8], iterations=20, work=tmp_path)
    sync, resume, node = (next(r for r in rows if r["part"] == part) for part in ("sync", "resume", "node_lost"))
    assert sync["workers"] == 8 and sync["sync_overhead_ms"] >= 0 and sync["checkpoint_bytes"] > 0
    # Each worker read its own slices: together about one checkpoint, not eight.
    assert 0 < resume["resume_read_bytes"] <= 1.05 * resume["checkpoint_bytes"]
    assert node["actors_on_lost_node"] >= 1 and node["worker_restarts"] >= node["actors_on_lost_node"]
