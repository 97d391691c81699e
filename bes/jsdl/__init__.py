"""JSDL 1.0: the typed job model and the parser that builds it from XML.

This package knows nothing of SOAP, activities or virtual machines; it is used by the SOAP edge
(to read CreateActivity requests) and by backends (to read the model).
"""

from bes.jsdl.model import JobDefinition
from bes.jsdl.parse import load_job_definition, parse_job_definition

__all__ = ["JobDefinition", "load_job_definition", "parse_job_definition"]
