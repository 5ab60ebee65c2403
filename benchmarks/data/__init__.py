"""Datasets of the benchmarks, built from a user's files or from data an installed package ships
(nothing downloads at run time)."""
