"""One reader per on-disk format; each is a :data:`~dimcl.data.info.Reader` named in a registry entry of
:mod:`dimcl.data.datasets`."""
