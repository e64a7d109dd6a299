"""Standard datasets fetched by name (dlearn/data/fetch.py, download.py) with no internet: a local
HTTP server on 127.0.0.1 serves archives made here in the real formats (CIFAR's python pickles,
MNIST's idx files, a UEA zip of .ts files) through $DLEARN_DATA_MIRROR."""

import gzip
import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import tarfile
import threading
import zipfile

import helpers
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dlearn.data import download, fetch


class _Server:
  """Serves `files` ({'/dataset/name': bytes}) with HTTP Range support; `die_after` bytes of the
  first `deaths` responses are sent before the connection drops."""

  def __init__(self, files, die_after=None, deaths=0):
    self.files, self.die_after, self.deaths, self.requests = files, die_after, deaths, []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802  (http.server's name)
        server.requests.append((self.path, self.headers.get('Range')))
        body = server.files.get(self.path)
        if body is None:
          self.send_error(404)
          return
        start = int(self.headers['Range'].split('=')[1].rstrip('-')) if self.headers['Range'] else 0
        if start >= len(body):
          self.send_error(416)
          return
        self.send_response(206 if start else 200)
        self.send_header('Content-Length', str(len(body) - start))
        self.end_headers()
        if server.deaths and server.die_after is not None:
          server.deaths -= 1
          self.wfile.write(body[start : start + server.die_after])
          self.wfile.flush()
          self.close_connection = True
          return
        self.wfile.write(body[start:])

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch):
  servers = []

  def start(files, **kwargs):
    servers.append(_Server(files, **kwargs))
    monkeypatch.setenv(download.MIRROR_ENV, servers[-1].url)
    return servers[-1]

  monkeypatch.setattr(download.time, 'sleep', lambda seconds: None)
  yield start
  for server in servers:
    server.close()


def _pin(monkeypatch, key, contents: dict):
  """Records the SHA-256 of the test's own files in place of the real archives' ones."""
  files = tuple(
    fetch.File(f.name, f.origins, hashlib.sha256(contents[f.name]).hexdigest())
    for f in fetch.IMAGE_FILES[key]
  )
  monkeypatch.setitem(fetch.IMAGE_FILES, key, files)


def _cifar10_archive(per_batch=10):
  rng = np.random.default_rng(0)
  batches, out = {}, io.BytesIO()
  for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
    batches[name] = {
      b'batch_label': name.encode(),
      b'labels': [i % 10 for i in range(per_batch)],
      b'data': rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
      b'filenames': [f'{i}.png'.encode() for i in range(per_batch)],
    }
  batches['batches.meta'] = {b'label_names': [f'class{i}'.encode() for i in range(10)]}
  with tarfile.open(fileobj=out, mode='w:gz') as tar:
    for name, content in batches.items():
      data = pickle.dumps(content, protocol=2)
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return out.getvalue(), batches


def _idx(array: np.ndarray) -> bytes:
  magic = {1: 0x0801, 3: 0x0803}[array.ndim]
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  return gzip.compress(header + array.astype(np.uint8).tobytes())


def _ts_lines(rng, count, length=12):
  return [
    ','.join(map(str, rng.normal(label, 0.3, length).round(3))) + f':{"ab"[label]}'
    for label in (i % 2 for i in range(count))
  ]


def _uea_zip(tmp_path, name, members=None):
  rng = np.random.default_rng(0)
  header = ['@problemName t', '@timeStamps false', '@univariate true', '@equalLength true',
            '@seriesLength 12', '@classLabel true a b', '@data']  # fmt: skip
  members = members or {
    f'{name}_TRAIN.ts': helpers.ts_file(tmp_path / 'train.ts', _ts_lines(rng, 20), header),
    f'{name}_TEST.ts': helpers.ts_file(tmp_path / 'test.ts', _ts_lines(rng, 10), header),
  }
  out = io.BytesIO()
  with zipfile.ZipFile(out, 'w') as archive:
    for member, path in members.items():
      archive.write(path, member)
  return out.getvalue()


