"""The probe's sampling settings, shared by every framework's recorder (standard library only)."""


class Settings:
    """Probe settings; the defaults are what the overhead benchmark measures."""

    def __init__(self, flush_interval_s=0.03, token_sample=128, token_passes_per_s=50.0,
                 token_bytes_per_s=2_000_000, health_passes_per_s=50.0):
        self.flush_interval_s = flush_interval_s
        self.token_sample = token_sample  # tokens per sampled pass (the first ones of the batch)
        self.token_passes_per_s = token_passes_per_s  # most sampled passes per second
        self.token_bytes_per_s = token_bytes_per_s  # byte budget for token records
        # Router health costs ~15 small kernels per layer: on fast GPU decode loops it is
        # computed on at most this many passes per second (entropy and z-loss are means
        # over the passes measured; NaN/Inf counts cover those passes).
        self.health_passes_per_s = health_passes_per_s

    def describe(self):
        return dict(vars(self))
