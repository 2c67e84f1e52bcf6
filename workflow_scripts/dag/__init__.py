"""The DAG's vocabulary for the Snakefile: ``Run`` resolves the config and names every path and target."""

from workflow_scripts.dag.run import Run

__all__ = ["Run"]