def test_cifar10_is_fetched_and_prepared_with_the_official_splits(tmp_path, serve, monkeypatch):
  archive, batches = _cifar10_archive()
  _pin(monkeypatch, 'cifar10', {'cifar-10-python.tar.gz': archive})
  server = serve({'/cifar10/cifar-10-python.tar.gz': archive})
  data_dir = str(tmp_path / 'tfds')
  fetch.fetch('cifar10', data_dir)
  assert server.requests == [('/cifar10/cifar-10-python.tar.gz', None)]
  sources = {
    split: tfds.data_source('cifar10_fetched', split=split, data_dir=data_dir)
    for split in ('train', 'validation', 'test')
  }
  # 50 training images, 5 a class: the last 10% of each class (rounded: 1) becomes validation.
  assert {split: len(source) for split, source in sources.items()} == {
    'train': 40,
    'validation': 10,
    'test': 10,
  }
  assert sources['train'].dataset_info.features['label'].names == [f'class{i}' for i in range(10)]
  test = batches['test_batch']
  expected = {
    (int(label), test[b'data'][i].reshape(3, 32, 32).transpose(1, 2, 0).tobytes())
    for i, label in enumerate(test[b'labels'])
  }
  got = {(int(r['label']), np.asarray(r['image']).tobytes()) for r in sources['test']}
  assert got == expected  # the pixels as stored, HWC, with their labels
  # the last image of class 0 in file order (batch 5, index 0) is in validation
  last = batches['data_batch_5'][b'data'][0].reshape(3, 32, 32).transpose(1, 2, 0).tobytes()
  assert last in {np.asarray(r['image']).tobytes() for r in sources['validation']}
  assert not [n for n in os.listdir(data_dir) if n.startswith('.fetching')]


def test_mnist_idx_files_become_a_grey_image_dataset(tmp_path, serve, monkeypatch):
  rng = np.random.default_rng(1)
  arrays = {
    'train-images-idx3-ubyte.gz': rng.integers(0, 256, (30, 6, 5)),
    'train-labels-idx1-ubyte.gz': np.arange(30) % 10,
    't10k-images-idx3-ubyte.gz': rng.integers(0, 256, (10, 6, 5)),
    't10k-labels-idx1-ubyte.gz': np.arange(10) % 10,
  }
  contents = {name: _idx(array) for name, array in arrays.items()}
  _pin(monkeypatch, 'fashion_mnist', contents)
  serve({f'/fashion_mnist/{name}': data for name, data in contents.items()})
  data_dir = str(tmp_path / 'tfds')
  fetch.fetch('fashion_mnist', data_dir, validation_fraction=0)
  test = tfds.data_source('fashion_mnist_fetched', split='test', data_dir=data_dir)
  assert test.dataset_info.features['image'].shape == (6, 5, 1)
  assert test.dataset_info.features['label'].names[0] == 'T-shirt/top'
  stored = {np.asarray(r['image'])[..., 0].tobytes(): int(r['label']) for r in test}
  expected = arrays['t10k-images-idx3-ubyte.gz'].astype(np.uint8)
  assert stored == {expected[i].tobytes(): i % 10 for i in range(10)}


def test_a_file_with_another_hash_is_refused_and_deleted(tmp_path, serve):
  serve({'/cifar10/cifar-10-python.tar.gz': b'not the archive'})  # the real SHA-256 recorded
  data_dir = tmp_path / 'tfds'
  with pytest.raises(download.DownloadError) as error:
    fetch.fetch('cifar10', str(data_dir))
  message = str(error.value)
  assert '/cifar10/cifar-10-python.tar.gz' in message
  assert fetch.IMAGE_FILES['cifar10'][0].sha256 in message
  assert hashlib.sha256(b'not the archive').hexdigest() in message
  assert os.listdir(data_dir / 'downloads' / 'cifar10') == []  # nothing kept
  assert not os.path.exists(data_dir / 'cifar10_fetched')


def test_a_partial_download_resumes_where_it_stopped(tmp_path, serve):
  body = bytes(range(256)) * 4000
  server = serve({'/d/file.bin': body})
  folder = tmp_path / 'downloads'
  folder.mkdir()
  (folder / 'file.bin.part').write_bytes(body[:300_000])
  expected = hashlib.sha256(body).hexdigest()
  path = download.fetch('d', 'file.bin', (), expected, str(folder))
  assert open(path, 'rb').read() == body
  assert server.requests == [('/d/file.bin', 'bytes=300000-')]


def test_a_server_that_dies_mid_file_is_resumed_then_reported(tmp_path, serve):
  body = os.urandom(5 << 20)
  expected = hashlib.sha256(body).hexdigest()
  server = serve({'/d/file.bin': body}, die_after=1 << 20, deaths=1)
  path = download.fetch('d', 'file.bin', (), expected, str(tmp_path))
  assert open(path, 'rb').read() == body
  assert [r for _, r in server.requests] == [None, f'bytes={1 << 20}-']

  # A server that keeps dying: an error that says what is kept, and the next run resumes.
  server = serve({'/d/other.bin': body}, die_after=1 << 20, deaths=download.ATTEMPTS)
  with pytest.raises(download.DownloadError, match=r'rerun to resume') as error:
    download.fetch('d', 'other.bin', (), expected, str(tmp_path))
  assert 'other.bin.part' in str(error.value)
  assert os.path.getsize(tmp_path / 'other.bin.part') == download.ATTEMPTS << 20
  path = download.fetch('d', 'other.bin', (), expected, str(tmp_path))
  assert open(path, 'rb').read() == body
  assert server.requests[-1][1] == f'bytes={download.ATTEMPTS << 20}-'


