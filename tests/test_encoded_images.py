"""The encoded image store: JPEGs and PNGs of mixed sizes prepared as they are, decoded with
random-resized crops in worker processes, evaluated, predicted and exported through evaluation's
centre crop; the crops' distribution; exact resume with workers; bad files refused or skipped."""

import io
import math
import os
import struct
import zlib

import entry_point
import helpers
import numpy as np
import pytest
from PIL import Image

from dlearn import configs, exporting, train
from dlearn.data import dataset_writer, image_codec, image_folder, pipeline

SIZE = 16  # the model's input in these tests


def mixed_folder(root, per_class=8, classes=('a', 'b', 'c')):
  """<root>/train/<class>/<image>: JPEGs and PNGs of sizes from 20x24 to 61x47, each class its
  own colour plus noise."""
  rng = np.random.default_rng(0)
  for index, name in enumerate(classes):
    os.makedirs(root / 'train' / name)
    for i in range(per_class):
      height, width = 20 + (7 * i + index) % 42, 24 + (5 * i) % 24
      pixels = rng.normal(40 + 90 * index, 30, (height, width, 3)).clip(0, 255).astype(np.uint8)
      suffix = '.png' if i % 3 == 2 else '.jpg'
      Image.fromarray(pixels).save(root / 'train' / name / f'{i:03d}{suffix}', quality=90)
  return str(root)


def _config(data_dir, name='mixed'):
  config = configs.base()
  config.model = 'resnet'
  config.resnet.stage_sizes, config.resnet.width = (1,), 4
  config.data.name, config.data.data_dir = name, data_dir
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  config.data.image_size = SIZE
  config.data.mean, config.data.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  config.batch_size, config.eval_batch_size = 8, 8
  config.num_train_steps, config.write_plots = 2, False
  return config


def test_mixed_sizes_prepare_with_no_flag_into_the_encoded_store(tmp_path):
  folder = mixed_folder(tmp_path / 'images')
  data_dir = str(tmp_path / 'tfds')
  dataset_writer.write_dataset('mixed', {'train': folder}, data_dir, validation_fraction=0.25)
  source = pipeline.load_split('mixed', 'train', data_dir)
  assert source.dataset_info.metadata['store'] == 'encoded'
  assert len(source) == 18 and len(pipeline.load_split('mixed', 'validation', data_dir)) == 6
  files = image_folder.ImageFiles(folder)
  stored = {bytes(source[i]['image']) for i in range(len(source))}
  originals = {files.read(i) for i in range(len(files))}
  assert stored <= originals  # the files' own bytes, JPEG and PNG as given
  info = pipeline.dataset_info(source, 'mixed', None, data=_config(data_dir).data)
  assert info.example_shape == (SIZE, SIZE, 3) and info.transform.train_crop == 'random_resized'
  batch = next(pipeline.train_iterator(source, info, local_batch_size=6, seed=0))
  assert batch['image'].shape == (6, SIZE, SIZE, 3) and batch['image'].dtype == np.uint8


def test_other_formats_are_stored_as_png_and_small_ones_of_one_size_as_arrays(tmp_path):
  pixels = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'BMP')
  content, height, width = image_codec.checked(buffer.getvalue(), 3)
  assert content.startswith(b'\x89PNG') and (height, width) == (12, 10)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(content))), pixels)
  assert dataset_writer.choose_store('auto', {(32, 32)}, None) == 'array'
  assert dataset_writer.choose_store('auto', {(32, 32), (30, 32)}, None) == 'encoded'
  assert dataset_writer.choose_store('auto', {(256, 256)}, None) == 'encoded'
  assert dataset_writer.choose_store('auto', {(256, 256), (9, 9)}, (32, 32)) == 'array'
  assert dataset_writer.choose_store('encoded', {(32, 32)}, None) == 'encoded'


