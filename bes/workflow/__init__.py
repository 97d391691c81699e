"""Workflow engines on top of the client library: each task of a workflow runs as one BES
activity in a VM, its local files moved through the service's file store.

* :mod:`bes.workflow.snakemake`: the executor plugin behind ``snakemake --executor bes``
  (the top-level package ``snakemake_executor_plugin_bes`` is how Snakemake finds it);
* :mod:`bes.workflow.parsl`: :class:`~bes.workflow.parsl.BESExecutor`, a Parsl executor;
* :mod:`bes.workflow.task`: what both share, a shell command with its files, as JSDL;
* :mod:`bes.workflow.poller`: one thread that watches many activities with vector calls.

Nothing here needs more than :mod:`bes.client`: the engines work with any BES for tasks
without local files, and with ours for the rest.
"""
