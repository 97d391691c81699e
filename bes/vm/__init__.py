"""Virtual machines for jobs: specs, image cache, contextualization and hypervisor drivers.

This package also runs on volunteer nodes, so it depends on neither JSDL nor SOAP.
"""
