"""k-fold cross-validation: stratified folds, a fold's train and eval sources, the data paths over
a subset of a split, and `python -m dlearn.cross_validate` end to end on a tiny .ts dataset."""

import json
import os
import re

import entry_point
import helpers
import numpy as np
import pytest

from dlearn import configs, evaluation, parallel, train
from dlearn.data import on_device, pipeline

# helpers.prepared_sequences: classes of 6, 5 and 4 cases, 15 in train+validation.
PER_CLASS = (6, 5, 4)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return helpers.prepared_sequences(tmp_path_factory.mktemp('data'), per_class=PER_CLASS)


def _records(source):
  """Each record as hashable bytes, to tell which example it is."""
  return [source[i]['sequence'].tobytes() + bytes([source[i]['label']]) for i in range(len(source))]


# ---- folds ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('k', [2, 3, 5])
def test_folds_are_stratified_disjoint_and_cover_the_split_once(k):
  labels = np.random.default_rng(1).permutation(np.repeat([0, 1, 2], [11, 7, 5]))
  folds = pipeline.stratified_folds(labels, k, seed=0)
  assert len(folds) == k
  assert sorted(np.concatenate(folds).tolist()) == list(range(len(labels)))  # each exactly once
  sizes = [len(f) for f in folds]
  assert max(sizes) - min(sizes) <= 1
  for c, count in enumerate([11, 7, 5]):
    per_fold = [int((labels[f] == c).sum()) for f in folds]
    assert set(per_fold) <= {count // k, -(-count // k)}  # about 1/k of every class
  again = pipeline.stratified_folds(labels, k, seed=0)
  assert all(np.array_equal(a, b) for a, b in zip(folds, again))  # deterministic given the seed
  other = pipeline.stratified_folds(labels, k, seed=1)
  assert not all(np.array_equal(a, b) for a, b in zip(folds, other))


@pytest.mark.parametrize('k', [1, 24])
def test_a_fold_count_outside_2_to_the_examples_is_refused(k):
  labels = np.repeat([0, 1, 2], [11, 7, 5])
  with pytest.raises(ValueError, match=rf"--folds={k}: use from 2 to 23 folds: .* split's 23 examples"):  # fmt: skip
    pipeline.stratified_folds(labels, k, seed=0, flag='--folds')


def test_classes_smaller_than_the_folds_are_dealt_over_fewer_folds_and_named():
  """As scikit-learn's StratifiedKFold: UCR's Fungi has one example a class."""
  labels = np.repeat([0, 1, 2, 3], [9, 3, 1, 7])
  folds = pipeline.stratified_folds(labels, 5, seed=0)
  assert sorted(np.concatenate(folds).tolist()) == list(range(len(labels)))
  assert max(map(len, folds)) - min(map(len, folds)) <= 1
  for c, count in enumerate([9, 3, 1, 7]):
    per_fold = [int((labels[f] == c).sum()) for f in folds]
    assert set(per_fold) <= {count // 5, -(-count // 5)}
  small = pipeline.small_classes(labels, 5)
  assert small.startswith('classes with fewer examples than the 5 folds: 1 (3), 2 (1);')
  assert (
    pipeline.small_classes(labels, 3)
    == "classes with fewer examples than the 3 folds: 2 (1); they are held out by fewer folds, and a class of one example is missing from its own fold's training data (its accuracy counts it wrong)."
  )
  assert pipeline.small_classes(labels, 1) is None


def test_a_folds_train_and_eval_sources_are_complementary(data_dir):
  config = configs.base()
  config.data.name, config.data.data_dir = 'toy_sequences', data_dir
  config.data.train_split, config.data.folds = 'train+validation', 3
  config.data.eval_split = 'not_read'  # a fold's run evaluates on its fold
  everything = _records(pipeline.load_split('toy_sequences', 'train+validation', data_dir))
  assert len(everything) == len(set(everything)) == sum(PER_CLASS)
  held_out = []
  for fold in range(3):
    config.data.fold = fold
    train_source, eval_source = pipeline.run_sources(config)
    train_records, eval_records = _records(train_source), _records(eval_source)
    assert len(eval_records) == 5 and len(train_records) == 10
    assert sorted(train_records + eval_records) == sorted(everything)  # complementary
    held_out += eval_records
    info = pipeline.dataset_info(train_source, 'toy_sequences', None)
    assert info.class_names == ('a', 'b', 'c')
  assert sorted(held_out) == sorted(everything)  # every example held out once
  config.data.fold = 3
  with pytest.raises(ValueError, match=r'config.data.fold=3: the folds are 0 to 2'):
    pipeline.run_sources(config)


def test_the_folds_share_one_evaluation_step_and_other_programs_do_not():
  """A cross-validation's runs differ in the fold they hold out, which the evaluation step never
  reads: they share its traced and loaded program (evaluation.map_eval_step), while any other
  change of the config (here the dtype the model computes in) gives another."""
  from flax import nnx

  graphdef = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))[0]
  info = pipeline.DatasetInfo('synthetic', 'sequence', (6, 2), 3, ('x', 'y', 'z'))
  mesh = parallel.make_mesh()
  config = configs.base()
  config.data.folds = 5
  steps = []
  for fold, dtype in ((0, 'float32'), (3, 'float32'), (3, 'bfloat16')):
    config.data.fold, config.dtype = fold, dtype
    steps.append(evaluation.map_eval_step(graphdef, config, info, mesh))
  assert steps[0] is steps[1]
  assert steps[2] is not steps[1]
  assert config.data.fold == 3  # the caller's config is left as it was


