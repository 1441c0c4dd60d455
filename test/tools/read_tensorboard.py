"""Print what TensorBoard reads from a log folder, as JSON, using TensorBoard's own event reader.

usage: python read_tensorboard.py LOGDIR

{"scalars": {tag: [[step, wall_time, value], ...]},
 "histograms": {tag: [[step, {"min", "max", "num", "sum", "sum_squares", "bucket_limit", "bucket"}], ...]}}

EventAccumulator is the reader behind TensorBoard's classic (--load_fast=false) data path; it
checks every record's CRC and parses the Event protobufs with TensorBoard's own classes.
"""

import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea


def main(logdir):
    acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "histograms": {}}
    for tag in tags["scalars"]:
        out["scalars"][tag] = [[s.step, s.wall_time, s.value] for s in acc.Scalars(tag)]
    for tag in tags["histograms"]:
        out["histograms"][tag] = [
            [h.step, {"min": h.histogram_value.min, "max": h.histogram_value.max, "num": h.histogram_value.num,
                      "sum": h.histogram_value.sum, "sum_squares": h.histogram_value.sum_squares,
                      "bucket_limit": list(h.histogram_value.bucket_limit), "bucket": list(h.histogram_value.bucket)}]
            for h in acc.Histograms(tag)
        ]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