def _theoretical_area_cdf(fractions, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """For a square image: the area fraction s ~ U(scale) and log aspect r ~ U(log ratio) of
  torchvision's first draw, kept when the box fits (s * max(r, 1/r) <= 1)."""
  grid = np.linspace(scale[0], scale[1], 20001)
  accept = np.minimum(1.0, -np.log(grid) / math.log(ratio[1]))  # P(|log r| <= -log s)
  cdf = np.concatenate([[0], np.cumsum((accept[1:] + accept[:-1]) / 2 * np.diff(grid))])
  return np.interp(fractions, grid, cdf / cdf[-1])


def test_random_resized_crops_follow_the_references_distribution():
  rng = np.random.default_rng(0)
  side, n = 2000, 20000
  boxes = np.array(
    [image_codec.random_resized_box(rng, side, side, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)]
  )
  top, left, h, w = boxes.T
  assert (h >= 1).all() and (w >= 1).all() and (top + h <= side).all() and (left + w <= side).all()
  # Kolmogorov-Smirnov distance against the distribution of the reference's accepted draws (a
  # box that fails all 10 draws, the fallback, has probability below 1e-9 here); 0.0138 is the
  # 0.1% critical value for n = 20,000.
  area = np.sort(h * w / side**2)
  empirical = np.arange(1, n + 1) / n
  assert np.abs(empirical - _theoretical_area_cdf(area)).max() < 0.0138
  # The aspect ratio of boxes small enough to fit at any ratio is log-uniform over the range.
  small = area_unsorted = h * w / side**2
  log_aspect = np.sort(np.log(w / h)[small < 0.5])
  uniform = (log_aspect - math.log(3 / 4)) / (math.log(4 / 3) - math.log(3 / 4))
  ranks = np.arange(1, len(uniform) + 1) / len(uniform)
  assert np.abs(ranks - np.clip(uniform, 0, 1)).max() < 1.95 / math.sqrt(len(uniform))
  # Positions uniform over what is left of the image.
  position = (top / np.maximum(side - h, 1))[area_unsorted < 0.5]
  assert abs(position.mean() - 0.5) < 0.01 and abs(np.median(position) - 0.5) < 0.02
  # A narrow image that no draw fits ends in the centre crop clamped to the ratio.
  assert image_codec.random_resized_box(rng, 10, 400, (0.9, 1.0), (3 / 4, 4 / 3)) == (
    0,
    193,
    10,
    13,
  )


def test_decoding_crops_resizes_flips_and_the_export_matches_evaluation():
  rng = np.random.default_rng(0)
  pixels = np.zeros((120, 90, 3), np.uint8)
  pixels[:, 45:] = 200  # right half bright
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'PNG')
  content = buffer.getvalue()
  box = (0, 0, 120, 45)  # the dark half only
  assert image_codec.decode_box(content, box, (8, 8), 3).max() == 0
  flipped = image_codec.decode_box(content, (0, 30, 120, 30), (8, 8), 3, flip=True)
  assert flipped[:, :4].mean() > 150 and flipped[:, 4:].mean() < 50  # bright side now left
  transform = image_codec.ImageTransform(size=(SIZE, SIZE), channels=3)
  assert transform.train(content, rng).shape == (SIZE, SIZE, 3)
  # Evaluation's centre crop on the host (OpenCV) and in the exported function (matrices), for
  # images that shrink, grow, and shrink along one axis only.
  info = pipeline.DatasetInfo('x', 'image', (SIZE, SIZE, 3), 2, ('a', 'b'), transform=transform)
  for shape in [(75, 101, 3), (9, 13, 3), (17, 60, 3)]:
    photo = rng.normal(120, 50, shape).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, 'PNG')
    host = transform.evaluate(buffer.getvalue()).astype(int)
    exported = np.asarray(exporting.center_crop(photo[None], info))[0].astype(int)
    assert np.abs(host - exported).max() <= 2 and np.abs(host - exported).mean() < 0.6, shape


