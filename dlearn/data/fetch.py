"""The standard datasets fetched by name and prepared as `dlearn.prepare` prepares its inputs
(tfds ArrayRecord files, the official train/test splits kept, validation carved from train by the
same rule), with no TensorFlow: CIFAR-10, CIFAR-100, MNIST, Fashion-MNIST from their canonical
archives, and every UEA/UCR classification dataset from the archive's per-dataset zip file.

Spelling, once: `dlearn.prepare --fetch=NAME` takes `cifar10`, `cifar100`, `mnist`,
`fashion_mnist`, or a UEA/UCR name as the archive spells it (`ArrowHead`) or in lower_case
(`arrow_head`). The prepared dataset is named `prepared_name(NAME)`: the lower_case name for
UEA/UCR (`arrow_head`), and `cifar10_fetched` etc. for the four image datasets, whose own names
are tfds catalogue names (what `tfds build` writes, with other splits). Training fetches a missing
dataset of one of these prepared names (`prepare_if_missing`).

Work goes into a hidden folder of the data directory, renamed into place when complete; the
downloaded archives stay in DATA_DIR/downloads/NAME/ (a partial one resumes on the next run).
Members of an archive are read by name into memory; nothing of an archive's own paths reaches the
file system.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import io
import os
import pickle
import re
import shutil
import tarfile
import zipfile

import numpy as np

from dlearn.data import dataset_writer, download
from dlearn.errors import UserError


class FetchError(UserError, ValueError):
  """A dataset that cannot be fetched by that name, or an archive that is not what it should be."""


@dataclasses.dataclass(frozen=True)
class File:
  name: str
  origins: tuple[str, ...]
  sha256: str | None  # the published value (module docstring of each table); None: none published


# SHA-256 values: CIFAR's from Keras' `cifar10.load_data`/`cifar100.load_data` (`file_hash`; also
# torchvision's prototype datasets' `_SHA256`), MNIST's and Fashion-MNIST's from tfds'
# url_checksums/mnist.txt and fashion_mnist.txt (the files tfds downloads).
_TORONTO = 'https://www.cs.toronto.edu/~kriz/'
_CVDF_MNIST = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
_FASHION = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
IMAGE_FILES = {
  'cifar10': (
    File(
      'cifar-10-python.tar.gz',
      (_TORONTO + 'cifar-10-python.tar.gz',),
      '6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce',
    ),
  ),
  'cifar100': (
    File(
      'cifar-100-python.tar.gz',
      (_TORONTO + 'cifar-100-python.tar.gz',),
      '85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7',
    ),
  ),
  'mnist': tuple(
    File(name, (_CVDF_MNIST + name,), sha)
    for name, sha in (
      ('train-images-idx3-ubyte.gz', '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609'),
      ('train-labels-idx1-ubyte.gz', '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c'),
      ('t10k-images-idx3-ubyte.gz', '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6'),
      ('t10k-labels-idx1-ubyte.gz', 'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6'),
    )
  ),
  'fashion_mnist': tuple(
    File(name, (_FASHION + name,), sha)
    for name, sha in (
      ('train-images-idx3-ubyte.gz', '3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84'),
      ('train-labels-idx1-ubyte.gz', 'a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845'),
      ('t10k-images-idx3-ubyte.gz', '346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073'),
      ('t10k-labels-idx1-ubyte.gz', '67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5'),
    )
  ),
}  # fmt: skip
MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES = (
  'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
  'Ankle boot',
)  # fmt: skip

# The UEA/UCR classification archive as aeon 1.6 lists it (tsc_datasets.univariate, .multivariate),
# each a zip of NAME_TRAIN.ts and NAME_TEST.ts at the URL aeon downloads. The archive publishes no
# SHA-256 (nor does aeon record one): each zip is checked by its members' CRC-32 and by parsing
# both files, and its SHA-256 is printed and kept in the prepared dataset's metadata.
UEA_UCR_URL = 'https://timeseriesclassification.com/aeon-toolkit/{}.zip'
UCR_UNIVARIATE = """
  ACSF1 Adiac AllGestureWiimoteX AllGestureWiimoteY AllGestureWiimoteZ ArrowHead BME Beef
  BeetleFly BirdChicken CBF Car Chinatown ChlorineConcentration CinCECGTorso Coffee Computers
  CricketX CricketY CricketZ Crop DiatomSizeReduction DistalPhalanxOutlineAgeGroup
  DistalPhalanxOutlineCorrect DistalPhalanxTW DodgerLoopDay DodgerLoopGame DodgerLoopWeekend
  ECG200 ECG5000 ECGFiveDays EOGHorizontalSignal EOGVerticalSignal Earthquakes ElectricDevices
  EthanolLevel FaceAll FaceFour FacesUCR FiftyWords Fish FordA FordB FreezerRegularTrain
  FreezerSmallTrain Fungi GestureMidAirD1 GestureMidAirD2 GestureMidAirD3 GesturePebbleZ1
  GesturePebbleZ2 GunPoint GunPointAgeSpan GunPointMaleVersusFemale GunPointOldVersusYoung Ham
  HandOutlines Haptics Herring HouseTwenty InlineSkate InsectEPGRegularTrain InsectEPGSmallTrain
  InsectWingbeatSound ItalyPowerDemand LargeKitchenAppliances Lightning2 Lightning7 Mallat Meat
  MedicalImages MelbournePedestrian MiddlePhalanxOutlineAgeGroup MiddlePhalanxOutlineCorrect
  MiddlePhalanxTW MixedShapesRegularTrain MixedShapesSmallTrain MoteStrain
  NonInvasiveFetalECGThorax1 NonInvasiveFetalECGThorax2 OSULeaf OliveOil PLAID
  PhalangesOutlinesCorrect Phoneme PickupGestureWiimoteZ PigAirwayPressure PigArtPressure PigCVP
  Plane PowerCons ProximalPhalanxOutlineAgeGroup ProximalPhalanxOutlineCorrect ProximalPhalanxTW
  RefrigerationDevices Rock ScreenType SemgHandGenderCh2 SemgHandMovementCh2 SemgHandSubjectCh2
  ShakeGestureWiimoteZ ShapeletSim ShapesAll SmallKitchenAppliances SmoothSubspace
  SonyAIBORobotSurface1 SonyAIBORobotSurface2 StarLightCurves Strawberry SwedishLeaf Symbols
  SyntheticControl ToeSegmentation1 ToeSegmentation2 Trace TwoLeadECG TwoPatterns UMD
  UWaveGestureLibraryAll UWaveGestureLibraryX UWaveGestureLibraryY UWaveGestureLibraryZ Wafer
  Wine WordSynonyms Worms WormsTwoClass Yoga
