"""The data: datasets (MNIST-format sets, mnist-tiny, NPZ files), the decoded-data cache, and
the design, the training inputs as the certified products every pass over them needs."""
