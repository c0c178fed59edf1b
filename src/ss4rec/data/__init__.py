"""Data: the exact-time RecBole dataset, the MovieLens adapter, temporal splits, downloads."""
