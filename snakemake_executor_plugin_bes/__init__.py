"""``snakemake --executor bes``: every job of the workflow runs in a VM of a BES service.

Snakemake finds executor plugins by this module name; the plugin itself is
:mod:`bes.workflow.snakemake` (installed with ``pip install 'bes[snakemake]'``).
"""

from bes.workflow.snakemake import Executor, ExecutorSettings, common_settings

__all__ = ["Executor", "ExecutorSettings", "common_settings"]
