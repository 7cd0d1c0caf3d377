"""One rank of a run that ``distributed.nproc_per_node`` started (:func:`harness.distributed.run_processes`).

``python -m torch.distributed.run --nproc_per_node=N -m harness.worker <run.yaml>``:
each rank loads the config the starting process composed (so a study's trial runs exactly what the sweeper
gave it) and runs it as ``harness-run`` would, without Hydra: rank 0 writes the record and logs the summary.
Exit status as harness-run's: 2 for a bad config, 1 for a failed run.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import OmegaConf


def main(arguments: list[str] | None = None) -> None:
    from harness.cli import run_one
    from harness.config import ConfigError

    (config_file,) = arguments if arguments is not None else sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        run_one(OmegaConf.load(config_file))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
