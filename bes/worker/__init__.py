"""``bes worker``: the program a volunteer or worker node runs to pull jobs and run them in VMs.

It needs neither the service's database nor SOAP: it talks the worker protocol (JSON over
HTTP, :mod:`bes.workerapi`) and runs each job with the VM layer (:mod:`bes.vm`).
"""
