"""Who the hosts are and how to reach them: models, loaders, the SSH layer, checking and
deploying hosts."""