def test_the_folds_share_one_optimizer_and_state_creation_and_other_programs_do_not():
  """Likewise the optimizer and the programs that create a fresh train state
  (steps.create_train_state): one per program in a process, another for another seed; the state
  a fold gets from the shared program is the one its own config makes."""
  from dlearn import optimizers
  from dlearn import steps as steps_lib

  info = pipeline.DatasetInfo('synthetic', 'sequence', (6, 2), 3, ('x', 'y', 'z'))
  mesh = parallel.make_mesh()
  config = configs.base()
  config.model, config.rnn.hidden_size, config.data.folds = 'rnn', 4, 5
  made = []
  for fold, seed in ((0, 0), (3, 0), (3, 1)):
    config.data.fold, config.seed = fold, seed
    tx = optimizers.create(config, 10)
    made.append((tx, steps_lib._state_programs(config, info, tx, mesh)))
  assert made[0][0] is made[1][0] and made[0][1] is made[1][1]
  assert made[2][1] is not made[1][1]
  assert optimizers.create(config, 20) is not made[2][0]  # another length, another schedule
  _, shared = steps_lib.create_train_state(config, info, made[2][0], mesh)
  own = steps_lib._state_programs.__wrapped__(config, info, made[2][0], mesh).create()
  helpers.assert_trees_close(shared, own, rtol=0, atol=0)
  config.seed = 0
  first = steps_lib.create_train_state(config, info, made[0][0], mesh)[1]
  kernels = [
    np.asarray(s.params['layers'][0]['cell']['dense_h']['kernel']) for s in (first, shared)
  ]
  assert not np.allclose(*kernels)  # another seed, other weights