def test_a_zip_member_that_leaves_the_folder_is_refused(tmp_path, serve):
  evil = tmp_path / 'evil.ts'
  evil.write_text('x')
  content = _uea_zip(tmp_path, 'ArrowHead', {'../evil.ts': evil, 'ArrowHead_TRAIN.ts': evil})
  serve({'/ArrowHead/ArrowHead.zip': content})
  data_dir = tmp_path / 'a' / 'tfds'
  with pytest.raises(fetch.FetchError, match=r"member '\.\./evil\.ts' would leave"):
    fetch.fetch('ArrowHead', str(data_dir))
  assert sorted(os.listdir(data_dir)) == ['downloads']  # no dataset, no work folder
  assert not os.path.exists(tmp_path / 'a' / 'evil.ts')


def test_uea_zip_is_prepared_under_its_lower_case_name(tmp_path, serve):
  serve({'/ArrowHead/ArrowHead.zip': _uea_zip(tmp_path, 'ArrowHead')})
  data_dir = str(tmp_path / 'tfds')
  target = fetch.fetch('arrow_head', data_dir)
  assert target == os.path.join(data_dir, 'arrow_head', '1.0.0')
  splits = {
    s: tfds.data_source('arrow_head', split=s, data_dir=data_dir) for s in ('train', 'test')
  }
  assert (len(splits['train']), len(splits['test'])) == (18, 10)  # 2 of 20 carved
  assert 'ArrowHead.zip' in splits['train'].dataset_info.metadata['sha256']


def test_a_fetch_that_fails_while_writing_leaves_no_dataset(tmp_path, serve, monkeypatch):
  archive, _ = _cifar10_archive()
  _pin(monkeypatch, 'cifar10', {'cifar-10-python.tar.gz': archive})
  serve({'/cifar10/cifar-10-python.tar.gz': archive})
  data_dir = tmp_path / 'tfds'
  (data_dir / '.fetching-cifar10_fetched-999999999').mkdir(parents=True)  # a killed fetch's

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(fetch.dataset_writer, '_write', killed)
  with pytest.raises(KeyboardInterrupt):
    fetch.fetch('cifar10', str(data_dir))
  assert sorted(os.listdir(data_dir)) == ['downloads']  # the archive, kept; nothing else
  monkeypatch.undo()
  _pin(monkeypatch, 'cifar10', {'cifar-10-python.tar.gz': archive})
  fetch.fetch('cifar10', str(data_dir))  # from the kept archive, no download
  assert fetch.is_prepared('cifar10_fetched', str(data_dir))


def test_names_that_cannot_be_fetched(tmp_path):
  with pytest.raises(fetch.FetchError, match='dlearn fetches cifar10, cifar100, mnist'):
    fetch.fetch('imagenet2012', str(tmp_path))
  assert fetch.prepared_name('JapaneseVowels') == fetch.prepared_name('japanese_vowels')
  assert fetch.prepared_name('cifar10') == 'cifar10_fetched'  # cifar10 is tfds' own build


@pytest.mark.slow  # subprocesses
def test_training_fetches_a_missing_dataset_first(tmp_path, serve):
  serve({'/GunPoint/GunPoint.zip': _uea_zip(tmp_path, 'GunPoint'),
         '/Coffee/Coffee.zip': _uea_zip(tmp_path, 'Coffee')})  # fmt: skip
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  data_dir = tmp_path / 'tfds'
  run = subprocess.run(
    [sys.executable, '-m', 'dlearn.main', '--config=experiments/configs/rnn_uea.py:GunPoint,smoke',
     f'--workdir={tmp_path / "run"}', f'--config.data.data_dir={data_dir}',
     '--config.ensemble_size=1', '--config.rnn.conv_filters=(4,)', '--config.rnn.conv_kernels=(3,)',
     '--config.write_plots=False'],
    capture_output=True, text=True, timeout=600, env=env,
  )  # fmt: skip
  assert run.returncode == 0, run.stderr[-3000:]
  assert os.path.isdir(data_dir / 'gun_point' / '1.0.0')
  assert os.path.exists(tmp_path / 'run' / 'final_metrics.json')
  cli = subprocess.run(
    [sys.executable, '-m', 'dlearn.prepare', '--fetch=Coffee', f'--data_dir={data_dir}'],
    capture_output=True, text=True, timeout=300, env=env,
  )  # fmt: skip
  assert cli.returncode == 0, cli.stderr[-2000:]
  assert 'Prepared coffee' in cli.stdout and 'download Coffee.zip' in cli.stderr
  cli = subprocess.run(
    [sys.executable, '-m', 'dlearn.prepare', '--fetch=nowhere', f'--data_dir={data_dir}'],
    capture_output=True, text=True, timeout=300, env=env,
  )  # fmt: skip
  assert 'nowhere' in helpers.the_error_line(cli)
