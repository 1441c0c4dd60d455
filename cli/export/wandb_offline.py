"""Write a Weights & Biases offline run from rows given as JSON on stdin.

Run by `moe-devtools export --to wandb DIR` with the user's Python (the one with wandb).
wandb itself writes the run, in offline mode, so `wandb sync DIR/wandb/offline-run-*` can
upload it later with whatever version of the format wandb uses. Nothing goes over the network.

stdin: {"dir", "project", "name", "config", "rows": [{"step": int, "values": {key: number}}],
        "summary": {key: number}}
stdout: the offline run's folder.  Exit 3 when wandb is not installed.
"""

import json
import os
import sys


def _settings(wandb):
    """Quiet settings; no system metrics, which would describe this exporter, not the job."""
    quiet = dict(console="off", disable_git=True, save_code=False)
    try:
        return wandb.Settings(x_disable_stats=True, **quiet)
    except (TypeError, ValueError):  # a wandb from before x_disable_stats
        return wandb.Settings(**quiet)


def main():
    spec = json.load(sys.stdin)
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError as exc:
        print("wandb is not installed for %s (pip install wandb): %s" % (sys.executable, exc), file=sys.stderr)
        return 3
    run = wandb.init(
        mode="offline",
        dir=spec["dir"],
        project=spec["project"],
        name=spec["name"],
        config=spec["config"],
        settings=_settings(wandb),
    )
    for row in spec["rows"]:
        run.log(row["values"], step=row["step"])
    for key, value in spec["summary"].items():
        run.summary[key] = value
    run_dir = os.path.dirname(run.dir)  # run.dir is the run's files/ folder
    run.finish()
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