def test_host_and_on_device_training_data_read_only_the_subset():
  records = helpers.image_records(60)  # each record's pixels are unique
  info = pipeline.DatasetInfo('synthetic', 'image', (4, 4, 3), 5, tuple('abcde'))
  subset = pipeline.Subset(records, np.arange(60)[::3])  # 20 examples
  by_pixels = {r['image'].tobytes(): r['index'] for r in records}

  batches = pipeline.train_iterator(subset, info, local_batch_size=20, seed=0)
  batch = next(batches)  # one epoch
  drawn = [by_pixels[image.tobytes()] for image in batch['image'].reshape(-1, 4, 4, 3)]
  assert sorted(drawn) == subset.indices.tolist()
  assert (subset.indices[batch['index'].ravel()] == drawn).all()  # index: position in the subset

  layout = on_device.Layout(num_examples=len(subset), num_devices=8, per_device_batch=2)
  data = on_device.load(subset, info, layout, parallel.make_mesh(), seed=0)
  images = np.asarray(data['image']).reshape(-1, 4, 4, 3)
  resident = [by_pixels[image.tobytes()] for image in images]
  assert len(set(resident)) == 16 and set(resident) <= set(subset.indices.tolist())  # 4 dropped
  assert (subset.indices[np.asarray(data['index']).ravel()] == resident).all()


@pytest.mark.slow  # three runs
def test_a_folds_held_out_probabilities_are_the_same_under_every_mapping(data_dir, tmp_path):
  # each held-out example once, in the fold's order, whichever devices computed it (8 here)
  config = configs.load_file('experiments/configs/rnn_uea.py', 'toy_sequences')
  config.data.data_dir, config.data.train_split = data_dir, 'train+validation'
  config.data.folds, config.data.fold = 3, 1
  config.rnn.conv_filters, config.rnn.conv_kernels, config.ensemble_size = (4,), (3,), 1
  config.num_epochs, config.eval_batch_size, config.write_plots = 0, 8, False
  held = {}
  for mapping in ('jit', 'pmap', 'shard_map'):
    config.mapping = mapping
    result = train.train_and_evaluate(config, str(tmp_path / mapping))
    held[mapping] = result['held_out']
    assert np.array_equal(held[mapping]['index'], np.arange(5))
    np.testing.assert_array_equal(held[mapping]['label'], pipeline.labels(pipeline.run_sources(config)[1]))  # fmt: skip
    right = np.argmax(held[mapping]['probabilities'], -1) == held[mapping]['label']
    assert np.mean(right) == pytest.approx(result['eval']['accuracy'])
  for mapping in ('pmap', 'shard_map'):
    np.testing.assert_allclose(held[mapping]['probabilities'], held['jit']['probabilities'], rtol=1e-5, atol=1e-6)  # fmt: skip


# ---- the command ---------------------------------------------------------------------------------
def _cross_validate(data_dir, workdir, *args, check=True):
  return entry_point.run(
    'cross_validate',
    f'--workdir={workdir}',
    *helpers.tiny_lstm_fcn_flags(data_dir),
    '--config.batch_size=8',
    '--config.eval_batch_size=8',
    '--config.num_train_steps=3',
    '--config.warmup_steps=0',
    '--config.write_plots=False',
    *args,
    check=check,
    mock=False,
  )


