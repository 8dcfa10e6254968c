"""kvfs: a distributed POSIX filesystem over a transactional key-value store."""

__version__ = "0.1.0"