def _png_header(width, height, bit_depth=8, colour_type=2):
  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

  header = struct.pack('>IIBBBBB', width, height, bit_depth, colour_type, 0, 0, 0)
  return (
    b'\x89PNG\r\n\x1a\n'
    + chunk(b'IHDR', header)
    + chunk(b'IDAT', zlib.compress(b'\0' * 64))
    + chunk(b'IEND', b'')
  )


def _bad_files(root):
  """{file name: the reason prepare gives}: one of each kind of file a run must not meet."""
  good = io.BytesIO()
  Image.fromarray(np.full((30, 40, 3), 99, np.uint8)).save(good, 'JPEG')
  cmyk, sixteen, tiny = io.BytesIO(), io.BytesIO(), io.BytesIO()
  Image.new('CMYK', (30, 30)).save(cmyk, 'JPEG')
  Image.fromarray(np.full((30, 30), 40000, np.uint16)).save(sixteen, 'PNG')
  Image.new('RGB', (1, 1)).save(tiny, 'PNG')
  files = {
    'corrupt.jpg': (b'\xff\xd8\xff\xe0 this is not a JPEG', 'cannot decode the image'),
    'truncated.jpg': (good.getvalue()[: len(good.getvalue()) // 2], 'cannot decode the image'),
    'cmyk.jpg': (cmyk.getvalue(), 'a CMYK image: convert it to RGB'),
    'sixteen.png': (sixteen.getvalue(), 'dlearn reads 8 bits per channel'),
    'empty.jpg': (b'', r'an empty file \(0 bytes\)'),
    'tiny.png': (tiny.getvalue(), '1x1 pixels: both sides must be at least 4 px'),
    'bomb.png': (_png_header(30000, 30000), 'decompression bomb'),
  }
  for name, (content, _) in files.items():
    (root / 'train' / 'a' / name).write_bytes(content)
  return {name: reason for name, (_, reason) in files.items()}


def test_bad_files_are_refused_naming_the_file_or_skipped_and_listed(tmp_path):
  folder = mixed_folder(tmp_path / 'images')
  bad = _bad_files(tmp_path / 'images')
  for name, reason in bad.items():
    with pytest.raises(image_folder.ImageFolderError, match=rf'train/a/{name}: .*{reason}') as e:
      # Each file alone in a folder, so that the error is its own.
      one = tmp_path / f'only_{name}'
      os.makedirs(one / 'train' / 'a')
      (one / 'train' / 'a' / name).write_bytes(
        (tmp_path / 'images' / 'train' / 'a' / name).read_bytes()
      )
      (one / 'train' / 'a' / 'good.jpg').write_bytes(
        (tmp_path / 'images' / 'train' / 'a' / '000.jpg').read_bytes()
      )
      dataset_writer.write_dataset(
        'bad', {'train': str(one)}, str(tmp_path / 'tfds'), validation_fraction=0
      )
    assert '--skip_bad_inputs' in str(e.value)
    assert not (tmp_path / 'tfds' / 'bad').exists()
  skipped = []
  dataset_writer.write_dataset(
    'mixed', {'train': folder}, str(tmp_path / 'tfds'), skip_bad_inputs=True, skipped=skipped
  )
  assert sorted(name.rsplit('/', 1)[1] for name, _ in skipped) == sorted(bad)
  source = pipeline.load_split('mixed', 'train+validation', str(tmp_path / 'tfds'))
  assert len(source) == 24  # the good ones only
  assert len(source.dataset_info.metadata['skipped_inputs']) == len(bad)


@pytest.mark.slow  # worker processes
def test_resume_mid_epoch_with_worker_processes_is_exact(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  dataset_writer.write_dataset('mixed', {'train': mixed_folder(tmp_path / 'images')}, data_dir)
  source = pipeline.load_split('mixed', 'train', data_dir)
  info = pipeline.dataset_info(source, 'mixed', None, data=_config(data_dir).data)

  def batches(state=None, count=4):
    iterator = pipeline.train_iterator(source, info, local_batch_size=5, seed=3, workers=2)
    if state is not None:
      iterator.set_state(state)
    return [next(iterator) for _ in range(count)], iterator.get_state()

  first, _ = batches(count=2)
  (_, _), state = batches(count=2)  # stopped after 2 batches (mid-epoch: 21 examples, 5 a batch)
  resumed, _ = batches(state, count=4)
  uninterrupted, _ = batches(count=6)
  for a, b in zip(first + resumed, uninterrupted):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['index'], b['index'])
  threads = pipeline.train_iterator(source, info, local_batch_size=5, seed=3, workers=0)
  for batch in uninterrupted:  # the same crops with or without worker processes
    np.testing.assert_array_equal(next(threads)['image'], batch['image'])
  # A new epoch draws new crops of the same images.
  epoch = len(source) // 5
  later = [b for b in uninterrupted[epoch:]]
  assert later and not np.array_equal(later[0]['image'], uninterrupted[0]['image'])


@pytest.mark.slow  # end to end, and subprocesses
def test_prepare_train_evaluate_predict_and_export_end_to_end(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  result = entry_point.run(
    'prepare',
    '--name=mixed',
    f'--train={mixed_folder(tmp_path / "images")}',
    f'--data_dir={data_dir}',
    '--validation_fraction=0.25',
    mock=False,
  )
  assert 'Prepared mixed' in result.stdout
  config = _config(data_dir)
  config.data.worker_count = 2
  workdir = str(tmp_path / 'run')
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics['eval']['count'] == 6
  flags = [f'--workdir={workdir}']
  result = entry_point.run('evaluate', *flags, '--split=validation', mock=False)
  assert 'examples 6' in result.stdout, result.stdout
  # New images of any size, through evaluation's centre crop; the export takes them too.
  new = tmp_path / 'new'
  new.mkdir()
  rng = np.random.default_rng(5)
  raw = [rng.integers(0, 256, shape, np.uint8) for shape in [(30, 41, 3), (50, 22, 3), (30, 41, 3)]]
  for i, pixels in enumerate(raw):
    Image.fromarray(pixels).save(new / f'{i}.png')
  output = tmp_path / 'p.csv'
  entry_point.run('predict', *flags, f'--input={new}', f'--output={output}', mock=False)
  rows = [line.split(',') for line in output.read_text().splitlines()[1:]]
  assert [row[0] for row in rows] == ['0.png', '1.png', '2.png']
  function, specs, class_names = exporting.exported_function(workdir)
  assert specs[0].shape[1:3] != (SIZE, SIZE)  # symbolic: any size
  for i in (0, 1):
    probabilities = np.asarray(function(raw[i][None]))[0]
    top = class_names[int(np.argmax(probabilities))]
    assert top == rows[i][1] and abs(probabilities.max() - float(rows[i][2])) < 0.02
  exported = tmp_path / 'exported'
  entry_point.run('export', f'--workdir={workdir}', f'--output={exported}', mock=False)
  assert (exported / 'model.bin').stat().st_size > 0


@pytest.mark.slow  # subprocesses
def test_prepare_command_prints_one_error_line_or_lists_what_it_skipped(tmp_path):
  folder = mixed_folder(tmp_path / 'images')
  (tmp_path / 'images' / 'train' / 'b' / 'broken.jpg').write_bytes(b'\xff\xd8\xff not a JPEG')
  args = ['--name=mixed', f'--train={folder}', f'--data_dir={tmp_path / "tfds"}']
  result = entry_point.run('prepare', *args, check=False, mock=False)
  assert 'train/b/broken.jpg: cannot decode the image' in helpers.the_error_line(result)
  result = entry_point.run('prepare', *args, '--skip_bad_inputs', mock=False)
  assert 'skipped ' in result.stdout and 'train/b/broken.jpg: cannot decode' in result.stdout
  assert '1 file(s) left out (--skip_bad_inputs).' in result.stdout
