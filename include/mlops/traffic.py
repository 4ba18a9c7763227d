"""``python -m include.mlops.traffic``: see :mod:`include.mlops.monitoring.traffic`."""

from include.mlops.monitoring.traffic import main

if __name__ == "__main__":
    raise SystemExit(main())
