"""A usage recorder that fails while a flag file exists: for proving that a failing recorder
neither fails nor holds up a response, and loses no event."""

import os

from billing.usage import NDJSONRecorder, UsageEvent


class FlakyRecorder(NDJSONRecorder):
    def __init__(self):
        super().__init__(os.environ["FLAKY_RECORDER_PATH"])
        self.block_path = os.environ["FLAKY_RECORDER_BLOCK"]

    def record(self, event: UsageEvent) -> None:
        if os.path.exists(self.block_path):
            raise ConnectionError("the recorder's store is down")
        super().record(event)
