"""A clock for tests of timing decisions (``--compile auto``, ``--execution auto``)."""


class FakeClock:
    """Seconds that advance by ``tick`` at every reading: each timed pass takes ``tick``."""

    def __init__(self, tick):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now
