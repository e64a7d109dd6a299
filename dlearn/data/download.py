"""Downloads one file safely: from its URLs (or the mirror in $DLEARN_DATA_MIRROR), resumed from
a partial `.part` file with an HTTP Range request, checked against the SHA-256 recorded for it,
and renamed into place only when complete and correct. Any urllib scheme works (http, https,
file), so a mirror can be a local folder."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request

from dlearn import metrics
from dlearn.errors import UserError

# A base URL (or file:// folder) holding DATASET/FILE for every file dlearn fetches, for machines
# behind a proxy or without internet; when set, nothing else is contacted.
MIRROR_ENV = 'DLEARN_DATA_MIRROR'
CHUNK = 1 << 20
ATTEMPTS = 3  # per URL: a connection that drops mid-file is resumed this many times
TIMEOUT_S = 60


class DownloadError(UserError, OSError):
  """A file that could not be downloaded, or arrived other than recorded; the message names it."""


def urls(dataset: str, name: str, origins: tuple[str, ...]) -> tuple[str, ...]:
  """Where to fetch file `name` of `dataset` from: the mirror when set, else its `origins`."""
  mirror = os.environ.get(MIRROR_ENV)
  if mirror:
    if '://' not in mirror:  # a plain folder
      mirror = 'file://' + os.path.abspath(os.path.expanduser(mirror))
    return (f'{mirror.rstrip("/")}/{dataset}/{name}',)
  return origins


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _append(url: str, part: str, label: str) -> None:
  """Appends the rest of `url` to `part` (all of it when the server ignores the Range)."""
  done = os.path.getsize(part) if os.path.exists(part) else 0
  request = urllib.request.Request(url, headers={'Range': f'bytes={done}-'} if done else {})
  try:
    response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 416 and done:  # nothing after `done`: the part is already whole
      return
    raise
  with response:
    if done and getattr(response, 'status', 200) != 206:
      done = 0  # the server sent the whole file
    length = response.headers.get('Content-Length')
    total = done + int(length) if length else 0
    progress = metrics.Progress(total, done, label=label, unit='MB', per_unit=1e6)
    with open(part, 'ab' if done else 'wb') as f:
      while chunk := response.read(CHUNK):
        f.write(chunk)
        progress.advance(len(chunk))
    if total and os.path.getsize(part) < total:
      raise ConnectionError(f'{os.path.getsize(part):,} of {total:,} bytes arrived')


def _attempts(url: str, part: str, name: str, failures: list) -> bool:
  """Whether `part` holds all of `url` after up to ATTEMPTS tries, each resuming the last."""
  for attempt in range(ATTEMPTS):
    try:
      _append(url, part, f'download {name}')
      return True
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, dropped connections
      failures.append(f'{url}: {getattr(e, "reason", None) or e}')
      if isinstance(e, urllib.error.HTTPError):
        return False  # the server answered; asking again will not change its answer
      time.sleep(min(2**attempt, 4) / 4)
  return False


def fetch(dataset: str, name: str, origins: tuple[str, ...], expected: str | None, folder: str):
  """`folder/name`, downloaded (or found complete from an earlier run) and checked against the
  SHA-256 `expected` (None: no published value; the caller checks the content). A partial
  download stays as `name.part` and is resumed by the next call; a file whose hash differs is
  deleted and refused."""
  os.makedirs(folder, exist_ok=True)
  target, part = os.path.join(folder, name), os.path.join(folder, name + '.part')
  if os.path.exists(target):
    return target
  failures = []
  for url in urls(dataset, name, origins):
    if not _attempts(url, part, name, failures):
      continue
    actual = sha256(part)
    if expected is not None and actual != expected:
      os.remove(part)
      raise DownloadError(
        f'{url}: SHA-256 {actual} differs from the recorded {expected}; the file was deleted. '
        f'Rerun to download it again; if it differs again, the source (or ${MIRROR_ENV}) serves '
        'another file.'
      )
    os.replace(part, target)
    return target
  kept = os.path.getsize(part) if os.path.exists(part) else 0
  raise DownloadError(
    f'cannot download {name} ({"; ".join(dict.fromkeys(failures))}). '
    + (f'{kept:,} bytes are kept in {part}; rerun to resume. ' if kept else '')
    + f'Without internet access, set {MIRROR_ENV} to a URL or folder holding {dataset}/{name}.'
  )
