"""Tests of orchestrator.dask, on Dask clusters made for them."""
