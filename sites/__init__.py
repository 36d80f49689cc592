"""Everything a hospital runs: site config, data loading, local training, the update format.

Nothing here imports `medfed.pipelines`: a hospital's install must make sense
without the central code.
"""
