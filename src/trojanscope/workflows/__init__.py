"""Orchestration of builds: the build spec, its plan of jobs, where jobs run, the build
driver, and the JSON records of the build and catalog commands (on top of ``database``)."""