""".split()
UEA_MULTIVARIATE = """
  ArticularyWordRecognition AtrialFibrillation BasicMotions CharacterTrajectories Cricket
  DuckDuckGeese ERing EigenWorms Epilepsy EthanolConcentration FaceDetection FingerMovements
  HandMovementDirection Handwriting Heartbeat InsectWingbeat JapaneseVowels LSST Libras
  MotorImagery NATOPS PEMS-SF PenDigits PhonemeSpectra RacketSports SelfRegulationSCP1
  SelfRegulationSCP2 SpokenArabicDigits StandWalkJump UWaveGestureLibrary
""".split()
UEA_UCR = {re.sub(r'(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])', '_', n).lower(): n
           for n in UCR_UNIVARIATE + UEA_MULTIVARIATE}  # fmt: skip


def archive_name(name: str) -> str | None:
  """The key `name` fetches by (`cifar10`, `ArrowHead`), from any accepted spelling of it or of its
  prepared name; None if dlearn cannot fetch it."""
  key = name.removesuffix('_fetched')
  if key in IMAGE_FILES:
    return key
  return (
    UEA_UCR.get(name) or UEA_UCR.get(name.lower()) or (name if name in UEA_UCR.values() else None)
  )


def prepared_name(name: str) -> str:
  """The dataset name `fetch(name)` writes (module docstring)."""
  key = archive_name(name)
  if key is None:
    raise FetchError(
      f'{name!r}: dlearn fetches {", ".join(IMAGE_FILES)} and the UEA/UCR classification '
      f'datasets by their archive names (e.g. ArrowHead, JapaneseVowels; {len(UEA_UCR)} in '
      'dlearn/data/fetch.py); prepare anything else from its files with --train.'
    )
  return f'{key}_fetched' if key in IMAGE_FILES else next(k for k, v in UEA_UCR.items() if v == key)


def is_prepared(name: str, data_dir: str) -> bool:
  return os.path.isdir(os.path.join(data_dir, name, dataset_writer.VERSION))


# ----------------------------------------------------------------------------------------------
# Reading the archives (members by name, into memory)
# ----------------------------------------------------------------------------------------------
def _check_member_names(path: str, names: list[str]) -> None:
  for member in names:
    parts = member.replace('\\', '/').split('/')
    if member.startswith(('/', '\\')) or '..' in parts or re.match(r'^[A-Za-z]:', member):
      raise FetchError(
        f'{path}: member {member!r} would leave the target folder; the archive is refused '
        '(delete it and rerun to download it again).'
      )


class _ArraysOnly(pickle.Unpickler):
  """CIFAR's python batches hold dicts of numpy arrays, lists and bytes: nothing else is built."""

  ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('_codecs', 'encode'),  # bytes, as Python 3 pickles them at protocol 2
  }

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f'{module}.{name} is not part of a CIFAR batch')
    if module == 'numpy.core.multiarray':  # numpy 2's name for numpy 1's module
      module = 'numpy._core.multiarray' if hasattr(np, '_core') else module
    return super().find_class(module, name)


