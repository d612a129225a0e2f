"""Validation mIoU against training wall time of runs, as a table and an SVG plot.

  python -m benchmarks.camvid_curves --run=PSPNet=/tmp/camvid/psp --run=FCN=/tmp/camvid/fcn \
      --out=docs/camvid_val_miou.svg

Reads each workdir's TensorBoard files (eval/mIoU, written at every evaluation). Wall time
is counted from the run's first event; a run resumed in several sittings is counted
without the time between them. Plain SVG: no plotting package needed.
"""

import glob
import os

from absl import app, flags
import tensorflow as tf

flags.DEFINE_multi_string('run', None, 'NAME=WORKDIR, one per curve.')
flags.DEFINE_string('out', None, 'SVG file to write; none: only the table.')
flags.mark_flag_as_required('run')
FLAGS = flags.FLAGS

COLOURS = ('#1f77b4', '#d62728', '#2ca02c', '#9467bd')
WIDTH, HEIGHT, MARGIN = 640, 400, 60


def curve(workdir: str) -> list[tuple[float, int, float]]:
  """(minutes of training, step, validation mIoU) of each evaluation in `workdir`."""
  points, elapsed = [], 0.0
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    first = last = None
    for event in tf.compat.v1.train.summary_iterator(path):
      first = event.wall_time if first is None else first
      last = event.wall_time
      for value in event.summary.value:
        if value.tag == 'eval/mIoU':
          number = tf.make_ndarray(value.tensor) if value.HasField('tensor') else value.simple_value
          points.append(((elapsed + event.wall_time - first) / 60, event.step, float(number)))
    if first is not None:
      elapsed += last - first
  return points


def svg(curves: dict[str, list[tuple[float, int, float]]]) -> str:
  """A line plot of mIoU (y) against minutes (x), one polyline per run, with a legend."""
  x_max = max(t for points in curves.values() for t, _, _ in points) * 1.05
  y_max = max(10.0 * (int(max(m for points in curves.values() for _, _, m in points)) // 10 + 1),
              10.0)
  def xy(t, m):
    return (MARGIN + t / x_max * (WIDTH - 2 * MARGIN),
            HEIGHT - MARGIN - m / y_max * (HEIGHT - 2 * MARGIN))
  parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>']
  for m in range(0, int(y_max) + 1, 10):
    _, y = xy(0, m)
    parts.append(f'<line x1="{MARGIN}" y1="{y:.1f}" x2="{WIDTH - MARGIN}" y2="{y:.1f}" '
                 'stroke="#ddd"/>')
    parts.append(f'<text x="{MARGIN - 8}" y="{y + 4:.1f}" text-anchor="end">{m}</text>')
  step = max(10, int(x_max / 6 / 10 + 1) * 10)
  for t in range(0, int(x_max) + 1, step):
    x, _ = xy(t, 0)
    parts.append(f'<text x="{x:.1f}" y="{HEIGHT - MARGIN + 18}" text-anchor="middle">{t}</text>')
  parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 15}" text-anchor="middle">training wall '
               'time (minutes)</text>')
  parts.append(f'<text x="15" y="{HEIGHT / 2}" text-anchor="middle" transform="rotate(-90 15 '
               f'{HEIGHT / 2})">validation mIoU (%)</text>')
  for index, (name, points) in enumerate(curves.items()):
    colour = COLOURS[index % len(COLOURS)]
    line = ' '.join(f'{x:.1f},{y:.1f}' for x, y in (xy(t, m) for t, _, m in points))
    parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
    parts.append(f'<text x="{MARGIN + 10}" y="{MARGIN + 16 * index}" fill="{colour}">'
                 f'{name} (last {points[-1][2]:.1f})</text>')
  parts.append('</svg>')
  return '\n'.join(parts)


def main(argv):
  del argv
  curves = {}
  for spec in FLAGS.run:
    name, workdir = spec.split('=', 1)
    curves[name] = curve(workdir)
    if not curves[name]:
      raise app.UsageError(f'{workdir}: no eval/mIoU in its TensorBoard files.')
  print('| run | step | minutes | validation mIoU |\n|---|---:|---:|---:|')
  for name, points in curves.items():
    for minutes, step, miou in points:
      print(f'| {name} | {step} | {minutes:.1f} | {miou:.2f} |')
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(svg(curves))


if __name__ == '__main__':
  app.run(main)
