"""The shape of a stage's job, declared once per stage in the stage catalog."""

from __future__ import annotations

from enum import StrEnum


class Footprint(StrEnum):
    """The shape of a stage's job, declared once in the stage catalog; ``launcher.defaults`` says what a
    node of the cluster is (nodes, GPUs per node, processes per node), so the same stage asks for one GPU
    of it, one whole node of it, or all of it, whatever the cluster."""

    PROCESS = "process"  # one process, no GPU (data handling, item sets, summaries)
    GPU = "gpu"  # one process on one GPU (a shard of generation or scoring)
    NODE = "node"  # one process using every GPU of one node (a model too large for one GPU)
    NODE_EACH = "node_each"  # one such process on every node (a large model, data split over nodes)
    CLUSTER = "cluster"  # launcher.defaults as given: one process per GPU on every node (training)

    def shape(self, nodes: int, gpus_per_node: int) -> dict[str, int]:
        """nodes, gpus_per_node and tasks_per_node of this footprint on a cluster of ``nodes`` nodes with
        ``gpus_per_node`` GPUs each (CLUSTER: {}, the cluster's own shape)."""
        return {
            Footprint.PROCESS: {"nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1},
            Footprint.GPU: {"nodes": 1, "gpus_per_node": min(gpus_per_node, 1), "tasks_per_node": 1},
            Footprint.NODE: {"nodes": 1, "gpus_per_node": gpus_per_node, "tasks_per_node": 1},
            Footprint.NODE_EACH: {"nodes": nodes, "gpus_per_node": gpus_per_node, "tasks_per_node": 1},
            Footprint.CLUSTER: {},
        }[self]
