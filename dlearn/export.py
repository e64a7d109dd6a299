"""Command: a trained work directory's model as one file that runs with `jax` and `numpy` alone.

  python -m dlearn.export --workdir=workdirs/seed_dcnn --output=exported

Writes `exported/model.bin` (`jax.export`: the whole inference function, preprocessing included,
batch size symbolic, lowered for CPU and CUDA) and `exported/classes.json` (class names in label
order). Images: uint8 [batch, height, width, channels] in; sequences: float32
[batch, time, channels] and int32 lengths [batch] in; class probabilities [batch, classes] out.
The README's "Predict and export" shows how to load and run it. The library: dlearn/exporting.py.
"""

from absl import flags

from dlearn import cli, exporting, metrics

FLAGS = flags.FLAGS


def define_flags():
  cli.define_workdir_flags('--set=fast_cnn.tta_level=0 (no test-time augmentation)')
  flags.DEFINE_string('output', None, 'Folder to create (must not exist).', required=True)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}: flags take the form --name=value.')
  metrics.quiet_library_logs()
  try:
    output = exporting.export(
      FLAGS.workdir,
      FLAGS.output,
      data_dir=FLAGS.data_dir,
      overrides=cli.field_values(FLAGS.set, '--set'),
    )
  except cli.USER_ERRORS as e:
    cli.fail(e)
  print(f'exported to {output}: model.bin, classes.json')


def run():
  cli.run(main, define_flags)


if __name__ == '__main__':
  run()
