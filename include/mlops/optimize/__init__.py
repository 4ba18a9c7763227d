"""The optimize branch: tuning trials (``tuning``) and compression (``compress``)."""
