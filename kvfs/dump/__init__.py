"""Dump and load: a whole volume to one portable, checksummed file and back into an empty
engine of any kind (``kvfs dump``, ``kvfs load``; the file format in :mod:`.format`)."""
