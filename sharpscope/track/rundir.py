"""The run directory, now :mod:`sharpscope.io.rundir`; its names are re-exported here for older imports."""

from sharpscope.io.rundir import RunDirectory, config_differences, record_key

__all__ = ["RunDirectory", "config_differences", "record_key"]