@pytest.mark.slow
def test_the_command_trains_each_fold_reports_and_resumes(data_dir, tmp_path):
  workdir = tmp_path / 'cv'
  result = _cross_validate(data_dir, workdir, '--folds=3')
  lines = result.stdout.splitlines()
  assert [line.split(':')[0] for line in lines[:3]] == ['fold 0', 'fold 1', 'fold 2']
  assert all(line.endswith('examples 5') for line in lines[:3])
  summary = re.fullmatch(r'k-fold accuracy: (\S+) ± (\S+) over 3 folds \(15 examples\)', lines[3])
  assert summary, result.stdout

  with open(workdir / 'cross_validation.json') as f:
    written = json.load(f)
  accuracies = [fold['accuracy'] for fold in written['folds']]
  assert [fold['fold'] for fold in written['folds']] == [0, 1, 2]
  assert [fold['count'] for fold in written['folds']] == written['fold_sizes'] == [5, 5, 5]
  assert written['mean_accuracy'] == pytest.approx(np.mean(accuracies))
  assert written['std_accuracy'] == pytest.approx(np.std(accuracies, ddof=1))
  assert float(summary.group(1)) == pytest.approx(written['mean_accuracy'], abs=1e-4)
  assert written['examples'] == 15 and written['seconds'] > 0
  assert written['config']['data']['folds'] == 3
  assert written['config']['data']['train_split'] == 'train+validation'
  for fold in range(3):
    with open(workdir / f'fold_{fold}' / 'config.json') as f:
      data = json.load(f)['data']
    assert (data['folds'], data['fold']) == (3, fold)
    assert os.path.exists(workdir / f'fold_{fold}' / 'final_metrics.json')
    with np.load(workdir / f'fold_{fold}' / 'held_out.npz') as held:  # its held-out examples
      right = np.argmax(held['probabilities'], -1) == held['label']
      assert len(right) == 5 and np.mean(right) == pytest.approx(accuracies[fold])

  # A fold's work directory evaluates on its held-out fold by default.
  summary_0, _, _, _ = evaluation.evaluate_workdir(str(workdir / 'fold_0'))
  assert summary_0['count'] == 5
  assert summary_0['accuracy'] == pytest.approx(accuracies[0])

  rerun = _cross_validate(data_dir, workdir, '--folds=3')  # every fold already finished
  assert 'Already trained for 3 steps; evaluating only.' in rerun.stderr
  with open(workdir / 'cross_validation.json') as f:
    assert [fold['accuracy'] for fold in json.load(f)['folds']] == accuracies


@pytest.mark.slow
@pytest.mark.parametrize('folds', [1, 16])
def test_a_bad_fold_count_is_one_error_line_before_any_training(data_dir, tmp_path, folds):
  result = _cross_validate(data_dir, tmp_path / 'cv', f'--folds={folds}', check=False)
  line = helpers.the_error_line(result)
  assert line.startswith(f'error: --folds={folds}: use from 2 to 15 folds')
  assert "split's 15 examples" in line
  assert not os.path.exists(tmp_path / 'cv')  # nothing trained, nothing written


@pytest.mark.slow
def test_the_uea_recipe_trains_an_ensemble_with_its_batch_from_the_data(data_dir, tmp_path):
  # The recipe as a user runs it on a new dataset (tiny here): batch size 0 is derived from the
  # train split and recorded; an ensemble of 2 trains and evaluates as one model.
  workdir = tmp_path / 'recipe'
  entry_point.run(
    'main',
    '--config=experiments/configs/rnn_uea.py:toy_sequences',
    f'--workdir={workdir}',
    f'--config.data.data_dir={data_dir}',
    '--config.rnn.hidden_size=4',
    '--config.rnn.conv_filters=(4,)',
    '--config.rnn.conv_kernels=(3,)',
    '--config.ensemble_size=2',
    '--config.num_train_steps=4',
    '--config.warmup_steps=0',
    '--config.eval_batch_size=8',
    mock=False,
  )
  saved = configs.load(str(workdir))
  assert saved.batch_size == 8  # a tenth of the train split is 1: one per device of the 8
  assert saved.ensemble_size == 2 and saved.data.name == 'toy_sequences'
  result = entry_point.run(
    'evaluate', f'--workdir={workdir}', '--split=validation', '--nopng', mock=False
  )
  assert re.match(r'accuracy \S+  loss \S+  examples 2', result.stdout), result.stdout


@pytest.mark.parametrize(
  'examples, folds, devices, batch',
  [(50, 5, 1, 10), (100, 5, 1, 10), (67, 5, 1, 14), (270, 5, 1, 14), (50, 5, 8, 16), (4, 2, 1, 2)],
)
def test_a_folds_evaluation_batch_holds_its_largest_fold_in_even_batches(examples, folds, devices, batch):  # fmt: skip
  # GunPoint's 10 held-out cases one batch of 10, not 16; ACSF1's 20 two of 10; ItalyPowerDemand's
  # 13-14 one of 14; JapaneseVowels' 54 four of 14; at most config.eval_batch_size (16) a batch,
  # a multiple of the devices
  assert train.fold_eval_batch_size(16, examples, folds, devices) == batch
