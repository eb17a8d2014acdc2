"""Many processes: ZeRO-3 shards and gathers (:mod:`~lightning_unlearn.distributed.zero`), per-sample scores gathered
from every process (:mod:`~lightning_unlearn.distributed.gather`), and checkpoints that every process writes whole or
not at all, each its own shards (:mod:`~lightning_unlearn.distributed.checkpoints`)."""