def _cifar(path: str, key: str) -> tuple[dict, tuple[str, ...]]:
  """{split: (uint8 images NHWC, labels)} and the class names of a CIFAR python archive."""
  folder, label_key, meta, names_key = {
    'cifar10': ('cifar-10-batches-py', b'labels', 'batches.meta', b'label_names'),
    'cifar100': ('cifar-100-python', b'fine_labels', 'meta', b'fine_label_names'),
  }[key]
  batches = {
    'cifar10': {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']},
    'cifar100': {'train': ['train'], 'test': ['test']},
  }[key]
  with tarfile.open(path) as tar:
    _check_member_names(path, tar.getnames())

    def load(member):
      try:
        with tar.extractfile(f'{folder}/{member}') as f:
          return _ArraysOnly(io.BytesIO(f.read()), encoding='bytes').load()
      except (KeyError, pickle.UnpicklingError, EOFError, TypeError) as e:
        raise FetchError(
          f'{path}: member {folder}/{member} is missing or not a CIFAR batch ({e}).'
        ) from e

    class_names = tuple(n.decode() for n in load(meta)[names_key])
    arrays = {}
    for split, members in batches.items():
      parts = [load(m) for m in members]
      images = np.concatenate([np.asarray(p[b'data'], np.uint8) for p in parts])
      labels = np.concatenate([np.asarray(p[label_key], np.int64) for p in parts])
      arrays[split] = (images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
  return arrays, class_names


def _idx(path: str) -> np.ndarray:
  """An MNIST idx file (gzip): magic 0x0801 labels (N,), 0x0803 images (N, rows, cols)."""
  with gzip.open(path) as f:
    data = f.read()
  magic, count = int.from_bytes(data[:4], 'big'), int.from_bytes(data[4:8], 'big')
  dims = {0x0801: 1, 0x0803: 3}.get(magic)
  if dims is None:
    raise FetchError(f'{path}: magic number {magic:#x} is not an idx label or image file.')
  shape = [count] + [int.from_bytes(data[4 * i : 4 * i + 4], 'big') for i in range(2, dims + 1)]
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
  if body.size != np.prod(shape):
    raise FetchError(f'{path}: {body.size:,} bytes of data for a shape of {shape}.')
  return body.reshape(shape)


def _mnist(paths: dict[str, str], key: str) -> tuple[dict, tuple[str, ...]]:
  arrays = {
    split: (_idx(paths[f'{prefix}-images-idx3-ubyte.gz'])[..., None],
            _idx(paths[f'{prefix}-labels-idx1-ubyte.gz']).astype(np.int64))
    for split, prefix in (('train', 'train'), ('test', 't10k'))
  }  # fmt: skip
  return arrays, MNIST_CLASSES if key == 'mnist' else FASHION_MNIST_CLASSES


def _uea_ts_files(path: str, key: str, folder: str) -> dict[str, str]:
  """Writes the zip's KEY_TRAIN.ts and KEY_TEST.ts into `folder` under those names, checking
  every member's CRC-32; {split: path}."""
  try:
    with zipfile.ZipFile(path) as archive:
      _check_member_names(path, archive.namelist())
      bad = archive.testzip()
      if bad is not None:
        raise FetchError(f'{path}: member {bad} fails its CRC-32 check; delete the file and rerun.')
      members = {m.rsplit('/', 1)[-1]: m for m in archive.namelist()}
      files = {}
      for split in ('train', 'test'):
        wanted = f'{key}_{split.upper()}.ts'
        if wanted not in members:
          raise FetchError(f'{path}: no member {wanted}; the zip holds {sorted(members)[:6]}.')
        files[split] = os.path.join(folder, wanted)
        with open(files[split], 'wb') as f:
          f.write(archive.read(members[wanted]))
      return files
  except zipfile.BadZipFile as e:
    raise FetchError(f'{path}: not a zip file ({e}); delete it and rerun.') from e


# ----------------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------------
def fetch(name: str, data_dir: str, *, validation_fraction: float = 0.1, overwrite=False) -> str:
  """Downloads (or finds in DATA_DIR/downloads) and prepares dataset `name`; returns the prepared
  dataset's directory."""
  key, target_name = archive_name(name), prepared_name(name)
  target = os.path.join(data_dir, target_name, dataset_writer.VERSION)
  if os.path.exists(target) and not overwrite:
    raise FileExistsError(f'{target} already exists: pass --overwrite to prepare it again.')
  downloads = os.path.join(data_dir, 'downloads', key)
  files = IMAGE_FILES.get(key) or (File(f'{key}.zip', (UEA_UCR_URL.format(key),), None),)
  paths = {f.name: download.fetch(key, f.name, f.origins, f.sha256, downloads) for f in files}
  source = {f.name: f.origins[0] for f in files}
  _remove_abandoned(data_dir, target_name)
  work = os.path.join(data_dir, f'.fetching-{target_name}-{os.getpid()}')
  os.makedirs(work)
  try:
    if key in IMAGE_FILES:
      path = next(iter(paths.values()))
      arrays, class_names = _cifar(path, key) if key.startswith('cifar') else _mnist(paths, key)
      dataset_writer.write_arrays(
        target_name,
        arrays,
        class_names,
        work,
        validation_fraction=validation_fraction,
        source=source,
      )
    else:
      zip_path = paths[f'{key}.zip']
      digest = download.sha256(zip_path)
      print(f'{key}.zip: SHA-256 {digest} (the archive publishes none to check it against).')
      dataset_writer.write_dataset(
        target_name,
        _uea_ts_files(zip_path, key, work),
        work,
        validation_fraction=validation_fraction,
        metadata={'source': source, 'sha256': {f'{key}.zip': digest}},
      )
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if overwrite and os.path.exists(target):
      shutil.rmtree(target)
    if not os.path.exists(target):  # else another process (sharing this folder) finished first
      os.rename(os.path.join(work, target_name, dataset_writer.VERSION), target)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return target


def _remove_abandoned(data_dir: str, target_name: str) -> None:
  """Removes the work folders of fetches of `target_name` whose process is gone (killed)."""
  for folder in glob.glob(os.path.join(data_dir, f'.fetching-{target_name}-*')):
    pid = int(folder.rsplit('-', 1)[1])
    try:
      os.kill(pid, 0)
      alive = pid != os.getpid()
    except ProcessLookupError:
      alive = False
    except PermissionError:  # another user's live process
      alive = True
    if not alive:
      shutil.rmtree(folder, ignore_errors=True)


def prepare_if_missing(name: str, data_dir: str) -> None:
  """Fetches dataset `name` into `data_dir` when it is one of the prepared names fetch writes and
  the data directory lacks it (training's first step); anything else is left to the reader."""
  if archive_name(name) is None or name != prepared_name(name) or is_prepared(name, data_dir):
    return
  print(f'{name}: not in {data_dir}; fetching it (dlearn.prepare --fetch={archive_name(name)}).')
  fetch(name, data_dir)
